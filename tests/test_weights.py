"""Weight-free model copies (onnx_pfgdf.weights) and what uses them to save memory.

Each helper is compared with the plain, copying way of doing the same thing:
``strip`` + ``restore`` with the model itself, ``weights.infer_shapes`` with
``onnx.shape_inference``, ``run_as_written`` with an ordinary session,
``masked_weights`` with ``mask_original``, and ``verify`` with a reference
computed beforehand with ``verify`` computing it itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
from onnx_pfgdf import CriterionConfig, PruneConfig, prune
from onnx_pfgdf.channels import analyze_channels
from onnx_pfgdf.evaluate import make_session, run_as_written
from onnx_pfgdf.graph import CACHE_BYTES, GraphIndex
from onnx_pfgdf.io import normalize
from onnx_pfgdf.plan import score_groups, select_plan
from onnx_pfgdf.rewrite import apply_plan, mask_original, masked_weights
from onnx_pfgdf.verify import random_inputs, reference_outputs, verify
from onnx_pfgdf.weights import infer_shapes, restore, skeleton, strip, weight_names

CASES = [f() for f in builders.ALL_BUILDERS if f is not builders.unsupported_op]


def _inits(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def _plan(model: onnx.ModelProto, ratio: float = 0.5):
    index = GraphIndex(model)
    channels = analyze_channels(model, index)
    return select_plan(channels, score_groups(channels, index, CriterionConfig("l1")), ratio=ratio)


def _ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model).run(None, feed)


# --------------------------------------------------------------------------- weight_names


def test_weight_names_takes_weight_slots_only() -> None:
    """x -> Conv(W, B) -> BN(s, b, m, v) -> Relu -> Conv(W2) -> Reshape(shape) -> y;
    W2 is also read by a Shape node, so it must keep its value."""
    f = np.float32
    inits = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), f), "W"),
        numpy_helper.from_array(np.zeros(4, f), "B"),
        *(numpy_helper.from_array(np.ones(4, f), n) for n in ("s", "b", "m", "v")),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), f), "W2"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["c2"]),
        helper.make_node("Shape", ["W2"], ["w2shape"]),
        helper.make_node("Reshape", ["c2", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w2shape", TensorProto.INT64, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert weight_names(model) == ["W", "B", "s", "b", "m", "v"]


def test_weight_names_keeps_what_onnxsim_folds() -> None:
    """A Conv scaled by a constant Mul (decomposed BN) keeps its weights: onnxsim folds them."""
    case = builders.decomposed_bn()
    names = weight_names(case.model)
    assert "c1.W" not in names and "c2.W" not in names
    assert {"y.W", "y.B"} <= set(names)
    out = normalize(case.model)
    assert "Mul" not in {n.op_type for n in out.graph.node}


def test_weight_names_skips_conv_of_a_constant() -> None:
    """Conv(Constant, W) may be folded whole, so W is not stripped."""
    f = np.float32
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones((1, 3, 4, 4), f), "k")),
        helper.make_node("Relu", ["k"], ["kr"]),
        helper.make_node("Conv", ["kr", "W"], ["c"]),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 3, 1, 1), f), "W")],
    )
    assert weight_names(helper.make_model(graph)) == []


# --------------------------------------------------------------------------- strip / restore


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_strip_restore_round_trip(case: builders.Case) -> None:
    model = case.model
    before = model.SerializeToString()
    stripped, tensors = strip(model, weight_names(model))
    assert tensors and not set(tensors) & {t.name for t in stripped.graph.initializer}
    assert set(tensors) <= {vi.name for vi in stripped.graph.input}
    onnx.checker.check_model(stripped, full_check=True)
    restore(stripped, tensors)
    assert model.SerializeToString() == before  # strip never mutates
    assert _inits(stripped) == _inits(model)
    assert [vi.name for vi in stripped.graph.input] == [vi.name for vi in model.graph.input]
    assert list(stripped.graph.node) == list(model.graph.node)


def test_strip_keeps_ir3_inputs_and_restore_raises_ir() -> None:
    model = builders.vgg_chain().model
    model.ir_version = 3
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    names = weight_names(model)
    stripped, tensors = strip(model, names)
    assert [vi.name for vi in stripped.graph.input] == [vi.name for vi in model.graph.input]
    restore(stripped, tensors)
    assert stripped.ir_version == 4
    assert not set(names) & {vi.name for vi in stripped.graph.input}


def test_skeleton_copies_all_but_initializers() -> None:
    model = builders.resnet_blocks().model
    model.metadata_props.add(key="k", value="v")
    out = skeleton(model)
    assert len(out.graph.initializer) == 0
    out.graph.initializer.extend(model.graph.initializer)
    assert out.SerializeToString() == model.SerializeToString()


# --------------------------------------------------------------------------- shapes, sessions


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_infer_shapes_matches_onnx(case: builders.Case) -> None:
    model = normalize(case.model)
    pruned = apply_plan(model, _plan(model))
    expected = onnx.shape_inference.infer_shapes(pruned, strict_mode=False, data_prop=True)
    del pruned.graph.value_info[:]
    out = infer_shapes(pruned)
    assert sorted(v.SerializeToString() for v in out.graph.value_info) == sorted(
        v.SerializeToString() for v in expected.graph.value_info
    )
    assert list(out.graph.output) == list(expected.graph.output)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_run_as_written_matches_a_session(case: builders.Case) -> None:
    model = normalize(case.model)
    feeds = [random_inputs(model, seed) for seed in range(2)]
    got = run_as_written(model, feeds)
    for feed, outs in zip(feeds, got, strict=True):
        for a, b in zip(outs, _ort(model, feed), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_run_as_written_uses_given_weights() -> None:
    """Weights given by name replace initializers, fill placeholders and define missing tensors."""
    model = normalize(builders.vgg_chain().model)
    stripped, tensors = strip(model, weight_names(model))
    arrays = {n: numpy_helper.to_array(t) * 2 for n, t in tensors.items()}
    doubled = skeleton(model)
    doubled.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    doubled.graph.initializer.extend(t for t in model.graph.initializer if t.name not in arrays)
    feed = random_inputs(model)
    (expected,) = run_as_written(doubled, [feed])
    missing = skeleton(model)
    missing.graph.initializer.extend(t for t in model.graph.initializer if t.name not in arrays)
    for graph in (stripped, model, missing):
        (got,) = run_as_written(graph, [feed], arrays)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(expected[0], run_as_written(model, [feed])[0][0])


# --------------------------------------------------------------------------- masking, verification


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_masked_weights_is_mask_original(case: builders.Case) -> None:
    model = normalize(case.model)
    plan = _plan(model)
    graph, values = masked_weights(model, plan)
    assert len(graph.graph.initializer) == 0
    masked = mask_original(model, plan)
    assert {n: a.tobytes() for n, a in values.items()} == _inits(masked)
    assert [n.SerializeToString() for n in graph.graph.node] == [n.SerializeToString() for n in masked.graph.node]


def test_verify_with_reference_equals_without() -> None:
    model = normalize(builders.resnet_blocks().model)
    plan = _plan(model)
    pruned = apply_plan(model, plan)
    plain = verify(model, pruned, plan)
    early = verify(model, pruned, plan, reference=reference_outputs(model, plan))
    assert plain.passed and plain == early


def test_verify_catches_a_wrong_rewrite() -> None:
    model = normalize(builders.vgg_chain().model)
    plan = _plan(model)
    pruned = apply_plan(model, plan)
    weight = next(t for t in pruned.graph.initializer if t.name.startswith("c2"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    assert not verify(model, pruned, plan, reference=reference_outputs(model, plan)).passed


def test_prune_result_unchanged_by_handing_the_model_over() -> None:
    """prune() drops its reference to the input; the result does not depend on who holds it."""
    config = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5)
    kept = builders.resnet_blocks().model
    held = prune(kept, config)
    handed = prune(builders.resnet_blocks().model, config)
    assert held.model.SerializeToString() == handed.model.SerializeToString()
    assert kept.SerializeToString() == builders.resnet_blocks().model.SerializeToString()


def test_graph_index_caches_small_constants_only() -> None:
    big = np.zeros(CACHE_BYTES // 4 + 1, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "small"], ["a"]), helper.make_node("Add", ["a", "big"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [big.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [big.size])],
        [numpy_helper.from_array(np.ones(1, np.float32), "small"), numpy_helper.from_array(big, "big")],
    )
    index = GraphIndex(helper.make_model(graph))
    assert index.constant("small") is index.constant("small")
    assert index.constant("big") is not index.constant("big")
    assert not index.constant("big").flags.writeable
    np.testing.assert_array_equal(index.constant("big"), big)


def test_onnxruntime_is_not_given_initializers_to_copy(monkeypatch) -> None:
    """run_as_written feeds float weights of at least 1 KiB as inputs (no initializer copies)."""
    model = normalize(builders.vgg_chain().model)
    seen: list[set[str]] = []
    original = ort.InferenceSession.run

    def spy(self, outputs, feed, *args, **kwargs):
        seen.append(set(feed))
        return original(self, outputs, feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    run_as_written(model, [random_inputs(model)])
    big = {t.name for t in model.graph.initializer
           if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) * 4 >= 1024}
    assert big and seen and big <= seen[0]
