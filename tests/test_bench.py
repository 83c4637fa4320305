"""Tests of :mod:`onnx_pfgdf.bench` on tiny ``onnx.helper`` CNNs (no timing asserted beyond > 0).

Models (input ``x`` fixed at batch 1, logits ``y``)::

    tiny_cnn(c):      x[1,3,8,8] -> Conv(3->c, 3x3, pad 1) -> Relu -> GlobalAveragePool
                                 -> Flatten -> Gemm(c->10) = y[1,10]
    reshape_cnn(c):   same, but Flatten replaced by Reshape to the constant [1, -1]
                      (cannot run at batch 8 even with a symbolic batch)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pfgdf.bench import (
    DYNAMIC,
    PROFILES,
    STATIC,
    BenchReport,
    BenchRow,
    bench_models,
    ideal_speedup,
    make_batch_dynamic,
    plot_report,
    quantize_with_notes,
    quantized_variants,
)
from onnx_pfgdf.count import count_model
from onnx_pfgdf.data import Dataset
from onnx_pfgdf.evaluate import make_session

FAST = {"runs": 3, "warmup": 1, "memory": False}


def tiny_cnn(c: int = 8, seed: int = 0, reshape: bool = False) -> onnx.ModelProto:
    """Conv(3->c) + Relu + GlobalAveragePool + Flatten (or Reshape [1,-1]) + Gemm(c->10)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    b = rng.normal(0, 0.1, c).astype(np.float32)
    fw = (rng.standard_normal((10, c)) * np.sqrt(2 / c)).astype(np.float32)
    fb = rng.normal(0, 0.1, 10).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (b, "B"), (fw, "FW"), (fb, "FB"))]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
    ]
    if reshape:
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["g1", "shape"], ["f1"]))
    else:
        nodes.append(helper.make_node("Flatten", ["g1"], ["f1"], axis=1))
    nodes.append(helper.make_node("Gemm", ["f1", "FW", "FB"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(n: int = 16, labels: bool = True, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    return Dataset({"x": x}, rng.integers(0, 10, n) if labels else None)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def two_models() -> list[tuple[str, onnx.ModelProto]]:
    return [("original", tiny_cnn(16)), ("pruned", tiny_cnn(8, seed=3))]


@pytest.fixture(scope="module")
def report(two_models: list[tuple[str, onnx.ModelProto]]) -> BenchReport:
    return bench_models(two_models, runs=3, warmup=1, memory=False)


def test_report_structure(report: BenchReport) -> None:
    assert [(r.label, r.profile) for r in report.rows] == [
        ("original", "edge"), ("pruned", "edge"), ("original", "server"), ("pruned", "server"),
    ]
    for r in report.rows:
        assert r.median_ms > 0 and r.p90_ms >= r.median_ms
        assert r.runs == 3
        assert r.size_bytes > 0
        assert r.accuracy is None and r.peak_rss_mb is None
        assert r.threads == PROFILES[r.profile].threads
    assert report.speedup("original", "edge") == 1.0
    assert report.speedup("original", "server") == 1.0
    assert report.speedup("pruned", "edge") > 0


def test_macs_and_realized_over_ideal(report: BenchReport, two_models) -> None:
    macs = {label: count_model(m).macs for label, m in two_models}
    for r in report.rows:
        assert r.macs == macs[r.label]
    assert report.ideal("pruned", "edge") == pytest.approx(macs["original"] / macs["pruned"])
    assert report.efficiency("original", "edge") is None
    eff = report.efficiency("pruned", "edge")
    assert eff == pytest.approx(report.speedup("pruned", "edge") / report.ideal("pruned", "edge"))


def test_ideal_speedup() -> None:
    assert ideal_speedup(1000, 250) == 4.0
    with pytest.raises(ValueError):
        ideal_speedup(1000, 0)


def test_json_and_markdown(report: BenchReport) -> None:
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"settings", "rows", "notes"}
    assert d["settings"]["runs"] == 3 and d["settings"]["interleaved"] is True
    assert set(d["settings"]["profiles"]) == {"edge", "server"}
    row = d["rows"][0]
    for key in ("label", "path_or_name", "profile", "median_ms", "p90_ms", "runs", "size_bytes",
                "peak_rss_mb", "accuracy", "macs", "batch", "speedup", "realized_over_ideal"):
        assert key in row
    assert row["speedup"] == 1.0
    md = report.to_markdown()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | profile | median ms | p90 ms | speedup vs first model | size MB | accuracy")
    assert set(lines[1]) <= {"|", "-"}
    assert len(lines) == 2 + len(report.rows)
    table = report.rows_table()
    assert table[0][:7] == ["model", "profile", "median ms", "p90 ms", "speedup vs first model",
                            "size MB", "accuracy"]
    assert len(table) == 1 + len(report.rows)


def test_batch_one_model_runs_at_batch_eight(report: BenchReport) -> None:
    assert report.row("original", "server").batch == PROFILES["server"].batch == 8
    assert report.row("original", "edge").batch == 1
    assert not report.notes or all("batch" not in n for n in report.notes)


def test_make_batch_dynamic_runs_at_eight_and_leaves_input_alone() -> None:
    model = tiny_cnn(4)
    dyn = make_batch_dynamic(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = _data(8).inputs["x"]
    out = _run(dyn, x)
    ref = np.concatenate([_run(model, x[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_constant_reshape_falls_back_to_batch_one_with_a_note() -> None:
    rep = bench_models([("fixed", tiny_cnn(4, reshape=True))], profiles=("server",), **FAST)
    (row,) = rep.rows
    assert row.batch == 1 and row.median_ms > 0
    assert any("fixed" in n and "batch 8" in n and "batch 1" in n for n in rep.notes)
    assert "| 1 |" in rep.to_markdown()


def test_speedup_is_per_sample_when_batches_differ() -> None:
    rows = (
        BenchRow("a", "a", "server", 8.0, 9.0, 3, 10, None, None, 100, batch=8, threads=2),
        BenchRow("b", "b", "server", 2.0, 3.0, 3, 10, None, None, 50, batch=1, threads=2),
    )
    rep = BenchReport(rows, {})
    assert rep.speedup("b", "server") == pytest.approx((8.0 / 8) / 2.0)
    assert rep.efficiency("b", "server") == pytest.approx(0.5 / 2.0)


def test_accuracy_filled_with_labelled_data(two_models) -> None:
    data = _data(16)
    rep = bench_models(two_models, profiles=("edge",), data=data, **FAST)
    from onnx_pfgdf.evaluate import top1_accuracy

    for label, model in two_models:
        assert rep.row(label, "edge").accuracy == pytest.approx(top1_accuracy(model, data))
    rep2 = bench_models(two_models, profiles=("edge",), data=_data(4, labels=False), **FAST)
    assert all(r.accuracy is None for r in rep2.rows)
    assert any("labels" in n for n in rep2.notes)


def test_rejects_bad_arguments(two_models) -> None:
    with pytest.raises(ValueError):
        bench_models([], **FAST)
    with pytest.raises(ValueError):
        bench_models([two_models[0], two_models[0]], **FAST)
    with pytest.raises(ValueError):
        bench_models(two_models, profiles=("phone",), **FAST)


def test_peak_rss_measured_in_subprocess() -> None:
    rep = bench_models([("m", tiny_cnn(4))], profiles=("edge",), runs=2, warmup=0)
    (row,) = rep.rows
    assert row.peak_rss_mb is not None and row.peak_rss_mb >= 0.0


def test_quantized_variants_run_close_to_float() -> None:
    model = tiny_cnn(16)
    calib = _data(32, labels=False, seed=5)
    variants, notes = quantize_with_notes(model, calib)
    assert set(variants) == {DYNAMIC, STATIC}
    assert set(notes) == {DYNAMIC, STATIC}
    x = _data(1, seed=9).inputs["x"]
    ref = _run(model, x)
    scale = float(np.abs(ref).max())
    for name, q in variants.items():
        ops = {n.op_type for n in q.graph.node}
        assert ops & {"ConvInteger", "QuantizeLinear", "DequantizeLinear"}, name
        np.testing.assert_allclose(_run(q, x), ref, atol=0.1 * scale, err_msg=name)
    assert model.graph.node[0].op_type == "Conv"  # caller's model untouched


def test_quantized_variants_without_calib_and_in_bench() -> None:
    model = tiny_cnn(8)
    variants = quantized_variants(model, None)
    assert set(variants) == {DYNAMIC}
    macs = count_model(model).macs
    rep = bench_models([("original", model), ("original+int8", variants[DYNAMIC])],
                       macs={"original+int8": macs}, **FAST)
    assert rep.row("original+int8", "server").batch == 8
    assert rep.row("original+int8", "edge").macs == macs
    assert rep.row("original+int8", "edge").median_ms > 0


def test_plot_report_writes_png(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "latency.png"
    plot_report(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
