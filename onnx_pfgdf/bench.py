"""Latency of original, pruned and INT8 models in onnxruntime (CPU), measured fairly.

* :func:`bench_models` times every model under each :data:`PROFILES` entry and
  returns a :class:`BenchReport` (a data object; JSON, markdown and a table are
  rendered from it, :func:`plot_report` draws it).
* :func:`quantized_variants` / :func:`quantize_with_notes` make onnxruntime's own
  INT8 versions of a model (dynamic, and static QDQ when calibration data is given).
* :func:`ideal_speedup` is the MAC ratio a pruned model could reach at best.

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
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnx_pfgdf.batch import dynamic_batch
from onnx_pfgdf.count import count_model
from onnx_pfgdf.data import Dataset

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

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

logger = logging.getLogger(__name__)

DYNAMIC = "int8-dynamic"
"""Key of the dynamically quantized variant (weights INT8, activations quantized at run time)."""
STATIC = "int8-static"
"""Key of the statically quantized variant (QDQ, per-channel INT8 weights, calibrated activations)."""

_BATCH_SYMBOL = "batch"
_QUANT_OPS = frozenset({
    "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm",
})


@dataclass(frozen=True)
class Profile:
    """A deployment setting: intra-op threads and batch size of one run."""

    name: str
    threads: int
    batch: int


PROFILES: dict[str, Profile] = {
    "edge": Profile("edge", 1, 1),
    "server": Profile("server", os.cpu_count() or 1, 8),
}
"""``edge``: one thread, one sample; ``server``: all cores, batches of 8."""


@dataclass(frozen=True)
class BenchRow:
    """Latency of one model under one profile.

    Attributes:
        label: the model's name in the report (``original``, ``pruned``...).
        path_or_name: where the model came from (file path or a name).
        profile: the :class:`Profile` name.
        median_ms: median latency of one ``session.run`` in milliseconds.
        p90_ms: 90th percentile of the same samples.
        runs: number of timed runs.
        size_bytes: serialized size of the model.
        peak_rss_mb: growth of a fresh process's peak RSS when loading and
            running the model, in MiB; ``None`` when not measured.
        accuracy: top-1 accuracy on the labelled data, or ``None``.
        macs: multiply-accumulates at batch 1, or ``None`` when unknown.
        batch: batch size actually fed (may differ from the profile's, see notes).
        threads: intra-op threads of the session.
    """

    label: str
    path_or_name: str
    profile: str
    median_ms: float
    p90_ms: float
    runs: int
    size_bytes: int
    peak_rss_mb: float | None
    accuracy: float | None
    macs: int | None
    batch: int = 1
    threads: int = 1

    @property
    def ms_per_sample(self) -> float:
        """Median latency divided by the batch."""
        return self.median_ms / max(1, self.batch)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


@dataclass(frozen=True)
class BenchReport:
    """All rows of one benchmark, the settings they were measured with, and notes.

    ``rows`` are ordered profile by profile, models in the order given; the
    first model of each profile is the reference of :meth:`speedup`.
    ``notes`` say what could not be done as asked (batch fallbacks, skipped
    quantization variants, memory not measured...).
    """

    rows: tuple[BenchRow, ...]
    settings: Mapping[str, Any]
    notes: tuple[str, ...] = field(default=())

    def labels(self) -> list[str]:
        """Model labels in the order given."""
        return list(dict.fromkeys(r.label for r in self.rows))

    def profiles(self) -> list[str]:
        """Profile names in the order measured."""
        return list(dict.fromkeys(r.profile for r in self.rows))

    def row(self, label: str, profile: str) -> BenchRow:
        """The row of ``label`` under ``profile``.

        Raises:
            KeyError: no such row.
        """
        for r in self.rows:
            if r.label == label and r.profile == profile:
                return r
        raise KeyError(f"no row for model {label!r} under profile {profile!r}")

    def _first(self, profile: str) -> BenchRow:
        for r in self.rows:
            if r.profile == profile:
                return r
        raise KeyError(f"no row under profile {profile!r}")

    def speedup(self, label: str, profile: str) -> float:
        """Per-sample speedup of ``label`` over the first model under ``profile``.

        ``(t_first / b_first) / (t_label / b_label)``; 1.0 for the first model.
        """
        first, row = self._first(profile), self.row(label, profile)
        if row is first:
            return 1.0
        return first.ms_per_sample / row.ms_per_sample

    def ideal(self, label: str, profile: str) -> float | None:
        """``MACs_first / MACs_label``, or ``None`` when either is unknown."""
        first, row = self._first(profile), self.row(label, profile)
        if first.macs is None or row.macs is None or row.macs <= 0:
            return None
        return ideal_speedup(first.macs, row.macs)

    def efficiency(self, label: str, profile: str) -> float | None:
        """Realized speedup divided by the ideal (MAC) speedup, or ``None``.

        ``None`` for the first model (the reference) and when MACs are unknown.
        """
        if self._first(profile).label == label:
            return None
        ideal = self.ideal(label, profile)
        return None if ideal is None else self.speedup(label, profile) / ideal

    def rows_table(self) -> list[list[str]]:
        """Text table, header first.

        Columns: model, profile, median ms, p90 ms, speedup vs first model,
        size MB, accuracy, then MACs (M), realized/ideal, batch, peak RSS MB.
        """
        table = [[
            "model", "profile", "median ms", "p90 ms", "speedup vs first model", "size MB",
            "accuracy", "MACs (M)", "realized/ideal", "batch", "peak RSS MB",
        ]]
        for r in self.rows:
            table.append([
                r.label,
                r.profile,
                f"{r.median_ms:.3f}",
                f"{r.p90_ms:.3f}",
                f"{self.speedup(r.label, r.profile):.2f}x",
                f"{r.size_bytes / 1e6:.2f}",
                _fmt(None if r.accuracy is None else 100.0 * r.accuracy, ".2f", "%"),
                _fmt(None if r.macs is None else r.macs / 1e6, ".2f"),
                _fmt(self.efficiency(r.label, r.profile), ".2f"),
                str(r.batch),
                _fmt(r.peak_rss_mb, ".1f"),
            ])
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: ``settings``, ``rows`` (with derived ratios) and ``notes``."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["speedup"] = self.speedup(r.label, r.profile)
            d["ideal_speedup"] = self.ideal(r.label, r.profile)
            d["realized_over_ideal"] = self.efficiency(r.label, r.profile)
            rows.append(d)
        return {"settings": json.loads(json.dumps(dict(self.settings), default=str)),
                "rows": rows, "notes": list(self.notes)}

    def to_markdown(self) -> str:
        """A markdown section: settings line, the table, then the notes."""
        s = self.settings
        lines = ["## Latency (onnxruntime CPU)", ""]
        profs = s.get("profiles", {})
        desc = ", ".join(f"{n}: {p['threads']} thread(s), batch {p['batch']}" for n, p in profs.items())
        lines.append(
            f"onnxruntime {s.get('onnxruntime', '?')}, {s.get('runs', '?')} interleaved runs "
            f"after {s.get('warmup', '?')} warm-up runs, seed {s.get('seed', '?')}; {desc}."
        )
        lines.append("")
        table = self.rows_table()
        lines.append("| " + " | ".join(table[0]) + " |")
        lines.append("|" + "---|" * len(table[0]))
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        lines.append("")
        lines.append(
            "Speedup is per sample relative to the first model of the same profile; "
            "realized/ideal divides it by the MAC ratio."
        )
        if self.notes:
            lines += ["", "Notes:", ""]
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def ideal_speedup(original_macs: int, pruned_macs: int) -> float:
    """Best speedup the removed arithmetic allows: ``original_macs / pruned_macs``.

    Raises:
        ValueError: a non-positive MAC count.
    """
    if original_macs <= 0 or pruned_macs <= 0:
        raise ValueError(f"MAC counts must be positive, got {original_macs} and {pruned_macs}")
    return original_macs / pruned_macs


# --------------------------------------------------------------------------- shapes


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


# --------------------------------------------------------------------------- sessions


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


# --------------------------------------------------------------------------- quantization


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


# --------------------------------------------------------------------------- plot


def plot_report(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Grouped bar chart of median latency (ms per run) per model and profile, as PNG.

    One group of bars per model, one bar per profile; p90 is drawn as an error
    bar above the median.  Each profile has its own y axis scale via a subplot,
    since batch sizes differ.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = report.profiles()
    labels = report.labels()
    fig, axes = plt.subplots(1, len(profiles), figsize=(max(5.0, 1.2 * len(labels)) * len(profiles), 4.2),
                             squeeze=False)
    for ax, pname in zip(axes[0], profiles):
        rows = [report.row(label, pname) for label in labels]
        med = [r.median_ms for r in rows]
        err = [max(0.0, r.p90_ms - r.median_ms) for r in rows]
        x = np.arange(len(rows))
        bars = ax.bar(x, med, yerr=[[0.0] * len(err), err], capsize=3, color="tab:blue")
        for bar, r, e in zip(bars, rows, err):
            ax.annotate(f"{report.speedup(r.label, pname):.2f}x",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height() + e),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        batches = sorted({r.batch for r in rows})
        prof = PROFILES.get(pname)
        threads = prof.threads if prof else rows[0].threads
        ax.set_title(f"{pname}: {threads} thread(s), batch {'/'.join(map(str, batches))}")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("median ms per run (bar: p90)")
        ax.set_ylim(0, max(m + e for m, e in zip(med, err)) * 1.2 if med else 1)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=110)
    plt.close(fig)


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
