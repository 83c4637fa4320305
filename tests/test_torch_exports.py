"""Real PyTorch exports of torchvision CNNs, pruned end to end at ratio 0.5 (L1, no recovery).

``tests/data/torch_exports/`` holds what ``torch.onnx.export`` writes for small
torchvision architectures (``models/make_exports.py``; the file table is the
README there): the legacy TorchScript exporter at opsets 9 to 17, the dynamo
exporter at opset 18, one model with a dynamic batch axis.  Each file is pruned
with the default load options (onnxsim on) and must

* pass the library's own verification (checker + masked-original equivalence);
* agree with ``mask_original(normalized, plan)`` when both run in onnxruntime
  here, independently of ``onnx_pfgdf.verify``;
* agree with the taint oracle of ``test_exporters`` too, which finds the
  channels every contracting consumer loses without the library's channel
  rules (so a wrong rule cannot hide behind its own masked original);
* give every frozen group a reason, with the words ``EXPECT`` lists, and lose
  at least the MACs fraction measured when the corpus was written.

Only the classifier is frozen (its channels are the graph output), except in
ShuffleNetV2 where every channel shuffle (Reshape-Transpose-Reshape across the
channel axis) freezes the groups it mixes; its first 1x1 + depthwise convs of
each branch still prune.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_pfgdf
from onnx_pfgdf.api import PruneConfig
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.rewrite import mask_original
from checks import assert_frozen_reasons
from test_exporters import taint_masked_original

DATA = os.path.join(os.path.dirname(__file__), "data", "torch_exports")

OUTPUT = "channels reach graph output"

#: file stem -> (minimum MACs reduction, measured once with this config; words that must appear among the frozen reasons)
EXPECT: dict[str, tuple[float, tuple[str, ...]]] = {
    "densenet_op13": (0.60, (OUTPUT,)),                     # measured 0.6055
    "efficientnet_b0_op13": (0.67, (OUTPUT,)),              # 0.6790
    "lraspp_mobilenet_v3_dynamo_op18": (0.66, (OUTPUT,)),   # 0.6647
    "lraspp_mobilenet_v3_op13": (0.66, (OUTPUT,)),          # 0.6647
    "mobilenet_v2_op9": (0.68, (OUTPUT,)),                  # 0.6866
    "mobilenet_v2_op13": (0.68, (OUTPUT,)),                 # 0.6866
    "mobilenet_v2_op17": (0.68, (OUTPUT,)),                 # 0.6866
    "mobilenet_v3_small_op13": (0.62, (OUTPUT,)),           # 0.6237
    "regnet_y_op13": (0.70, (OUTPUT,)),                     # 0.7070
    "resnext_dynamo_op18": (0.74, (OUTPUT,)),               # 0.7411
    "resnext_op11": (0.74, (OUTPUT,)),                      # 0.7411
    "resnext_op13": (0.74, (OUTPUT,)),                      # 0.7411
    "resnext_op17": (0.74, (OUTPUT,)),                      # 0.7411
    "shufflenet_v2_op13": (0.49, (OUTPUT, "reshapes across the channel axis",  # 0.4984
                                  "is depthwise over channels an earlier op froze")),
    "squeezenet1_1_op13": (0.70, (OUTPUT,)),                # 0.7044
}

#: Exported with a dynamic batch axis: the pruned model gets it back.
DYNAMIC_BATCH = {"densenet_op13"}

CONFIG = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover="none")


def _path(name: str) -> str:
    return os.path.join(DATA, f"{name}.onnx")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds(model: onnx.ModelProto, seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {
        vi.name: rng.standard_normal([batch] + [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]).astype(
            np.float32
        )
        for vi in model.graph.input
        if vi.name not in inits
    }


def _assert_close(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert len(expected) == len(actual)
    for ref, out in zip(expected, actual, strict=True):
        assert ref.shape == out.shape
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        assert float(np.max(np.abs(ref - out))) <= 1e-4 * scale


def test_corpus_table_covers_every_file() -> None:
    files = {f[: -len(".onnx")] for f in os.listdir(DATA) if f.endswith(".onnx")}
    assert files == set(EXPECT)
    with open(os.path.join(DATA, "README.md")) as f:
        readme = f.read()
    assert all(f"`{name}.onnx`" in readme for name in files)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_torch_export_prunes_and_verifies(name: str) -> None:
    min_macs, frozen_words = EXPECT[name]
    model = onnx.load(_path(name))
    result = onnx_pfgdf.prune(model, CONFIG)

    assert result.verification is not None and result.verification.passed, result.verification
    assert result.verification.checker == "ok"
    assert result.plan.keep, "nothing was pruned"
    assert result.report.reduction["macs"] >= min_macs, result.report.reduction

    # The corpus is not degenerate: the logits move with the input (else equivalence proves little).
    first, second = (_run(result.normalized, _feeds(result.normalized, seed))[0] for seed in range(2))
    assert float(np.max(np.abs(first - second))) > 1e-2 * float(np.max(np.abs(first))), "output ignores the input"

    # Independent oracles, run here in onnxruntime on random inputs.
    masked = mask_original(result.normalized, result.plan)
    tainted = taint_masked_original(result.normalized, result.plan.to_dict())
    for seed in range(2):
        feeds = _feeds(result.normalized, seed)
        actual = _run(result.model, feeds)
        _assert_close(_run(masked, feeds), actual)
        _assert_close(_run(tainted, feeds), actual)

    assert_frozen_reasons(result, frozen_words)

    if name in DYNAMIC_BATCH:  # the pruned model runs any batch, like the export
        dim = result.model.graph.input[0].type.tensor_type.shape.dim[0]
        assert dim.dim_param and not dim.dim_value
        feeds = _feeds(result.normalized, 3, batch=2)
        (both,) = _run(result.model, feeds)
        halves = [_run(result.model, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(2)]
        _assert_close([np.concatenate(halves)], [both])


def test_cli_prunes_a_dynamo_export(tmp_path) -> None:
    """``onnx-pfgdf prune`` on the dynamo LR-ASPP: the written file is valid, narrower and runs."""
    from onnx_pfgdf.cli import main

    path = _path("lraspp_mobilenet_v3_dynamo_op18")
    out = tmp_path / "pruned.onnx"
    assert main(["prune", path, "-o", str(out), "--ratio", "0.5", "--criterion", "l1", "--recover", "none"]) == 0
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    original = onnx.load(path)
    assert pruned.ByteSize() < 0.5 * original.ByteSize()
    feeds = _feeds(original, 0)
    (want,), (got,) = _run(original, feeds), _run(pruned, feeds)
    assert got.shape == want.shape == (1, 10, 64, 64)
    assert np.all(np.isfinite(got))
