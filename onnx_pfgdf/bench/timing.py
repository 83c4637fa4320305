"""Interleaved latency measurement: :func:`bench_models`.

Each model gets a session and feed at the profile's batch (or, failing that,
at its own fixed batch, with a note), runs are interleaved across models, and
peak-RSS growth is measured in a fresh Python process per row.  See
:mod:`onnx_pfgdf.bench` for the method.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnx_pfgdf.bench.report import PROFILES, BenchReport, BenchRow, Profile
from onnx_pfgdf.bench.session import _feed, _first_line, _fixed_batch, _session, make_batch_dynamic
from onnx_pfgdf.data import Dataset

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

__all__ = ["bench_models"]

logger = logging.getLogger(__name__)

_QUANT_OPS = frozenset({
    "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm",
})


@dataclass
class _Runner:
    """One model ready to time under one profile."""

    label: str
    model: onnx.ModelProto
    session: "ort.InferenceSession"
    feed: dict[str, np.ndarray]
    batch: int
    times: list[float] = field(default_factory=list)

    def run(self) -> None:
        self.session.run(None, self.feed)


def _check_batch(session: "ort.InferenceSession", feed: dict[str, np.ndarray], batch: int) -> None:
    outs = session.run(None, feed)
    for o in outs:
        arr = np.asarray(o)
        if arr.ndim >= 1 and arr.shape[0] != batch:
            raise ValueError(f"output has dim 0 = {arr.shape[0]}, not the fed batch {batch}")


def _prepare(
    label: str, model: onnx.ModelProto, profile: Profile, seed: int, notes: list[str]
) -> _Runner:
    """Session and feed of ``model`` at ``profile.batch``, or at the model's own batch.

    A fixed-batch model is first made batch-dynamic; if that does not run at
    the wanted batch, the original graph is used at its fixed batch and a note
    records it.
    """
    want = profile.batch
    fixed = _fixed_batch(model)
    candidate = model if fixed is None or fixed == want else make_batch_dynamic(model)
    try:
        session = _session(candidate, profile.threads)
        feed = _feed(candidate, want, seed)
        _check_batch(session, feed, want)
        if candidate is not model:
            logger.debug("%s: made batch dynamic to run at batch %d", label, want)
        return _Runner(label, candidate, session, feed, want)
    except Exception as exc:  # onnxruntime raises several unrelated types
        reason = _first_line(exc)
        fallback = fixed if fixed is not None else 1
        if fallback == want:
            raise
        logger.warning("%s: cannot run at batch %d (%s); measured at batch %d",
                       label, want, reason, fallback)
        notes.append(
            f"{label} ({profile.name}): cannot run at batch {want} ({reason}); "
            f"measured at batch {fallback}"
        )
        session = _session(model, profile.threads)
        feed = _feed(model, fallback, seed)
        _check_batch(session, feed, fallback)
        return _Runner(label, model, session, feed, fallback)


_RSS_SCRIPT = r"""
import resource, sys
import numpy as np
import onnxruntime as ort

def status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)

model_path, feed_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
feed = dict(np.load(feed_path))
try:  # Linux: reset the high-water mark to the current RSS, then read VmHWM
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before, peak = status_kib("VmRSS") * 1024.0, lambda: status_kib("VmHWM") * 1024.0
except OSError:  # elsewhere: growth of the lifetime peak (0 if import peaked higher)
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
opts = ort.SessionOptions()
opts.log_severity_level = 3
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
for _ in range(3):
    sess.run(None, feed)
print((peak() - before) / 2**20)
"""


def _peak_rss_mb(runner: _Runner, threads: int, tmp: str, timeout: float = 300.0) -> float | None:
    """Peak-RSS growth (MiB) of a fresh process that loads and runs ``runner``'s model."""
    model_path = os.path.join(tmp, "rss_model.onnx")
    feed_path = os.path.join(tmp, "rss_feed.npz")
    try:
        with open(model_path, "wb") as fh:
            fh.write(runner.model.SerializeToString())
        np.savez(feed_path, **runner.feed)
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, model_path, feed_path, str(threads)],
            capture_output=True, text=True, timeout=timeout, check=True,
        )
        return max(0.0, float(proc.stdout.strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        logger.warning("%s: peak RSS not measured (%s)", runner.label, _first_line(exc))
        return None


def _macs(model: onnx.ModelProto) -> int | None:
    """MACs at batch 1 of a float model with static shapes, else ``None``."""
    if any(n.op_type in _QUANT_OPS for n in model.graph.node):
        return None
    from onnx_pfgdf.count import count_model

    try:
        macs = count_model(model).macs
    except Exception as exc:  # shapes unknown, unsupported layer...
        logger.info("MACs not counted: %s", _first_line(exc))
        return None
    return macs if macs > 0 else None


def _percentile_ms(times: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(times, dtype=np.float64), q)) * 1e3


def bench_models(
    models: Sequence[tuple[str, onnx.ModelProto]],
    profiles: Sequence[str] = ("edge", "server"),
    runs: int = 50,
    warmup: int = 10,
    seed: int = 0,
    data: Dataset | None = None,
    progress: bool = False,
    *,
    sources: Mapping[str, str] | None = None,
    macs: Mapping[str, int | None] | None = None,
    memory: bool = True,
) -> BenchReport:
    """Time each model under each profile, runs interleaved across models.

    Args:
        models: ``(label, model)`` pairs; the first is the reference (original)
            of every speedup.  Labels must be distinct.  Models are not mutated.
        profiles: keys of :data:`PROFILES`.
        runs: timed runs per model and profile.
        warmup: untimed runs per session before timing.
        seed: seed of the random input (the same for all models).
        data: labelled data; when given, each row carries the model's top-1
            accuracy (:func:`onnx_pfgdf.evaluate.top1_accuracy`).
        progress: show a tqdm bar over the runs.
        sources: ``{label: file path}`` for the ``path_or_name`` column
            (default: the label).
        macs: ``{label: MACs}`` overriding the count (e.g. an INT8 model has the
            MACs of its float source; the count skips quantized graphs).
        memory: measure peak-RSS growth in a fresh process per row.

    Returns:
        The report, rows ordered profile by profile.

    Raises:
        ValueError: no models, duplicate labels, unknown profile, ``runs < 1``,
            or a model with symbolic non-batch input dimensions.
    """
    import onnxruntime as ort

    if not models:
        raise ValueError("no models to benchmark")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be distinct: {labels}")
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise ValueError(f"unknown profile(s) {unknown}; choose from {sorted(PROFILES)}")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")

    notes: list[str] = []
    sources = dict(sources or {})
    macs_of = {label: _macs(model) for label, model in models}
    macs_of.update(dict(macs or {}))
    sizes = {label: model.ByteSize() for label, model in models}

    accuracy: dict[str, float | None] = {label: None for label in labels}
    if data is not None:
        if data.labels is None:
            notes.append("accuracy not computed: the data has no labels")
        else:
            from onnx_pfgdf.evaluate import top1_accuracy

            for label, model in models:
                accuracy[label] = top1_accuracy(model, data, progress=progress)
                logger.info("%s: top-1 accuracy %.4f on %d samples", label, accuracy[label], len(data))

    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="pfgdf-bench-") as tmp:
        for pname in profiles:
            profile = PROFILES[pname]
            runners = [_prepare(label, model, profile, seed, notes) for label, model in models]
            for r in runners:
                for _ in range(warmup):
                    r.run()
            order: Iterable[int] = range(runs)
            if progress:
                from tqdm import tqdm

                order = tqdm(order, desc=f"bench {pname}", unit="round")
            for _ in order:
                for r in runners:
                    t0 = time.perf_counter()
                    r.run()
                    r.times.append(time.perf_counter() - t0)
            for r in runners:
                rss = _peak_rss_mb(r, profile.threads, tmp) if memory else None
                rows.append(BenchRow(
                    label=r.label,
                    path_or_name=sources.get(r.label, r.label),
                    profile=pname,
                    median_ms=_percentile_ms(r.times, 50),
                    p90_ms=_percentile_ms(r.times, 90),
                    runs=len(r.times),
                    size_bytes=sizes[r.label],
                    peak_rss_mb=rss,
                    accuracy=accuracy[r.label],
                    macs=macs_of.get(r.label),
                    batch=r.batch,
                    threads=profile.threads,
                ))
                logger.info("%s/%s: median %.3f ms at batch %d", r.label, pname, rows[-1].median_ms, r.batch)
            del runners
    if not memory:
        notes.append("peak RSS not measured (memory=False)")
    elif any(r.peak_rss_mb is None for r in rows):
        notes.append("peak RSS could not be measured for some rows (see the log)")
    settings = {
        "onnxruntime": ort.__version__,
        "runs": runs,
        "warmup": warmup,
        "seed": seed,
        "profiles": {p: asdict(PROFILES[p]) for p in profiles},
        "graph_optimization": "ORT_ENABLE_ALL",
        "execution_mode": "sequential",
        "intra_op_spinning": False,
        "interleaved": True,
        "cpu_count": os.cpu_count(),
        "memory": "peak RSS minus RSS after import, fresh process per row" if memory else None,
        "accuracy_samples": len(data) if data is not None and data.labels is not None else None,
    }
    return BenchReport(tuple(rows), settings, tuple(notes))
