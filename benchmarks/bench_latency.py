"""Latency of an original model, its pruned versions and their INT8 variants in onnxruntime.

Usage::

    python benchmarks/bench_latency.py ORIGINAL.onnx PRUNED.onnx [...] \
        [--data NPZ] [--calib NPZ] [--runs N] [--out benchmarks/results/latency]

Rows: ``original``, each pruned model (labelled by file stem), then for each of
them ``<label>+int8-dynamic`` and, with ``--calib``, ``<label>+int8-static``
(onnxruntime's own quantizers, see :mod:`onnx_pfgdf.bench`).  Runs are
interleaved across all models under the ``edge`` (1 thread, batch 1) and
``server`` (all cores, batch 8) profiles.  Writes ``<out>.json``, ``<out>.md``
and ``<out>.png`` and prints the markdown table.

Timings are ratios measured in one run on the current machine: other jobs on
the machine shift them; read the speedup columns, not the absolute ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from onnx_pfgdf.bench import PROFILES, compare, plot_report
from onnx_pfgdf.data import Dataset, load_npz
from onnx_pfgdf.io import read_model

DEFAULT_OUT = os.path.join("benchmarks", "results", "latency")


def _input_names(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def _labels(paths: list[str]) -> list[str]:
    labels = ["original"]
    for p in paths[1:]:
        stem = Path(p).stem
        label = stem if stem not in labels else f"{stem}-{len(labels)}"
        labels.append(label)
    return labels



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="original model first, then pruned models")
    parser.add_argument("--data", help="labelled .npz for top-1 accuracy")
    parser.add_argument("--calib", help=".npz for static INT8 calibration")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples of --data")
    parser.add_argument("--calib-samples", type=int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model and profile")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up runs per session")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", nargs="+", default=["edge", "server"], choices=sorted(PROFILES))
    parser.add_argument("--no-int8", action="store_true", help="skip the quantized variants")
    parser.add_argument("--no-memory", action="store_true", help="do not measure peak RSS")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output prefix (writes .json .md .png)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    floats = [read_model(p) for p in args.models]
    labels = _labels(args.models)
    names = _input_names(floats[0])
    data: Dataset | None = load_npz(args.data, names) if args.data else None
    if data is not None and args.limit:
        data = data.take(args.limit)
    calib: Dataset | None = load_npz(args.calib, names) if args.calib else None

    report = compare(
        [(label, model, path) for label, model, path in zip(labels, floats, args.models)],
        data=data, calib=calib, int8=not args.no_int8, calib_samples=args.calib_samples,
        profiles=args.profiles, runs=args.runs, warmup=args.warmup, seed=args.seed,
        memory=not args.no_memory, progress=args.progress,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    Path(f"{out}.md").write_text(report.to_markdown())
    plot_report(report, f"{out}.png")
    sys.stdout.write(report.to_markdown())
    sys.stdout.write(f"\nwrote {out}.json, {out}.md, {out}.png\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
