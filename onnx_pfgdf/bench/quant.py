"""onnxruntime's INT8 variants of a model: :func:`quantize_with_notes`.

Dynamic quantization needs no data; static QDQ quantization is calibrated by
:class:`_Reader` over a :class:`~onnx_pfgdf.data.Dataset`.  Every variant is
checked to run; one that fails is skipped with a note saying why.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx

from onnx_pfgdf.bench.session import _feed, _first_line, _fixed_batch, _graph_inputs, _np_dtype, _session
from onnx_pfgdf.data import Dataset

__all__ = ["DYNAMIC", "STATIC", "quantize_with_notes", "quantized_variants"]

logger = logging.getLogger(__name__)

DYNAMIC = "int8-dynamic"
"""Key of the dynamically quantized variant (weights INT8, activations quantized at run time)."""
STATIC = "int8-static"
"""Key of the statically quantized variant (QDQ, per-channel INT8 weights, calibrated activations)."""


class _Reader:
    """``CalibrationDataReader`` over a :class:`Dataset`, ``batch`` samples at a time."""

    def __init__(self, data: Dataset, model: onnx.ModelProto, batch: int) -> None:
        dtypes = {vi.name: _np_dtype(vi) for vi in _graph_inputs(model)}
        n = len(data) - len(data) % batch
        self._items = iter([
            {k: np.ascontiguousarray(v[s:s + batch], dtype=dtypes.get(k, v.dtype))
             for k, v in data.inputs.items() if k in dtypes}
            for s in range(0, n, batch)
        ])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _runs(model: onnx.ModelProto) -> None:
    """Raise if onnxruntime cannot build and run ``model`` at its own batch."""
    fixed = _fixed_batch(model)
    session = _session(model, 1)
    session.run(None, _feed(model, fixed or 1, 0))


def quantize_with_notes(
    model: onnx.ModelProto, calib: Dataset | None, calib_samples: int = 128
) -> tuple[dict[str, onnx.ModelProto], dict[str, str]]:
    """onnxruntime's INT8 variants of ``model``, with a note per variant.

    * :data:`DYNAMIC`: ``quantize_dynamic`` of Conv/Gemm/MatMul (``ConvInteger``,
      ``MatMulInteger``) with signed INT8 weights; unsigned INT8 weights are
      tried when the signed ones do not run.
    * :data:`STATIC` (only with ``calib``): ``quantize_static`` in QDQ format,
      per-channel INT8 weights, UINT8 activations calibrated (MinMax) on the
      first ``calib_samples`` samples.

    The model is first passed through ``quant_pre_process`` (shape inference and
    onnxruntime's basic graph optimizations such as BN folding); if that fails
    the model is quantized as is.  Every variant is checked to run in
    onnxruntime.  A variant that fails is skipped and its note says why.

    Args:
        model: a float model (not mutated).
        calib: calibration data for the static variant, or ``None``.
        calib_samples: samples used for calibration.

    Returns:
        ``(variants, notes)``: ``{name: model}`` and ``{name: text}`` (what was
        used, or why the variant is missing).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    variants: dict[str, onnx.ModelProto] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pfgdf-quant-") as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save(model, src)
        pre = os.path.join(tmp, "pre.onnx")
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(src, pre)
            onnx.load(pre)
        except Exception as exc:  # symbolic shape inference is fragile
            logger.info("quant_pre_process failed (%s); quantizing the model as is", _first_line(exc))
            pre = src

        errors = []
        for wtype in (QuantType.QInt8, QuantType.QUInt8):
            dst = os.path.join(tmp, f"dynamic_{wtype.name}.onnx")
            try:
                quantize_dynamic(pre, dst, weight_type=wtype,
                                 op_types_to_quantize=["Conv", "Gemm", "MatMul"])
                q = onnx.load(dst)
                _runs(q)
            except Exception as exc:  # quantizer and runtime raise many types
                errors.append(f"{wtype.name}: {_first_line(exc)}")
                continue
            variants[DYNAMIC] = q
            notes[DYNAMIC] = f"quantize_dynamic, Conv/Gemm/MatMul, {wtype.name} weights"
            break
        if DYNAMIC not in variants:
            notes[DYNAMIC] = "skipped: " + "; ".join(errors)
            logger.warning("dynamic quantization failed: %s", notes[DYNAMIC])

        if calib is None:
            notes[STATIC] = "skipped: no calibration data"
        else:
            dst = os.path.join(tmp, "static.onnx")
            used = calib.take(calib_samples)
            batch = _fixed_batch(onnx.load(pre)) or max(1, min(16, len(used)))
            try:
                if len(used) < batch:
                    raise ValueError(f"{len(used)} calibration samples, the model's batch is {batch}")
                quantize_static(
                    pre, dst, _Reader(used, model, batch), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
                q = onnx.load(dst)
                _runs(q)
                variants[STATIC] = q
                notes[STATIC] = (f"quantize_static, QDQ, per-channel QInt8 weights, QUInt8 "
                                 f"activations, MinMax on {len(used) - len(used) % batch} samples")
            except Exception as exc:  # quantizer and runtime raise many types
                notes[STATIC] = f"skipped: {_first_line(exc)}"
                logger.warning("static quantization failed: %s", notes[STATIC])
    return variants, notes


def quantized_variants(model: onnx.ModelProto, calib: Dataset | None) -> dict[str, onnx.ModelProto]:
    """onnxruntime's INT8 variants of ``model`` (see :func:`quantize_with_notes`).

    Returns:
        ``{"int8-dynamic": ..., "int8-static": ...}``; a variant that could not
        be made is missing (and logged); ``int8-static`` needs ``calib``.
    """
    return quantize_with_notes(model, calib)[0]
