"""The paper's table, measured: filters / params / MACs removed and test accuracy.

Usage::

    python benchmarks/paper_table.py [--models vgg16,resnet32] [--quick] [--cifar10 DIR]

Writes ``benchmarks/results/paper_table.md`` and ``benchmarks/results/paper_table.json``.
For every model (``models/<name>.onnx``) it measures, on the held-out test split:

1. **Matched MACs** (the fair comparison of criteria): the automated search with
   ``Budget("target_macs", T)`` at the paper's operating point (VGG-16
   ``T = 0.7027``, ResNet-32 ``T = 0.42``); one plan per criterion, read
   without recovery and after ``lsq``, so that both accuracies are at exactly
   the same MACs (see :func:`matched_macs` for why the search itself runs
   without recovery).  One row per criterion.
2. **Accuracy budget**: ``Budget("max_drop", 0.5)`` with the default PFGDF
   criterion and ``lsq``: the reductions reached at <= 0.5 point loss.
3. **Uniform ratio 0.5**: every prunable group loses half its channels (``l1``
   and ``pfgdf``), without and with recovery.
4. **Outside reference**: ``onnxsim.apply_structured_pruning`` at the same
   uniform sparsity, on the exported model and on onnxsim's BN-fused
   simplification of it (no recovery: onnxsim has none).

Counting follows the paper (see ``PFGDF.md``): filters are Conv output
channels, parameters all float initializers, FLOPs are MACs at batch 1.

Data: MNIST padded to 32x32 (``models/data``), an easier substitute for CIFAR-10;
``--cifar10 DIR`` swaps in CIFAR-10 (calibration = first 500 training images,
test = first ``--test-samples`` test images).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

import onnx_pfgdf
from onnx_pfgdf import CriterionConfig, PruneConfig
from onnx_pfgdf.count import count_model
from onnx_pfgdf.data import Dataset, load_cifar10, load_npz
from onnx_pfgdf.io import LoadOptions, normalize
from onnx_pfgdf.search import Budget, Evaluator, SearchConfig, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

OPERATING_POINT = {"vgg16": 0.7027, "resnet32": 0.42}
"""The paper's FLOPs reduction per model (CIFAR-10), used as the MACs target."""

PAPER = {
    "vgg16": ("66.62", ">90", "70.27", "CIFAR-10, fine-tuned: \"restores the original performance\""),
    "resnet32": ("21.92", "\"reduced to 54.64%\"", ">42", "CIFAR-10, fine-tuned: \"restores the original performance\""),
}
"""What the abstract states: filters / params / FLOPs removed (%), accuracy claim."""

NAMES = {"vgg16": "VGG-16", "resnet32": "ResNet-32"}

# (name, statistic, side): the criteria compared at matched MACs.
MATCHED_FULL: tuple[tuple[str, str, str], ...] = (
    ("pfgdf", "l1", "outside"),
    ("pfgdf", "l1", "inside"),
    ("pfgdf", "weights", "outside"),
    ("pfgdf", "std", "inside"),
    ("l1", "l1", "outside"),
    ("fpgm", "l1", "outside"),
    ("random", "l1", "outside"),
)
MATCHED_QUICK: tuple[tuple[str, str, str], ...] = (
    ("pfgdf", "l1", "outside"),
    ("pfgdf", "l1", "inside"),
    ("l1", "l1", "outside"),
)
UNIFORM_RATIO = 0.5
MAX_DROP = 0.5

log = logging.getLogger("paper_table")


def crit_label(crit: CriterionConfig) -> str:
    """``pfgdf/l1/outside`` for PFGDF, the bare name for a baseline."""
    return f"pfgdf/{crit.statistic}/{crit.side}" if crit.name == "pfgdf" else crit.name


@dataclass
class Row:
    """One line of the table (fractions, not percent)."""

    model: str
    kind: str  # matched_macs | max_drop | uniform | onnxsim
    method: str
    setting: str
    filters: float | None = None
    params: float | None = None
    macs: float | None = None
    acc_before: float | None = None
    acc_none: float | None = None
    acc_lsq: float | None = None
    agreement_none: float | None = None
    agreement_lsq: float | None = None
    rel_error_none: float | None = None
    rel_error_lsq: float | None = None
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- data, models


def load_data(args: argparse.Namespace) -> tuple[Dataset, Dataset, str]:
    """Calibration and test data, and a description of them."""
    if args.cifar10:
        x, y = load_cifar10(args.cifar10, "train")
        calib = Dataset({"input": x[:500]}, y[:500])
        del x, y
        x, y = load_cifar10(args.cifar10, "test")
        n = len(y) if args.test_samples <= 0 else min(args.test_samples, len(y))
        test = Dataset({"input": x[:n]}, y[:n])
        return calib, test, f"CIFAR-10 (calibration: first 500 train images; test: first {n:,} test images)"
    calib = load_npz(os.path.join(args.data_dir, "mnist32_calib.npz"), ["input"])
    test = load_npz(os.path.join(args.data_dir, "mnist32_test.npz"), ["input"])
    if args.test_samples > 0:
        test = test.take(args.test_samples)
    return calib, test, (
        f"MNIST-32 (MNIST padded to 32x32, 3 channels), an easier substitute for CIFAR-10: "
        f"calibration {len(calib):,} images, test {len(test):,} images"
    )


def wait_for(paths: list[str], timeout: float) -> None:
    """Poll until every path exists (the reference models may still be training)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"model(s) not found: {', '.join(missing)}")
        log.info("waiting for %s", ", ".join(missing))
        time.sleep(30)


def _stage(report: Any, prefix: str) -> dict[str, Any] | None:
    for s in report.stages:
        if str(s["stage"]).startswith(prefix):
            return dict(s)
    return None


def _fill(row: Row, result: Any, recovered: bool) -> None:
    red = result.report.reduction
    row.filters, row.params, row.macs = red["filters"], red["params"], red["macs"]
    orig = _stage(result.report, "original")
    none = _stage(result.report, "pruned")
    rec = _stage(result.report, "recovered")
    row.acc_before = orig["accuracy"] if orig else None
    if none:
        row.acc_none, row.agreement_none, row.rel_error_none = none["accuracy"], none["agreement"], none["rel_error"]
    if recovered and rec:
        row.acc_lsq, row.agreement_lsq, row.rel_error_lsq = rec["accuracy"], rec["agreement"], rec["rel_error"]


def _timed(row: Row, fn: Callable[[], None]) -> None:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:  # a failing row is a finding: record it, keep going
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log.warning("%s %s failed: %s", row.model, row.method, row.error)
    row.seconds = time.monotonic() - start


# ---------------------------------------------------------------- the four row kinds


def matched_macs(model: onnx.ModelProto, name: str, crit: CriterionConfig, calib: Dataset, test: Dataset,
                 time_limit: float | None, via_prune: bool = False) -> Row:
    """The automated search to the paper's MACs target, then the plan with ``lsq`` and with ``none``.

    ``prune(budget=Budget("target_macs", T), recover="lsq")`` accepts a
    bisection step when its MACs reach ``T`` and keeps the smallest such
    threshold; recovery never changes MACs, so the search picks the same plan
    whether its candidates are recovered or not.  The default path therefore
    runs :func:`onnx_pfgdf.search.search` with ``recover="none"`` (it skips
    nine least-squares re-fits) and replays the plan with
    ``apply_plan(..., PruneConfig(recover="lsq"))``, whose report carries the
    accuracy of the same plan without recovery ("pruned, no recovery") and
    after ``lsq``.  ``via_prune`` runs the documented ``prune`` call instead
    and replays its plan with ``recover="none"`` (the check that both paths
    agree).
    """
    target = OPERATING_POINT[name]
    row = Row(name, "matched_macs", crit_label(crit), f"target_macs {target}")
    budget = Budget("target_macs", target)

    def run() -> None:
        if via_prune:
            t0 = time.monotonic()
            res = onnx_pfgdf.prune(
                model, PruneConfig(criterion=crit, recover="lsq", budget=budget, time_limit=time_limit), calib, test)
            row.extra["prune_seconds"] = time.monotonic() - t0
            _fill(row, res, recovered=True)
            stage_none = row.acc_none
            t0 = time.monotonic()
            replay = onnx_pfgdf.apply_plan(model, res.plan.to_dict(), PruneConfig(recover="none"), calib, test)
            row.extra["replay_seconds"] = time.monotonic() - t0
            rn = _stage(replay.report, "pruned")
            row.acc_none, row.agreement_none, row.rel_error_none = rn["accuracy"], rn["agreement"], rn["rel_error"]
            row.extra["replay_matches_stage"] = stage_none == row.acc_none
            plan_doc, searched = res.plan.to_dict(), res.search
        else:
            analysis = onnx_pfgdf.analyze(model, criterion=crit)
            t0 = time.monotonic()
            searched = search(analysis.model, analysis.channels, calib,
                              SearchConfig(budget=budget, criterion=crit, recover="none", time_limit=time_limit))
            row.extra["search_wall_seconds"] = time.monotonic() - t0
            if searched.plan is None:
                raise RuntimeError(f"no plan reaches target_macs {target}")
            plan_doc = searched.plan.to_dict()
            t0 = time.monotonic()
            res = onnx_pfgdf.apply_plan(model, plan_doc, PruneConfig(recover="lsq"), calib, test)
            row.extra["replay_seconds"] = time.monotonic() - t0
            _fill(row, res, recovered=True)
        row.extra["path"] = "prune(budget) + apply_plan(none)" if via_prune else "search(recover=none) + apply_plan(lsq)"
        row.extra["plan"] = plan_doc
        if searched is not None:
            row.extra["search_seconds"] = searched.seconds
            row.extra["search_steps"] = len(searched.steps)
            row.extra["chosen_level"] = {str(k): v for k, v in searched.chosen_level.items()}
        row.extra["kept_per_layer"] = [
            [lay.output, lay.filters, lay.kept] for lay in res.report.layers if lay.op_type == "Conv"
        ]

    _timed(row, run)
    return row


def max_drop(model: onnx.ModelProto, name: str, calib: Dataset, test: Dataset, time_limit: float | None) -> Row:
    """The automated PFGDF search within a 0.5-point accuracy budget (default criterion, lsq)."""
    crit = CriterionConfig()
    row = Row(name, "max_drop", crit_label(crit), f"max_drop {MAX_DROP} pt")

    def run() -> None:
        res = onnx_pfgdf.prune(
            model,
            PruneConfig(criterion=crit, recover="lsq", budget=Budget("max_drop", MAX_DROP), time_limit=time_limit),
            calib,
            test,
        )
        _fill(row, res, recovered=True)
        if res.search is not None:
            row.extra["search_seconds"] = res.search.seconds
            row.extra["search_steps"] = len(res.search.steps)
            row.extra["chosen_level"] = {str(k): v for k, v in res.search.chosen_level.items()}

    _timed(row, run)
    return row


def uniform(model: onnx.ModelProto, name: str, crit: CriterionConfig, calib: Dataset, test: Dataset) -> Row:
    """Every prunable group loses round(0.5 * C) channels; report shows none and lsq."""
    row = Row(name, "uniform", crit_label(crit), f"ratio {UNIFORM_RATIO}")

    def run() -> None:
        res = onnx_pfgdf.prune(model, PruneConfig(criterion=crit, ratio=UNIFORM_RATIO, recover="lsq"), calib, test)
        _fill(row, res, recovered=True)

    _timed(row, run)
    return row


def onnxsim_rows(model: onnx.ModelProto, name: str, test: Dataset) -> list[Row]:
    """onnxsim.apply_structured_pruning at the uniform sparsity, as exported and BN-fused."""
    import onnxsim

    rows = []
    variants: list[tuple[str, Callable[[], onnx.ModelProto]]] = [
        ("as exported (BN nodes kept)", lambda: model),
        ("after onnxsim.simplify (BN fused into Conv)",
         lambda: onnxsim.simplify(model, overwrite_input_shapes={"input": [1, 3, 32, 32]})[0]),
    ]
    for label, source in variants:
        row = Row(name, "onnxsim", f"onnxsim {onnxsim.__version__} apply_structured_pruning (l2)",
                  f"sparsity {UNIFORM_RATIO}, {label}")

        def run(source: Callable[[], onnx.ModelProto] = source, row: Row = row) -> None:
            base = source()
            t0 = time.monotonic()
            pruned = onnxsim.apply_structured_pruning(base, sparsity=UNIFORM_RATIO, importance_norm="l2")
            row.extra["prune_seconds"] = time.monotonic() - t0
            nb, np_ = normalize(base, LoadOptions(simplify=False)), normalize(pruned, LoadOptions(simplify=False))
            before, after = count_model(nb), count_model(np_)
            row.filters = 1 - after.filters / before.filters
            row.params = 1 - after.params / before.params
            row.macs = 1 - after.macs / before.macs
            row.extra["counts_before"] = {"filters": before.filters, "params": before.params, "macs": before.macs}
            row.extra["counts_after"] = {"filters": after.filters, "params": after.params, "macs": after.macs}
            ev = Evaluator(nb, test)
            fid = ev(np_)
            row.acc_before = ev.base_accuracy
            row.acc_none, row.agreement_none, row.rel_error_none = fid.accuracy, fid.agreement, fid.rel_error

        _timed(row, run)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- rendering


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def winners(rows: list[Row]) -> dict[str, Any]:
    """Best criterion at matched MACs (accuracy after lsq, then agreement, then rel. error)."""
    ok = [r for r in rows if r.kind == "matched_macs" and r.error is None and r.acc_lsq is not None]
    if not ok:
        return {}

    def key(r: Row) -> tuple[float, float, float]:
        return (r.acc_lsq or 0.0, r.agreement_lsq or 0.0, -(r.rel_error_lsq or 0.0))

    ranked = sorted(ok, key=key, reverse=True)
    out: dict[str, Any] = {"overall": ranked[0].method, "ranking": [r.method for r in ranked]}
    best_none = max(ok, key=lambda r: (r.acc_none or 0.0, r.agreement_none or 0.0))
    out["overall_without_recovery"] = best_none.method
    for side in ("outside", "inside"):
        side_rows = [r for r in ranked if r.method.startswith("pfgdf/") and r.method.endswith(side)]
        if side_rows:
            out[f"pfgdf_{side}"] = side_rows[0].method
    pf = [r for r in ranked if r.method.startswith("pfgdf/")]
    if pf:
        out["pfgdf_reading_winner"] = pf[0].method
        losers = [r.method for r in pf if r.method.split("/")[2] != pf[0].method.split("/")[2]]
        out["pfgdf_reading_loser"] = losers[0] if losers else None
    return out


def _run_lines(meta: dict[str, Any]) -> list[str]:
    """Command(s), dates and run times; one line per run when the file merges several."""
    runs = meta.get("per_model") or {}
    commands = sorted({str(v.get("command")) for v in runs.values()}) if runs else [meta["command"]]
    if len(commands) <= 1:
        return [f"- Command: `{commands[0] if commands else meta['command']}`",
                f"- Date: {meta['date']}; total run time {meta['total_seconds'] / 60:.1f} min"]
    out = ["- Measured in separate runs, merged with `--append` (the runs overlapped in time on the same 2 cores):"]
    for m, v in runs.items():
        out.append(f"  - {NAMES.get(m, m)}: `{v.get('command')}` on {v.get('date')}, "
                   f"{float(v.get('seconds') or 0) / 60:.1f} min")
    return out


def render(meta: dict[str, Any], rows: list[Row]) -> str:
    data_note = "MNIST-32 (easier substitute for CIFAR-10)" if not meta["cifar10"] else "CIFAR-10"
    lines = [
        "# PFGDF paper table, measured",
        "",
        f"**Data: {meta['data']}.**" + (
            " MNIST-32 is far easier than CIFAR-10 and the models are heavily over-parameterized for it: "
            "every figure below is an MNIST-32 figure and is *not* comparable with the paper's CIFAR-10 numbers."
            if not meta["cifar10"] else ""),
        "",
        *_run_lines(meta),
        f"- Machine: {meta['machine']}",
        f"- Versions: {meta['versions']}",
        "- Counting as the paper counts: filters = Conv output channels; params = all float initializers "
        "(conv, BN, fully connected); FLOPs are MACs (multiply-accumulates) at batch 1. "
        "All percentages are *removed* fractions; accuracies are top-1 on the test split.",
        "- `none` = pruned without recovery; `lsq` = training-free least-squares re-fit of the next layer "
        "on 256 calibration images (the paper fine-tunes instead).",
        "- Row 1, matched MACs: the automated search with `Budget(\"target_macs\", T)`, T = the paper's FLOPs "
        "reduction, on the 500 calibration images; one plan per criterion, read without recovery (`none`) and "
        "after `lsq`, so both accuracies are at identical MACs. The search accepts a step when its MACs reach "
        "T, which recovery cannot change, so it runs with `recover=\"none\"` and the plan is replayed with "
        "`apply_plan(..., PruneConfig(recover=\"lsq\"))`: the same plan `prune(budget=..., recover=\"lsq\")` "
        "returns, without nine least-squares re-fits inside the search (`--via-prune` runs the `prune` call). "
        "MACs land at or just above T: the per-layer ladders are discrete. Seconds = search + replay.",
        "- Row 2: `prune(budget=Budget(\"max_drop\", 0.5), recover=\"lsq\")`, default PFGDF criterion "
        "(`pfgdf/l1/outside`), accuracy budget checked on calibration labels, re-checked on the test split. "
        "Row 3: uniform `ratio=0.5` (every prunable group loses half its channels). "
        "Row 4: `onnxsim.apply_structured_pruning(sparsity=0.5)`, no recovery; its `acc before` is the input "
        "model it was given.",
        "",
    ]
    for name in meta["models"]:
        mrows = [r for r in rows if r.model == name]
        if not mrows:
            continue
        orig = meta["original"].get(name, {})
        lines += [f"## {NAMES.get(name, name)}", ""]
        if orig:
            lines.append(
                f"Original: {orig['filters']:,} filters, {orig['params']:,} params, {orig['macs']:,} MACs; "
                f"test accuracy {pct(orig.get('accuracy'))}% on {data_note}."
            )
            lines.append("")
        run = meta.get("per_model", {}).get(name)
        if run:
            lines.append(f"Measured by `{run['command']}`{' (quick: fewer rows)' if run.get('quick') else ''} "
                         f"on {run['date']}, {float(run['seconds'] or 0) / 60:.1f} min for this model.")
            lines.append("")
        win = meta["winners"].get(name, {})
        head = ["row", "method", "setting", "filters −%", "params −%", "MACs −%", "acc before %",
                "acc none %", "acc lsq %", "s", "data"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        f, p, m, claim = PAPER.get(name, ("?", "?", "?", ""))
        lines.append(f"| paper | PFGDF (abstract) | automated | {f} | {p} | {m} | – | – | – | – | {claim} |")
        labels = {"matched_macs": "1 matched MACs", "max_drop": "2 budget ≤0.5 pt", "uniform": "3 uniform",
                  "onnxsim": "4 onnxsim"}
        for r in mrows:
            method = r.method
            if r.kind == "matched_macs" and win.get("overall") == r.method:
                method = f"**{method}** (winner)"
            if r.error:
                cells = [labels[r.kind], method, r.setting, f"error: `{r.error}`", "", "", "", "", "",
                         f"{r.seconds:.0f}", data_note]
            else:
                cells = [labels[r.kind], method, r.setting, pct(r.filters), pct(r.params), pct(r.macs),
                         pct(r.acc_before, 1), pct(r.acc_none, 1), pct(r.acc_lsq, 1) if r.kind != "onnxsim" else "n/a",
                         f"{r.seconds:.0f}", data_note]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if win:
            lines.append(
                f"Winner at matched MACs ({data_note}, accuracy after lsq, ties broken by agreement with the "
                f"original): **{win['overall']}**; ranking: {', '.join(win['ranking'])}. "
                f"Best without recovery: {win['overall_without_recovery']}."
            )
            n_test = meta.get("test_samples")
            acc0 = orig.get("accuracy")
            if n_test and acc0:
                se = 100 * (acc0 * (1 - acc0) / n_test) ** 0.5
                lines.append(
                    f"With {n_test:,} test images one image is {100 / n_test:.1f} pt and the binomial standard "
                    f"error near {pct(acc0, 1)}% is {se:.2f} pt: accuracy gaps below about {2.8 * se:.1f} pt "
                    f"(two standard errors of a difference) do not separate two criteria."
                )
                accs = [r.acc_lsq for r in mrows if r.kind == "matched_macs" and r.acc_lsq is not None]
                spread = 100 * (max(accs) - min(accs)) if accs else 0.0
                if spread < 2.8 * se:
                    lines.append(
                        f"The lsq accuracies at matched MACs span {spread:.1f} pt, less than that: on MNIST-32 "
                        f"the winner and the PFGDF reading below are nominal, not measured differences."
                    )
            if win.get("pfgdf_reading_winner"):
                lines.append(
                    f"PFGDF readings: the better reading is **{win['pfgdf_reading_winner']}**; "
                    f"the best of the other side (loser) is {win.get('pfgdf_reading_loser') or '–'}."
                )
            lines.append("")
        notes = [r for r in mrows if r.kind == "matched_macs" and r.error is None and r.macs is not None
                 and r.macs > OPERATING_POINT[name] + 0.02]
        for r in notes:
            lines.append(f"- {r.method} overshoots the MACs target: {pct(r.macs)}% removed for a "
                         f"{pct(OPERATING_POINT[name])}% target (the per-layer ladders are discrete"
                         + ("; with the `weights` statistic every group's search ladder has a single rung (alpha 3.0)"
                            if "/weights/" in r.method else "") + ").")
        if notes:
            lines.append("")
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "python benchmarks/paper_table.py            # all rows, both models",
        "python benchmarks/paper_table.py --quick    # smoke run: 3 criteria at matched MACs, no budget row",
        "```",
        "",
        "Raw figures (all stages, agreement, relative error, search trail, kept filters per layer): "
        "`benchmarks/results/paper_table.json`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet32,vgg16")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 criteria at matched MACs, no budget row")
    parser.add_argument("--cifar10", metavar="DIR", default=None, help="CIFAR-10 python batches instead of MNIST-32")
    parser.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "models", "data"))
    parser.add_argument("--test-samples", type=int, default=1000, help="test images used (0 = all)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per automated search")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the models to appear")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--via-prune", action="store_true",
                        help="matched-MACs rows through prune(budget=...) with lsq inside the search (slower)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other models already in paper_table.json")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render paper_table.md from an existing paper_table.json")
    args = parser.parse_args(argv)
    if args.render_only:
        with open(os.path.join(args.out, "paper_table.json")) as fh:
            doc = json.load(fh)
        doc["meta"].setdefault("test_samples", args.test_samples)  # files written before the field existed
        rows_in = [Row(**r) for r in doc["rows"]]
        with open(os.path.join(args.out, "paper_table.md"), "w") as fh:
            fh.write(render(doc["meta"], rows_in))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("onnx_pfgdf",):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    start = time.monotonic()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in OPERATING_POINT]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(OPERATING_POINT)}")
    paths = {m: os.path.join(args.models_dir, f"{m}.onnx") for m in models}
    wait_for(list(paths.values()), args.wait)
    calib, test, data_desc = load_data(args)
    os.makedirs(args.out, exist_ok=True)

    command = "python benchmarks/paper_table.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    import onnxruntime
    import onnxsim
    import scipy

    meta: dict[str, Any] = {
        "command": command,
        "machine": f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, "
                   f"shared with other jobs (load average at start {os.getloadavg()[0]:.1f})",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": f"onnx-pfgdf {onnx_pfgdf.__version__}, onnx {onnx.__version__}, onnxruntime "
                    f"{onnxruntime.__version__}, onnxsim {onnxsim.__version__}, numpy {np.__version__}, "
                    f"scipy {scipy.__version__}, Python {platform.python_version()}",
        "data": data_desc,
        "cifar10": bool(args.cifar10),
        "quick": args.quick,
        "test_samples": len(test),
        "models": models,
        "operating_point": {m: OPERATING_POINT[m] for m in models},
        "original": {},
        "winners": {},
        "total_seconds": 0.0,
        "per_model": {},
    }
    model_runs: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []

    def save() -> None:
        meta["total_seconds"] = time.monotonic() - start
        meta["per_model"].update({m: dict(v) for m, v in model_runs.items()})
        out_rows = [asdict(r) for r in rows]
        doc_meta = dict(meta)
        path = os.path.join(args.out, "paper_table.json")
        if args.append and os.path.exists(path):
            # keep what earlier runs measured for the other models (re-read at every save)
            with open(path) as fh:
                old = json.load(fh)
            keep = [r for r in old.get("rows", []) if r["model"] not in models]
            out_rows = keep + out_rows
            om = old.get("meta", {})
            others = sorted({r["model"] for r in keep})
            for key in ("original", "winners", "per_model", "operating_point"):
                doc_meta[key] = {**{m: v for m, v in om.get(key, {}).items() if m in others}, **meta[key]}
            for m in others:
                doc_meta["per_model"].setdefault(m, {"command": om.get("command"), "seconds": om.get("total_seconds"),
                                                      "date": om.get("date"), "quick": om.get("quick")})
            doc_meta["models"] = others + [m for m in models if m not in others]
        with open(path, "w") as fh:
            json.dump({"meta": doc_meta, "rows": out_rows}, fh, indent=1, default=float)
        with open(os.path.join(args.out, "paper_table.md"), "w") as fh:
            fh.write(render(doc_meta, [Row(**r) for r in out_rows]))

    matched = MATCHED_QUICK if args.quick else MATCHED_FULL
    for name in models:
        model_start = time.monotonic()
        model_runs[name] = {"command": command, "quick": args.quick, "date": meta["date"], "seconds": 0.0}
        model = onnx.load(paths[name])
        analysis = onnx_pfgdf.analyze(model)
        c = analysis.count
        meta["original"][name] = {"filters": c.filters, "params": c.params, "macs": c.macs,
                                  "accuracy": Evaluator(analysis.model, test).base_accuracy}

        def add(row: Row) -> None:
            rows.append(row)
            model_runs[name]["seconds"] = time.monotonic() - model_start
            log.info("%s %-9s %-22s %-22s filters -%s%% MACs -%s%% acc %s/%s/%s %.0fs%s", name, row.kind,
                     row.method[:22], row.setting[:22], pct(row.filters), pct(row.macs), pct(row.acc_before, 1),
                     pct(row.acc_none, 1), pct(row.acc_lsq, 1), row.seconds, f" ERROR {row.error}" if row.error else "")
            save()

        for cname, stat, side in matched:
            add(matched_macs(model, name, CriterionConfig(cname, stat, side), calib, test, args.time_limit,
                             args.via_prune))
        meta["winners"][name] = winners(rows)
        if not args.quick:
            add(max_drop(model, name, calib, test, args.time_limit))
        for crit in (CriterionConfig("l1"), CriterionConfig("pfgdf", "l1", "outside")):
            add(uniform(model, name, crit, calib, test))
        for row in onnxsim_rows(model, name, test):
            add(row)
        meta["winners"][name] = winners([r for r in rows if r.model == name])
        save()
    save()
    log.info("wrote %s (total %.1f min)", os.path.join(args.out, "paper_table.md"), meta["total_seconds"] / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
