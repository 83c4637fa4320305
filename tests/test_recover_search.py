"""Training-free recovery and the budgeted search, on tiny models with known answers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders
import onnx_pfgdf
from onnx_pfgdf import CriterionConfig, PruneConfig
from onnx_pfgdf.cli import main
from onnx_pfgdf.data import Dataset
from onnx_pfgdf.errors import BudgetError
from onnx_pfgdf.evaluate import make_session
from onnx_pfgdf.recover import RecoverOptions
from onnx_pfgdf.search import Budget


def _calib(n: int = 96, seed: int = 0, shape: tuple[int, ...] = builders.IN_SHAPE) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset({"x": rng.standard_normal((n, *shape[1:])).astype(np.float32)})


def _outputs(model: onnx.ModelProto, data: Dataset) -> np.ndarray:
    session = make_session(model)
    x = data.inputs["x"]
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.linalg.norm(ref - out) / np.linalg.norm(ref))


def duplicated_filters() -> onnx.ModelProto:
    """Filters 3..5 of c1 duplicate filters 0..2, so their channels are redundant::

        x[1,3,8,8] -> Conv c1(3->6) -> Relu -> Conv c2(6->4) -> Relu
                   -> GlobalAveragePool -> Flatten -> Gemm y(4->10)

    Removing channels 3..5 of c1 loses nothing: c2 can add their weights to
    channels 0..2.  Least squares must find that exactly.
    """
    g = builders.GraphBuilder(seed=21)
    rng = np.random.default_rng(21)
    w1 = rng.standard_normal((3, 3, 3, 3)) * 0.5
    b1 = rng.normal(0, 0.1, 3)
    h = g.node("Conv", ["x", g.const("c1.W", np.concatenate([w1, w1])), g.const("c1.B", np.concatenate([b1, b1]))],
               "c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.relu(h)
    h = g.relu(g.conv(h, 6, 4, "c2"))
    g.head(h, 4)
    return g.model({"y": [1, builders.CLASSES]})


def test_lsq_is_exact_when_kept_channels_span_the_removed_ones() -> None:
    model = duplicated_filters()
    calib = _calib()
    plan = {"format": "onnx-pfgdf-plan", "version": 1,
            "layers": {"c1": {"node": "Conv_c1", "filters": 6, "keep": [0, 1, 2]}}}
    ref = _outputs(model, calib)
    cfg = PruneConfig(recover="none")
    none = onnx_pfgdf.apply_plan(model, plan, cfg, calib)
    lsq = onnx_pfgdf.apply_plan(
        model, plan, PruneConfig(recover="lsq", recover_options=RecoverOptions(ridge=1e-9)), calib)
    assert lsq.verification.passed
    assert _rel_error(ref, _outputs(none.model, calib)) > 0.05        # pruning alone does hurt
    assert _rel_error(ref, _outputs(lsq.model, calib)) < 1e-4         # re-fit recovers it exactly
    w2 = numpy_helper.to_array(next(t for t in lsq.model.graph.initializer if t.name == "c2.W"))
    w2_orig = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "c2.W"))
    np.testing.assert_allclose(w2, w2_orig[:, :3] + w2_orig[:, 3:], rtol=1e-3, atol=1e-4)


def test_lsq_is_exact_for_a_grouped_conv_block_by_block() -> None:
    """c1's channels 2, 3 duplicate 0, 1 and 6, 7 duplicate 4, 5 (one pair per block of the group=2 conv gc);
    removing the duplicates, lsq re-fits gc block by block to the exact merged weights::

        x -> Conv c1(3->8) -> Relu -> Conv gc(8->4, group=2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm y
    """
    g = builders.GraphBuilder(seed=24)
    rng = np.random.default_rng(24)
    w1, b1 = rng.standard_normal((4, 3, 3, 3)) * 0.5, rng.normal(0, 0.1, 4)
    w1 = np.concatenate([w1[:2], w1[:2], w1[2:], w1[2:]])
    b1 = np.concatenate([b1[:2], b1[:2], b1[2:], b1[2:]])
    h = g.relu(g.node("Conv", ["x", g.const("c1.W", w1), g.const("c1.B", b1)], "c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    g.head(g.relu(g.conv(h, 8, 4, "gc", group=2)), 4)
    model = g.model({"y": [1, builders.CLASSES]})
    plan = {"format": "onnx-pfgdf-plan", "version": 1,
            "layers": {"c1": {"node": "Conv_c1", "filters": 8, "keep": [0, 1, 4, 5]}}}
    calib = _calib()
    ref = _outputs(model, calib)
    none = onnx_pfgdf.apply_plan(model, plan, PruneConfig(recover="none"), calib)
    lsq = onnx_pfgdf.apply_plan(model, plan, PruneConfig(recover="lsq", recover_options=RecoverOptions(ridge=1e-9)), calib)
    assert _rel_error(ref, _outputs(none.model, calib)) > 0.05
    assert _rel_error(ref, _outputs(lsq.model, calib)) < 1e-4
    w = numpy_helper.to_array(next(t for t in lsq.model.graph.initializer if t.name == "gc.W"))
    w_orig = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "gc.W"))
    np.testing.assert_allclose(w, w_orig[:, :2] + w_orig[:, 2:], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("build", [builders.vgg_chain, builders.resnet_blocks, builders.mlp_head])
def test_recovery_improves_fidelity_over_none(build) -> None:
    case = build()
    calib, held = _calib(128, seed=1), _calib(64, seed=2)
    ref = _outputs(case.model, held)
    errors = {}
    for method in ("none", "bias", "lsq"):
        cfg = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover=method)
        result = onnx_pfgdf.prune(case.model, cfg, calib)
        assert result.verification.passed
        errors[method] = _rel_error(ref, _outputs(result.model, held))
    assert errors["lsq"] < 0.5 * errors["none"], errors
    assert errors["bias"] < errors["none"], errors


def test_report_has_stages_before_and_after_recovery() -> None:
    case = builders.vgg_chain()
    result = onnx_pfgdf.prune(case.model, PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover="lsq"),
                              _calib(64))
    names = [s["stage"] for s in result.report.stages]
    assert names == ["original", "pruned, no recovery", "recovered (lsq)"]
    assert result.report.stages[0]["rel_error"] == 0.0
    assert result.report.stages[2]["rel_error"] < result.report.stages[1]["rel_error"]


@pytest.mark.parametrize("bound", [0.05, 0.2])
def test_max_error_budget_is_respected_on_held_out_data(bound: float) -> None:
    case = builders.vgg_chain(widths=(12, 12, 16))
    calib, held = _calib(128, seed=3), _calib(64, seed=4)
    result = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("max_error", bound), recover="lsq"), calib)
    assert result.plan.keep, "the search should prune something within a loose budget"
    assert result.report.stages[-1]["rel_error"] <= bound                 # its own re-check
    ref = _outputs(case.model, calib)                                     # independent check, search data
    assert _rel_error(ref, _outputs(result.model, calib)) <= bound * 1.0001
    assert result.report.reduction["macs"] > 0
    assert result.search is not None and result.search.steps


def test_min_agreement_and_max_drop_budgets() -> None:
    case = builders.vgg_chain(widths=(12, 12, 16))
    calib = _calib(200, seed=5)
    labels = _outputs(case.model, calib).argmax(axis=1)           # labels the original gets 100% on
    labelled = Dataset(calib.inputs, labels)
    agree = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("min_agreement", 0.9), recover="lsq"), calib)
    got = np.mean(_outputs(agree.model, calib).argmax(axis=1) == labels)
    assert got >= 0.9
    drop = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("max_drop", 5.0), recover="lsq"), labelled)
    acc = np.mean(_outputs(drop.model, labelled).argmax(axis=1) == labels)
    assert (1.0 - acc) * 100 <= 5.0
    assert drop.report.stages[0]["accuracy"] == 1.0


def test_target_macs_reaches_the_target() -> None:
    case = builders.vgg_chain(widths=(12, 12, 16))
    result = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("target_macs", 0.4), recover="lsq"), _calib(64))
    assert result.report.reduction["macs"] >= 0.4


def test_bias_recovery_is_exact_for_constant_channels_into_a_grouped_conv() -> None:
    """Channels 1 and 5 of c1 are constant (zero filter, bias 0.7 -> Relu); removing them, one per
    block of the group=2 conv gc, and folding their constant into gc's bias changes nothing::

        x -> Conv c1(3->8) -> Relu -> Conv gc(8->6, 1x1, group=2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm y
    """
    g = builders.GraphBuilder(seed=23)
    w1 = g.rng.standard_normal((8, 3, 3, 3)) * 0.5
    b1 = g.rng.normal(0, 0.1, 8)
    w1[[1, 5]] = 0.0
    b1[[1, 5]] = 0.7
    h = g.relu(g.node("Conv", ["x", g.const("c1.W", w1), g.const("c1.B", b1)], "c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    g.head(g.relu(g.conv(h, 8, 6, "gc", group=2, k=1)), 6)  # 1x1: no zero padding to break the constant
    model = g.model({"y": [1, builders.CLASSES]})
    plan = {"format": "onnx-pfgdf-plan", "version": 1,
            "layers": {"c1": {"node": "Conv_c1", "filters": 8, "keep": [0, 2, 3, 4, 6, 7]}}}
    calib = _calib(16)
    ref = _outputs(model, calib)
    none = onnx_pfgdf.apply_plan(model, plan, PruneConfig(recover="none"))
    bias = onnx_pfgdf.apply_plan(model, plan, PruneConfig(recover="bias"), calib)
    assert _rel_error(ref, _outputs(none.model, calib)) > 1e-2
    assert _rel_error(ref, _outputs(bias.model, calib)) < 1e-5


@pytest.mark.parametrize("recover", ["bias", "lsq"])
def test_search_on_grouped_convs_keeps_equal_blocks(recover: str) -> None:
    """The search's ladders go through the plan's block rule: every group stays divisible by its blocks."""
    case = builders.grouped_convs()
    result = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("target_macs", 0.3), recover=recover), _calib(64))
    assert result.report.reduction["macs"] >= 0.3
    assert result.verification is not None and result.verification.passed
    analysis = result.plan.analysis
    for first, blocks in case.blocks.items():
        group = analysis.group_of_output(first)
        if group.id in result.plan.keep:
            counts = np.bincount(result.plan.keep[group.id] // (group.channels // blocks), minlength=blocks)
            assert np.all(counts == counts[0]) and counts[0] > 0, (first, counts)


def test_nothing_fits_raises_and_the_cli_writes_nothing(tmp_path) -> None:
    case = builders.vgg_chain()
    with pytest.raises(BudgetError):
        onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("max_error", 1e-12), recover="none"), _calib(32))
    model_path, calib_path, out = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o.onnx"
    onnx.save(case.model, model_path)
    np.savez(calib_path, x=_calib(32).inputs["x"])
    code = main(["-q", "prune", str(model_path), "-o", str(out), "--calib", str(calib_path),
                 "--max-error", "1e-12", "--recover", "none"])
    assert code == 1
    assert not out.exists()


def test_budget_needs_data() -> None:
    case = builders.vgg_chain()
    with pytest.raises(onnx_pfgdf.BadInputError):
        onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("max_drop", 0.5), recover="bias"), _calib(16))


# --------------------------------------------------------------------------- float16 models


def _as_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float16: float initializers, graph input and output converted."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in [*out.graph.input, *out.graph.output]:
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return out


@pytest.mark.parametrize("recover", ["none", "bias", "lsq"])
@pytest.mark.parametrize("build", [builders.vgg_chain, builders.resnet_blocks, builders.grouped_convs])
def test_float16_model_prunes_verifies_and_stays_float16(build, recover: str) -> None:
    model = _as_float16(build().model)
    calib = Dataset({"x": _calib(32).inputs["x"].astype(np.float16)})
    result = onnx_pfgdf.prune(model, PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover=recover),
                              calib if recover == "lsq" else None)
    assert result.verification.passed and result.verification.tolerance == pytest.approx(4e-3)
    assert result.verification.max_rel_error > 0  # float16 rounding is real, and within the floor
    assert {t.data_type for t in result.model.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    (y,) = make_session(result.model).run(None, {"x": calib.inputs["x"][:1]})
    assert y.dtype == np.float16 and np.all(np.isfinite(y))


def test_float16_verification_still_catches_a_wrong_model() -> None:
    model = _as_float16(builders.concat_branches().model)
    result = onnx_pfgdf.prune(model, PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5))
    bad = onnx.ModelProto()
    bad.CopyFrom(result.model)
    cc = next(n for n in bad.graph.node if n.output[0] == "cc")
    w_init = next(t for t in bad.graph.initializer if t.name == cc.input[1])
    w = numpy_helper.to_array(w_init).copy()
    w[0, 0] += np.float16(0.5)
    w_init.CopyFrom(numpy_helper.from_array(w, w_init.name))
    check = onnx_pfgdf.verify(model, bad, result.plan.to_dict())
    assert not check.passed and check.max_rel_error > 4e-3


def test_a_broken_recovery_is_refused(monkeypatch) -> None:
    """Recovery runs after verification; a result that no longer loads is never returned."""
    import onnx_pfgdf.recover as rec

    def breaks(original, pruned, plan, data, options, cache=None):
        out = onnx.ModelProto()
        out.CopyFrom(pruned)
        conv = next(n for n in out.graph.node if n.op_type == "Conv")
        bias = next(t for t in out.graph.initializer if t.name == conv.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).astype(np.float64), bias.name))
        return out

    monkeypatch.setitem(rec.RECOVERY, "bias", breaks)
    with pytest.raises(onnx_pfgdf.VerificationError, match="recovered model"):
        onnx_pfgdf.prune(builders.vgg_chain().model, PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover="bias"))


def test_a_model_over_the_protobuf_limit_is_evaluated_and_recovered_like_any(monkeypatch) -> None:
    """With every model treated as over 2 GiB (weights fed on each run), the report matches the normal path."""
    import onnx_pfgdf.io as pio

    case = builders.vgg_chain(widths=(12, 12, 16))
    rng = np.random.default_rng(5)
    calib = Dataset({"x": rng.standard_normal((48, 3, 8, 8)).astype(np.float32)}, rng.integers(0, 10, 48))
    data = Dataset({"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)}, rng.integers(0, 10, 32))
    config = PruneConfig(criterion=CriterionConfig("l1"), ratio=0.5, recover="lsq")
    normal = onnx_pfgdf.prune(case.model, config, calib, data).report.stages
    monkeypatch.setattr(pio, "EXTERNAL_DATA_THRESHOLD", 0)
    large = onnx_pfgdf.prune(case.model, config, calib, data)
    assert large.verification.passed
    assert [s["stage"] for s in large.report.stages] == [s["stage"] for s in normal]
    for a, b in zip(large.report.stages, normal, strict=True):
        assert a["accuracy"] == b["accuracy"] and a["agreement"] == b["agreement"]
        assert abs(a["rel_error"] - b["rel_error"]) < 1e-4
