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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import onnx

from onnx_pfgdf.channels import ChannelAnalysis, analyze_channels
from onnx_pfgdf.count import ModelCount, count_model, reduction
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.errors import BadInputError, VerificationError
from onnx_pfgdf.graph import GraphIndex
from onnx_pfgdf.io import LoadOptions, normalize
from onnx_pfgdf.plan import GroupScore, KeepRule, Plan, plan_from_dict, score_groups, select_plan
from onnx_pfgdf.recover import RECOVERY, recover
from onnx_pfgdf.report import AnalyzeReport, FrozenGroup, LayerRow, PruneReport
from onnx_pfgdf.rewrite import apply_plan as _rewrite
from onnx_pfgdf.verify import DEFAULT_TOLERANCE, VerifyResult
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
        recover: a key of :data:`onnx_pfgdf.recover.RECOVERY`.
        tolerance: verification bound on the max relative error.
        verify: run verification (the CLI always does before writing).
    """

    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    ratio: float | None = None
    keep_rule: KeepRule = field(default_factory=KeepRule)
    load: LoadOptions = field(default_factory=LoadOptions)
    recover: str = "none"
    tolerance: float = DEFAULT_TOLERANCE
    verify: bool = True

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


def _criterion_for(config: PruneConfig) -> CriterionConfig:
    crit = config.criterion
    if config.ratio is None and crit.alpha is None:
        if crit.name != "pfgdf":
            raise BadInputError(f"criterion '{crit.name}' ranks filters only: give a ratio")
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
) -> Analysis:
    """Normalize ``model`` and find its channel groups, scores and counts.

    Raises:
        BadInputError: the model cannot be pruned at all (see ``io.normalize``).
    """
    normalized = normalize(model, load)
    index = GraphIndex(normalized)
    channels = analyze_channels(normalized, index)
    count = count_model(normalized)
    scores = score_groups(channels, index, criterion)
    report = AnalyzeReport(
        count=count,
        layers=_layer_rows(channels, count, scores),
        prunable_groups=len(channels.prunable_groups()),
        frozen=_frozen(channels),
    )
    return Analysis(normalized, channels, count, scores, report)


def _finish(
    analysis: Analysis, plan: Plan, config: PruneConfig, settings: Mapping[str, object]
) -> PruneResult:
    rewritten = _rewrite(analysis.model, plan)
    verification = None
    if config.verify:
        verification = _verify(analysis.model, rewritten, plan, tolerance=config.tolerance)
        if not verification.passed:
            raise VerificationError(
                f"pruned model failed verification: max relative error {verification.max_rel_error:.3g} "
                f"> {config.tolerance:g} or checker: {verification.checker}"
            )
    final = recover(config.recover, analysis.model, rewritten, plan)
    after = count_model(final)
    report = PruneReport(
        original=analysis.count,
        pruned=after,
        reduction=reduction(analysis.count, after),
        layers=_layer_rows(analysis.channels, analysis.count, analysis.scores, plan, after),
        frozen=_frozen(analysis.channels),
        settings=settings,
        verification=verification.to_dict() if verification else None,
    )
    return PruneResult(final, plan, report, verification, analysis.model)


def prune(model: onnx.ModelProto, config: PruneConfig = PruneConfig()) -> PruneResult:
    """Prune the filters of ``model`` and verify the result.

    With ``config.ratio`` each prunable group loses ``round(ratio * C)``
    channels, the least important by ``config.criterion``.  Without it the
    PFGDF interval ``[mu - alpha*sigma, mu + alpha*sigma]`` of each layer's
    filter statistic decides which filters are insignificant.

    Raises:
        BadInputError: unusable model or settings.
        VerificationError: the rewrite does not match the masked original.
    """
    if config.recover not in RECOVERY:
        raise BadInputError(f"unknown recovery '{config.recover}'; available: {', '.join(RECOVERY)}")
    if config.ratio is not None and not 0.0 <= config.ratio < 1.0:
        raise BadInputError(f"ratio must be in [0, 1), got {config.ratio}")
    criterion = _criterion_for(config)
    try:
        analysis = analyze(model, config.load, criterion)
    except ValueError as exc:
        raise BadInputError(str(exc).splitlines()[0]) from None
    plan = select_plan(analysis.channels, analysis.scores, ratio=config.ratio, keep_rule=config.keep_rule)
    settings = config.to_dict() | {"criterion": asdict(criterion)}
    return _finish(analysis, plan, config, settings)


def apply_plan(
    model: onnx.ModelProto, plan: Mapping[str, object] | Plan, config: PruneConfig = PruneConfig()
) -> PruneResult:
    """Replay a saved plan (its JSON document or a :class:`Plan`) on ``model``.

    Raises:
        BadInputError: the plan does not match the model.
        VerificationError: the rewrite does not match the masked original.
    """
    analysis = analyze(model, config.load, config.criterion)
    document = plan.to_dict() if isinstance(plan, Plan) else plan
    mapped = plan_from_dict(document, analysis.channels)
    return _finish(analysis, mapped, config, config.to_dict() | {"plan": "replayed"})


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
