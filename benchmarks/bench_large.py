"""Tool time and peak memory on a ResNet-50-size graph (25.6M parameters).

Usage::

    python benchmarks/bench_large.py [--model resnet50] [--out benchmarks/results/large_model]

The graph is the onnx package's own exported ResNet-50 topology
(``onnx/backend/test/data/light/light_resnet50.onnx``) with its constant-fill
weights replaced by seeded random ones (``tests/zoo.py``).  Each phase of
``prune --criterion l1 --ratio 0.5 --recover none`` is timed separately so
that onnxruntime's session start-up (in normalize's load check and in
verification) can be told apart from the tool's own work.  Peak memory is the
process's maximum resident set size (``ru_maxrss``) measured in a fresh
subprocess, against the model's serialized size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

DEFAULT_OUT = HERE / "results" / "large_model"


def _phases(name: str, simplify: bool) -> dict[str, object]:
    from onnx_pfgdf.channels import analyze_channels
    from onnx_pfgdf.count import count_model
    from onnx_pfgdf.criteria import CriterionConfig
    from onnx_pfgdf.evaluate import make_session
    from onnx_pfgdf.graph import GraphIndex
    from onnx_pfgdf.io import LoadOptions, normalize
    from onnx_pfgdf.plan import score_groups, select_plan
    from onnx_pfgdf.rewrite import apply_plan, mask_original
    from onnx_pfgdf.verify import check_model, compare_models
    from zoo import load_zoo

    model = load_zoo(name)
    size = model.ByteSize()
    params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    t: dict[str, float] = {}

    def clock(key: str, fn, *a):
        start = time.perf_counter()
        out = fn(*a)
        t[key] = time.perf_counter() - start
        return out

    normalized = clock("normalize (incl. onnxruntime load check)", normalize, model, LoadOptions(simplify=simplify))
    start = time.perf_counter()
    make_session(normalized)
    t["  of which: one onnxruntime session start"] = time.perf_counter() - start
    index = clock("index", GraphIndex, normalized)
    channels = clock("channel analysis", analyze_channels, normalized, index)
    clock("count", count_model, normalized)
    scores = clock("scores (l1)", score_groups, channels, index, CriterionConfig("l1"))
    plan = clock("plan (ratio 0.5)", lambda: select_plan(channels, scores, ratio=0.5))
    pruned = clock("rewrite", apply_plan, normalized, plan)
    clock("checker (full)", check_model, pruned)
    masked = clock("masked original", mask_original, normalized, plan)
    clock("onnxruntime comparison (2 sessions, 3 samples)", compare_models, masked, pruned)
    session_start = t["  of which: one onnxruntime session start"]
    total = sum(v for k, v in t.items() if not k.startswith("  "))
    ort = 3 * session_start  # load check + the two verification sessions
    return {
        "model": name,
        "params": params,
        "serialized_mb": size / 2**20,
        "simplify": simplify,
        "phases_s": t,
        "total_s": total,
        "onnxruntime_session_starts_s": ort,
        "tool_time_excluding_session_start_s": total - ort,
    }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(name: str, simplify: bool) -> None:
    import onnx  # noqa: F401  (imports are part of the baseline, not of the tool's work)
    import onnxruntime  # noqa: F401

    import onnx_pfgdf.api  # noqa: F401

    baseline = _rss_mb()
    result = _phases(name, simplify)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["baseline_rss_mb"] = baseline
    result["peak_increase_mb"] = result["peak_rss_mb"] - baseline
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.model, args.simplify)
        return 0
    runs = []
    for simplify in (False, True):
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--simplify" if simplify else "--no-simplify"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [
        f"# Large-model tool time ({args.model}, {runs[0]['params']:,} parameters, "
        f"{runs[0]['serialized_mb']:.0f} MB)",
        "",
        f"Command: `python benchmarks/bench_large.py --model {args.model}`; 2-core machine; "
        "prune = l1, ratio 0.5, recover none.  Peak RSS is the whole process (Python, onnx, onnxruntime included).",
        "",
        "| phase | no onnxsim (s) | with onnxsim (s) |",
        "|---|---|---|",
    ]
    for key in runs[0]["phases_s"]:
        lines.append(f"| {key} | {runs[0]['phases_s'][key]:.2f} | {runs[1]['phases_s'][key]:.2f} |")
    for key, label in (("total_s", "**total**"), ("tool_time_excluding_session_start_s",
                                                    "**tool time excluding onnxruntime session starts**"),
                       ("peak_rss_mb", "peak RSS (MB)"), ("baseline_rss_mb", "RSS after imports (MB)"),
                       ("peak_increase_mb", "peak RSS increase over imports (MB)")):
        lines.append(f"| {label} | {runs[0][key]:.2f} | {runs[1][key]:.2f} |")
    ratio = [r["peak_increase_mb"] / r["serialized_mb"] for r in runs]
    lines += ["", f"Peak RSS increase / model size: {ratio[0]:.1f}x (no onnxsim), {ratio[1]:.1f}x (onnxsim). "
              "The increase holds the input, the normalized, pruned and masked copies, and two onnxruntime "
              "sessions with their own weight copies."]
    Path(f"{args.out}.json").write_text(json.dumps(runs, indent=1) + "\n")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
