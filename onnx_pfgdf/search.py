"""The automated, budgeted search: how much each prunable group may lose.

1. **Levels.**  Each group gets a ladder of ever smaller kept sets.  For PFGDF
   the rungs are interval half-widths ``alpha`` (``outside``: filters with
   ``|z| > alpha`` go, so a smaller alpha prunes more; ``inside``: a larger one);
   for the baselines they are kept fractions ranked by the criterion.
2. **Sensitivity.**  Every rung of every group is tried alone (others intact,
   no recovery) and its damage measured on a calibration subset as the
   relative L2 error of the outputs.
3. **Allocation.**  For a damage threshold ``tau`` each group takes its deepest
   rung whose damage is ``<= tau``; a bisection on ``log tau`` finds the largest
   ``tau`` whose *recovered* model still meets the budget.  A candidate that
   breaks the budget is rolled back (never kept).
4. **Re-check.**  The caller verifies the chosen plan and re-checks the budget
   on held-out data; :func:`search` only returns plans that met it on the
   search data.

Budgets (one of): top-1 accuracy drop in points (``max_drop``), top-1
agreement with the original (``min_agreement``), relative L2 error of every
output (``max_error``), or a MACs fraction to remove (``target_macs``, best
fidelity at that size).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnx_pfgdf.channels import ChannelAnalysis
from onnx_pfgdf.count import count_model
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.data import Dataset
from onnx_pfgdf.batch import batchable, dynamic_batch
from onnx_pfgdf.evaluate import make_session
from onnx_pfgdf.graph import GraphIndex
from onnx_pfgdf.plan import KeepRule, Plan, score_groups, select_plan
from onnx_pfgdf.recover import RecoverOptions, recover
from onnx_pfgdf.rewrite import apply_plan

__all__ = [
    "BUDGET_KINDS",
    "Budget",
    "SearchConfig",
    "Fidelity",
    "Evaluator",
    "SearchStep",
    "SearchResult",
    "ALPHAS_OUTSIDE",
    "ALPHAS_INSIDE",
    "KEEP_FRACTIONS",
    "search",
    "batchable",
]

log = logging.getLogger(__name__)

BUDGET_KINDS = ("max_drop", "min_agreement", "max_error", "target_macs")
ALPHAS_OUTSIDE = (3.0, 2.5, 2.0, 1.75, 1.5, 1.25, 1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2, 0.1)
ALPHAS_INSIDE = (0.05, 0.1, 0.2, 0.3, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
KEEP_FRACTIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)


@dataclass(frozen=True)
class Budget:
    """What the search may give up.

    Attributes:
        kind: one of :data:`BUDGET_KINDS`.
        value: points of top-1 accuracy (``max_drop``, e.g. 0.5), a fraction
            (``min_agreement`` 0.99, ``target_macs`` 0.7) or a relative error
            (``max_error`` 0.05).
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"unknown budget {self.kind!r}; choose from {', '.join(BUDGET_KINDS)}")
        if self.value < 0 or (self.kind in ("min_agreement", "target_macs") and self.value > 1):
            raise ValueError(f"budget {self.kind} must be in range, got {self.value}")

    def needs_labels(self) -> bool:
        """Only the accuracy budget needs labels."""
        return self.kind == "max_drop"


@dataclass(frozen=True)
class Fidelity:
    """How close a candidate is to the original on one dataset."""

    accuracy: float | None
    agreement: float
    rel_error: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready view (fractions, not percent)."""
        return {"accuracy": self.accuracy, "agreement": self.agreement, "rel_error": self.rel_error}


class Evaluator:
    """Runs candidates on one dataset and compares them with the original.

    The original's outputs are computed once.  Models whose batch dimension
    can be made dynamic are run in batches (see :func:`batchable`).
    """

    def __init__(self, original: onnx.ModelProto, data: Dataset, batch: bool = True) -> None:
        self.data = data
        self.batch = batch and batchable(original) is not None
        self.reference = self._outputs(original)
        self.base_accuracy = self._accuracy(self.reference[0])

    def _outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        session = make_session(dynamic_batch(model) if self.batch else model)
        step = 64 if self.batch else 1
        n = len(self.data)
        chunks: list[list[np.ndarray]] = []
        for s in range(0, n, step):
            feed = {k: v[s:s + step] for k, v in self.data.inputs.items()}
            outs = session.run(None, feed)
            if not chunks:
                chunks = [[] for _ in outs]
            for acc, out in zip(chunks, outs, strict=True):
                acc.append(out)
        return [np.concatenate(c, axis=0) for c in chunks]

    def _accuracy(self, logits: np.ndarray) -> float | None:
        if self.data.labels is None:
            return None
        return float(np.mean(logits.reshape(len(logits), -1).argmax(axis=1) == self.data.labels))

    def __call__(self, model: onnx.ModelProto) -> Fidelity:
        """Accuracy, agreement with the original and relative L2 error of ``model``."""
        outs = self._outputs(model)
        ref0 = self.reference[0].reshape(len(self.reference[0]), -1)
        out0 = outs[0].reshape(len(outs[0]), -1)
        agreement = float(np.mean(ref0.argmax(axis=1) == out0.argmax(axis=1)))
        rel = 0.0
        for ref, out in zip(self.reference, outs, strict=True):
            denom = float(np.linalg.norm(ref.astype(np.float64)))
            diff = float(np.linalg.norm(ref.astype(np.float64) - out.astype(np.float64)))
            rel = max(rel, diff / denom if denom > 0 else diff)
        return Fidelity(self._accuracy(outs[0]), agreement, rel)

    def meets(self, fid: Fidelity, budget: Budget) -> bool:
        """Does ``fid`` satisfy ``budget`` (``target_macs`` is always met here)?"""
        if budget.kind == "max_drop":
            if fid.accuracy is None or self.base_accuracy is None:
                raise ValueError("the max_drop budget needs labelled data")
            return (self.base_accuracy - fid.accuracy) * 100.0 <= budget.value + 1e-9
        if budget.kind == "min_agreement":
            return fid.agreement >= budget.value - 1e-12
        if budget.kind == "max_error":
            return fid.rel_error <= budget.value
        return True


@dataclass(frozen=True)
class SearchConfig:
    """Settings of :func:`search`."""

    budget: Budget
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    recover: str = "lsq"
    keep_rule: KeepRule = field(default_factory=KeepRule)
    recover_options: RecoverOptions = field(default_factory=RecoverOptions)
    sensitivity_samples: int = 64
    sensitivity_rungs: int = 7
    max_gap: float = 0.15
    recovery_samples: int = 128
    fallbacks: int = 8
    bisection_steps: int = 9
    time_limit: float | None = None
    progress: bool = False


@dataclass(frozen=True)
class SearchStep:
    """One candidate the search evaluated."""

    tau: float
    macs_removed: float
    params_removed: float
    fidelity: Fidelity
    accepted: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return {"tau": self.tau, "macs_removed": self.macs_removed, "params_removed": self.params_removed,
                "fidelity": self.fidelity.to_dict(), "accepted": self.accepted}


@dataclass(frozen=True)
class SearchResult:
    """The chosen plan and the trail that led to it."""

    plan: Plan | None
    model: onnx.ModelProto | None
    fidelity: Fidelity | None
    steps: tuple[SearchStep, ...]
    fallbacks: tuple[Plan, ...]
    levels: Mapping[int, Sequence[str]]
    chosen_level: Mapping[int, str]
    sensitivity: Mapping[int, Sequence[float]]
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view of the search trail."""
        return {
            "steps": [s.to_dict() for s in self.steps],
            "chosen_level": {str(k): v for k, v in self.chosen_level.items()},
            "sensitivity": {str(k): list(map(float, v)) for k, v in self.sensitivity.items()},
            "levels": {str(k): list(v) for k, v in self.levels.items()},
            "seconds": self.seconds,
        }


def _ladders(
    analysis: ChannelAnalysis, index: GraphIndex, config: SearchConfig
) -> tuple[dict[int, list[np.ndarray]], dict[int, list[str]]]:
    """Per group: kept index sets from least to most pruned, and a label for each rung.

    PFGDF rungs are the interval half-widths of :data:`ALPHAS_OUTSIDE` /
    :data:`ALPHAS_INSIDE`, ordered by how many filters they keep (for the
    ``weights`` statistic a larger alpha prunes more, for the others less).
    Where those rungs leave a gap of more than ``max_gap`` of a group's
    channels — coupled groups, whose members must all agree that a filter is
    insignificant, often jump from nothing to half — the gap is filled with
    rungs of the criterion's ranking at fixed kept fractions.
    """
    crit = config.criterion
    groups = {g.id: g for g in analysis.prunable_groups()}
    candidates: dict[int, list[tuple[np.ndarray, str]]] = {gid: [] for gid in groups}
    if crit.name == "pfgdf":
        alphas = ALPHAS_INSIDE if crit.side == "inside" else ALPHAS_OUTSIDE
        for alpha in alphas:
            scores = score_groups(analysis, index, CriterionConfig(crit.name, crit.statistic, crit.side, alpha, crit.seed))
            plan = select_plan(analysis, scores, keep_rule=config.keep_rule)
            for gid in candidates:
                if gid in plan.keep:
                    candidates[gid].append((plan.keep[gid], f"alpha={alpha:g}"))
    ranked = score_groups(analysis, index, CriterionConfig(crit.name, crit.statistic, crit.side, None, crit.seed))
    fractions: dict[int, list[tuple[np.ndarray, str]]] = {gid: [] for gid in groups}
    for frac in KEEP_FRACTIONS:
        plan = select_plan(analysis, ranked, ratio=1.0 - frac, keep_rule=config.keep_rule)
        for gid in fractions:
            if gid in plan.keep:
                fractions[gid].append((plan.keep[gid], f"keep={frac:g}"))
    ladders: dict[int, list[np.ndarray]] = {}
    values: dict[int, list[str]] = {}
    for gid, group in groups.items():
        rungs = candidates[gid]
        if crit.name == "pfgdf":
            sizes = sorted({group.channels, *(len(k) for k, _ in rungs)}, reverse=True)
            gaps = [(a, b) for a, b in zip(sizes, sizes[1:]) if a - b > config.max_gap * group.channels]
            gaps.append((sizes[-1], 0))  # below the deepest alpha rung
            rungs = rungs + [(k, label) for k, label in fractions[gid]
                             if any(a > len(k) > b for a, b in gaps)]
        else:
            rungs = fractions[gid]
        seen: set[int] = set()
        ordered = []
        for kept, label in sorted(rungs, key=lambda r: -len(r[0])):
            if len(kept) not in seen:
                seen.add(len(kept))
                ordered.append((kept, label))
        ladders[gid] = [k for k, _ in ordered]
        values[gid] = [label for _, label in ordered]
    return ladders, values


def _plan_key(plan: Plan) -> tuple[tuple[int, bytes], ...]:
    return tuple(sorted((g, k.tobytes()) for g, k in plan.keep.items()))


def _spread(n: int, k: int) -> list[int]:
    """``k`` rung indices spread over ``0..n-1``, always including the deepest."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def search(
    model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    calib: Dataset,
    config: SearchConfig,
    on_step: Callable[[str], None] | None = None,
    cache: dict | None = None,
) -> SearchResult:
    """Find per-group pruning levels that keep ``model`` within ``config.budget``.

    Args:
        model: the normalized model.
        analysis: its channel analysis.
        calib: data the search evaluates on (labelled for ``max_drop``).
        config: budget, criterion, recovery and limits.
        on_step: optional callback receiving a one-line status per step.
        cache: recovery cache shared with the caller (same model and ``calib``).

    Returns:
        The best plan found (``plan is None`` when nothing fits the budget).
    """
    start = time.monotonic()
    deadline = None if config.time_limit is None else start + config.time_limit
    index = GraphIndex(model)
    ladders, values = _ladders(analysis, index, config)
    ladders = {g: lad for g, lad in ladders.items() if lad}
    base = count_model(model)
    evaluator = Evaluator(model, calib)
    sens_data = calib.take(min(len(calib), config.sensitivity_samples))
    sens_eval = Evaluator(model, sens_data)

    def say(text: str) -> None:
        log.info("%s", text)
        if on_step is not None:
            on_step(text)

    # 2. Sensitivity of the rungs, each alone, no recovery.  At most
    #    ``sensitivity_rungs`` per group are measured; a rung in between takes
    #    the damage of the next deeper measured rung (never optimistic).
    damage: dict[int, list[float]] = {}
    measured = {gid: _spread(len(ladder), config.sensitivity_rungs) for gid, ladder in ladders.items()}
    total = sum(len(v) for v in measured.values())
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="sensitivity", unit="rung")
    for gid, ladder in ladders.items():
        probe: dict[int, float] = {}
        for i in measured[gid]:
            if deadline is not None and time.monotonic() > deadline:
                probe[i] = math.inf
                continue
            plan = Plan({gid: ladder[i]}, analysis)
            probe[i] = sens_eval(apply_plan(model, plan)).rel_error
            if bar is not None:
                bar.update(1)
        filled = [probe[min(j for j in probe if j >= i)] for i in range(len(ladder))]
        damage[gid] = list(np.maximum.accumulate(np.asarray(filled, dtype=float)))
    if bar is not None:
        bar.close()
    say(f"sensitivity measured for {len(ladders)} groups, {total} rungs")

    def plan_for(tau: float) -> tuple[Plan, dict[int, str]]:
        keep: dict[int, np.ndarray] = {}
        chosen: dict[int, str] = {}
        for gid, ladder in ladders.items():
            ok = [i for i, d in enumerate(damage[gid]) if d <= tau]
            if ok:
                keep[gid] = ladder[ok[-1]]
                chosen[gid] = values[gid][ok[-1]]
        return Plan(keep, analysis), chosen

    cache = {} if cache is None else cache
    search_recovery = replace(config.recover_options,
                              samples=min(config.recover_options.samples, config.recovery_samples))
    steps: list[SearchStep] = []
    accepted: list[tuple[float, Plan]] = []
    best: tuple[Plan, onnx.ModelProto | None, Fidelity | None, dict[int, str]] | None = None
    finite = [d for ds in damage.values() for d in ds if np.isfinite(d) and d > 0]
    if not finite:
        return SearchResult(None, None, None, (), (), values, {}, damage, time.monotonic() - start)
    lo, hi = math.log(min(finite)) - 0.1, math.log(max(finite)) + 0.1
    lo_start = lo
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.bisection_steps, desc="search", unit="step")
    for _ in range(config.bisection_steps):
        if deadline is not None and time.monotonic() > deadline and best is not None:
            say("time limit reached")
            break
        mid = 0.5 * (lo + hi)
        plan, chosen = plan_for(math.exp(mid))
        if not plan.keep:
            lo = mid  # nothing pruned yet: an unpruned model is no answer, go further
            if bar is not None:
                bar.update(1)
            continue
        rewritten = apply_plan(model, plan)
        after = count_model(rewritten)
        macs_removed = 1.0 - after.macs / base.macs if base.macs else 0.0
        params_removed = 1.0 - after.params / base.params if base.params else 0.0
        if config.budget.kind == "target_macs":
            # Only MACs decide here (recovery never changes them): the
            # candidate is read without recovery; the chosen one is recovered below.
            pruned = rewritten
            fid = evaluator(pruned)
            ok = macs_removed >= config.budget.value
        else:
            pruned = recover(config.recover, model, rewritten, plan, calib, search_recovery, cache)
            fid = evaluator(pruned)
            ok = evaluator.meets(fid, config.budget)
        steps.append(SearchStep(math.exp(mid), macs_removed, params_removed, fid, ok))
        if ok:
            accepted.append((mid, plan))
        say(f"tau={math.exp(mid):.3g}: MACs -{100 * macs_removed:.1f}%, agreement {100 * fid.agreement:.2f}%, "
            f"rel.err {fid.rel_error:.3g} -> {'keep' if ok else 'roll back'}")
        if bar is not None:
            bar.update(1)
        if config.budget.kind == "target_macs":
            # smallest tau that reaches the target: best fidelity at that size
            if ok:
                best = (plan, pruned, fid, chosen)
                hi = mid
            else:
                lo = mid
        elif ok:
            best = (plan, pruned, fid, chosen)
            lo = mid
        else:
            hi = mid
    if bar is not None:
        bar.close()
    seconds = time.monotonic() - start
    if best is None:
        return SearchResult(None, None, None, tuple(steps), (), values, {}, damage, seconds)
    plan, pruned, fid, chosen = best
    if config.budget.kind == "target_macs":
        pruned = recover(config.recover, model, apply_plan(model, plan), plan, calib, search_recovery, cache)
        fid = evaluator(pruned)
    # Less aggressive plans, most pruned first, for the caller's held-out re-check:
    # the accepted ones plus a geometric ladder of thresholds below the best
    # (every one prunes no more than an accepted plan).
    fallbacks: tuple[Plan, ...] = ()
    if config.budget.kind != "target_macs":
        best_log = max(t for t, p in accepted if p is plan)
        low_log = min(t for t, _ in accepted)
        fine = np.linspace(best_log, low_log, config.fallbacks + 2)[1:-1] if low_log < best_log else []
        coarse = np.linspace(low_log, lo_start, 4)[1:-1]
        ladder = [(t, plan_for(math.exp(t))[0]) for t in [*fine, *coarse]]
        seen = {_plan_key(plan)}
        merged = []
        for _, candidate in sorted(accepted + ladder, key=lambda t: t[0], reverse=True):
            key = _plan_key(candidate)
            if candidate.keep and key not in seen:
                seen.add(key)
                merged.append(candidate)
        fallbacks = tuple(merged)
    return SearchResult(plan, pruned, fid, tuple(steps), fallbacks, values, chosen, damage, seconds)
