"""Python API on ``onnx.ModelProto``: no file I/O, the caller's model never mutated.

Example::

    import onnx, onnx_pfgdf
    model = onnx.load("models/vgg16.onnx")
    result = onnx_pfgdf.prune(model, onnx_pfgdf.PruneConfig(ratio=0.5, criterion=onnx_pfgdf.CriterionConfig("l1")))
    assert result.verification.passed
    onnx.save(result.model, "vgg16_pruned.onnx")
    print(result.report.reduction)            # removed fraction of filters / params / MACs
    result.plan.save("plan.json")            # replay later with apply_plan()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx

from onnx_pfgdf.channels import ChannelAnalysis, analyze_channels
from onnx_pfgdf.count import ModelCount, count_model, reduction
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.errors import BadInputError, BudgetError, NothingToPruneError, VerificationError
from onnx_pfgdf.evaluate import run_feeds
from onnx_pfgdf.graph import GraphIndex
from onnx_pfgdf.io import LoadOptions, normalize
from onnx_pfgdf.plan import GroupScore, KeepRule, Plan, plan_from_dict, protect_layers, score_groups, select_plan
from onnx_pfgdf.data import Dataset
from onnx_pfgdf.recover import RECOVERY, RecoverOptions, recover
from onnx_pfgdf.batch import batchable
from onnx_pfgdf.search import Budget, Evaluator, SearchConfig, SearchResult, search
from onnx_pfgdf.report import AnalyzeReport, FrozenGroup, LayerRow, PruneReport
from onnx_pfgdf.rewrite import apply_plan as _rewrite
from onnx_pfgdf.weights import infer_shapes
from onnx_pfgdf.verify import DEFAULT_TOLERANCE, Reference, VerifyResult, check_model, random_inputs, reference_outputs
from onnx_pfgdf.verify import verify as _verify

__all__ = [
    "DEFAULT_ALPHA",
    "PruneConfig",
    "Analysis",
    "PruneResult",
    "analyze",
    "prune",
    "apply_plan",
    "verify",
]

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 1.0
"""PFGDF interval half-width (in sigmas) used when neither ratio nor alpha is given."""


@dataclass(frozen=True)
class PruneConfig:
    """Everything ``prune`` needs to know besides the model.

    Attributes:
        criterion: scoring criterion (PFGDF by default).
        ratio: fraction of each prunable group's channels to remove; ``None``
            lets the PFGDF interval decide (``criterion.alpha`` or
            :data:`DEFAULT_ALPHA`).
        keep_rule: minimum and rounding of kept channels.
        load: input-shape fixing and simplification options.
        recover: a key of :data:`onnx_pfgdf.recover.RECOVERY`; ``None`` picks
            ``lsq`` when calibration data is given, ``bias`` otherwise.
        tolerance: verification bound on the max relative error.
        verify: run verification (the CLI always does before writing).
        budget: run the automated search within this budget (needs data).
        time_limit: seconds the search may take.
        recover_options: samples, positions and ridge of data-driven recovery.
        progress: show progress bars (tqdm) on long steps.
        protect: layers whose groups keep every channel: ``fnmatch`` patterns
            of node names or output tensors (e.g. a detector's heads).
    """

    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    ratio: float | None = None
    keep_rule: KeepRule = field(default_factory=KeepRule)
    load: LoadOptions = field(default_factory=LoadOptions)
    recover: str | None = "none"
    tolerance: float = DEFAULT_TOLERANCE
    verify: bool = True
    budget: Budget | None = None
    time_limit: float | None = None
    recover_options: RecoverOptions = field(default_factory=RecoverOptions)
    progress: bool = False
    protect: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view of the settings."""
        return {
            "criterion": asdict(self.criterion),
            "ratio": self.ratio,
            "keep_rule": asdict(self.keep_rule),
            "input_shapes": {k: list(v) for k, v in self.load.input_shapes.items()},
            "simplify": self.load.simplify,
            "recover": self.recover,
            "tolerance": self.tolerance,
            "budget": asdict(self.budget) if self.budget else None,
            "time_limit": self.time_limit,
            "protect": list(self.protect),
        }


@dataclass(frozen=True)
class Analysis:
    """A normalized model with its channel groups, scores and counts."""

    model: onnx.ModelProto
    channels: ChannelAnalysis
    count: ModelCount
    scores: Mapping[int, GroupScore]
    report: AnalyzeReport


@dataclass(frozen=True)
class PruneResult:
    """What ``prune`` returns: the model, the plan that made it, the report."""

    model: onnx.ModelProto
    plan: Plan
    report: PruneReport
    verification: VerifyResult | None
    normalized: onnx.ModelProto
    search: SearchResult | None = None


def _criterion_for(config: PruneConfig) -> CriterionConfig:
    crit = config.criterion
    if config.ratio is None and crit.name != "pfgdf":
        raise BadInputError(f"criterion '{crit.name}' ranks filters only: give --ratio (or a budget)")
    if config.ratio is None and crit.alpha is None:
        crit = CriterionConfig(crit.name, crit.statistic, crit.side, DEFAULT_ALPHA, crit.seed)
    return crit


def _layer_rows(
    analysis: ChannelAnalysis,
    before: ModelCount,
    scores: Mapping[int, GroupScore],
    plan: Plan | None = None,
    after: ModelCount | None = None,
) -> tuple[LayerRow, ...]:
    group_of: dict[str, int] = {}
    for group in analysis.groups.values():
        for m in group.members:
            group_of[m.output] = group.id
    after_by_out = {layer.output: layer for layer in after.layers} if after else {}
    rows = []
    for layer in before.layers:
        gid = group_of.get(layer.output)
        group = analysis.groups.get(gid) if gid is not None else None
        fit = None
        if gid in scores and layer.output in scores[gid].layers and scores[gid].layers[layer.output].fit is not None:
            fit = scores[gid].layers[layer.output].fit.to_dict()
        kept = None
        if plan is not None and group is not None:
            kept = len(plan.keep[gid]) if gid in plan.keep else group.channels
        post = after_by_out.get(layer.output)
        rows.append(
            LayerRow(
                node=layer.node,
                op_type=layer.op_type,
                output=layer.output,
                group=gid,
                prunable=bool(group and group.prunable),
                filters=layer.filters,
                params=layer.params,
                macs=layer.macs,
                kept=kept,
                params_after=post.params if post else None,
                macs_after=post.macs if post else None,
                fit=fit,
                channels=group.channels if group is not None else None,
                blocks=group.blocks if group is not None else 1,
            )
        )
    return tuple(rows)


def _frozen(analysis: ChannelAnalysis) -> tuple[FrozenGroup, ...]:
    return tuple(
        FrozenGroup(g.id, g.channels, tuple(m.output for m in g.members), g.frozen) for g in analysis.frozen_groups()
    )


def analyze(
    model: onnx.ModelProto,
    load: LoadOptions = LoadOptions(),
    criterion: CriterionConfig = CriterionConfig(),
    protect: Sequence[str] = (),
) -> Analysis:
    """Normalize ``model`` and find its channel groups, scores and counts.

    ``protect``: layers kept whole (see :attr:`PruneConfig.protect`).

    Raises:
        BadInputError: the model cannot be pruned at all (see ``io.normalize``),
            or a ``protect`` pattern matches no layer.
    """
    return _analyze_normalized(normalize(model, load), criterion, protect)


def _analyze_normalized(
    normalized: onnx.ModelProto, criterion: CriterionConfig, protect: Sequence[str] = ()
) -> Analysis:
    """:func:`analyze` after normalization."""
    index = GraphIndex(normalized)
    channels = protect_layers(analyze_channels(normalized, index), protect)
    count = count_model(normalized)
    scores = score_groups(channels, index, criterion)
    report = AnalyzeReport(
        count=count,
        layers=_layer_rows(channels, count, scores),
        prunable_groups=len(channels.prunable_groups()),
        frozen=_frozen(channels),
    )
    return Analysis(normalized, channels, count, scores, report)


def _require_prunable(analysis: Analysis) -> None:
    """Refuse a model in which no group may lose channels, naming the first reason."""
    if analysis.channels.prunable_groups():
        return
    frozen = analysis.channels.frozen_groups()
    first = next((g.frozen[0] for g in frozen if g.members), "no layer owns filters")
    raise NothingToPruneError(
        f"nothing to prune: all {len(frozen)} channel groups are frozen (first: {first}); "
        "'onnx-pfgdf analyze' lists every reason"
    )


def _recovery_method(config: PruneConfig, calib: Dataset | None) -> str:
    method = config.recover or ("lsq" if calib is not None else "bias")
    if method not in RECOVERY:
        raise BadInputError(f"unknown recovery '{method}'; available: {', '.join(RECOVERY)}")
    if method == "lsq" and calib is None:
        raise BadInputError("--recover lsq needs calibration data (--calib)")
    return method


def _stage(name: str, fid: object | None, macs_removed: float | None = None) -> dict[str, object]:
    row: dict[str, object] = {"stage": name}
    if fid is not None:
        row.update(fid.to_dict())
    if macs_removed is not None:
        row["macs_removed"] = macs_removed
    return row


def _reference(model: onnx.ModelProto, plan: Plan) -> Reference | None:
    """The masked original's outputs, before the rewrite: its weights are freed before
    the pruned model exists.  None when it fails (verification then reports why)."""
    try:
        return reference_outputs(model, plan)
    except Exception:  # onnxruntime raises its own exception types
        log.debug("masked original failed to run", exc_info=True)
        return None


def _check_recovered(final: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    """Recovery changed weights only: the result must still pass the checker and run like the rewrite.

    Its outputs may differ from the verified rewrite (that is the point), but
    not in shape or type, and they must be finite.

    Raises:
        VerificationError: it does not.
    """
    checker = check_model(final)
    try:
        feeds = [random_inputs(final, 0)]
        (got,), (want,) = run_feeds(final, feeds), run_feeds(rewritten, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationError(f"recovered model does not run in onnxruntime: {str(exc).splitlines()[0]}") from None
    if checker != "ok" or any(g.shape != w.shape or g.dtype != w.dtype or not np.all(np.isfinite(g))
                              for g, w in zip(got, want, strict=True)):
        raise VerificationError(f"recovered model is not a valid replacement of the verified one (checker: {checker})")


def _finish(
    analysis: Analysis,
    plan: Plan,
    config: PruneConfig,
    settings: Mapping[str, object],
    calib: Dataset | None = None,
    data: Dataset | None = None,
    search_result: SearchResult | None = None,
    cache: dict | None = None,
) -> PruneResult:
    """Rewrite, verify, recover, measure, report; raise rather than return a bad model."""
    method = _recovery_method(config, calib)
    reference = _reference(analysis.model, plan) if config.verify else None
    rewritten = _rewrite(analysis.model, plan)
    verification = None
    if config.verify:
        verification = _verify(analysis.model, rewritten, plan, tolerance=config.tolerance, reference=reference)
        if not verification.passed:
            raise VerificationError(
                f"pruned model failed verification: max relative error {verification.max_rel_error:.3g} "
                f"> {config.tolerance:g} or checker: {verification.checker}"
            )
    final = recover(method, analysis.model, rewritten, plan, calib, config.recover_options, cache)
    if final is not rewritten and config.verify:
        _check_recovered(final, rewritten)
    after = count_model(final)
    stages: list[dict[str, object]] = []
    held_out = data if data is not None else calib
    if held_out is not None:
        evaluator = Evaluator(analysis.model, held_out)
        base = _stage("original", evaluator(analysis.model))
        stages.append(base)
        stages.append(_stage("pruned, no recovery", evaluator(rewritten)))
        if method != "none":
            stages.append(_stage(f"recovered ({method})", evaluator(final)))
        for row in stages:
            row["data"] = "held-out (--data)" if data is not None else "calibration (--calib)"
    report = PruneReport(
        original=analysis.count,
        pruned=after,
        reduction=reduction(analysis.count, after),
        layers=_layer_rows(analysis.channels, analysis.count, analysis.scores, plan, after),
        frozen=_frozen(analysis.channels),
        settings=dict(settings) | {"recover": method},
        verification=verification.to_dict() if verification else None,
        stages=tuple(stages),
        search=search_result.to_dict() if search_result is not None else None,
    )
    return PruneResult(final, plan, report, verification, analysis.model, search_result)


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return True
    return False


def _restore_batch(dynamic_input: bool, result: PruneResult) -> PruneResult:
    """Give the pruned model back the input's dynamic batch when it runs correctly with it."""
    if not dynamic_input:
        return result
    dynamic = batchable(result.model)
    if dynamic is None:
        log.warning("the pruned model keeps the fixed batch size used for the analysis")
        return result
    return replace(result, model=infer_shapes(dynamic))


def _budget_holds(result: PruneResult, budget: Budget) -> bool:
    """Re-check the budget on the final report's last stage."""
    if budget.kind == "target_macs":
        return result.report.reduction["macs"] >= budget.value - 1e-9
    if not result.report.stages:
        return False
    base, last = result.report.stages[0], result.report.stages[-1]
    if budget.kind == "max_drop":
        if base.get("accuracy") is None:
            raise BadInputError("the --max-drop budget needs labelled data (--data, or --calib with 'labels')")
        return (float(base["accuracy"]) - float(last["accuracy"])) * 100.0 <= budget.value + 1e-9
    if budget.kind == "min_agreement":
        return float(last["agreement"]) >= budget.value - 1e-12
    return float(last["rel_error"]) <= budget.value


def prune(
    model: onnx.ModelProto,
    config: PruneConfig = PruneConfig(),
    calib: Dataset | None = None,
    data: Dataset | None = None,
) -> PruneResult:
    """Prune the filters of ``model`` and verify the result.

    Three modes:

    * ``config.ratio``: each prunable group loses ``round(ratio * C)``
      channels, the least important by ``config.criterion``;
    * ``config.budget``: the automated search (:mod:`onnx_pfgdf.search`) picks
      a PFGDF level per group on ``calib`` and the budget is re-checked on
      ``data`` (held out) when given;
    * neither: the PFGDF interval ``[mu - alpha*sigma, mu + alpha*sigma]`` of
      each layer's filter statistic decides which filters are insignificant.

    Args:
        model: the model (never mutated, and not referenced once normalized:
            a caller that passes its only reference gets the memory back
            before the rewrite, as the CLI does).
        config: settings.
        calib: calibration data (recovery, search).
        data: held-out labelled data for the report and the budget re-check.

    Raises:
        BadInputError: unusable model, data or settings.
        NothingToPruneError: no Conv, or every channel group is frozen.
        VerificationError: the rewrite does not match the masked original.
        BudgetError: no pruned model meets the budget.
    """
    _recovery_method(config, calib)
    if config.ratio is not None and not 0.0 <= config.ratio < 1.0:
        raise BadInputError(f"ratio must be in [0, 1), got {config.ratio}")
    if config.budget is not None:
        return _prune_budgeted(model, config, calib, data)
    criterion = _criterion_for(config)
    try:
        normalized = normalize(model, config.load)
        dynamic = _dynamic_batch(model)
        del model  # not needed any more: a caller that handed over its only reference (the CLI) gets the memory back
        analysis = _analyze_normalized(normalized, criterion, config.protect)
    except ValueError as exc:
        raise BadInputError(str(exc).splitlines()[0]) from None
    _require_prunable(analysis)
    try:
        plan = select_plan(analysis.channels, analysis.scores, ratio=config.ratio, keep_rule=config.keep_rule)
    except ValueError as exc:
        raise BadInputError(str(exc).splitlines()[0]) from None
    settings = config.to_dict() | {"criterion": asdict(criterion)}
    return _restore_batch(dynamic, _finish(analysis, plan, config, settings, calib, data))


def _prune_budgeted(
    model: onnx.ModelProto, config: PruneConfig, calib: Dataset | None, data: Dataset | None
) -> PruneResult:
    budget = config.budget
    assert budget is not None
    search_data = calib
    if budget.needs_labels() and (calib is None or calib.labels is None):
        search_data = data
    if search_data is None:
        raise BadInputError(f"the {budget.kind} budget needs data: give --calib (and --data for held-out figures)")
    if budget.needs_labels() and search_data.labels is None:
        raise BadInputError("the --max-drop budget needs labelled data (--data, or --calib with 'labels')")
    analysis = analyze(model, config.load, config.criterion, config.protect)
    _require_prunable(analysis)
    method = _recovery_method(config, calib)
    scfg = SearchConfig(
        budget=budget,
        criterion=config.criterion,
        recover=method,
        keep_rule=config.keep_rule,
        recover_options=config.recover_options,
        time_limit=config.time_limit,
        progress=config.progress,
    )
    cache: dict | None = {} if search_data is calib else None
    result = search(analysis.model, analysis.channels, search_data, scfg, cache=cache)
    if result.plan is None:
        raise BudgetError(f"no pruned model meets the budget {budget.kind}={budget.value:g}; nothing written")
    settings = config.to_dict() | {"recover": method}
    for plan in (result.plan, *result.fallbacks):
        final = _finish(analysis, plan, config, settings, calib, data, result, cache)
        if _budget_holds(final, budget):
            return _restore_batch(_dynamic_batch(model), final)
        log.info("plan breaks the budget on held-out data; backing off")
    raise BudgetError(
        f"no searched model meets the budget {budget.kind}={budget.value:g} on the held-out data; nothing written"
    )


def apply_plan(
    model: onnx.ModelProto,
    plan: Mapping[str, object] | Plan,
    config: PruneConfig = PruneConfig(),
    calib: Dataset | None = None,
    data: Dataset | None = None,
) -> PruneResult:
    """Replay a saved plan (its JSON document or a :class:`Plan`) on ``model``.

    Raises:
        BadInputError: the plan does not match the model.
        VerificationError: the rewrite does not match the masked original.
    """
    normalized = normalize(model, config.load)
    dynamic = _dynamic_batch(model)
    del model  # as in prune()
    analysis = _analyze_normalized(normalized, config.criterion, config.protect)
    document = plan.to_dict() if isinstance(plan, Plan) else plan
    mapped = plan_from_dict(document, analysis.channels)
    return _restore_batch(dynamic, _finish(analysis, mapped, config, config.to_dict() | {"plan": "replayed"}, calib, data))


def verify(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Mapping[str, object] | Plan,
    load: LoadOptions = LoadOptions(),
    tolerance: float = DEFAULT_TOLERANCE,
) -> VerifyResult:
    """Check ``pruned`` against the original masked by ``plan``.

    The original is normalized with ``load`` as ``prune`` would; the plan's
    kept channels are zeroed out at every contracting consumer of the removed
    ones, and both models are compared in onnxruntime.
    """
    normalized = normalize(original, load)
    channels = analyze_channels(normalized)
    document = plan.to_dict() if isinstance(plan, Plan) else plan
    mapped = plan_from_dict(document, channels)
    return _verify(normalized, pruned, mapped, tolerance=tolerance)
