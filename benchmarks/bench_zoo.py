"""The real exported topologies shipped with onnx, pruned end to end through the CLI.

Usage::

    python benchmarks/bench_zoo.py [--models resnet50 ...] [--ratio 0.5] [--out benchmarks/results/zoo]
    python benchmarks/bench_zoo.py --corpus torch      # tests/data/torch_exports -> results/torch_exports

Each model of ``tests/zoo.py`` (the onnx package's exported zoo graphs, their
constant-fill weights replaced by seeded random ones) is saved to a temporary
directory and run through ``onnx-pfgdf analyze`` and
``onnx-pfgdf prune --criterion l1 --ratio R --recover none --no-simplify``
as a user would.  The pruned model is verified by the tool itself (checker +
masked-original equivalence in onnxruntime); the table records the removed
fractions, the prunable and frozen groups, and the distinct frozen reasons.
Writes ``<out>.md``, ``<out>.json`` and each model's ``analyze`` table to
``<out>_analyze/<model>.txt``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from zoo import ZOO_MODELS, load_zoo  # noqa: E402

DEFAULT_OUT = HERE / "results" / "zoo"


def _cli(*args: str) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnx_pfgdf", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def _reason_kind(reason: str) -> str:
    """A frozen reason without node names, so that the table lists each kind once."""
    return re.sub(r"(node|tensor|output) '[^']*'", r"\1", re.sub(r"'[^']*'", "'...'", reason))


TORCH_DIR = HERE.parent / "tests" / "data" / "torch_exports"
TORCH_MODELS = tuple(sorted(p.stem for p in TORCH_DIR.glob("*.onnx")))


def run_model(name: str, ratio: float, workdir: Path, analyze_dir: Path, corpus: str = "zoo") -> dict[str, object]:
    src = workdir / f"{name}.onnx"
    if corpus == "zoo":
        onnx.save(load_zoo(name), src)
    else:
        src.write_bytes((TORCH_DIR / f"{name}.onnx").read_bytes())
    analysis = workdir / f"{name}_analysis.json"
    code, table, err, _ = _cli("analyze", str(src), "--no-simplify" if corpus == "zoo" else "--simplify",
                               "--json", str(analysis))
    if code != 0:
        return {"model": name, "error": err.strip()}
    (analyze_dir / f"{name}.txt").write_text(table)
    analysed = json.loads(analysis.read_text())
    prunable_groups = analysed["prunable_groups"]
    reasons = sorted({_reason_kind(r) for f in analysed["frozen_groups"] for r in f["reasons"]})
    out, report = workdir / f"{name}_pruned.onnx", workdir / f"{name}.json"
    simplify = "--no-simplify" if corpus == "zoo" else "--simplify"
    code, _, err, seconds = _cli("prune", str(src), "-o", str(out), "--criterion", "l1", "--ratio", str(ratio),
                                 "--recover", "none", simplify, "--round-to", "1", "--report", str(report), "-q")
    row: dict[str, object] = {"model": name, "exit": code, "seconds": round(seconds, 1),
                              "size_mb": round(src.stat().st_size / 2**20, 1), "prunable_groups": prunable_groups,
                              "frozen_groups": len(analysed["frozen_groups"]), "frozen_reasons": reasons}
    if code != 0:
        row["error"] = err.strip()
        return row
    rep = json.loads(report.read_text())
    row.update(reduction={k: round(100 * float(v), 1) for k, v in rep["reduction"].items()}, verification=rep["verification"])
    return row


def to_markdown(rows: list[dict[str, object]], ratio: float, corpus: str = "zoo", analyze_dir: str = "zoo_analyze") -> str:
    title = ("Exported zoo topologies" if corpus == "zoo" else
             "Real PyTorch exports (`tests/data/torch_exports`, made by `models/make_exports.py`)")
    flags = "--no-simplify" if corpus == "zoo" else "(onnx-simplifier on)"
    lines = [
        f"# {title}, pruned at ratio {ratio} (L1, no recovery)",
        "",
        f"Command: `python benchmarks/bench_zoo.py --corpus {corpus} --ratio {ratio}`; each model through "
        f"`onnx-pfgdf prune --criterion l1 --ratio {ratio} --recover none --round-to 1` {flags}. "
        "Weights are seeded random, so only the structure is "
        "meaningful: accuracy is not measured.  Every written model passed the tool's own verification "
        "(onnx.checker + pruned == masked original in onnxruntime); a model with nothing to prune is refused "
        "(exit 2) and `analyze` says why.",
        "",
        "| model | size MB | exit | filters −% | params −% | MACs −% | prunable groups | frozen groups | max rel. error | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "reduction" not in r:
            refusal = str(r.get("error", "")).replace("onnx-pfgdf: error: ", "").split(" (first:")[0]
            lines.append(f"| {r['model']} | {r.get('size_mb', '-')} | {r.get('exit', '-')} | {refusal} | | | "
                         f"{r.get('prunable_groups', '-')} | {r.get('frozen_groups', '-')} | | {r.get('seconds', '-')} |")
            continue
        red, ver = r["reduction"], r["verification"]
        lines.append(
            f"| {r['model']} | {r['size_mb']} | {r['exit']} | {red['filters']} | {red['params']} | {red['macs']} | "
            f"{r['prunable_groups']} | {r['frozen_groups']} | {float(ver['max_rel_error']):.1e} | {r['seconds']} |"
        )
    lines += ["", "## Why groups stay whole (distinct reasons per model, node names elided)", ""]
    for r in rows:
        lines.append(f"* **{r['model']}**: " + "; ".join(r.get("frozen_reasons", [])))
    lines += ["", f"Each model's `onnx-pfgdf analyze` table is in `{analyze_dir}/<model>.txt`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["zoo", "torch"], default="zoo",
                        help="the onnx package's zoo topologies, or the PyTorch exports in tests/data/torch_exports")
    parser.add_argument("--models", nargs="+", choices=[*ZOO_MODELS, *TORCH_MODELS])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.models = args.models or list(ZOO_MODELS if args.corpus == "zoo" else TORCH_MODELS)
    args.out = args.out or (DEFAULT_OUT if args.corpus == "zoo" else HERE / "results" / "torch_exports")
    analyze_dir = args.out.parent / f"{args.out.name}_analyze"
    analyze_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(run_model(name, args.ratio, Path(tmp), analyze_dir, args.corpus))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "frozen_reasons"}), flush=True)
            for f in Path(tmp).iterdir():
                f.unlink()
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(rows, args.ratio, args.corpus, analyze_dir.name))


if __name__ == "__main__":
    main()
