"""The automated search on a model this project did not train, as a non-classifier.

Usage::

    python benchmarks/bench_foreign.py [--model squeezenet] [--max-error 0.05] [--size 112]

The onnx package ships exported zoo topologies (``onnx/backend/test/data/light``)
whose weights are constant fills; ``tests/zoo.py`` gives them seeded random
He-scaled weights.  The graph is cut before its classifier so that its output
is a feature map (an "embedding" model, where top-1 agreement means nothing),
and ``prune --max-error E`` runs the budgeted search with least-squares
recovery on 64 random calibration inputs, re-checking the budget on 32 held-out
random inputs.  Writes ``benchmarks/results/foreign_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# model -> (input name, output tensor of the feature extractor)
CUTS = {"squeezenet": ("data_0", "r61"), "resnet50": ("gpu_0/data_0", "r172")}


def embedding_model(name: str, size: int) -> onnx.ModelProto:
    """Zoo topology with random weights, cut at its global pool (no classifier)."""
    from zoo import load_zoo

    import onnx_pfgdf.io as io

    model = io.normalize(load_zoo(name), io.LoadOptions(simplify=False))
    inp, out = CUTS[name]
    extractor = onnx.utils.Extractor(model)
    cut = extractor.extract_model([inp], [out])
    cut.graph.input[0].type.tensor_type.shape.dim[2].dim_value = size
    cut.graph.input[0].type.tensor_type.shape.dim[3].dim_value = size
    del cut.graph.value_info[:]
    for vi in cut.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(cut)


def main(argv: list[str] | None = None) -> int:
    import onnx_pfgdf
    from onnx_pfgdf import PruneConfig
    from onnx_pfgdf.data import Dataset
    from onnx_pfgdf.search import Budget

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="squeezenet", choices=sorted(CUTS))
    parser.add_argument("--max-error", type=float, default=0.05)
    parser.add_argument("--size", type=int, default=112, help="input height/width")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    model = embedding_model(args.model, args.size)
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    calib = Dataset({name: rng.standard_normal((64, 3, args.size, args.size)).astype(np.float32)})
    held = Dataset({name: rng.standard_normal((32, 3, args.size, args.size)).astype(np.float32)})
    start = time.perf_counter()
    result = onnx_pfgdf.prune(model, PruneConfig(budget=Budget("max_error", args.max_error), recover="lsq",
                                                 progress=True), calib, held)
    seconds = time.perf_counter() - start
    r = result.report
    stages = {s["stage"]: s["rel_error"] for s in r.stages}
    lines = [
        f"# Budgeted search on a foreign model: {args.model} feature extractor (random weights), --max-error {args.max_error}",
        "",
        f"Command: `python benchmarks/bench_foreign.py --model {args.model} --max-error {args.max_error} --size {args.size}`"
        f"; 2-core machine; {seconds:.0f} s in all.",
        f"Output: `{model.graph.output[0].name}` (feature map, no classifier); calibration 64 and held-out 32 "
        "random-normal inputs.",
        "",
        "| | original | pruned | removed |",
        "|---|---|---|---|",
    ]
    for key in ("filters", "params", "macs"):
        lines.append(f"| {key} | {getattr(r.original, key):,} | {getattr(r.pruned, key):,} | {100 * r.reduction[key]:.1f}% |")
    lines += ["", "| stage (held-out) | relative L2 error |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in stages.items()]
    lines += ["", f"Verification: {r.verification}"]
    out = Path(args.out or HERE / "results" / f"foreign_{args.model}")
    Path(f"{out}.json").write_text(json.dumps(r.to_dict() | {"seconds": seconds}, indent=1) + "\n")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
