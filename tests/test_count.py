"""Tests of onnx_pfgdf.count against hand-computed filters, parameters and MACs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnx_pfgdf.count import LayerCount, ModelCount, count_model, reduction
from onnx_pfgdf.io import LoadOptions, normalize

RNG = np.random.default_rng(0)


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto],
    x_shape: list[int | str],
    y_shape: list[int | str | None],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_cnn(batch: int | str = 1) -> onnx.ModelProto:
    """The classifier of the paper's counting example.

        x[B,3,8,8]
          -> Conv(3->4, 3x3, pad 1, bias)  "conv"   W 4x3x3x3, b 4
          -> BatchNormalization(4)                  scale, bias, mean, var
          -> Relu -> GlobalAveragePool -> Flatten
          -> Gemm(4->10, transB, bias)     "fc"     W 10x4, b 10
          -> y[B,10]
    """
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [
        _init("cw", (4, 3, 3, 3)),
        _init("cb", (4,)),
        _init("g", (4,)),
        _init("be", (4,)),
        _init("m", (4,)),
        numpy_helper.from_array(np.ones(4, np.float32), "v"),
        _init("fw", (10, 4)),
        _init("fb", (10,)),
    ]
    return _model(nodes, inits, [batch, 3, 8, 8], [batch, 10])


# Hand-computed for tiny_cnn:
#   conv: filters 4, params 4*3*3*3 + 4 = 112, MACs (4*8*8 output elements) * (3*3*3) = 6912
#   bn:   params 4*4 = 16
#   fc:   params 10*4 + 10 = 50, MACs M*N*K = 1*10*4 = 40
TINY_CONV = LayerCount("conv", "Conv", "c", filters=4, params=112, macs=6912)
TINY_FC = LayerCount("fc", "Gemm", "y", filters=0, params=50, macs=40)
TINY = ModelCount(filters=4, params=178, macs=6952, layers=(TINY_CONV, TINY_FC))


def test_tiny_cnn_hand_counts() -> None:
    assert count_model(tiny_cnn()) == TINY


@pytest.mark.parametrize("batch", [2, "N"])
def test_batch_dim_counts_as_one(batch: int | str) -> None:
    assert count_model(tiny_cnn(batch)) == TINY


def test_counts_after_normalize_unchanged() -> None:
    """normalize (simplifier kept off BN, shape inference added) does not change the counts."""
    assert count_model(normalize(tiny_cnn("N"))) == TINY


def test_count_does_not_mutate() -> None:
    model = tiny_cnn()
    before = model.SerializeToString()
    count_model(model)
    assert model.SerializeToString() == before


def test_integer_initializers_are_not_parameters() -> None:
    """x[1,3,8,8] -> Conv(3->2, 1x1) -> Reshape(shape=int64[2]) -> y[1,128]."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape"),
    ]
    inits = [_init("w", (2, 3, 1, 1)), numpy_helper.from_array(np.array([1, 128]), "shape")]
    count = count_model(_model(nodes, inits, [1, 3, 8, 8], [1, 128]))
    assert count.params == 6
    assert count.macs == 2 * 8 * 8 * 3


def test_constant_weights_count_like_initializers() -> None:
    """Float Constant values are parameters, so normalize's Constant->initializer is neutral."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [], [1, 3, 8, 8], [1, 4, 8, 8])
    expected = ModelCount(4, 108, 6912, (LayerCount("conv", "Conv", "y", 4, 108, 6912),))
    assert count_model(model) == expected
    assert count_model(normalize(model, LoadOptions(simplify=False))) == expected


@pytest.mark.parametrize(
    ("group", "cin", "cout", "hw", "stride", "pad", "macs"),
    [
        # grouped: W 16x2x3x3, output 16x5x5 = 400 elements, 400 * 2*3*3 = 7200
        (4, 8, 16, 10, 2, 1, 7200),
        # depthwise: W 8x1x3x3, output 8x4x4 = 128 elements, 128 * 1*3*3 = 1152
        (8, 8, 8, 6, 1, 0, 1152),
    ],
)
def test_grouped_and_depthwise_conv(group, cin, cout, hw, stride, pad, macs) -> None:
    """x[1,cin,hw,hw] -> Conv(cin->cout, 3x3, group) -> y."""
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", group=group, strides=[stride] * 2,
        pads=[pad] * 4,
    )
    inits = [_init("w", (cout, cin // group, 3, 3))]
    count = count_model(_model([node], inits, [1, cin, hw, hw], [1, cout, None, None]))
    assert count.filters == cout
    assert count.params == cout * (cin // group) * 9
    assert count.macs == macs


@pytest.mark.parametrize(("group", "filters"), [(1, 3), (2, 6)])
def test_conv_transpose(group: int, filters: int) -> None:
    """x[1,4,5,5] -> ConvTranspose(W 4x3x2x2, stride 2, group) -> y[1,3*group,10,10].

    MACs = input elements (4*5*5 = 100) * C_out/group * kh * kw (3*2*2 = 12) = 1200,
    equal to output elements * C_in/group * kh * kw / stride^2
    (= 3*group*100 * (4/group) * 4 / 4 = 1200).
    """
    node = helper.make_node(
        "ConvTranspose", ["x", "w", "b"], ["y"], name="up", strides=[2, 2], group=group
    )
    inits = [_init("w", (4, 3, 2, 2)), _init("b", (filters,))]
    model = _model([node], inits, [1, 4, 5, 5], [1, filters, 10, 10])
    layer = LayerCount("up", "ConvTranspose", "y", filters, 48 + filters, 1200)
    assert count_model(model) == ModelCount(filters, 48 + filters, 1200, (layer,))


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "macs"),
    [
        ([1, 5, 6], [1, 5, 7], 5 * 7 * 6),  # batch dropped: 35 output elements * K 6
        ([3, 5, 6], [3, 5, 7], 5 * 7 * 6),  # batch 3 still counts as 1
        ([1, 6], [1, 7], 7 * 6),  # M = batch = 1, N 7, K 6
    ],
)
def test_matmul(x_shape, y_shape, macs) -> None:
    """x -> MatMul(W 6x7) -> y; count_model does not require a Conv."""
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    count = count_model(_model([node], [_init("w", (6, 7))], x_shape, y_shape))
    assert count.layers == (LayerCount("mm", "MatMul", "y", 0, 42, macs),)
    assert (count.filters, count.params, count.macs) == (0, 42, macs)


def test_gemm_trans_a_and_missing_value_info() -> None:
    """x[6,1] -> Gemm(transA, W 6x7) -> y[1,7]: K = 6 read from A; shapes inferred."""
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1)
    model = _model([node], [_init("w", (6, 7))], [6, 1], [None, None])
    assert count_model(model).macs == 7 * 6


def test_layers_in_graph_order() -> None:
    """x -> Conv "a" -> Relu -> Conv "b" -> y: layers listed a, b."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="a"),
        helper.make_node("Relu", ["c1"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="b"),
    ]
    inits = [_init("w1", (5, 3, 1, 1)), _init("w2", (2, 5, 1, 1))]
    count = count_model(_model(nodes, inits, [1, 3, 4, 4], [1, 2, 4, 4]))
    assert [(layer.node, layer.filters) for layer in count.layers] == [("a", 5), ("b", 2)]
    assert count.filters == 7


def test_unknown_output_shape_names_node() -> None:
    """Dynamic spatial dims leave the conv output size unknown."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="the_conv")
    model = _model([node], [_init("w", (4, 3, 3, 3))], ["N", 3, "H", "W"], ["N", 4, None, None])
    with pytest.raises(ValueError, match="the_conv"):
        count_model(model)


def test_to_dict_is_json() -> None:
    data = json.loads(json.dumps(TINY.to_dict()))
    assert data["filters"] == 4 and data["params"] == 178 and data["macs"] == 6952
    assert data["layers"][0] == {
        "node": "conv", "op_type": "Conv", "output": "c", "filters": 4, "params": 112, "macs": 6912
    }


def test_reduction_arithmetic() -> None:
    before = ModelCount(filters=10, params=200, macs=1000, layers=())
    after = ModelCount(filters=4, params=50, macs=1000, layers=())
    assert reduction(before, after) == {"filters": 0.6, "params": 0.75, "macs": 0.0}
    gone = ModelCount(0, 0, 0, ())
    assert reduction(before, gone) == {"filters": 1.0, "params": 1.0, "macs": 1.0}
    empty = ModelCount(0, 0, 0, ())
    assert reduction(empty, empty) == {"filters": 0.0, "params": 0.0, "macs": 0.0}


@settings(max_examples=30, deadline=None)
@given(
    cin_per_group=st.integers(1, 3),
    cout_per_group=st.integers(1, 3),
    group=st.integers(1, 3),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dilation=st.integers(1, 2),
    hw=st.integers(8, 12),
)
def test_conv_macs_match_onnxruntime_output(
    cin_per_group, cout_per_group, group, k, stride, pad, dilation, hw
) -> None:
    """Conv MACs = (elements of the output onnxruntime produces) * C_in/group * k * k."""
    cin, cout = cin_per_group * group, cout_per_group * group
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", group=group, strides=[stride] * 2,
        pads=[pad] * 4, dilations=[dilation] * 2,
    )
    model = _model(
        [node], [_init("w", (cout, cin_per_group, k, k))], [1, cin, hw, hw], [1, cout, None, None]
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.zeros((1, cin, hw, hw), np.float32)})[0]
    count = count_model(model)
    assert count.macs == y[0].size * cin_per_group * k * k
    assert count.filters == cout
