"""Tests of onnx_pfgdf.io: loading, refusals, normalisation, atomic saving."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pfgdf import io as pio
from onnx_pfgdf.errors import BadInputError
from onnx_pfgdf.io import (
    LoadOptions,
    normalize,
    opset_version,
    parse_input_shape,
    read_model,
    write_model,
)

RNG = np.random.default_rng(0)
NO_SIM = LoadOptions(simplify=False)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _make(
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto],
    x_shape: list[int | str | None] | None = None,
    y_shape: list[int | str | None] | None = None,
    *,
    opset: int = 17,
    ir_version: int = 8,
    extra_inputs: list[onnx.ValueInfoProto] = (),
    x_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, x_shape or ["N", 3, 8, 8]), *extra_inputs],
        [helper.make_tensor_value_info("y", x_type, y_shape or ["N", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def conv_bn_model(*, weight_as_constant: bool = False, batch: int | str = "N") -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(3->4, 3x3, pad 1) -> BN -> Relu -> y[N,4,8,8].

    With ``weight_as_constant`` the conv weight comes from a Constant node.
    """
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bn = [
        _init("scale", RNG.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("bias", RNG.standard_normal(4).astype(np.float32)),
        _init("mean", RNG.standard_normal(4).astype(np.float32)),
        _init("var", RNG.uniform(0.5, 1.5, 4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    inits = bn
    if weight_as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=_init("W", w)))
    else:
        inits = [_init("W", w), *bn]
    return _make(nodes, inits, [batch, 3, 8, 8], [batch, 4, 8, 8])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


# ---------------------------------------------------------------- parse_input_shape


def test_parse_input_shape() -> None:
    assert parse_input_shape("input:1,3,32,32") == ("input", (1, 3, 32, 32))
    assert parse_input_shape("ns:x:1,2") == ("ns:x", (1, 2))


@pytest.mark.parametrize("text", ["input", "input:", ":1,3", "x:1,a,3", "x:1,0,3", "x:1,,3"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(BadInputError):
        parse_input_shape(text)


# ---------------------------------------------------------------- read_model


def test_read_model_missing_file(tmp_path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        read_model(tmp_path / "nope.onnx")


def test_read_model_directory(tmp_path) -> None:
    with pytest.raises(BadInputError, match="directory"):
        read_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is a text file, not ONNX\n", bytes(range(256))])
def test_read_model_not_onnx(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="not"):
        read_model(path)


def test_read_model_truncated(tmp_path) -> None:
    data = conv_bn_model().SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        read_model(path)


def test_read_model_missing_external_data(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        conv_bn_model(), path, save_as_external_data=True, location="m.data", size_threshold=0
    )
    os.remove(tmp_path / "m.data")
    with pytest.raises(BadInputError, match="external data.*m.data"):
        read_model(path)


def test_read_model_loads_external_data(tmp_path) -> None:
    model = conv_bn_model()
    expected = model.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save_model(  # moves the tensor data out of ``model``
        model, path, save_as_external_data=True, location="m.data", size_threshold=0
    )
    loaded = read_model(path)
    assert all(t.data_location != TensorProto.EXTERNAL for t in loaded.graph.initializer)
    original = onnx.load_from_string(expected)
    assert {t.name: numpy_helper.to_array(t).tolist() for t in loaded.graph.initializer} == {
        t.name: numpy_helper.to_array(t).tolist() for t in original.graph.initializer
    }


def test_opset_version() -> None:
    assert opset_version(conv_bn_model()) == 17
    model = conv_bn_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(BadInputError):
        opset_version(model)


# ---------------------------------------------------------------- refusals


def test_refuses_empty_graph() -> None:
    model = _make([], [])
    with pytest.raises(BadInputError, match="no nodes"):
        normalize(model)


def test_refuses_gemm_only() -> None:
    """x[N,4] -> Gemm(4->10) -> y: nothing to prune."""
    model = _make(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [_init("W", np.ones((10, 4), np.float32))],
        ["N", 4],
        ["N", 10],
    )
    with pytest.raises(BadInputError, match="no Conv layer to prune"):
        normalize(model)


def test_refuses_qlinearconv() -> None:
    """x(uint8) -> QLinearConv -> y(uint8)."""
    inits = [
        _init("xs", np.float32(0.1)),
        _init("xz", np.uint8(0)),
        _init("w", np.ones((4, 3, 3, 3), np.uint8)),
        _init("ws", np.float32(0.1)),
        _init("wz", np.uint8(0)),
        _init("ys", np.float32(0.1)),
        _init("yz", np.uint8(0)),
    ]
    node = helper.make_node(
        "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="qconv"
    )
    model = _make([node], inits, x_type=TensorProto.UINT8)
    with pytest.raises(
        BadInputError, match=r"quantized model \(QLinearConv at node 'qconv'\).*before quantizing"
    ):
        normalize(model)


def test_refuses_qdq() -> None:
    """x -> QuantizeLinear -> DequantizeLinear -> Conv -> y."""
    inits = [
        _init("s", np.float32(0.1)),
        _init("z", np.uint8(128)),
        _init("W", np.ones((4, 3, 3, 3), np.float32)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
        helper.make_node("Conv", ["dq", "W"], ["y"]),
    ]
    with pytest.raises(BadInputError, match="QuantizeLinear at node 'q'"):
        normalize(_make(nodes, inits))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_non_finite_weights(bad: float) -> None:
    model = conv_bn_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    arr = numpy_helper.to_array(w).copy()
    arr[1, 0, 0, 0] = bad
    w.CopyFrom(_init("W", arr))
    with pytest.raises(BadInputError, match="'W'.*NaN or Inf"):
        normalize(model)


def test_refuses_checker_failure() -> None:
    model = conv_bn_model()
    model.graph.node[1].input[0] = "does_not_exist"
    with pytest.raises(BadInputError, match="invalid ONNX model"):
        normalize(model, NO_SIM)


def test_refuses_model_onnxruntime_cannot_load() -> None:
    """Conv on float64 is valid ONNX, but onnxruntime's CPU provider has no kernel."""
    w = _init("W", np.ones((4, 3, 3, 3), np.float64))
    model = _make(
        [helper.make_node("Conv", ["x", "W"], ["y"])], [w], y_shape=["N", 4, 6, 6],
        x_type=TensorProto.DOUBLE,
    )
    with pytest.raises(BadInputError, match="^onnxruntime cannot load the model: "):
        normalize(model, NO_SIM)


def test_refuses_unknown_input_shape_name() -> None:
    with pytest.raises(BadInputError, match="'image'.*inputs are: 'x'"):
        normalize(conv_bn_model(), LoadOptions(input_shapes={"image": (1, 3, 8, 8)}))


def test_refuses_dynamic_non_batch_dim() -> None:
    model = conv_bn_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(
        BadInputError,
        match=r"input 'x' has dynamic dim 2 \('height'\): pass --input-shape x:",
    ):
        normalize(model)


def test_input_shape_must_match_rank_and_fixed_dims() -> None:
    with pytest.raises(BadInputError, match="rank"):
        normalize(conv_bn_model(), LoadOptions(input_shapes={"x": (1, 3, 8)}))
    with pytest.raises(BadInputError, match="dim 1"):
        normalize(conv_bn_model(), LoadOptions(input_shapes={"x": (1, 5, 8, 8)}))


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("simplify", [False, True])
def test_normalize_never_mutates(simplify: bool) -> None:
    model = conv_bn_model(weight_as_constant=True)
    model.graph.input.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [4]))
    before = model.SerializeToString()
    normalize(model, LoadOptions(simplify=simplify))
    assert model.SerializeToString() == before


@pytest.mark.parametrize("simplify", [False, True])
def test_constant_becomes_initializer_same_outputs(simplify: bool) -> None:
    model = conv_bn_model(weight_as_constant=True, batch=1)
    out = normalize(model, LoadOptions(simplify=simplify))
    assert "Constant" not in [n.op_type for n in out.graph.node]
    weight = next(t for t in out.graph.initializer if t.name == "W")
    assert list(weight.dims) == [4, 3, 3, 3]
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_simplify_keeps_batchnorm_and_distinct_initializers() -> None:
    """BN must not be folded and equal initializers must not be merged."""
    model = conv_bn_model(batch=1)
    var = next(t for t in model.graph.initializer if t.name == "var")
    scale = next(t for t in model.graph.initializer if t.name == "scale")
    var.CopyFrom(_init("var", numpy_helper.to_array(scale)))  # identical values
    out = normalize(model)
    assert [n.op_type for n in out.graph.node] == ["Conv", "BatchNormalization", "Relu"]
    assert list(out.graph.node[1].input) == ["c", "scale", "bias", "mean", "var"]


def test_initializer_listed_as_input_is_removed() -> None:
    """Old exporters (IR 3) list every initializer as a graph input."""
    model = conv_bn_model(batch=1)
    model.ir_version = 3
    for t in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
        )
    out = normalize(model, NO_SIM)
    assert [vi.name for vi in out.graph.input] == ["x"]
    assert out.ir_version >= 4
    onnx.checker.check_model(out)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("simplify", [False, True])
def test_dynamic_batch_becomes_one(simplify: bool) -> None:
    out = normalize(conv_bn_model(batch="N"), LoadOptions(simplify=simplify))
    assert dims(out.graph.input[0]) == [1, 3, 8, 8]
    assert dims(out.graph.output[0]) == [1, 4, 8, 8]


def test_input_shapes_fix_dynamic_spatial_dims() -> None:
    model = conv_bn_model()
    for i in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = f"d{i}"
    for i in (2, 3):
        model.graph.output[0].type.tensor_type.shape.dim[i].dim_param = f"e{i}"
    out = normalize(model, LoadOptions(input_shapes={"x": (2, 3, 16, 12)}))
    assert dims(out.graph.input[0]) == [2, 3, 16, 12]
    assert dims(out.graph.output[0]) == [2, 4, 16, 12]


def test_shape_inference_fills_value_info() -> None:
    out = normalize(conv_bn_model(), NO_SIM)
    shapes = {vi.name: dims(vi) for vi in out.graph.value_info}
    assert shapes["c"] == [1, 4, 8, 8]
    assert shapes["b"] == [1, 4, 8, 8]


def test_nodes_get_unique_deterministic_names() -> None:
    model = conv_bn_model()
    model.graph.node[1].name = "Relu_2"  # collides with the generated name of node 2
    out = normalize(model, NO_SIM)
    names = [n.name for n in out.graph.node]
    assert names[:2] == ["Conv_0", "Relu_2"]
    assert names[2] not in ("", "Relu_2")
    assert len(set(names)) == 3
    assert names == [n.name for n in normalize(model, NO_SIM).graph.node]
    assert [t for n in out.graph.node for t in n.output] == ["c", "b", "y"]


def test_onnxsim_failure_keeps_model(monkeypatch, caplog) -> None:
    import onnxsim

    def broken(*args, **kwargs):
        raise RuntimeError("simplifier exploded\nsecond line")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    with caplog.at_level(logging.WARNING, logger="onnx_pfgdf.io"):
        out = normalize(conv_bn_model(batch=1))
    assert "simplifier exploded" in caplog.text
    assert [n.op_type for n in out.graph.node] == ["Conv", "BatchNormalization", "Relu"]


def test_simplify_removes_identity_and_keeps_user_metadata() -> None:
    model = conv_bn_model(batch=1)
    model.graph.node[-1].output[0] = "r"
    model.graph.node.append(helper.make_node("Identity", ["r"], ["y"]))
    helper.set_model_props(model, {"author": "me"})
    out = normalize(model)
    assert "Identity" not in [n.op_type for n in out.graph.node]
    assert {p.key: p.value for p in out.metadata_props} == {"author": "me"}


# ---------------------------------------------------------------- write_model


def test_round_trip(tmp_path) -> None:
    model = normalize(conv_bn_model())
    path = tmp_path / "out.onnx"
    write_model(model, path)
    assert read_model(path).SerializeToString() == model.SerializeToString()
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_write_refuses_input_path(tmp_path) -> None:
    model = conv_bn_model()
    src = tmp_path / "in.onnx"
    onnx.save_model(model, src)
    original = src.read_bytes()
    with pytest.raises(BadInputError, match="overwrite the input"):
        write_model(model, src, input_path=src)
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    with pytest.raises(BadInputError, match="overwrite the input"):
        write_model(model, link, input_path=str(src))
    assert src.read_bytes() == original


def test_write_failure_leaves_no_temp_files(tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old")

    def failing_save(model, target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_model(conv_bn_model(), path)
    assert os.listdir(tmp_path) == ["out.onnx"]
    assert path.read_bytes() == b"old"


def test_write_missing_directory(tmp_path) -> None:
    with pytest.raises(BadInputError, match="directory"):
        write_model(conv_bn_model(), tmp_path / "nope" / "out.onnx")


def test_write_large_model_uses_external_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pio, "EXTERNAL_DATA_THRESHOLD", 0)
    model = conv_bn_model()
    model.graph.initializer.append(_init("big", np.arange(2048, dtype=np.float32)))
    # a tensor held in float_data (not raw_data), as some exporters write them
    model.graph.initializer.append(helper.make_tensor("listed", TensorProto.FLOAT, [512], [0.5] * 512))
    before = model.SerializeToString()
    path = tmp_path / "big.onnx"
    write_model(model, path)
    assert model.SerializeToString() == before
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    raw = onnx.load(path, load_external_data=False)
    big = next(t for t in raw.graph.initializer if t.name == "big")
    assert big.data_location == TensorProto.EXTERNAL
    monkeypatch.setattr(pio, "EXTERNAL_DATA_THRESHOLD", 1 << 40)
    loaded = read_model(path)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(loaded, x), run(model, x), rtol=1e-6)
    big = next(t for t in loaded.graph.initializer if t.name == "big")
    np.testing.assert_array_equal(numpy_helper.to_array(big), np.arange(2048))
    listed = next(t for t in loaded.graph.initializer if t.name == "listed")
    np.testing.assert_array_equal(numpy_helper.to_array(listed), np.full(512, 0.5, np.float32))
    assert (tmp_path / "big.onnx.data").stat().st_mode == path.stat().st_mode


def test_normalize_large_model_path(monkeypatch) -> None:
    """The >2 GiB code path (checker, shape inference, onnxruntime via files) works."""
    monkeypatch.setattr(pio, "EXTERNAL_DATA_THRESHOLD", 0)
    out = normalize(conv_bn_model(), NO_SIM)
    assert dims(out.graph.input[0]) == [1, 3, 8, 8]
    assert {vi.name for vi in out.graph.value_info} >= {"c", "b"}
    assert all(t.data_location != TensorProto.EXTERNAL for t in out.graph.initializer)
