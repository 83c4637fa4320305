"""Bad input: exit 2, ONE stderr line naming the problem, nothing written, input untouched."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
from onnx_pfgdf.cli import main


def _model(nodes, inits, out_shape, *, opset: int = 13, domains=(), x_type=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("x", x_type, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _weight(shape=(4, 3, 3, 3)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def empty_graph() -> bytes:
    """x -> (no nodes) -> x."""
    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def no_conv() -> bytes:
    """x -> Relu -> y."""
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [], [1, 3, 8, 8]).SerializeToString()


def conv_integer() -> bytes:
    """x[uint8] -> ConvInteger(w uint8) -> Cast -> y."""
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["yi"], name="ci", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["yi"], ["y"], name="cast", to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(np.full((4, 3, 3, 3), 130, np.uint8), "w")]
    return _model(nodes, inits, [1, 4, 8, 8], x_type=TensorProto.UINT8).SerializeToString()


def qlinear_conv() -> bytes:
    """x[uint8] -> QLinearConv -> Cast -> y."""
    nodes = [
        helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["yq"], name="qc", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["yq"], ["y"], name="cast", to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(np.full((4, 3, 3, 3), 130, np.uint8), "w")]
    return _model(nodes, inits, [1, 4, 8, 8]).SerializeToString()


def qdq_weights() -> bytes:
    """w_int8 -> DequantizeLinear -> Conv(x, w) -> y (QDQ format)."""
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dqw"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(np.full((4, 3, 3, 3), 3, np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    return _model(nodes, inits, [1, 4, 8, 8]).SerializeToString()


def ort_cannot_load() -> bytes:
    """x -> Conv -> com.example.Mystery -> y: valid ONNX, but no kernel in onnxruntime."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mystery", ["h"], ["y"], name="mystery", domain="com.example"),
    ]
    inits = [numpy_helper.from_array(_weight(), "w")]
    return _model(nodes, inits, [1, 4, 8, 8], domains=["com.example"]).SerializeToString()


def vgg_bytes() -> bytes:
    return builders.vgg_chain().model.SerializeToString()


BAD_MODELS = {
    "not_onnx": (lambda: b"this is a text file, not a model\n" * 4, "ONNX"),
    "truncated": (lambda: vgg_bytes()[: len(vgg_bytes()) // 2], "ONNX"),
    "empty_graph": (empty_graph, "no nodes"),
    "no_conv": (no_conv, "Conv"),
    "conv_integer": (conv_integer, "ConvInteger"),
    "qlinear_conv": (qlinear_conv, "QLinearConv"),
    "qdq_weights": (qdq_weights, "quantized"),
    "ort_cannot_load": (ort_cannot_load, "onnxruntime"),
}


@pytest.fixture
def listing(tmp_path):
    """Byte-exact snapshot of ``tmp_path`` (overrides conftest's size/mtime one): {path: bytes}."""

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    return snapshot


def run_cli(argv) -> int:
    """``main(argv)`` with the root logger bare, so its ``logging.basicConfig``
    installs the stderr handler a real run has (pytest's capture handlers on
    the root logger would otherwise turn it into a no-op and hide warnings)."""
    handlers, level = logging.root.handlers, logging.root.level
    logging.root.handlers = []
    try:
        return main(argv)
    finally:
        logging.root.handlers, logging.root.level = handlers, level


def assert_refused(argv, capsys, snapshot, word: str) -> str:
    """main(argv) exits 2 with one stderr line containing ``word``; the directory is unchanged."""
    before = snapshot()
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert word.lower() in lines[0].lower(), lines[0]
    assert snapshot() == before, "a bad input must not write or change any file"
    return lines[0]


@pytest.mark.parametrize("name", list(BAD_MODELS))
@pytest.mark.parametrize("command", ["prune", "analyze"])
def test_bad_model_is_refused(tmp_path, capsys, listing, name: str, command: str) -> None:
    make, word = BAD_MODELS[name]
    path = tmp_path / "in.onnx"
    path.write_bytes(make())
    argv = ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.5",
            "--plan-out", str(tmp_path / "plan.json")] if command == "prune" else ["analyze", str(path)]
    assert_refused(argv, capsys, listing, word)


def test_unknown_input_shape_name(tmp_path, capsys, listing, vgg_file) -> None:
    argv = ["prune", str(vgg_file), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.5",
            "--input-shape", "nosuch:1,3,8,8"]
    assert_refused(argv, capsys, listing, "nosuch")


@pytest.fixture
def good_plan(tmp_path, vgg_file) -> dict:
    assert main(["-q", "prune", str(vgg_file), "-o", str(tmp_path / "ref.onnx"), "--criterion", "l1",
                 "--ratio", "0.5", "--recover", "none", "--plan-out", str(tmp_path / "plan.json")]) == 0
    return json.loads((tmp_path / "plan.json").read_text())


def _plan_wrong_filters(plan: dict) -> tuple[str, str]:
    plan["layers"]["c2"]["filters"] = 9
    return json.dumps(plan), "filters"


def _plan_unknown_layer(plan: dict) -> tuple[str, str]:
    plan["layers"]["nosuch_layer"] = plan["layers"].pop("c2")
    return json.dumps(plan), "nosuch_layer"


def _plan_malformed(plan: dict) -> tuple[str, str]:
    return json.dumps(plan)[:-7], "JSON"


def _plan_keep_out_of_range(plan: dict) -> tuple[str, str]:
    plan["layers"]["c1"]["keep"] = [0, 8]
    return json.dumps(plan), "c1"


def _plan_filters_not_a_number(plan: dict) -> tuple[str, str]:
    plan["layers"]["c2"]["filters"] = "eight"
    return json.dumps(plan), "c2"


@pytest.mark.parametrize("make", [_plan_wrong_filters, _plan_unknown_layer, _plan_malformed, _plan_keep_out_of_range,
                                  _plan_filters_not_a_number])
@pytest.mark.parametrize("command", ["prune", "verify"])
def test_plan_not_matching_the_model(tmp_path, capsys, listing, vgg_file, good_plan, make, command) -> None:
    text, word = make(good_plan)
    bad = tmp_path / "bad_plan.json"
    bad.write_text(text)
    if command == "prune":
        argv = ["prune", str(vgg_file), "-o", str(tmp_path / "out.onnx"), "--apply-plan", str(bad)]
    else:
        argv = ["verify", str(vgg_file), str(tmp_path / "ref.onnx"), "--plan", str(bad)]
    assert_refused(argv, capsys, listing, word)


def test_output_equal_to_input(tmp_path, capsys, listing, vgg_file) -> None:
    assert_refused(["prune", str(vgg_file), "-o", str(vgg_file), "--ratio", "0.5"], capsys, listing, "overwrite")


def test_missing_output(tmp_path, capsys, listing, vgg_file) -> None:
    assert_refused(["prune", str(vgg_file), "--ratio", "0.5"], capsys, listing, "-o")


def test_missing_model_file(tmp_path, capsys, listing) -> None:
    assert_refused(["prune", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")], capsys, listing, "nope.onnx")


@pytest.mark.parametrize("argv", [
    ["prune", "m.onnx", "-o", "o.onnx", "--no-such-option"],
    ["prune", "m.onnx", "-o", "o.onnx", "--criterion", "nosuch"],
    ["prune", "m.onnx", "-o", "o.onnx", "--ratio", "0.5", "--alpha", "1.0"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(tmp_path, capsys, listing, monkeypatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    before = listing()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip()
    assert listing() == before


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "nan"])
def test_ratio_out_of_range(tmp_path, capsys, listing, vgg_file, ratio) -> None:
    assert_refused(["prune", str(vgg_file), "-o", str(tmp_path / "o.onnx"), "--ratio", ratio], capsys, listing, "ratio")


@pytest.mark.parametrize("criterion", ["l1", "fpgm"])
def test_alpha_with_a_ranking_criterion(tmp_path, capsys, listing, vgg_file, criterion) -> None:
    assert_refused(["prune", str(vgg_file), "-o", str(tmp_path / "o.onnx"), "--criterion", criterion,
                    "--alpha", "1.0"], capsys, listing, criterion)


@pytest.mark.parametrize("flag", ["--plan-out", "--report", "--report-md"])
def test_side_output_in_missing_directory_writes_nothing(tmp_path, capsys, listing, vgg_file, flag) -> None:
    argv = ["prune", str(vgg_file), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5", "--criterion", "l1",
            flag, str(tmp_path / "no_such_dir" / "side.json")]
    assert_refused(argv, capsys, listing, "no_such_dir")


def conv_then_lrn() -> bytes:
    """x -> Conv -> LRN -> y: a Conv, but its only group is frozen by LRN."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["h"], ["y"], name="lrn", size=3),
    ]
    return _model(nodes, [numpy_helper.from_array(_weight(), "w")], [1, 4, 8, 8]).SerializeToString()


@pytest.mark.parametrize("make, word", [(no_conv, "no Conv layer"), (conv_then_lrn, "LRN")])
def test_nothing_to_prune_is_refused_unless_allowed(tmp_path, capsys, listing, make, word) -> None:
    """Nothing prunable: exit 2 naming why; with --allow-unchanged: exit 0 and the model as it was."""
    src = tmp_path / "m.onnx"
    src.write_bytes(make())
    out = tmp_path / "out.onnx"
    line = assert_refused(["prune", str(src), "-o", str(out), "--ratio", "0.5"], capsys, listing, word)
    assert "nothing to prune" in line or "no Conv" in line
    assert run_cli(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--allow-unchanged"]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert onnx.load(out).graph == onnx.load(src).graph
    assert src.read_bytes() == make()


def test_keep_layer_matching_nothing(tmp_path, capsys, listing, vgg_file) -> None:
    out = tmp_path / "out.onnx"
    assert_refused(["prune", str(vgg_file), "-o", str(out), "--ratio", "0.5", "--keep-layer", "nope*"],
                   capsys, listing, "--keep-layer 'nope*' matches no")
