"""Run ONNX models in onnxruntime (CPU) and score them on a dataset.

* :func:`make_session` builds a CPU ``InferenceSession`` from a ``ModelProto``;
  :func:`run_as_written` runs a model once per feed with its weights fed as
  inputs (no onnxruntime copy of them: verification of large models);
  :func:`run_feeds` runs a model as written, or that way when it is over
  protobuf's 2 GiB limit.
* :func:`run_batched` feeds a :class:`~onnx_pfgdf.data.Dataset`-style input dict
  in batches and concatenates each output along axis 0.  When an input's batch
  dimension is fixed (e.g. 1), that fixed size is the batch size.
* :func:`top1_accuracy`, :func:`top1_agreement` and :func:`relative_l2_error`
  score the outputs.

All scores use the *first* output of the model as the logits ``[N, C]``.
onnxruntime is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pfgdf.data import Dataset
from onnx_pfgdf.io import is_large, tensor_bytes
from onnx_pfgdf.weights import skeleton

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

__all__ = [
    "make_session",
    "FedSession",
    "run_as_written",
    "run_feeds",
    "run_batched",
    "top1_accuracy",
    "top1_agreement",
    "relative_l2_error",
]

logger = logging.getLogger(__name__)

ModelOrSession = Union[onnx.ModelProto, "ort.InferenceSession"]


def make_session(model: onnx.ModelProto, threads: int | None = None, quiet: bool = False) -> "ort.InferenceSession":
    """Create a CPU onnxruntime session from the serialized model.

    A model over protobuf's 2 GiB limit gets a :class:`FedSession` instead
    (same ``run``/``get_inputs``; graph optimizations off).

    Args:
        model: the model; it is serialized, never mutated.
        threads: intra-op thread count; ``None`` lets onnxruntime choose.
        quiet: log only fatal errors (for probes that expect onnxruntime to fail).

    Returns:
        An ``InferenceSession`` on ``CPUExecutionProvider``.
    """
    import onnxruntime as ort

    if is_large(model):  # cannot be serialized whole: its weights are fed on each run
        return FedSession(model, quiet=quiet)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


#: Float initializers of at least this many bytes are fed as inputs by :func:`run_as_written`.
FEED_BYTES = 1024

_FEED_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})


class FedSession:
    """An onnxruntime session whose weights are fed as inputs on every run.

    Every float initializer of at least :data:`FEED_BYTES` becomes a graph
    input fed with its array, and onnxruntime's graph optimizations are off:
    the graph is computed as written, and onnxruntime neither copies, fuses
    nor pre-packs the weights (it does all three with initializers), so they
    cost memory once, as numpy arrays — and a model over protobuf's 2 GiB
    limit, which cannot be serialized whole, still runs.  ``get_inputs`` and
    ``run`` behave like an ``InferenceSession``'s (the weights are hidden).

    Args:
        model: the model; never mutated.
        weights: values of initializers by name, used instead of the model's
            own: a name may be an initializer of ``model``, one of its graph
            inputs (a placeholder, see :func:`onnx_pfgdf.weights.strip`) or
            a tensor the graph reads but does not define.  Integer and
            small arrays become initializers.
        quiet: log only fatal errors.
    """

    def __init__(self, model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None,
                 quiet: bool = False) -> None:
        import onnxruntime as ort

        graph = skeleton(model)
        arrays: dict[str, np.ndarray] = {}
        for name, array in (weights or {}).items():
            array = np.ascontiguousarray(array)
            if array.dtype in (np.float32, np.float64, np.float16) and array.nbytes >= FEED_BYTES:
                arrays[name] = array
            else:
                graph.graph.initializer.append(numpy_helper.from_array(array, name))
        for tensor in model.graph.initializer:
            if weights and tensor.name in weights:
                continue
            if (tensor.data_type in _FEED_TYPES and tensor.data_location != onnx.TensorProto.EXTERNAL
                    and tensor_bytes(tensor) >= FEED_BYTES):
                arrays[tensor.name] = numpy_helper.to_array(tensor)
            else:
                graph.graph.initializer.append(tensor)
        listed = {vi.name for vi in graph.graph.input}
        graph.graph.input.extend(
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in arrays.items()
            if name not in listed
        )
        opts = ort.SessionOptions()
        opts.log_severity_level = 4 if quiet else 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_mem_pattern = False  # no up-front block for all activations (measured: -10 MB on ResNet-50)
        self._session = ort.InferenceSession(graph.SerializeToString(), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._arrays = arrays

    def get_inputs(self) -> list:
        """The graph inputs the caller feeds (the weights excluded)."""
        return [i for i in self._session.get_inputs() if i.name not in self._arrays]

    def get_outputs(self) -> list:
        """The graph outputs."""
        return self._session.get_outputs()

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray], run_options: object = None) -> list:
        """``InferenceSession.run`` with the weights added to ``feed``."""
        return self._session.run(names, {**feed, **self._arrays}, run_options)


def run_as_written(
    model: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    weights: Mapping[str, np.ndarray] | None = None,
) -> list[list[np.ndarray]]:
    """All outputs of ``model`` for each feed, in a :class:`FedSession` dropped on return."""
    session = FedSession(model, weights)
    return [session.run(None, feed) for feed in feeds]


def run_feeds(
    model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], quiet: bool = False
) -> list[list[np.ndarray]]:
    """All outputs of ``model`` for each feed, in one session dropped on return.

    The model runs as written, with onnxruntime's default optimizations; a
    model near protobuf's 2 GiB limit cannot be serialized for a session and
    runs through :func:`run_as_written` (weights fed as inputs).  ``quiet``:
    onnxruntime logs only fatal errors (a probe that may fail).
    """
    import onnxruntime as ort

    session = make_session(model, quiet=quiet)
    run_options = ort.RunOptions()
    run_options.log_severity_level = 4 if quiet else 3
    return [session.run(None, dict(feed), run_options) for feed in feeds]


def _as_session(model_or_session: ModelOrSession) -> "ort.InferenceSession":
    """Return a session, building one for a ``ModelProto``."""
    if isinstance(model_or_session, onnx.ModelProto):
        return make_session(model_or_session)
    return model_or_session


def _fixed_batch(session: "ort.InferenceSession", names: Sequence[str]) -> int | None:
    """Smallest fixed (integer) leading dimension among the fed inputs, or ``None``."""
    fixed = [
        i.shape[0]
        for i in session.get_inputs()
        if i.name in names and i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0
    ]
    return min(fixed) if fixed else None


def run_batched(
    model_or_session: ModelOrSession,
    inputs: dict[str, np.ndarray],
    batch_size: int = 256,
    output_names: Sequence[str] | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Run the model over all samples, ``batch_size`` at a time.

    If an input has a fixed leading dimension ``b`` (for instance a model
    exported with batch 1), batches of exactly ``b`` samples are fed instead;
    a trailing remainder smaller than ``b`` cannot be fed and is an error.

    Args:
        model_or_session: a ``ModelProto`` or an existing ``InferenceSession``.
        inputs: ``{input_name: array}``, axis 0 being the sample axis.
        batch_size: samples per run for a dynamic batch axis.
        output_names: outputs to fetch; ``None`` fetches all, in graph order.
        progress: show a tqdm progress bar.

    Returns:
        One array per output, the per-batch results concatenated along axis 0.

    Raises:
        ValueError: empty or ragged inputs, or a sample count not divisible by
            a fixed batch size.
    """
    session = _as_session(model_or_session)
    if not inputs:
        raise ValueError("no inputs to feed")
    lengths = {int(a.shape[0]) for a in inputs.values()}
    if len(lengths) != 1:
        raise ValueError(f"inputs differ in length: {sorted(lengths)}")
    n = lengths.pop()
    names = list(output_names) if output_names is not None else [
        o.name for o in session.get_outputs()
    ]
    fixed = _fixed_batch(session, list(inputs))
    step = fixed if fixed is not None else max(1, int(batch_size))
    if fixed is not None and n % fixed:
        raise ValueError(f"{n} samples do not fill batches of the model's fixed size {fixed}")
    starts = range(0, n, step)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="onnxruntime", unit="batch", total=len(starts))
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for s in starts:
        feed = {k: v[s:s + step] for k, v in inputs.items()}
        for acc, out in zip(chunks, session.run(names, feed)):
            acc.append(np.asarray(out))
    logger.debug("ran %d samples in batches of %d", n, step)
    return [np.concatenate(c, axis=0) if c else np.empty((0,)) for c in chunks]


def _first_output(
    model_or_session: ModelOrSession, dataset: Dataset, batch_size: int, progress: bool
) -> np.ndarray:
    """Logits (first output) of the model on the dataset."""
    session = _as_session(model_or_session)
    first = session.get_outputs()[0].name
    (out,) = run_batched(session, dataset.inputs, batch_size, [first], progress)
    return out


def _argmax(logits: np.ndarray) -> np.ndarray:
    """Class index per sample: argmax over all non-sample axes flattened."""
    return logits.reshape(logits.shape[0], -1).argmax(axis=1)


def top1_accuracy(
    model: ModelOrSession, dataset: Dataset, batch_size: int = 256, progress: bool = False
) -> float:
    """Fraction of samples whose argmax of the first output equals the label.

    ``acc = mean_i [argmax_c f(x_i)_c == y_i]``, a number in ``[0, 1]``.

    Raises:
        ValueError: the dataset has no labels or no samples.
    """
    if dataset.labels is None:
        raise ValueError("top-1 accuracy needs labels")
    if len(dataset) == 0:
        raise ValueError("top-1 accuracy of an empty dataset")
    pred = _argmax(_first_output(model, dataset, batch_size, progress))
    return float(np.mean(pred == dataset.labels))


def top1_agreement(
    reference: ModelOrSession | Sequence[np.ndarray] | np.ndarray,
    model: ModelOrSession,
    dataset: Dataset,
    batch_size: int = 256,
    progress: bool = False,
) -> float:
    """Fraction of samples on which both models predict the same class.

    ``agree = mean_i [argmax f_ref(x_i) == argmax f(x_i)]`` over first outputs.

    Args:
        reference: the reference model/session, or its precomputed outputs
            (a list whose first element is the logits, or the logits array).
        model: the model compared with the reference.
        dataset: the samples (labels not needed).
        batch_size: samples per run.
        progress: show progress bars.
    """
    if isinstance(reference, np.ndarray):
        ref = reference
    elif isinstance(reference, (list, tuple)):
        ref = np.asarray(reference[0])
    else:
        ref = _first_output(reference, dataset, batch_size, progress)
    out = _first_output(model, dataset, batch_size, progress)
    if ref.shape[0] != out.shape[0]:
        raise ValueError(f"reference has {ref.shape[0]} samples, model {out.shape[0]}")
    return float(np.mean(_argmax(ref) == _argmax(out)))


def relative_l2_error(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float:
    """Largest relative L2 error over paired outputs.

    ``max_k ||ref_k - out_k||_2 / ||ref_k||_2`` (Frobenius norm over all
    elements, computed in float64).  A zero reference gives 0 if the output is
    zero too, else ``inf``.

    Raises:
        ValueError: different numbers of outputs or mismatched shapes.
    """
    if len(ref) != len(out):
        raise ValueError(f"{len(ref)} reference outputs vs {len(out)} outputs")
    worst = 0.0
    for a, b in zip(ref, out):
        a64 = np.asarray(a, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            raise ValueError(f"output shapes differ: {a64.shape} vs {b64.shape}")
        num = float(np.linalg.norm(a64 - b64))
        den = float(np.linalg.norm(a64))
        err = (0.0 if num == 0.0 else float("inf")) if den == 0.0 else num / den
        worst = max(worst, err)
    return worst
