"""Latency of original, pruned and INT8 models in onnxruntime (CPU), measured fairly.

* :func:`compare` benches float models and their onnxruntime INT8 variants in
  one run; :func:`bench_models` times every model under each :data:`PROFILES`
  entry and returns a :class:`BenchReport` (a data object; JSON, markdown and a
  table are rendered from it, :func:`plot_report` draws it).
* :func:`quantized_variants` / :func:`quantize_with_notes` make onnxruntime's own
  INT8 versions of a model (dynamic, and static QDQ when calibration data is given).
* :func:`ideal_speedup` is the MAC ratio a pruned model could reach at best.

Modules::

    report      Profile, PROFILES, BenchRow, BenchReport (renderings), ideal_speedup
    session     graph inputs, make_batch_dynamic, seeded feeds, onnxruntime sessions
    timing      bench_models: interleaved runs, batch fallback, peak RSS in a subprocess
    quant       quantize_with_notes, quantized_variants, the calibration reader
    plots       plot_report

Method (so that two models are compared on the same footing on a noisy machine):

1. For a profile, one session per model is created first (CPU provider,
   ``ORT_ENABLE_ALL``, ``intra_op_num_threads = profile.threads``,
   ``inter_op_num_threads = 1``, sequential execution, intra-op spinning off so
   an idle pool of one session does not steal cores from the next one).
2. Each session is warmed up ``warmup`` times.
3. Runs are *interleaved*: ``for r in range(runs): for m in models: time(m)``,
   with ``time.perf_counter`` around ``session.run``, every model fed the same
   seeded random input.  A slow phase of the machine thus hits all models alike.

Batch: a model exported with a fixed batch (say 1) cannot take the server
profile's batch 8.  Its graph inputs' and outputs' dim 0 is then renamed to the
symbol ``batch`` (``value_info`` cleared) and the result is checked to run at
the wanted batch.  When it does not (a ``Reshape`` to a constant ``[1, -1]``...),
the row is measured at the model's own batch, its ``batch`` field says so and a
note is added to the report.

Speedup of model ``m`` over the first (original) model in the same profile is a
per-sample throughput ratio::

    speedup = (t_first / b_first) / (t_m / b_m)

with ``t`` the median latency and ``b`` the batch of a run (equal batches make
it the plain latency ratio).  With MACs known, ``ideal = MACs_first / MACs_m``
and ``realized / ideal`` tells how much of the removed arithmetic became time.

Peak memory: each (model, profile) is also loaded and run 3 times in a fresh
Python process; the reported figure is that process's peak RSS while creating
the session and running it, minus its RSS just before (after ``import
onnxruntime``).  On Linux the high-water mark is reset first (``5`` written to
``/proc/self/clear_refs``, then ``VmHWM - VmRSS`` from ``/proc/self/status``);
elsewhere it is the growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
which reads 0 when the imports peaked higher.  It costs one interpreter start (~0.5 s) per row;
``memory=False`` skips it and reports ``None``.

onnxruntime is imported inside the functions that use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx

from onnx_pfgdf.bench.plots import plot_report
from onnx_pfgdf.bench.quant import DYNAMIC, STATIC, quantize_with_notes, quantized_variants
from onnx_pfgdf.bench.report import PROFILES, BenchReport, BenchRow, Profile, ideal_speedup
from onnx_pfgdf.bench.session import make_batch_dynamic
from onnx_pfgdf.bench.timing import bench_models
from onnx_pfgdf.count import count_model
from onnx_pfgdf.data import Dataset

__all__ = [
    "compare",
    "Profile",
    "PROFILES",
    "BenchRow",
    "BenchReport",
    "bench_models",
    "quantized_variants",
    "quantize_with_notes",
    "make_batch_dynamic",
    "ideal_speedup",
    "plot_report",
    "DYNAMIC",
    "STATIC",
]


def compare(
    models: Sequence[tuple[str, onnx.ModelProto, str]],
    *,
    data: Dataset | None = None,
    calib: Dataset | None = None,
    int8: bool = True,
    calib_samples: int = 128,
    profiles: Sequence[str] = ("edge", "server"),
    runs: int = 50,
    warmup: int = 10,
    seed: int = 0,
    memory: bool = True,
    progress: bool = False,
) -> BenchReport:
    """Bench float models and (with ``int8``) their onnxruntime INT8 variants in one run.

    Args:
        models: ``(label, model, source)``; the first is the reference (original).
        data: labelled data for top-1 accuracy of every row.
        calib: calibration data for static INT8 (dynamic INT8 needs none).

    Returns:
        The report; quantization that failed or was skipped is listed in ``notes``.
    """
    rows: list[tuple[str, onnx.ModelProto]] = [(label, model) for label, model, _ in models]
    sources = {label: source for label, _, source in models}
    macs: dict[str, int | None] = {}
    notes: list[str] = []
    if int8:
        for label, model, _ in models:
            variants, qnotes = quantize_with_notes(model, calib, calib_samples)
            for name, text in qnotes.items():
                if name == STATIC and calib is None:
                    continue
                notes.append(f"{label}+{name}: {text}")
            for name, qmodel in variants.items():
                qlabel = f"{label}+{name}"
                rows.append((qlabel, qmodel))
                sources[qlabel] = f"{sources[label]} ({name})"
                try:
                    macs[qlabel] = count_model(model).macs or None
                except Exception:  # shapes unknown: report n/a
                    macs[qlabel] = None
    report = bench_models(rows, profiles=profiles, runs=runs, warmup=warmup, seed=seed, data=data,
                          progress=progress, sources=sources, macs=macs, memory=memory)
    return dataclasses.replace(report, notes=tuple(notes) + report.notes)
