"""One focused model per channel rule: which groups prune, which freeze and why.

Every model is a few nodes built with ``tests/builders.GraphBuilder`` (input
``x[1,3,8,8]``, logits ``y`` from ``GlobalAveragePool -> Flatten -> Gemm``),
pruned at ratio 0.5 with L1 and verified by the library (pruned model ==
original with removed channels zeroed at contracting consumers, onnxruntime,
1e-4).  ``simplify=False`` so the rule under test sees the graph as written
(``io.normalize`` still folds nodes whose inputs are all constants).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_pfgdf
from builders import CLASSES, GraphBuilder, decomposed_bn
from onnx_pfgdf.api import PruneConfig, PruneResult
from onnx_pfgdf.channels import RULES, SUPPORTED_OPS
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.io import LoadOptions

Y = {"y": [1, CLASSES]}


def prune(model: onnx.ModelProto) -> PruneResult:
    config = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, load=LoadOptions(simplify=False))
    result = onnx_pfgdf.prune(model, config)
    assert result.verification is not None and result.verification.passed, result.verification
    return result


def assert_pruned(result: PruneResult, *outputs: str) -> None:
    """Each named layer output is in a prunable group that lost channels."""
    for name in outputs:
        group = result.plan.analysis.group_of_output(name)
        assert group is not None and group.prunable, (name, group)
        assert group.id in result.plan.keep, f"{name} kept every channel"


def assert_frozen(result: PruneResult, output: str, word: str) -> None:
    """Every group on ``output``'s channels is frozen and one reason contains ``word``."""
    analysis = result.plan.analysis
    groups = [analysis.groups[seg.group] for seg in analysis.layouts[output]]
    assert groups and all(group.frozen for group in groups), (output, groups)
    assert any(word in reason for group in groups for reason in group.frozen), [g.frozen for g in groups]
    assert not any(group.id in result.plan.keep for group in groups)


def ints(g: GraphBuilder, name: str, values: list[int]) -> str:
    g.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


# --------------------------------------------------------------------------- table


def test_rule_table_lists_documented_ops_and_refusals() -> None:
    documented = {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "Sigmoid",
        "HardSwish", "MaxPool", "GlobalAveragePool", "Add", "Mul", "Div", "Sum", "Concat", "Flatten",
        "Reshape", "Resize", "Pad", "Squeeze", "Unsqueeze", "Transpose", "ReduceMean", "ReduceMax",
        "Split", "Slice",
    }
    assert documented <= set(SUPPORTED_OPS)
    assert {"LRN", "Softmax"} <= set(RULES) - set(SUPPORTED_OPS)
    assert "Einsum" not in RULES


def test_op_without_rule_freezes_with_reason() -> None:
    """x -> Conv c1(3->6) -> Einsum(identity) -> Conv c2(6->8) -> head; c1 frozen, c2 pruned."""
    g = GraphBuilder(10)
    h = g.node("Einsum", [g.conv("x", 3, 6, "c1")], equation="nchw->nchw")
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "Einsum node 'Einsum_einsum_1' has no channel rule")
    assert_pruned(result, "c2")


# --------------------------------------------------------------------------- decomposed BN


def test_decomposed_bn_with_channel_constants() -> None:
    result = prune(decomposed_bn().model)
    assert_pruned(result, "c1", "c2")


def test_decomposed_bn_with_unsqueezed_constants_is_folded() -> None:
    """Caffe2-style BN (DenseNet, Inception-v2), constants computed by Unsqueeze::

        k[6] -> Unsqueeze(axes 1,2) -> k3[6,1,1]     b[6] -> Unsqueeze(axes 1,2) -> b3[6,1,1]
        x -> Conv c1(3->6) -> Mul(k3) -> Add(b3) -> Relu -> Conv c2(6->8) -> Relu -> head
    """
    g = GraphBuilder(11)
    k3 = g.node("Unsqueeze", [g.const("k", g.rng.uniform(0.5, 1.5, 6)), ints(g, "ax", [1, 2])])
    b3 = g.node("Unsqueeze", [g.const("b", g.rng.normal(0.0, 0.1, 6)), "ax"])
    h = g.node("Add", [g.node("Mul", [g.conv("x", 3, 6, "c1", bias=False), k3]), b3])
    g.head(g.relu(g.conv(g.relu(h), 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert not any(n.op_type == "Unsqueeze" for n in result.normalized.graph.node)
    assert_pruned(result, "c1", "c2")


# --------------------------------------------------------------------------- linear layers


def test_gemm_after_reshape_with_reshaped_weight() -> None:
    """Inception-v1's classifier: both Gemm operands come out of Reshape::

        x -> Conv c1(3->6) -> Relu -> AveragePool(8x8) [1,6,1,1] -> Reshape([1,6]) --+
        W0[10,6,1,1] -> Reshape([10,6]) -------------------------------------------- Gemm y (transB=1)
    """
    g = GraphBuilder(12)
    h = g.node("AveragePool", [g.relu(g.conv("x", 3, 6, "c1"))], kernel_shape=[8, 8])
    a = g.node("Reshape", [h, ints(g, "s_a", [1, 6])])
    w = g.node("Reshape", [g.const("W0", g.rng.standard_normal((CLASSES, 6, 1, 1))), ints(g, "s_w", [CLASSES, 6])])
    g.node("Gemm", [a, w, g.const("B0", np.zeros(CLASSES))], "y", transB=1)
    result = prune(g.model(Y))
    assert_pruned(result, "c1")


def test_matmul_on_a_rank4_tensor_freezes() -> None:
    """MatMul contracts the last axis, not channels::

        x -> Conv c1(3->6) -> GlobalAveragePool [1,6,1,1] -> MatMul(W[1,4]) [1,6,1,4] -> Flatten -> Gemm y
    """
    g = GraphBuilder(13)
    h = g.node("GlobalAveragePool", [g.relu(g.conv("x", 3, 6, "c1"))])
    h = g.node("MatMul", [h, g.const("W", g.rng.standard_normal((1, 4)))], "mm")
    g.gemm(g.node("Flatten", [h], axis=1), 24, CLASSES, "y")
    model = g.model(Y)
    analysis = onnx_pfgdf.analyze(model, LoadOptions(simplify=False)).channels
    group = analysis.group_of_output("c1")
    assert group.frozen and "not a 2-D product" in group.frozen[0]
    # Nothing else is prunable, so prune refuses the model, naming that reason.
    with pytest.raises(onnx_pfgdf.NothingToPruneError, match="not a 2-D product"):
        prune(model)


# --------------------------------------------------------------------------- convolutions


def _block_counts(result: PruneResult, output: str, blocks: int) -> list[int]:
    group = result.plan.analysis.group_of_output(output)
    kept = result.plan.keep[group.id]
    return np.bincount(kept // (group.channels // blocks), minlength=blocks).tolist()


def test_grouped_conv_prunes_equal_blocks_on_both_sides() -> None:
    """x -> Conv c1(3->8) -> Relu -> Conv gc(8->8, group=2) -> Relu -> Conv c3(8->6) -> Relu -> head.

    c1 (read in 2 blocks) and gc (made in 2 blocks) each keep 2 + 2; the
    weight of gc keeps, per block of rows, that block's kept input channels.
    """
    g = GraphBuilder(14)
    h = g.relu(g.conv("x", 3, 8, "c1"))
    h = g.relu(g.conv(h, 8, 8, "gc", group=2))
    g.head(g.relu(g.conv(h, 8, 6, "c3")), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "gc", "c3")
    assert _block_counts(result, "c1", 2) == [2, 2]
    assert _block_counts(result, "gc", 2) == [2, 2]
    gc = next(n for n in result.model.graph.node if n.output[0] == "gc")
    weight = next(t for t in result.model.graph.initializer if t.name == gc.input[1])
    assert list(weight.dims) == [4, 2, 3, 3]
    assert helper.get_attribute_value(next(a for a in gc.attribute if a.name == "group")) == 2


def test_grouped_conv_reading_a_concat_freezes() -> None:
    """Concat(a[4], b[4]) -> Conv gc(8->8, group=2): the blocks would have to follow the concat."""
    g = GraphBuilder(15)
    h = _two_branches(g)
    g.head(g.relu(g.conv(h, 8, 8, "gc", group=2)), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "a", "(group=2) reads a concatenation")
    assert_pruned(result, "gc")


def test_depthwise_with_multiplier_keeps_its_inputs() -> None:
    """Conv c1(3->4) -> Conv dw(4->8, group=4): one input channel per group, two filters each."""
    g = GraphBuilder(16)
    h = g.relu(g.conv("x", 3, 4, "c1"))
    g.head(g.relu(g.conv(h, 4, 8, "dw", group=4)), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "groups of one channel")
    assert_pruned(result, "dw")
    assert _block_counts(result, "dw", 4) == [1, 1, 1, 1]


def test_plan_with_unequal_blocks_is_refused() -> None:
    g = GraphBuilder(14)
    h = g.relu(g.conv("x", 3, 8, "c1"))
    h = g.relu(g.conv(h, 8, 8, "gc", group=2))
    g.head(g.relu(g.conv(h, 8, 6, "c3")), 6)
    model = g.model(Y)
    config = PruneConfig(criterion=CriterionConfig("l1"), load=LoadOptions(simplify=False))
    plan = {"format": "onnx-pfgdf-plan", "version": 1,
            "layers": {"c1": {"node": "Conv_c1", "filters": 8, "keep": [0, 1, 2, 4]}}}
    with pytest.raises(onnx_pfgdf.BadInputError, match="same number of channels in each of its 2 blocks"):
        onnx_pfgdf.apply_plan(model, plan, config)
    plan["layers"]["c1"]["keep"] = [0, 1, 4, 7]
    result = onnx_pfgdf.apply_plan(model, plan, config)
    assert result.verification is not None and result.verification.passed


# --------------------------------------------------------------------------- split / slice


def _two_branches(g: GraphBuilder) -> str:
    """x -> Conv a(3->4) -> Relu --Concat[8]-- Conv b(3->4) -> Relu."""
    return g.node("Concat", [g.relu(g.conv("x", 3, 4, "a")), g.relu(g.conv("x", 3, 4, "b"))], axis=1)


@pytest.mark.parametrize("opset", [11, 13])
def test_split_at_segment_boundaries(opset: int) -> None:
    """Concat(a, b) -> Split([4, 4]) -> Conv pa(4->5), Conv pb(4->5) -> Add -> Relu -> head.

    The Split sizes are an attribute before opset 13 and an input from 13 on.
    """
    g = GraphBuilder(15)
    cat = _two_branches(g)
    g.nodes.append(helper.make_node("Split", [cat, ints(g, "sizes", [4, 4])], ["s0", "s1"], name="split", axis=1))
    h = g.node("Add", [g.conv("s0", 4, 5, "pa"), g.conv("s1", 4, 5, "pb")])
    g.head(g.relu(h), 5)
    model = g.model(Y)
    if opset < 13:
        split = next(n for n in model.graph.node if n.op_type == "Split")
        split.CopyFrom(helper.make_node("Split", [cat], ["s0", "s1"], name="split", axis=1, split=[4, 4]))
        model.opset_import[0].version = opset
        onnx.checker.check_model(model, full_check=True)
    result = prune(model)
    assert_pruned(result, "a", "b", "pa")


def test_split_mid_group_freezes() -> None:
    """x -> Conv c1(3->8) -> Split([4, 4]) -> Conv pa, Conv pb -> Add -> head."""
    g = GraphBuilder(16)
    c1 = g.relu(g.conv("x", 3, 8, "c1"))
    g.nodes.append(helper.make_node("Split", [c1, ints(g, "sizes", [4, 4])], ["s0", "s1"], name="split", axis=1))
    h = g.node("Add", [g.conv("s0", 4, 5, "pa"), g.conv("s1", 4, 5, "pb")])
    g.head(g.relu(h), 5)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "mid-way")
    assert_pruned(result, "pa")


@pytest.mark.parametrize("bounds", [(4, 8), (-4, 2**62), (0, 4)])
def test_slice_whole_segments(bounds: tuple[int, int]) -> None:
    """Concat(a, b) -> Slice(channels bounds) -> Conv c(4->6) -> Relu -> head; the other branch is dead."""
    g = GraphBuilder(17)
    h = _two_branches(g)
    h = g.node("Slice", [h, ints(g, "st", [bounds[0]]), ints(g, "en", [bounds[1]]), ints(g, "axes", [1])])
    g.head(g.relu(g.conv(h, 4, 6, "c")), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "a", "b", "c")


def test_slice_mid_group_and_spatial_slice() -> None:
    """x -> Conv c1(3->8) -> Slice(H 0:4) -> Slice(C 2:6) -> Conv c2(4->6) -> head."""
    g = GraphBuilder(18)
    h = g.relu(g.conv("x", 3, 8, "c1"))
    h = g.node("Slice", [h, ints(g, "s0", [0]), ints(g, "e0", [4]), ints(g, "a0", [2])])
    h = g.node("Slice", [h, ints(g, "s1", [2]), ints(g, "e1", [6]), ints(g, "a1", [1])])
    g.head(g.relu(g.conv(h, 4, 6, "c2")), 6)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "mid-way")
    assert_pruned(result, "c2")


# --------------------------------------------------------------------------- resize


def test_resize_with_sizes_updates_the_channel_entry() -> None:
    """x -> Conv c1(3->6) -> Relu -> Resize(sizes [1,6,16,16]) -> Conv c2(6->8) -> head."""
    g = GraphBuilder(19)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    h = g.node("Resize", [h, "", "", ints(g, "sizes", [1, 6, 16, 16])], mode="nearest")
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")
    sizes = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}["sizes"]
    assert sizes.tolist() == [1, 3, 16, 16]


# --------------------------------------------------------------------------- activations


def test_decomposed_hardswish_and_silu() -> None:
    """HardSwish and SiLU written out, both multiply a tensor by a function of itself::

        x -> Conv c1(3->6) = t -> Add(3) -> Clip(0, 6) -> Mul(t) -> Div(6)      (x * relu6(x + 3) / 6)
          -> Conv c2(6->8) = u -> Sigmoid -> Mul(u)                            (x * sigmoid(x))
          -> head
    """
    g = GraphBuilder(20)
    t = g.conv("x", 3, 6, "c1")
    r = g.node("Clip", [g.node("Add", [t, g.const("three", 3.0)]), g.const("lo", 0.0), g.const("hi", 6.0)])
    h = g.node("Div", [g.node("Mul", [t, r]), g.const("six", 6.0)])
    u = g.conv(h, 6, 8, "c2")
    h = g.node("Mul", [g.node("Sigmoid", [u]), u])
    g.head(h, 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_se_block_with_reduce_over_spatial_axes(op: str) -> None:
    """SE block whose squeeze is a Reduce over H, W (keepdims=1)::

        x -> Conv stem(3->8) -> Relu = t -> Reduce(axes 2,3) -> Conv se1(8->4) -> Relu -> Conv se2(4->8)
          -> Sigmoid -> Mul(t) -> Conv c2(8->6) -> Relu -> head         groups {stem, se2}, {se1}, {c2}
    """
    g = GraphBuilder(21)
    t = g.relu(g.conv("x", 3, 8, "stem"))
    s = g.node(op, [t], axes=[2, 3], keepdims=1)
    gate = g.node("Sigmoid", [g.conv(g.relu(g.conv(s, 8, 4, "se1", k=1)), 4, 8, "se2", k=1)])
    h = g.node("Mul", [t, gate])
    g.head(g.relu(g.conv(h, 8, 6, "c2")), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "stem", "se1", "c2")
    assert result.plan.analysis.group_of_output("stem").id == result.plan.analysis.group_of_output("se2").id


def test_reduce_keepdims0_into_gemm_and_reduce_over_channels() -> None:
    """Two heads::

        x -> Conv c1(3->6) -> Relu -> ReduceMean(axes 2,3, keepdims 0) [1,6] -> Gemm y(6->10)
        x -> Conv c2(3->5) -> Relu -> ReduceMean(axis 1) [1,1,8,8] -> Flatten -> Gemm z(64->10)
    """
    g = GraphBuilder(22)
    h = g.node("ReduceMean", [g.relu(g.conv("x", 3, 6, "c1"))], axes=[2, 3], keepdims=0)
    g.gemm(h, 6, CLASSES, "y")
    h = g.node("ReduceMean", [g.relu(g.conv("x", 3, 5, "c2"))], axes=[1], keepdims=1)
    g.gemm(g.node("Flatten", [h], axis=1), 64, CLASSES, "z")
    result = prune(g.model({"y": [1, CLASSES], "z": [1, CLASSES]}))
    assert_pruned(result, "c1")
    assert_frozen(result, "c2", "reduces over the batch or channel axis")


# --------------------------------------------------------------------------- transpose / LRN


def test_transpose_of_spatial_axes_passes_channels() -> None:
    """x -> Conv c1(3->6) -> Relu -> Transpose(0,1,3,2) -> Conv c2(6->8) -> Relu -> head."""
    g = GraphBuilder(23)
    h = g.node("Transpose", [g.relu(g.conv("x", 3, 6, "c1"))], perm=[0, 1, 3, 2])
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


def test_nhwc_round_trip_passes_channels() -> None:
    """x -> Conv c1(3->6) -> Transpose(0,2,3,1) -> Transpose(0,3,1,2) -> Conv c2(6->8) -> head (tf2onnx)."""
    g = GraphBuilder(24)
    h = g.node("Transpose", [g.relu(g.conv("x", 3, 6, "c1"))], perm=[0, 2, 3, 1])
    h = g.node("Transpose", [h], perm=[0, 3, 1, 2])
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


def test_channels_last_read_by_another_op_freezes() -> None:
    """x -> Conv c1(3->6) -> Transpose(0,2,3,1) -> Relu -> Transpose(0,3,1,2) -> Conv c2(6->8) -> head."""
    g = GraphBuilder(24)
    h = g.node("Transpose", [g.relu(g.conv("x", 3, 6, "c1"))], perm=[0, 2, 3, 1])
    h = g.node("Transpose", [g.relu(h)], perm=[0, 3, 1, 2])
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "reads channels a Transpose moved to the last axis")
    assert_pruned(result, "c2")


def test_transpose_moving_channels_freezes() -> None:
    """x -> Conv c1(3->6) -> Transpose(0,2,1,3) -> Transpose(0,2,1,3) -> Conv c2(6->8) -> head."""
    g = GraphBuilder(24)
    h = g.node("Transpose", [g.relu(g.conv("x", 3, 6, "c1"))], perm=[0, 2, 1, 3])
    h = g.node("Transpose", [h], perm=[0, 2, 1, 3])
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "moves the channel axis (perm=[0, 2, 1, 3])")
    assert_pruned(result, "c2")


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_keras_nhwc_flatten_into_dense(flatten: str) -> None:
    """Keras/tf2onnx head: Conv c1(3->6) -> Relu -> Transpose(0,2,3,1) -> Flatten/Reshape [1, 8*8*6] -> MatMul -> y.

    Feature ``(h*8 + w)*6 + c`` is channel ``c``: the channel layout repeats 64 times.
    """
    g = GraphBuilder(25)
    h = g.node("Transpose", [g.relu(g.conv("x", 3, 6, "c1"))], perm=[0, 2, 3, 1])
    if flatten == "Flatten":
        h = g.node("Flatten", [h], axis=1)
    else:
        h = g.node("Reshape", [h, ints(g, "flat_shape", [-1, 384])])
    g.node("MatMul", [h, g.const("fc.W", g.rng.standard_normal((384, CLASSES)) * 0.05)], "y")
    result = prune(g.model(Y))
    assert_pruned(result, "c1")
    kept = len(result.plan.keep[result.plan.analysis.group_of_output("c1").id])
    fc = next(n for n in result.model.graph.node if n.op_type == "MatMul")
    weight = next(t for t in result.model.graph.initializer if t.name == fc.input[1])
    assert list(weight.dims) == [64 * kept, CLASSES]


def test_lrn_freezes_with_its_reason() -> None:
    """x -> Conv c1(3->6) -> Relu -> LRN(3) -> Conv c2(6->8) -> Relu -> head."""
    g = GraphBuilder(25)
    h = g.node("LRN", [g.relu(g.conv("x", 3, 6, "c1"))], size=3)
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "LRN mixes neighbouring channels")
    assert_pruned(result, "c2")
