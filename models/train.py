"""Train and export the reference models ``vgg16`` and ``resnet32`` (dev-only; needs torch).

Usage::

    python models/train.py --model vgg16|resnet32|all [--epochs N] [--cifar10 DIR]

Without ``--cifar10`` the models are trained on the 3,500-image training part of
the fixed MNIST-32 split (:func:`onnx_pfgdf.data.mnist32_split`, seed 0) and
evaluated on its 1,000-image test part; with ``--cifar10 DIR`` they are trained
on the CIFAR-10 python batches in ``DIR`` and evaluated on ``test_batch``.

Training is seeded and deterministic (``torch.manual_seed``, a seeded
``torch.Generator`` for the data order and augmentation, deterministic
algorithms): SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 64, a
one-cycle learning-rate schedule, random-crop augmentation (padding 2 for
MNIST-32; padding 4 plus horizontal flips for CIFAR-10).

Export: the classic TorchScript exporter (``dynamo=False``), opset 13, input
``input``, output ``logits``, dynamic batch axis ``batch``, constant folding on.
With ``training=TrainingMode.EVAL`` that exporter's eval peephole pass folds
every BatchNorm into the preceding Conv; the pruning tool wants the
BatchNormalization nodes kept, so the model is put in ``eval()`` mode and
exported with ``training=TrainingMode.PRESERVE``: the exporter then follows the
module's own (eval) mode, emitting inference-mode BatchNormalization nodes (one
output, running statistics as initializers) and skipping the fusion.  Initializers
the exporter tied through Identity nodes are untied (:func:`untie_initializers`).  The script
checks the graph (onnx.checker, BN node count, single-output BN) and that the
onnxruntime top-1 accuracy on the test split equals torch's.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import time
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_pfgdf.data import MNIST_MEAN, MNIST_STD, load_cifar10, mnist32_split  # noqa: E402
from onnx_pfgdf.evaluate import make_session, run_batched  # noqa: E402

__all__ = [
    "VGG", "ResNetCifar", "build", "count_params", "count_macs", "train", "untie_initializers",
    "export", "main",
]

logger = logging.getLogger("train")

VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]


class VGG(nn.Module):
    """CIFAR VGG-16 of the filter-pruning literature (13 conv layers, 4,224 filters).

    Each conv is 3x3, padding 1, followed by BatchNorm2d and ReLU; ``"M"`` is a
    2x2 max pool.  A 32x32 input ends as 1x1x512, flattened into
    Linear(512, 512) -> ReLU -> Linear(512, 10).
    """

    def __init__(self, cfg: list[int | str] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=True),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of images ``[N, 3, 32, 32]``."""
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity or 1x1-conv+BN (option B) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) of He et al.; ``n=5`` gives ResNet-32.

    conv3x3(16)+BN+ReLU, three stages of ``n`` BasicBlocks with 16/32/64
    channels (stride 2 at the start of stages 2 and 3, projection shortcuts),
    global average pooling, Linear(64, num_classes).
    """

    def __init__(self, n: int = 5, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` of images ``[N, 3, 32, 32]``."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


BUILDERS: dict[str, Callable[[], nn.Module]] = {"vgg16": VGG, "resnet32": ResNetCifar}


def build(name: str) -> nn.Module:
    """A freshly initialized model by name (``vgg16`` or ``resnet32``)."""
    return BUILDERS[name]()


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass over Conv2d and Linear layers.

    Conv: ``out_elems * Cin / groups * kh * kw``; Linear: ``in * out`` per row.
    BN, ReLU, pooling and residual additions are not counted.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        nonlocal total
        total += inp[0].numel() // m.in_features * m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def _augment(x: torch.Tensor, pad: int, pad_value: float, flip: bool,
             gen: torch.Generator) -> torch.Tensor:
    """Random crop of the ``pad``-padded batch (and random horizontal flip)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=pad_value)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        out[mask] = out[mask].flip(3)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Logits of ``model`` (eval mode) on ``x``, batch by batch."""
    model.eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size])).numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, *, lr: float,
          seed: int, pad: int, pad_value: float, flip: bool, batch_size: int = 64,
          test: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict[str, float]]:
    """Train in place with SGD + one-cycle LR; return one log row per epoch.

    The test accuracy (if ``test`` is given) is measured after the last epoch only.
    """
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.25)
    log: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=gen)
        loss_sum, correct = 0.0, 0
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb = _augment(xt[idx], pad, pad_value, flip, gen)
            out = model(xb)
            loss = F.cross_entropy(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yt[idx]).sum())
        row = {"epoch": epoch + 1, "loss": loss_sum / len(x), "train_acc": correct / len(x),
               "seconds": time.perf_counter() - t0}
        if test is not None and epoch + 1 == epochs:
            row["test_acc"] = float((predict(model, test[0]).argmax(1) == test[1]).mean())
        log.append(row)
        logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                    ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    return log


def untie_initializers(proto: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer, in place.

    The classic exporter deduplicates initializers with identical values and
    re-creates the duplicates with Identity nodes.  In ResNet the biases of the
    two BatchNorms feeding a residual Add receive identical gradients from a zero
    start, so they are equal and get tied this way; untying keeps one plain
    initializer per BN input.  Returns the number of nodes removed.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    keep, removed = [], 0
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            proto.graph.initializer.append(copy)
            removed += 1
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return removed


def export(model: nn.Module, path: str) -> onnx.ModelProto:
    """Export with the classic exporter, keeping inference-mode BN nodes (see module doc)."""
    model.eval()
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    torch.onnx.export(
        model, (torch.zeros(1, 3, 32, 32),), path, opset_version=13,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE, **kwargs,
    )
    proto = onnx.load(path)
    if untie_initializers(proto):
        onnx.save(proto, path)
    onnx.checker.check_model(proto, full_check=True)
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if len(bns) != n_bn or any(len(n.output) != 1 for n in bns):
        raise RuntimeError(f"{path}: expected {n_bn} inference BN nodes, got {len(bns)}")
    return proto


def main(argv: list[str] | None = None) -> int:
    """Train, export and check the requested models; return the exit code."""
    parser = argparse.ArgumentParser(description="Train and export the reference models.")
    parser.add_argument("--model", choices=[*BUILDERS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (default: vgg16 6, resnet32 12 on MNIST-32; 60 on CIFAR-10)")
    parser.add_argument("--cifar10", metavar="DIR", default=None,
                        help="train on the CIFAR-10 python batches in DIR instead of MNIST-32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    if args.cifar10:
        xtr, ytr = load_cifar10(args.cifar10, "train")
        test = load_cifar10(args.cifar10, "test")
        aug = {"pad": 4, "pad_value": 0.0, "flip": True}
        suffix = "_cifar10"
    else:
        split = mnist32_split(seed=0)
        xtr, ytr = split["train"]
        test = split["test"]
        aug = {"pad": 2, "pad_value": -MNIST_MEAN / MNIST_STD, "flip": False}
        suffix = ""

    names = list(BUILDERS) if args.model == "all" else [args.model]
    for name in names:
        epochs = args.epochs or (60 if args.cifar10 else {"vgg16": 6, "resnet32": 12}[name])
        lr = {"vgg16": 0.05, "resnet32": 0.1}[name]
        torch.manual_seed(args.seed)
        model = build(name)
        logger.info("%s: %d params, %d MACs (batch 1)", name, count_params(model),
                    count_macs(model))
        t0 = time.perf_counter()
        train(model, xtr, ytr, epochs, lr=lr, seed=args.seed, test=test, **aug)
        train_s = time.perf_counter() - t0
        torch_logits = predict(model, test[0])
        torch_acc = float((torch_logits.argmax(1) == test[1]).mean())
        path = os.path.join(args.out, f"{name}{suffix}.onnx")
        proto = export(model, path)
        (ort_logits,) = run_batched(make_session(proto), {"input": test[0]}, batch_size=250)
        ort_acc = float((ort_logits.argmax(1) == test[1]).mean())
        max_diff = float(np.abs(ort_logits - torch_logits).max())
        logger.info("%s: trained %d epochs in %.0f s; test acc torch %.4f, onnxruntime %.4f; "
                    "max |logit diff| %.2e; %s (%d bytes)", name, epochs, train_s, torch_acc,
                    ort_acc, max_diff, path, os.path.getsize(path))
        if ort_acc != torch_acc:
            logger.error("%s: onnxruntime accuracy differs from torch", name)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
