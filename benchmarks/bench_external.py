"""A model over protobuf's 2 GB limit, stored with external data, pruned through the CLI.

Usage::

    python benchmarks/bench_external.py [--hidden 32768] [--ratio 0.5] [--out benchmarks/results/external_2gb]
    python benchmarks/bench_external.py --hidden 40960 --ratio 0.1 --out benchmarks/results/external_2gb_out

Builds a seeded CNN whose weights exceed 2 GiB (four Conv+BN+Relu stages on a
32x32 input, then a VGG-style classifier ``8192 -> hidden -> 8192 -> 10``;
``--hidden 32768`` gives 2.15 GB of float32 weights), saves it as
``model.onnx`` + ``model.onnx.data`` (``onnx.save(..., save_as_external_data=True)``),
and runs the real command a user would::

    onnx-pfgdf prune model.onnx -o pruned.onnx --criterion l1 --ratio 0.5 --recover none

in a subprocess, recording its wall time, its peak resident memory
(``ru_maxrss`` of the child) and exit code, then checks the written model:
its files, that it loads with its external data, passes ``onnx.checker`` by
path, and runs in onnxruntime.  Writes ``<out>.md`` and ``<out>.json``.
The temporary directory needs about 2x the model size of free disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "external_2gb"


def build(hidden: int, seed: int = 0) -> onnx.ModelProto:
    """Conv stages 3->64->128->256->512 (stride 2 after the first) on 32x32, then FC 8192->hidden->8192->10."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32, copy=False), name))
        return name

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))

    h, cin = "x", 3
    for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
        w = const(f"c{i}.W", he((cout, cin, 3, 3), cin * 9))
        nodes.append(helper.make_node("Conv", [h, w], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                      strides=[stride, stride], kernel_shape=[3, 3]))
        bn = [const(f"bn{i}.{k}", v) for k, v in (("s", rng.uniform(0.5, 1.5, cout)), ("b", rng.normal(0, 0.1, cout)),
                                                  ("m", rng.normal(0, 0.1, cout)), ("v", rng.uniform(0.5, 1.5, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *bn], [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"r{i}"], name=f"relu{i}"))
        h, cin = f"r{i}", cout
    nodes.append(helper.make_node("Flatten", [h], ["flat"], name="flatten", axis=1))
    features = 512 * 4 * 4
    for j, (k, n) in enumerate([(features, hidden), (hidden, features), (features, 10)]):
        w = const(f"fc{j}.W", he((n, k), k))
        b = const(f"fc{j}.B", rng.normal(0, 0.01, n))
        out = "y" if j == 2 else f"fc{j}"
        nodes.append(helper.make_node("Gemm", ["flat" if j == 0 else f"fr{j - 1}", w, b], [out], name=f"fc{j}", transB=1))
        if j < 2:
            nodes.append(helper.make_node("Relu", [out], [f"fr{j}"], name=f"frelu{j}"))
    graph = helper.make_graph(nodes, "external_2gb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bench_external")
    model.ir_version = 8
    return model


def _child_peak_mb(argv: list[str]) -> tuple[int, float, float, str]:
    """Run ``argv``; (exit code, wall seconds, peak RSS MB of the child, stderr)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return proc.returncode, seconds, peak_kb / 1024.0, proc.stderr.strip() + proc.stdout[-2000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=32768)
    parser.add_argument("--ratio", type=float, default=0.5, help="prune ratio (0.1 keeps the output over 2 GB)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the model (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        model = build(args.hidden)
        weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        src = work / "model.onnx"
        onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
        del model
        build_s = time.perf_counter() - start
        out = work / "pruned.onnx"
        argv = [sys.executable, "-m", "onnx_pfgdf", "prune", str(src), "-o", str(out), "--criterion", "l1",
                "--ratio", str(args.ratio), "--recover", "none", "--report", str(work / "report.json")]
        code, seconds, peak_mb, log = _child_peak_mb(argv)
        row: dict[str, object] = {
            "weights_gb": round(weight_bytes / 1e9, 3),
            "build_and_save_s": round(build_s, 1),
            "command": f"onnx-pfgdf prune model.onnx -o pruned.onnx --criterion l1 --ratio {args.ratio} --recover none",
            "exit": code,
            "wall_s": round(seconds, 1),
            "peak_rss_mb": round(peak_mb, 0),
            "peak_rss_over_model": round(peak_mb * 2**20 / weight_bytes, 2),
        }
        if code != 0:
            row["error"] = log
        else:
            files = {p.name: p.stat().st_size for p in work.iterdir() if p.name.startswith("pruned")}
            onnx.checker.check_model(str(out), full_check=True)
            import onnxruntime as ort

            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            y = session.run(None, {"x": np.zeros((1, 3, 32, 32), np.float32)})[0]
            report = json.loads((work / "report.json").read_text())
            row.update(
                output_files=files,
                output_loads_and_runs=bool(y.shape == (1, 10)),
                reduction={k: round(100 * float(v), 2) for k, v in report["reduction"].items()},
                verification=report["verification"],
            )
    row["hidden"], row["ratio"] = args.hidden, args.ratio
    print(json.dumps(row, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(row, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(row))


def to_markdown(row: dict[str, object]) -> str:
    """The results table of one run (``row`` as written to the JSON file)."""
    lines = [
        "# A model over 2 GB (external data), pruned through the CLI",
        "",
        f"Command: `python benchmarks/bench_external.py --hidden {row['hidden']} --ratio {row.get('ratio', 0.5)}` "
        "(2-core machine). "
        f"The model holds {row['weights_gb']} GB of float32 weights in `model.onnx.data`; the tool runs as "
        f"`{row['command']}` in a subprocess.  Peak RSS is the whole process (Python, onnx, onnxruntime and "
        "onnx-simplifier included) over the weights' size.",
        "",
        "| exit | wall s | peak RSS MB | peak / model size | MACs −% | params −% | max rel. error | output files |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if row["exit"] == 0:
        red, ver = row["reduction"], row["verification"]
        files = ", ".join(f"{k} ({v / 1e6:.0f} MB)" for k, v in sorted(row["output_files"].items()))
        lines.append(f"| {row['exit']} | {row['wall_s']} | {row['peak_rss_mb']:.0f} | {row['peak_rss_over_model']} | "
                     f"{red['macs']} | {red['params']} | {float(ver['max_rel_error']):.1e} | {files} |")
        external = any(name.endswith(".data") for name in row["output_files"])
        lines += ["", ("The written model keeps its weights in external data; it " if external else
                       "The pruned model is under 2 GB, so it is written as one file; it ")
                  + "loads, passes `onnx.checker` (full, by path) and runs in onnxruntime."]
    else:
        lines.append(f"| {row['exit']} | {row['wall_s']} | {row['peak_rss_mb']:.0f} | {row['peak_rss_over_model']} | | | | |")
        lines += ["", "```", str(row.get("error", ""))[-3000:], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
