"""Verification: the pruned model must compute what the masked original computes.

The oracle is the original model with the removed channels zeroed at every
channel-contracting consumer (see :func:`onnx_pfgdf.rewrite.mask_original`).
Both run in onnxruntime on the same seeded random inputs, one after the other:
the masked original with its weights fed as inputs and graph optimizations off
(onnxruntime keeps no copy of its weights, see
:func:`onnx_pfgdf.evaluate.run_as_written`), the pruned model exactly as it
will be written, with onnxruntime's default optimizations (over protobuf's
2 GiB limit, with its weights fed as inputs too); the check passes when
``onnx.checker`` (full check) accepts the pruned model and, for every output
(and the inputs of the nodes writing the outputs — logits before a Softmax —
when pruning keeps their shape, see :func:`probe_tensors`),

    max |pruned - masked| / max(max |masked|, 1e-12)  <=  tolerance   (1e-4;
                                                              4e-3 in float16).
"""

from __future__ import annotations

import logging
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnx_pfgdf.evaluate import run_as_written, run_feeds
from onnx_pfgdf.io import is_large
from onnx_pfgdf.plan import Plan
from onnx_pfgdf.rewrite import masked_weights
from onnx_pfgdf.weights import strip, weight_names

__all__ = ["Reference", "probe_tensors", "VerifyResult", "random_inputs", "check_model", "reference_outputs", "verify"]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4

#: Smallest bound for models computing in a narrower float type: float16 keeps
#: ~3 decimal digits, so the masked original and the pruned model, summing in
#: different orders, differ by a few 1e-4 of their output range.
PRECISION_FLOOR: dict[int, float] = {onnx.TensorProto.FLOAT16: 4e-3, onnx.TensorProto.BFLOAT16: 3e-2}


def precision_tolerance(model: onnx.ModelProto, tolerance: float) -> float:
    """``tolerance``, raised to :data:`PRECISION_FLOOR` of the narrowest float type ``model`` computes in."""
    graph = model.graph
    types = {vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.output]}
    types |= {t.data_type for t in graph.initializer}
    return max([tolerance, *(PRECISION_FLOOR[t] for t in types if t in PRECISION_FLOOR)])

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes:
        passed: checker accepted the model and every output matched.
        max_rel_error: worst relative error over outputs and samples.
        tolerance: the bound it was held to.
        checker: ``"ok"`` or the checker's first message line.
        samples: number of random input samples compared.
    """

    passed: bool
    max_rel_error: float
    tolerance: float
    checker: str
    samples: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return asdict(self)


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal feeds for every graph input (static shapes required)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        ttype = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        dtype = _NP_TYPES.get(ttype.elem_type)
        if dtype is None:
            raise ValueError(f"input '{vi.name}' has an element type random_inputs cannot fill")
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
    return feeds


def check_model(model: onnx.ModelProto) -> str:
    """``"ok"`` when ``onnx.checker`` (full check) accepts ``model``, else its message.

    A model near protobuf's 2 GiB limit cannot be serialized for the checker:
    it is checked with its Conv/Gemm/MatMul/BN weights as typed placeholder
    inputs (:func:`onnx_pfgdf.weights.strip`), their arrays having been written
    by ``numpy_helper.from_array`` with the shapes the placeholders carry.
    """
    try:
        onnx.checker.check_model(strip(model, weight_names(model))[0] if is_large(model) else model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "ok"


def max_relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Worst ``max|a - r| / max|r|`` over paired outputs."""
    worst = 0.0
    for ref, out in zip(reference, actual, strict=True):
        ref64, out64 = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref64.shape != out64.shape:
            return float("inf")
        if ref64.size == 0:
            continue
        scale = max(float(np.max(np.abs(ref64))), 1e-12)
        err = float(np.max(np.abs(out64 - ref64))) / scale
        worst = max(worst, err if np.isfinite(err) else float("inf"))
    return worst


def _worst(ref_outs: list[list[np.ndarray]], cand_outs: list[list[np.ndarray]]) -> float:
    return max((max_relative_error(r, c) for r, c in zip(ref_outs, cand_outs, strict=True)), default=0.0)


@dataclass(frozen=True)
class Reference:
    """What the masked original computes on the verification inputs.

    Attributes:
        feeds: the seeded random inputs, one dict per sample.
        outputs: the masked original's outputs (graph order, then ``probes``) per sample.
        probes: internal tensors compared as well (see :func:`probe_tensors`).
    """

    feeds: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[list[np.ndarray], ...]
    probes: tuple[str, ...] = ()


#: At most this many internal tensors are compared besides the graph outputs.
MAX_PROBES = 8


def probe_tensors(model: onnx.ModelProto, plan: Plan) -> tuple[str, ...]:
    """The inputs of the nodes that write graph outputs, when pruning keeps their shape.

    A graph output is often a saturating function of what is computed (a
    Softmax of large logits is one-hot whatever the logits are); comparing
    its input as well keeps the check sensitive.  Tensors of groups the plan
    shrinks are left out (their shapes differ), and so are initializers.
    """
    changed = {t for t, layout in plan.analysis.layouts.items() if any(s.group in plan.keep for s in layout)}
    outputs = [o.name for o in model.graph.output]
    producers = {o: n for n in model.graph.node for o in n.output if o}
    probes: list[str] = []
    for name in outputs:
        node = producers.get(name)
        for tensor in node.input if node is not None else ():
            if tensor in producers and tensor not in changed and tensor not in outputs and tensor not in probes:
                probes.append(tensor)
    return tuple(probes[:MAX_PROBES])


@contextlib.contextmanager
def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[onnx.ModelProto]:
    """``model`` with ``names`` appended to its graph outputs, restored on exit (no copy)."""
    added = len(names)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    try:
        yield model
    finally:
        if added:
            del model.graph.output[-added:]


def reference_outputs(original: onnx.ModelProto, plan: Plan, *, samples: int = 3, seed: int = 0) -> Reference:
    """Run the masked ``original`` under ``plan`` on ``samples`` seeded random inputs.

    Called before the rewrite (as ``prune`` does), the masked weights are
    freed before the pruned model exists: one model-sized copy fewer at the
    peak on large models.
    """
    masked, weights = masked_weights(original, plan)
    feeds = [random_inputs(masked, seed + k) for k in range(samples)]
    probes = probe_tensors(original, plan)
    with _with_outputs(masked, probes):
        outputs = run_as_written(masked, feeds, weights)
    return Reference(tuple(feeds), tuple(outputs), probes)


def verify(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Plan,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 3,
    seed: int = 0,
    reference: Reference | None = None,
) -> VerifyResult:
    """Check ``pruned`` against the masked ``original`` under ``plan``.

    Args:
        original: the normalized model the plan was made on.
        pruned: the model to check (the plain rewrite, before any recovery).
        plan: the plan that produced ``pruned``.
        tolerance: bound on the maximum relative error (raised for float16 /
            bfloat16 models, see :func:`precision_tolerance`).
        samples: random input samples to compare.
        seed: seed of the random inputs.
        reference: ``reference_outputs(original, plan, samples=samples,
            seed=seed)`` when computed beforehand; computed here otherwise.
    """
    tolerance = precision_tolerance(pruned, tolerance)
    checker = check_model(pruned)
    if checker != "ok":
        return VerifyResult(False, float("inf"), tolerance, checker, 0)
    try:
        if reference is None:
            reference = reference_outputs(original, plan, samples=samples, seed=seed)
        with _with_outputs(pruned, reference.probes):
            outputs = run_feeds(pruned, list(reference.feeds))
        err = _worst(list(reference.outputs), outputs)
    except Exception as exc:  # onnxruntime raises its own exception types
        log.debug("verification run failed", exc_info=True)
        return VerifyResult(False, float("inf"), tolerance, f"onnxruntime: {str(exc).splitlines()[0]}", 0)
    log.info("verification: max relative error %.3g (tolerance %.1g)", err, tolerance)
    return VerifyResult(err <= tolerance, err, tolerance, checker, len(reference.feeds))
