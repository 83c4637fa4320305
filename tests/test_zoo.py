"""The zoo topologies shipped with onnx, pruned end to end at ratio 0.5 (L1, no recovery).

Each model (see ``tests/zoo.py``) gets seeded weights, is pruned with
``simplify=False`` (the zoo needs no onnxsim and VGG-19 is 548 MB) and must

* pass the library's own verification (checker + masked-original equivalence);
* agree with ``mask_original(normalized, plan)`` when both run in onnxruntime
  here, independently of ``onnx_pfgdf.verify``;
* give every frozen group a reason, and for the models below lose >= 30 % MACs.

``EXPECT`` records what a reader of each graph expects to be frozen: the
classifier reaching the graph output (Softmax or the output itself), LRN
(AlexNet, ZFNet, Inception-v1), the channel shuffle and the grouped convolutions
reading a Concat in ShuffleNet.  AlexNet's group=2 convolutions are pruned in
equal halves.  Models that take more than ~15 s are marked ``slow``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnx_pfgdf
from onnx_pfgdf.api import PruneConfig
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.io import LoadOptions
from onnx_pfgdf.rewrite import mask_original
from checks import assert_frozen_reasons
from zoo import ZOO_MODELS, load_zoo

MIN_MACS_REDUCTION = 0.30

#: name -> (minimum MACs reduction or None, words that must appear among the frozen reasons)
EXPECT: dict[str, tuple[float | None, tuple[str, ...]]] = {
    "bvlc_alexnet": (MIN_MACS_REDUCTION, ("LRN mixes neighbouring channels",)),
    "densenet121": (MIN_MACS_REDUCTION, ()),
    "inception_v1": (MIN_MACS_REDUCTION, ("LRN mixes neighbouring channels",)),
    "inception_v2": (MIN_MACS_REDUCTION, ()),
    "resnet50": (MIN_MACS_REDUCTION, ()),
    "shufflenet": (None, ("(group=4) reads a concatenation", "reshapes across the channel axis",
                          "depthwise over channels an earlier op froze")),
    "squeezenet": (MIN_MACS_REDUCTION, ()),
    "vgg19": (MIN_MACS_REDUCTION, ()),
    "zfnet512": (None, ("LRN mixes neighbouring channels",)),
}

SLOW = {"vgg19", "zfnet512", "bvlc_alexnet"}

#: Every group frozen (ShuffleNet's channel shuffles and Concat-fed grouped convs): prune refuses.
NOTHING_PRUNABLE = {"shufflenet"}


def _run(model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _pre_outputs(model):
    """A copy of ``model`` that also outputs what the nodes writing its outputs read."""
    import copy

    import onnx

    out = copy.deepcopy(model)
    producers = {o: n for n in out.graph.node for o in n.output}
    inits = {t.name for t in out.graph.initializer}
    names = [o.name for o in out.graph.output]
    extra = [t for o in names for t in producers[o].input if t and t not in inits and t not in names]
    out.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(extra))
    return out


def _feeds(model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {
        vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
        for vi in model.graph.input
        if vi.name not in inits
    }


def test_zoo_table_covers_every_model() -> None:
    assert set(EXPECT) == set(ZOO_MODELS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO_MODELS]
)
def test_zoo_model_prunes_and_verifies(name: str) -> None:
    min_macs, frozen_words = EXPECT[name]
    model = load_zoo(name)
    config = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, load=LoadOptions(simplify=False))
    if name in NOTHING_PRUNABLE:  # refused, naming why; analyze lists every frozen group with its reason
        with pytest.raises(onnx_pfgdf.NothingToPruneError, match="nothing to prune"):
            onnx_pfgdf.prune(model, config)
        frozen = onnx_pfgdf.analyze(model, config.load).channels.frozen_groups()
        assert frozen and all(g.frozen and all(r.strip() for r in g.frozen) for g in frozen)
        reasons = " | ".join(r for g in frozen for r in g.frozen)
        assert all(word in reasons for word in frozen_words), reasons
        return
    result = onnx_pfgdf.prune(model, config)

    assert result.verification is not None and result.verification.passed, result.verification
    assert result.verification.checker == "ok"

    # Independent oracle: masked original vs pruned, run here in onnxruntime, on the outputs and on
    # what the output nodes read (a Softmax of large random logits is one-hot whatever the logits).
    masked = mask_original(result.normalized, result.plan)
    feeds = _feeds(result.normalized)
    expected, actual = _run(_pre_outputs(masked), feeds), _run(_pre_outputs(result.model), feeds)
    compared = 0
    for ref, out in zip(expected, actual, strict=True):
        if ref.shape != out.shape:  # a pre-output tensor of a pruned group
            continue
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        assert float(np.max(np.abs(ref - out))) <= 1e-4 * scale
        compared += 1
    assert compared > len(result.model.graph.output) or name == "densenet121"  # DenseNet's output is its Conv's

    assert_frozen_reasons(result, frozen_words)
    if min_macs is not None:
        assert result.report.reduction["macs"] >= min_macs, result.report.reduction
        assert result.plan.keep, "nothing was pruned"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO_MODELS]
)
def test_zoo_model_analyze_table(name: str, tmp_path, capsys) -> None:
    """``onnx-pfgdf analyze`` prints one row per layer and every frozen group with its reason."""
    import onnx

    from onnx_pfgdf.cli import main

    path = tmp_path / f"{name}.onnx"
    onnx.save(load_zoo(name), path)
    assert main(["analyze", str(path), "--no-simplify"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["layer", "op", "group", "prunable"]
    analysis = onnx_pfgdf.analyze(load_zoo(name), LoadOptions(simplify=False)).report
    rows = [line for line in lines[2:] if line.strip() and not line.startswith("total")][: len(analysis.layers)]
    assert [row.split()[0] for row in rows] == [layer.output for layer in analysis.layers]
    assert f"{analysis.prunable_groups} prunable groups, {len(analysis.frozen)} frozen" in out
    for frozen in analysis.frozen:
        assert frozen.reasons[0] in out
