"""Command line: argv -> config -> api -> files -> exit code; nothing else.

Exit codes: 0 success, 2 bad input or usage, 1 verification or internal failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_pfgdf import api
from onnx_pfgdf.data import Dataset, conform, load_npz
from onnx_pfgdf.criteria import CRITERIA, SIDES, STATISTICS, CriterionConfig
from onnx_pfgdf.errors import BadInputError, NothingToPruneError, PfgdfError
from onnx_pfgdf.io import LoadOptions, parse_input_shape, read_model, write_model
from onnx_pfgdf.plan import KeepRule, load_plan
from onnx_pfgdf.recover import RECOVERY
from onnx_pfgdf.report import render_table
from onnx_pfgdf.search import BUDGET_KINDS, Budget

__all__ = ["main", "convert_and_prune", "build_parser"]

PROG = "onnx-pfgdf"
ROUND_TO_DEFAULT = 8
"""Measured by ``benchmarks/bench_rounding.py`` (``benchmarks/results/rounding.md``)."""

EXAMPLES = """examples:
  onnx-pfgdf analyze models/vgg16.onnx
  onnx-pfgdf prune models/vgg16.onnx -o vgg16_pruned.onnx --criterion l1 --ratio 0.5 --plan-out plan.json --report r.json
  onnx-pfgdf prune models/resnet32.onnx -o r32.onnx --alpha 1.0 --statistic l1 --side outside
  onnx-pfgdf prune model.onnx -o out.onnx --apply-plan plan.json
  onnx-pfgdf verify models/vgg16.onnx vgg16_pruned.onnx --plan plan.json
  onnx-pfgdf evaluate models/vgg16.onnx --data models/data/mnist32_test.npz
"""


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="fix a graph input's shape, e.g. input:1,3,32,32 (repeatable; batch defaults to 1)")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=True,
                   help="run onnx-simplifier before the analysis (default: on)")


def _criterion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-layer", action="append", default=[], metavar="PATTERN",
                   help="keep every channel of the layers whose node name or output matches PATTERN "
                        "(fnmatch, e.g. 'head*'; repeatable), and of the layers coupled to them")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="pfgdf", help="filter criterion (default: pfgdf)")
    p.add_argument("--statistic", choices=STATISTICS, default=CriterionConfig.statistic,
                   help=f"PFGDF per-filter statistic (default: {CriterionConfig.statistic})")
    p.add_argument("--side", choices=SIDES, default=CriterionConfig.side,
                   help=f"PFGDF: prune outside or inside the interval (default: {CriterionConfig.side})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion and verification inputs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (choices come from the registries)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PFGDF filter pruning for exported ONNX CNNs: smaller dense models, verified.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log every step")
    for action in common._actions:
        parser._add_action(action)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("analyze", parents=[common], help="per-layer table: filters, params, MACs, Gaussian fit, groups, frozen reasons")
    p.add_argument("model")
    _load_args(p)
    _criterion_args(p)
    p.add_argument("--json", metavar="PATH", help="also write the analysis as JSON")

    p = sub.add_parser("prune", parents=[common], help="prune filters, verify, write the smaller model",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("-o", "--output", help="pruned model path (required unless --dry-run)")
    _load_args(p)
    _criterion_args(p)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, help="remove this fraction of each prunable group's channels")
    amount.add_argument("--alpha", type=float,
                        help=f"PFGDF interval half-width in sigmas (default when no --ratio: {api.DEFAULT_ALPHA})")
    amount.add_argument("--apply-plan", metavar="PLAN", help="replay a saved plan.json")
    p.add_argument("--min-keep", type=int, default=1, help="channels every group keeps at least (default: 1)")
    p.add_argument("--min-keep-fraction", type=float, default=0.0,
                   help="fraction of each group's channels kept at least (default: 0)")
    p.add_argument("--round-to", type=int, default=ROUND_TO_DEFAULT,
                   help=f"keep channel counts of groups with >= 32 channels at multiples of N (default: {ROUND_TO_DEFAULT}, "
                        "the best realized/ideal speedup measured in benchmarks/results/rounding.md)")
    p.add_argument("--recover", choices=sorted(RECOVERY), default=None,
                   help="training-free recovery (default: lsq with --calib, bias otherwise)")
    p.add_argument("--calib", metavar="NPZ", help="calibration data: .npz with arrays named after the inputs (optional 'labels')")
    p.add_argument("--data", metavar="NPZ", help="held-out labelled .npz: accuracy before/after, budget re-check")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-drop", type=float, metavar="POINTS", help="automated search: top-1 accuracy may fall by at most POINTS")
    budget.add_argument("--min-agreement", type=float, metavar="F", help="automated search: top-1 agreement with the original >= F")
    budget.add_argument("--max-error", type=float, metavar="E", help="automated search: relative L2 error of every output <= E")
    budget.add_argument("--target-macs", type=float, metavar="F", help="automated search: remove this fraction of MACs")
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop the search after SECONDS")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="verification bound on the max relative error (default: 1e-4)")
    p.add_argument("--plan-out", metavar="PATH", help="write the plan (JSON) for replay")
    p.add_argument("--report", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--report-md", metavar="PATH", help="write the report as markdown")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots (Gaussian fits, kept filters, search curve) to DIR")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; write nothing")
    p.add_argument("--allow-unchanged", action="store_true",
                   help="when nothing can be pruned (no Conv, or every group frozen), write the model "
                        "unchanged and exit 0 instead of failing")

    p = sub.add_parser("verify", parents=[common], help="check a pruned model against the masked original")
    p.add_argument("original")
    p.add_argument("pruned")
    p.add_argument("--plan", required=True, help="the plan.json the pruned model was made with")
    p.add_argument("--tolerance", type=float, default=1e-4)
    _load_args(p)

    p = sub.add_parser("bench", parents=[common],
                       help="onnxruntime CPU latency: original vs pruned (+ INT8 variants), edge and server profiles")
    p.add_argument("models", nargs="+", metavar="MODEL", help="the original first, then pruned models")
    p.add_argument("--data", metavar="NPZ", help="labelled .npz: top-1 accuracy of every row")
    p.add_argument("--calib", metavar="NPZ", help="calibration .npz for static INT8")
    p.add_argument("--limit", type=int, help="use only the first N samples of --data")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and profile (default: 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-int8", action="store_true", help="skip onnxruntime's INT8 variants")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--report-md", metavar="PATH", help="write the report as markdown")
    p.add_argument("--plots", metavar="PNG", help="write a bar chart")

    p = sub.add_parser("evaluate", parents=[common], help="top-1 accuracy of a model on a labelled .npz")
    p.add_argument("model")
    p.add_argument("--data", required=True, help=".npz with arrays named after the model inputs and 'labels'")
    p.add_argument("--batch-size", type=int, default=256)
    return parser


def _budget(args: argparse.Namespace) -> Budget | None:
    for kind in BUDGET_KINDS:
        value = getattr(args, kind)
        if value is not None:
            try:
                return Budget(kind, value)
            except ValueError as exc:
                raise BadInputError(str(exc)) from None
    return None


def _input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _dataset(path: str, model: onnx.ModelProto) -> Dataset:
    """The .npz file as the model's inputs, float data cast to the inputs' float type."""
    inits = {t.name for t in model.graph.initializer}
    types = {vi.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
             for vi in model.graph.input if vi.name not in inits and vi.type.tensor_type.elem_type}
    return conform(load_npz(path, _input_names(model)), types)


def _load_options(args: argparse.Namespace) -> LoadOptions:
    shapes = dict(parse_input_shape(text) for text in args.input_shape)
    return LoadOptions(input_shapes=shapes, simplify=args.simplify)


def _criterion(args: argparse.Namespace, alpha: float | None = None) -> CriterionConfig:
    return CriterionConfig(args.criterion, args.statistic, args.side, alpha, args.seed)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars on an interactive terminal only (not in logs or CI), never with --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def _write_text(path: str, text: str) -> None:
    """Atomic text write (temp file in the same directory, then rename)."""
    target = Path(path)
    if not target.parent.is_dir():
        raise BadInputError(f"output directory does not exist: {target.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_fit(fit: dict | None) -> str:
    if not fit:
        return "-"
    return f"mu={fit['mu']:.3g} sd={fit['sigma']:.3g} KS={fit['ks_statistic']:.2f}"


def _cmd_analyze(args: argparse.Namespace) -> int:
    model = read_model(args.model)
    analysis = api.analyze(model, _load_options(args), _criterion(args), tuple(args.keep_layer))
    report = analysis.report
    rows = [["layer", "op", "group", "prunable", "filters", "params", "MACs", "Gaussian fit (statistic)"]]
    for r in report.layers:
        prunable = ("yes" if r.prunable else "no") + (f" ({r.blocks} equal blocks)" if r.prunable and r.blocks > 1 else "")
        rows.append([r.output, r.op_type, str(r.group if r.group is not None else "-"), prunable,
                     str(r.filters), f"{r.params:,}", f"{r.macs:,}", _fmt_fit(r.fit)])
    _say(args, render_table(rows))
    c = report.count
    _say(args, f"\ntotal: {c.filters:,} filters, {c.params:,} params, {c.macs:,} MACs (batch 1); "
               f"{report.prunable_groups} prunable groups, {len(report.frozen)} frozen")
    if report.frozen:
        _say(args, "\nfrozen groups (not pruned):")
        for f in report.frozen:
            _say(args, f"  group {f.group} ({f.channels} ch; layers: {', '.join(f.layers) or '-'}): {'; '.join(f.reasons)}")
    if args.json:
        _write_text(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if not args.dry_run and not args.output:
        raise BadInputError("prune needs -o OUTPUT (or --dry-run)")
    if args.output and os.path.realpath(args.output) == os.path.realpath(args.model):
        raise BadInputError(f"refusing to overwrite the input model: {args.output}")
    if args.round_to < 1 or args.min_keep < 1:
        raise BadInputError("--round-to and --min-keep must be at least 1")
    if not args.tolerance > 0:
        raise BadInputError("--tolerance must be positive")
    # The model is handed over (models.pop() below): the API lets go of it once normalized,
    # so the input's memory is free again before the rewrite and verification.
    models = [read_model(args.model)]
    budget = _budget(args)
    if budget is not None and (args.ratio is not None or args.alpha is not None or args.apply_plan):
        raise BadInputError("a budget (--max-drop/--min-agreement/--max-error/--target-macs) excludes --ratio/--alpha/--apply-plan")
    calib = _dataset(args.calib, models[0]) if args.calib else None
    data = _dataset(args.data, models[0]) if args.data else None
    config = api.PruneConfig(
        criterion=_criterion(args, args.alpha),
        ratio=args.ratio,
        keep_rule=KeepRule(args.min_keep, args.min_keep_fraction, args.round_to),
        load=_load_options(args),
        recover=args.recover,
        tolerance=args.tolerance,
        budget=budget,
        time_limit=args.time_limit,
        progress=_progress(args),
        protect=tuple(args.keep_layer),
    )
    try:
        if args.apply_plan:
            result = api.apply_plan(models.pop(), load_plan(args.apply_plan), config, calib, data)
        else:
            result = api.prune(models.pop(), config, calib, data)
    except NothingToPruneError as exc:
        if not args.allow_unchanged:
            raise
        if not args.dry_run:
            write_model(read_model(args.model), args.output, input_path=args.model)
        _say(args, f"{exc}; " + ("dry run: nothing written" if args.dry_run else f"wrote the model unchanged to {args.output}"))
        return 0
    report = result.report
    _say(args, render_table(report.summary_rows()))
    if report.stages:
        rows = [["stage", "accuracy", "agreement", "rel. L2 error"]]
        for st in report.stages:
            acc = st.get("accuracy")
            rows.append([str(st["stage"]), "-" if acc is None else f"{100 * float(acc):.2f}%",
                         f"{100 * float(st['agreement']):.2f}%", f"{float(st['rel_error']):.4f}"])
        _say(args, f"\non {report.stages[0].get('data')}:\n" + render_table(rows))
    v = result.verification
    if v is not None:
        _say(args, f"verification: passed (max relative error {v.max_rel_error:.2e} <= {v.tolerance:g}, checker ok)")
    if args.dry_run:
        _say(args, "\ndry run: would remove")
        for row in report.layers:
            if row.kept is not None and row.kept < row.filters:
                _say(args, f"  {row.output} ({row.node}): {row.filters - row.kept} of {row.filters}")
        return 0
    for side in (args.plan_out, args.report, args.report_md):
        if side and not Path(side).resolve().parent.is_dir():
            raise BadInputError(f"output directory does not exist: {Path(side).parent}")
    write_model(result.model, args.output, input_path=args.model)
    if args.plan_out:
        _write_text(args.plan_out, json.dumps(result.plan.to_dict(), indent=1) + "\n")
    if args.report:
        _write_text(args.report, json.dumps(report.to_dict(), indent=1) + "\n")
    if args.report_md:
        _write_text(args.report_md, report.to_markdown())
    if args.plots:
        from onnx_pfgdf.plots import write_plots

        paths = write_plots(args.plots, result.normalized, result.plan, config.criterion, result.search)
        _say(args, "plots: " + ", ".join(str(p) for p in paths))
    _say(args, f"wrote {args.output}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    original = read_model(args.original)
    pruned = read_model(args.pruned)
    result = api.verify(original, pruned, load_plan(args.plan), _load_options(args), args.tolerance)
    status = "passed" if result.passed else "FAILED"
    _say(args, f"verification {status}: max relative error {result.max_rel_error:.2e} "
               f"(tolerance {result.tolerance:g}), checker: {result.checker}")
    return 0 if result.passed else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from onnx_pfgdf.evaluate import top1_accuracy

    model = read_model(args.model)
    dataset = _dataset(args.data, model)
    if dataset.labels is None:
        raise BadInputError(f"{args.data} has no 'labels' array")
    acc = top1_accuracy(model, dataset, batch_size=args.batch_size, progress=_progress(args))
    _say(args, f"top-1 accuracy: {100.0 * acc:.2f}% on {len(dataset)} samples ({args.data})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from onnx_pfgdf.bench import compare, plot_report

    floats = [read_model(p) for p in args.models]
    labels = ["original"] + [f"{Path(p).stem}" if Path(p).stem != "original" else f"model{i}"
                             for i, p in enumerate(args.models[1:], 1)]
    if len(set(labels)) != len(labels):
        labels = ["original"] + [f"model{i}" for i in range(1, len(labels))]
    data = _dataset(args.data, floats[0]) if args.data else None
    if data is not None and args.limit:
        data = data.take(args.limit)
    calib = _dataset(args.calib, floats[0]) if args.calib else None
    report = compare([(lab, m, p) for lab, m, p in zip(labels, floats, args.models)], data=data, calib=calib,
                     int8=not args.no_int8, runs=args.runs, warmup=args.warmup, progress=_progress(args))
    _say(args, render_table(report.rows_table()))
    for note in report.notes:
        _say(args, f"note: {note}")
    if args.json:
        _write_text(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
    if args.report_md:
        _write_text(args.report_md, report.to_markdown())
    if args.plots:
        plot_report(report, args.plots)
    return 0


COMMANDS = {"analyze": _cmd_analyze, "prune": _cmd_prune, "verify": _cmd_verify, "evaluate": _cmd_evaluate, "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors with exit 2
        return int(exc.code or 0)
    args.quiet = getattr(args, "quiet", False)
    args.verbose = getattr(args, "verbose", False)
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except PfgdfError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line, details with --verbose
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        print(f"{PROG}: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
              " (run with --verbose for details)", file=sys.stderr)
        return 1


def convert_and_prune(argv: Sequence[str] | None = None) -> int:
    """``convert-and-prune ...`` is ``onnx-pfgdf prune ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["prune", *args])
