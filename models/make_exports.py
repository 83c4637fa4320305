"""Export small torchvision CNNs to ONNX: the corpus of ``tests/data/torch_exports/``.

Dev-only (needs ``torch==2.13.0`` and ``torchvision==0.28.0``, installed with
``pip install --no-deps torchvision==0.28.0``; ``onnxscript`` for the dynamo
exports, which are skipped with a message when it is missing)::

    python models/make_exports.py            # rewrite every file and the README table
    python models/make_exports.py --list     # print what would be written

Every model is a torchvision architecture (the model class itself, or its
builders' internals with a small configuration, so each file stays well under
2 MB) with ``num_classes=10``:

* ``torch.manual_seed(SEED)`` before building, so the weights are seeded
  random (torchvision's own initialisation);
* every BatchNorm then gets random ``weight``/``bias`` (BN is not the
  identity, and the legacy exporter folds it into the preceding Conv) and
  running statistics measured on random input batches (random statistics
  would leave the deep random networks' outputs almost constant);
* ``model.eval()``, batch-1 input, exported with the legacy TorchScript
  exporter (``dynamo=False``) at opset 13 — a few also at 9/11 and 17, and with
  the dynamo exporter at opset 18.  ``densenet_op13`` has a dynamic batch axis.

Input ``input`` ``[1, 3, S, S]``; output ``logits`` ``[1, 10]`` (``out``
``[1, 10, S, S]`` for the segmentation model).

torchvision wheels on PyPI are CUDA builds whose C extension (detection ops)
does not load next to a CPU-only torch; none of these models needs it, so the
two modules that register those ops are stubbed before ``import torchvision``.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import onnx
import torch
from torch import nn

for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))

import torchvision  # noqa: E402
from torchvision.models import densenet, efficientnet, regnet, resnet, squeezenet  # noqa: E402
from torchvision.models.segmentation import lraspp  # noqa: E402

SEED = 0
NUM_CLASSES = 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "data", "torch_exports")


# --------------------------------------------------------------------------- small architectures


def mobilenet_v2() -> nn.Module:
    """torchvision MobileNetV2, width 0.25: depthwise 3x3, ReLU6 (Clip), residual adds."""
    return torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES, width_mult=0.25)


def mobilenet_v3_small() -> nn.Module:
    """torchvision MobileNetV3-Small, width 0.25: SE (Hardsigmoid), Hardswish, depthwise."""
    return torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES, width_mult=0.25)


def efficientnet_b0() -> nn.Module:
    """torchvision EfficientNet-B0 configuration at width 0.25, depth 0.5: SiLU, SE (Sigmoid), MBConv."""
    setting, last_channel = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    return efficientnet.EfficientNet(setting, dropout=0.2, num_classes=NUM_CLASSES, last_channel=last_channel)


def regnet_y() -> nn.Module:
    """torchvision RegNet with a RegNetY-style BlockParams (group width 8, SE 0.25), 3 stages 16/32/64."""
    params = regnet.BlockParams.from_init_params(depth=6, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return regnet.RegNet(params, num_classes=NUM_CLASSES, stem_width=16)


class SmallResNeXt(nn.Module):
    """ResNeXt from torchvision's ``Bottleneck`` (groups=4, 16 channels per group), stages 64/128/256.

    torchvision's ResNet class fixes its stage widths at 64..512 planes
    (2048 output channels); this stem + three one-block stages is the same
    block at a fraction of the size.
    """

    def __init__(self, groups: int = 4, width_per_group: int = 16, planes: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        inplanes = 32
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            out = p * resnet.Bottleneck.expansion
            downsample = nn.Sequential(resnet.conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
            blocks.append(resnet.Bottleneck(inplanes, p, stride, downsample, groups=groups, base_width=width_per_group))
            blocks.append(resnet.Bottleneck(out, p, 1, None, groups=groups, base_width=width_per_group))
            inplanes = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnext() -> nn.Module:
    """Small ResNeXt of torchvision Bottlenecks (groups=4, 16 channels per group), stages 64/128/256."""
    return SmallResNeXt()


def shufflenet_v2() -> nn.Module:
    """torchvision ShuffleNetV2 x0.5: channel split (Split/Slice), channel shuffle (Reshape-Transpose-Reshape)."""
    return torchvision.models.shufflenet_v2_x0_5(num_classes=NUM_CLASSES)


def squeezenet1_1() -> nn.Module:
    """torchvision SqueezeNet 1.1 (the class and its Fire modules) with every Fire width halved."""
    model = torchvision.models.squeezenet1_1(num_classes=NUM_CLASSES)
    fire = squeezenet.Fire
    model.features = nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        fire(32, 8, 32, 32),
        fire(64, 8, 32, 32),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        fire(64, 16, 64, 64),
        fire(128, 16, 64, 64),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        fire(128, 24, 96, 96),
        fire(192, 24, 96, 96),
        fire(192, 32, 128, 128),
        fire(256, 32, 128, 128),
    )
    model.classifier[1] = nn.Conv2d(256, NUM_CLASSES, kernel_size=1)
    for module in model.modules():  # He init: PyTorch's default shrinks a BN-free net's signal to its biases
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.normal_(module.bias, 0.0, 0.01)
    return model


def densenet_small() -> nn.Module:
    """torchvision DenseNet, growth 12, blocks (2, 2, 2, 2), 24 initial features, bn_size 2."""
    return densenet.DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=2,
                             num_classes=NUM_CLASSES)


class _OutOnly(nn.Module):
    """Return ``model(x)["out"]`` (torchvision segmentation models return a dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def lraspp_mobilenet_v3() -> nn.Module:
    """torchvision LR-ASPP on a dilated MobileNetV3-Large (width 0.25, reduced tail), 32 head channels.

    The same construction as ``lraspp_mobilenet_v3_large`` (``_lraspp_mobilenetv3``)
    with a narrower backbone and head; the logits are bilinearly resized to the
    input size.
    """
    backbone = torchvision.models.mobilenet_v3_large(width_mult=0.25, dilated=True, reduced_tail=True).features
    stages = [0] + [i for i, b in enumerate(backbone) if getattr(b, "_is_cn", False)] + [len(backbone) - 1]
    low, high = stages[-4], stages[-1]
    getter = torchvision.models._utils.IntermediateLayerGetter(
        backbone, return_layers={str(low): "low", str(high): "high"}
    )
    model = lraspp.LRASPP(getter, backbone[low].out_channels, backbone[high].out_channels, NUM_CLASSES,
                          inter_channels=32)
    return _OutOnly(model)


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Export:
    """One file: ``<name>_op<opset>.onnx`` from ``build`` at input ``size``."""

    name: str
    build: Callable[[], nn.Module]
    size: int
    opset: int
    dynamo: bool = False
    dynamic_batch: bool = False

    @property
    def filename(self) -> str:
        return f"{self.name}_op{self.opset}.onnx"

    @property
    def exporter(self) -> str:
        return "dynamo" if self.dynamo else "torchscript"


EXPORTS: tuple[Export, ...] = (
    Export("mobilenet_v2", mobilenet_v2, 64, 9),
    Export("mobilenet_v2", mobilenet_v2, 64, 13),
    Export("mobilenet_v2", mobilenet_v2, 64, 17),
    Export("mobilenet_v3_small", mobilenet_v3_small, 64, 13),
    Export("efficientnet_b0", efficientnet_b0, 64, 13),
    Export("regnet_y", regnet_y, 64, 13),
    Export("resnext", resnext, 64, 11),
    Export("resnext", resnext, 64, 13),
    Export("resnext", resnext, 64, 17),
    Export("shufflenet_v2", shufflenet_v2, 64, 13),
    Export("squeezenet1_1", squeezenet1_1, 64, 13),
    Export("densenet", densenet_small, 64, 13, dynamic_batch=True),
    Export("lraspp_mobilenet_v3", lraspp_mobilenet_v3, 64, 13),
    Export("resnext_dynamo", resnext, 64, 18, dynamo=True),
    Export("lraspp_mobilenet_v3_dynamo", lraspp_mobilenet_v3, 64, 18, dynamo=True),
)


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random affine parameters and running statistics (not the identity)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))


def _calibrate_batchnorm(model: nn.Module, size: int, generator: torch.Generator) -> None:
    """Set every BatchNorm's running statistics to the batch statistics of random inputs.

    Random running statistics leave a deep random network almost constant (its
    BNs shift activations far more than the input moves them), and a constant
    output would make the equivalence tests weak; with calibrated statistics
    the logits depend on the input as in a trained network.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, size, size, generator=generator))
    for bn in bns:
        bn.momentum = 0.1


def build(spec: Export) -> nn.Module:
    """The seeded model of ``spec`` (random BN affine parameters, calibrated statistics) in eval mode."""
    torch.manual_seed(SEED)
    model = spec.build()
    _randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    _calibrate_batchnorm(model, spec.size, torch.Generator().manual_seed(SEED + 2))
    return model.eval()


def export(spec: Export, path: str) -> None:
    """Write ``spec`` to ``path`` (a single file, weights inside)."""
    model = build(spec)
    x = torch.randn(1, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(SEED))
    output = "out" if "lraspp" in spec.name else "logits"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.dynamo:
            program = torch.onnx.export(model, (x,), input_names=["input"], output_names=[output],
                                        opset_version=spec.opset, dynamo=True, external_data=False, verbose=False)
            program.save(path)
        else:
            axes = {"input": {0: "batch"}, output: {0: "batch"}} if spec.dynamic_batch else None
            torch.onnx.export(model, (x,), path, input_names=["input"], output_names=[output],
                              opset_version=spec.opset, dynamo=False, dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(path), full_check=True)


def parameter_count(spec: Export) -> int:
    return sum(p.numel() for p in build(spec).parameters())


def _onnxscript_version() -> str | None:
    try:
        import onnxscript
    except ImportError:
        return None
    return str(onnxscript.__version__)


def _readme(rows: list[tuple[Export, int, int]]) -> str:
    lines = [
        "# Real PyTorch exports of small torchvision CNNs",
        "",
        "Written by `python models/make_exports.py` (dev-only: torch, torchvision, onnxscript) and",
        "pruned end to end by `tests/test_torch_exports.py`.  Seeded random weights (torchvision's",
        "initialisation after `torch.manual_seed(0)`), every BatchNorm with random affine parameters and",
        "running statistics measured on random batches, `model.eval()`, `num_classes=10`, batch 1 (`densenet_op13` has a dynamic",
        "batch axis).  The builders and their small configurations are documented in the script.",
        f"Exported with torch {torch.__version__}, torchvision {torchvision.__version__}"
        + (f", onnxscript {_onnxscript_version()}." if _onnxscript_version() else "."),
        "",
        "| file | source | opset | exporter | input | size | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec, size, params in rows:
        source = (spec.build.__doc__ or "").strip().splitlines()[0].rstrip(".")
        lines.append(
            f"| `{spec.filename}` | {source} | {spec.opset} | {spec.exporter} "
            f"| {'N' if spec.dynamic_batch else 1}x3x{spec.size}x{spec.size} "
            f"| {size / 1e6:.2f} MB | {params:,} |"
        )
    total = sum(size for _, size, _ in rows)
    lines += ["", f"Total: {len(rows)} files, {total / 1e6:.2f} MB.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the files, write nothing")
    parser.add_argument("--out", default=OUT_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.list:
        for spec in EXPORTS:
            print(spec.filename, spec.exporter, parameter_count(spec))
        return 0
    has_onnxscript = _onnxscript_version() is not None
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for spec in EXPORTS:
        path = os.path.join(args.out, spec.filename)
        if spec.dynamo and not has_onnxscript:
            print(f"skip {spec.filename}: the dynamo exporter needs onnxscript", file=sys.stderr)
            continue
        export(spec, path)
        rows.append((spec, os.path.getsize(path), parameter_count(spec)))
        print(f"{spec.filename}: {rows[-1][1] / 1e6:.2f} MB, {rows[-1][2]:,} parameters")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(_readme(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
