"""CLI tests, in-process through ``main(argv)`` (one subprocess for ``python -m``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders
import onnx_pfgdf
from onnx_pfgdf.cli import convert_and_prune, main
from test_engine import assert_equivalent, run_model, seeded_inputs


def _prune_argv(model, out, *extra) -> list[str]:
    return ["prune", str(model), "-o", str(out), *extra]


def test_done_when_command(tmp_path, vgg_file, capsys) -> None:
    out, plan, report = tmp_path / "P.onnx", tmp_path / "plan.json", tmp_path / "r.json"
    code = main(_prune_argv(vgg_file, out, "--criterion", "l1", "--ratio", "0.5", "--recover", "none",
                            "--plan-out", str(plan), "--report", str(report)))
    assert code == 0, capsys.readouterr().err
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert run_model(pruned, seeded_inputs(0))["y"].shape == (1, builders.CLASSES)
    r = json.loads(report.read_text())
    assert {"original", "pruned", "reduction", "layers", "frozen_groups", "verification"} <= set(r)
    assert r["verification"]["passed"] is True
    assert r["pruned"]["macs"] < r["original"]["macs"] and r["pruned"]["params"] < r["original"]["params"]
    assert 0 < r["reduction"]["macs"] < 1
    document = json.loads(plan.read_text())
    assert {k: len(v["keep"]) for k, v in document["layers"].items()} == {"c1": 4, "c2": 4, "c3": 8}
    assert_equivalent(builders.vgg_chain().model, pruned, document)


def test_alpha_and_apply_plan_replay(tmp_path, vgg_file, capsys) -> None:
    out, plan, again = tmp_path / "a.onnx", tmp_path / "plan.json", tmp_path / "b.onnx"
    assert main(_prune_argv(vgg_file, out, "--alpha", "1.0", "--statistic", "l2", "--side", "outside",
                            "--recover", "none", "--plan-out", str(plan), "--report-md", str(tmp_path / "r.md"))) == 0
    document = json.loads(plan.read_text())
    assert document["layers"], "alpha 1.0 marks some filters of an 8-filter layer"
    assert_equivalent(builders.vgg_chain().model, onnx.load(out), document, samples=1)
    assert "# onnx-pfgdf pruning report" in (tmp_path / "r.md").read_text()
    assert main(_prune_argv(vgg_file, again, "--apply-plan", str(plan), "--recover", "none")) == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("builder", [builders.unsupported_op, builders.conv_graph_output])
def test_analyze_mentions_every_frozen_reason(tmp_path, capsys, builder) -> None:
    case = builder()
    path, js = tmp_path / "m.onnx", tmp_path / "a.json"
    onnx.save(case.model, path)
    assert main(["analyze", str(path), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    for frozen in onnx_pfgdf.analyze(case.model).report.frozen:
        for reason in frozen.reasons:
            assert reason in out
    for layer, word in case.frozen.items():
        line = next(li for li in out.splitlines() if "layers:" in li and layer in li)
        assert word in line
    data = json.loads(js.read_text())
    assert {layer for f in data["frozen_groups"] for layer in f["layers"]} == set(case.frozen)


def test_dry_run_writes_nothing(tmp_path, vgg_file, listing, capsys) -> None:
    before = listing()
    code = main(["prune", str(vgg_file), "-o", str(tmp_path / "P.onnx"), "--ratio", "0.5", "--criterion", "l1",
                 "--dry-run", "--plan-out", str(tmp_path / "plan.json"), "--report", str(tmp_path / "r.json")])
    assert code == 0
    assert listing() == before
    assert "c3" in capsys.readouterr().out  # what would be removed is printed


def test_verify_good_pair_and_tampered_model(tmp_path, vgg_file, capsys) -> None:
    out, plan = tmp_path / "P.onnx", tmp_path / "plan.json"
    assert main(_prune_argv(vgg_file, out, "--criterion", "l1", "--ratio", "0.25", "--recover", "none",
                            "--plan-out", str(plan))) == 0
    assert main(["verify", str(vgg_file), str(out), "--plan", str(plan)]) == 0
    tampered = onnx.load(out)
    w_init = next(t for t in tampered.graph.initializer if t.name == "c3.W")
    w = numpy_helper.to_array(w_init).copy()
    w[1] *= -1.0
    w_init.CopyFrom(numpy_helper.from_array(w, "c3.W"))
    bad = tmp_path / "bad.onnx"
    onnx.save(tampered, bad)
    capsys.readouterr()
    assert main(["verify", str(vgg_file), str(bad), "--plan", str(plan)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_evaluate_prints_accuracy(tmp_path, vgg_file, capsys) -> None:
    model = builders.vgg_chain().model
    xs = np.random.default_rng(5).standard_normal((6, 3, 8, 8)).astype(np.float32)
    pred = np.array([int(np.argmax(run_model(model, {"x": xs[i : i + 1]})["y"])) for i in range(6)])
    labels = np.where(np.arange(6) < 3, pred, (pred + 1) % builders.CLASSES).astype(np.int64)
    data = tmp_path / "d.npz"
    np.savez(data, x=xs, labels=labels)
    assert main(["evaluate", str(vgg_file), "--data", str(data)]) == 0
    assert "50.00%" in capsys.readouterr().out


def test_convert_and_prune_is_prune(tmp_path, vgg_file) -> None:
    out, plan = tmp_path / "P.onnx", tmp_path / "plan.json"
    assert convert_and_prune([str(vgg_file), "-o", str(out), "--criterion", "l1", "--ratio", "0.5",
                              "--recover", "none", "--plan-out", str(plan)]) == 0
    assert_equivalent(builders.vgg_chain().model, onnx.load(out), json.loads(plan.read_text()), samples=1)


def test_python_dash_m_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "onnx_pfgdf", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "prune" in proc.stdout and "analyze" in proc.stdout
