"""Inputs and onnxruntime sessions of the benchmark.

Graph inputs and their fixed batch, :func:`make_batch_dynamic`, seeded random
feeds (the same for every model with an input of the same name), and CPU
sessions configured as the method in :mod:`onnx_pfgdf.bench` describes.
onnxruntime is imported inside the functions that use it.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnx_pfgdf.batch import dynamic_batch

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

__all__ = ["make_batch_dynamic"]

_BATCH_SYMBOL = "batch"


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    """The fixed dim 0 shared by the graph inputs, or ``None`` if any is symbolic."""
    batches = set()
    for vi in _graph_inputs(model):
        dims = _dims(vi)
        if not dims:
            continue
        if not isinstance(dims[0], int) or dims[0] <= 0:
            return None
        batches.add(dims[0])
    return min(batches) if batches else None


def make_batch_dynamic(model: onnx.ModelProto, symbol: str = _BATCH_SYMBOL) -> onnx.ModelProto:
    """Copy of ``model`` whose graph inputs and outputs have a symbolic dim 0.

    See :func:`onnx_pfgdf.batch.dynamic_batch`; nothing checks here that the
    graph really accepts another batch (a constant ``Reshape`` target may not):
    run it to know.
    """
    return dynamic_batch(model, symbol)


def _np_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def _random_array(name: str, shape: tuple[int, ...], dtype: np.dtype, seed: int) -> np.ndarray:
    """Seeded input: ``N(0, 1)`` for floats, 0/1 for integers and booleans.

    The generator depends on ``(seed, crc32(name))`` only, so every model with an
    input of that name gets the same leading samples.
    """
    rng = np.random.default_rng((seed, zlib.crc32(name.encode())))
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)


def _feed(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random feed at ``batch`` for every graph input.

    Raises:
        ValueError: a non-batch dimension is symbolic (fix the input shape first).
    """
    feed: dict[str, np.ndarray] = {}
    for vi in _graph_inputs(model):
        dims = _dims(vi)
        rest = dims[1:]
        if any(not isinstance(d, int) or d <= 0 for d in rest):
            raise ValueError(
                f"input {vi.name!r} has symbolic non-batch dimensions {dims}; "
                "fix the input shape before benchmarking"
            )
        shape = (batch, *rest) if dims else ()
        feed[vi.name] = _random_array(vi.name, tuple(int(d) for d in shape), _np_dtype(vi), seed)
    return feed


def _session_options(threads: int) -> "ort.SessionOptions":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _session(model: onnx.ModelProto, threads: int) -> "ort.InferenceSession":
    import onnxruntime as ort

    return ort.InferenceSession(
        model.SerializeToString(), sess_options=_session_options(threads),
        providers=["CPUExecutionProvider"],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
