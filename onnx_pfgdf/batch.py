"""Dynamic batch for models whose analysis fixed the batch to 1.

Normalization fixes every input's batch dimension (usually to 1) so that
shapes are static.  Most CNN graphs still run with any batch: evaluating
calibration data in batches is then much faster, and the written model can
give the user back the dynamic batch they exported.  :func:`batchable`
accepts the change only after onnxruntime shows that a batch of 2 gives the
same outputs as two batch-1 runs; :func:`dynamic_batch` applies the same
change without the check (for variants of a model already checked).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_pfgdf.evaluate import run_feeds

__all__ = ["dynamic_batch", "batchable"]


def dynamic_batch(model: onnx.ModelProto, name: str = "N") -> onnx.ModelProto:
    """A copy with dim 0 of every graph input and output made symbolic."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    inits = {t.name for t in out.graph.initializer}
    for vi in list(out.graph.input) + list(out.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = name
    return out


def batchable(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``dynamic_batch(model)`` if it runs a batch of 2 exactly like two single runs, else None."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if any(len(vi.type.tensor_type.shape.dim) == 0 for vi in inputs + list(model.graph.output)):
        return None
    out = dynamic_batch(model)
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in inputs:
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return None
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal([2, *shape[1:]]).astype(np.float32)
    try:
        both, *single = run_feeds(out, [feeds, *({k: v[i:i + 1] for k, v in feeds.items()} for i in range(2))], quiet=True)
    except Exception:  # onnxruntime refuses the dynamic batch: keep the fixed one
        return None
    for k, arr in enumerate(both):
        joined = np.concatenate([single[0][k], single[1][k]], axis=0)
        if arr.shape != joined.shape or not np.allclose(arr, joined, rtol=1e-4, atol=1e-5):
            return None
    return out
