"""Which ``--round-to N`` gives the best realized speed per removed MAC on this CPU?

Usage::

    python benchmarks/bench_rounding.py [--model models/vgg16.onnx] [--ratio 0.6] [--runs 60]

The same PFGDF ranking prunes the model at one ratio with kept channel counts
rounded up to multiples of N (N in 1, 2, 4, 8, 16); all variants and the
original are timed interleaved in one onnxruntime run (edge profile: 1 thread,
batch 1).  For each N the table gives MACs, median latency, realized speedup,
the MACs-ideal speedup and their ratio (realized / ideal).  The default of
``--round-to`` follows the N with the best realized/ideal ratio, and this file
is the measurement that justifies it.  Writes ``benchmarks/results/rounding.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

import onnx_pfgdf
from onnx_pfgdf import KeepRule, PruneConfig
from onnx_pfgdf.bench import bench_models, ideal_speedup

HERE = Path(__file__).resolve().parent
ROUNDS = (1, 2, 4, 8, 16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/vgg16.onnx")
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", default=str(HERE / "results" / "rounding"))
    args = parser.parse_args(argv)
    model = onnx.load(args.model)
    variants: list[tuple[str, onnx.ModelProto]] = []
    macs: dict[str, int] = {}
    for n in ROUNDS:
        config = PruneConfig(ratio=args.ratio, keep_rule=KeepRule(round_to=n), recover="none")
        result = onnx_pfgdf.prune(model, config)
        if not variants:
            variants.append(("original", result.normalized))
            macs["original"] = result.report.original.macs
        variants.append((f"round-to {n}", result.model))
        macs[f"round-to {n}"] = result.report.pruned.macs
    report = bench_models(variants, profiles=("edge",), runs=args.runs, warmup=10, memory=False)
    base = report.row("original", "edge").median_ms
    rows = []
    for label, _ in variants[1:]:
        median = report.row(label, "edge").median_ms
        realized = base / median
        ideal = ideal_speedup(macs["original"], macs[label])
        rows.append({"variant": label, "macs": macs[label], "median_ms": median, "realized_speedup": realized,
                     "ideal_speedup": ideal, "realized_over_ideal": realized / ideal})
    best = max(rows, key=lambda r: r["realized_over_ideal"])
    lines = [
        f"# Channel rounding on {args.model} (ratio {args.ratio}, PFGDF ranking, edge profile: 1 thread, batch 1)",
        "",
        f"Command: `python benchmarks/bench_rounding.py --model {args.model} --ratio {args.ratio} --runs {args.runs}`; "
        f"original median {base:.3f} ms; all variants timed interleaved in one run on a 2-core machine.",
        "",
        "| variant | MACs | median ms | realized speedup | ideal (MACs) | realized / ideal |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['macs']:,} | {r['median_ms']:.3f} | {r['realized_speedup']:.2f}x | "
                     f"{r['ideal_speedup']:.2f}x | {r['realized_over_ideal']:.2f} |")
    lines += ["", f"Best realized/ideal: **{best['variant']}**."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"rows": rows, "best": best["variant"], "base_ms": base}, indent=1) + "\n")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
