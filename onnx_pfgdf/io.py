"""Load, normalise and save ONNX models.

Every later stage of onnx-pfgdf works on a *normalised* model, which
:func:`normalize` builds from whatever an exporter wrote:

* weights are initializers (``Constant`` nodes with a ``value`` tensor are
  turned into initializers of the same name, and nodes computing only from
  initializers — ``Unsqueeze`` of a BN scale, ``Reshape`` of a weight — are
  folded into initializers) and initializers are not also listed as graph
  inputs;
* every graph input has a fixed shape (batch 1 unless the user said otherwise);
* the model has been through onnx-simplifier (when asked) and onnx shape
  inference, so every tensor the pruner looks at has a known shape;
* every node has a unique name (tensor names are never changed);
* onnxruntime can load it.

Models that cannot be pruned are refused with a one-line
:class:`~onnx_pfgdf.errors.BadInputError`: empty graphs, quantized models, models
without a ``Conv``, non-finite weights, models that fail ``onnx.checker`` or
onnxruntime.

:func:`write_model` saves atomically (temporary file + ``os.replace``) and
switches to ONNX external data above :data:`EXTERNAL_DATA_THRESHOLD` bytes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pfgdf.errors import BadInputError, NothingToPruneError
from onnx_pfgdf.weights import restore, skeleton, strip, weight_names

__all__ = [
    "is_large",
    "tensor_bytes",
    "EXTERNAL_DATA_THRESHOLD",
    "LoadOptions",
    "normalize",
    "opset_version",
    "parse_input_shape",
    "read_model",
    "write_model",
]

logger = logging.getLogger(__name__)

#: Serialized size (bytes) above which models are saved with external data.
#: Protobuf cannot serialize messages of 2 GiB or more.
EXTERNAL_DATA_THRESHOLD: int = 1_800_000_000

_DEFAULT_DOMAINS = ("", "ai.onnx")

#: Ops whose presence marks a quantized model (default and com.microsoft domains).
_QUANTIZED_OPS = frozenset(
    {
        "ConvInteger",
        "QLinearConv",
        "MatMulInteger",
        "QLinearMatMul",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QGemm",
    }
)

_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`normalize` prepares a model.

    Attributes:
        input_shapes: Fixed shapes for graph inputs, keyed by input name, as
            given by ``--input-shape NAME:1,3,32,32``. Needed for inputs with a
            dynamic dimension other than the batch (dim 0).
        simplify: Run onnx-simplifier before shape inference.
    """

    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    simplify: bool = True


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse one ``--input-shape`` value.

    Args:
        text: ``"NAME:D0,D1,..."``, e.g. ``"input:1,3,32,32"``. The name may
            itself contain ``:``; the shape is what follows the last one.

    Returns:
        ``(name, dims)``, e.g. ``("input", (1, 3, 32, 32))``.

    Raises:
        BadInputError: the text is not ``NAME:`` followed by positive integers.
    """
    name, sep, dims_text = text.rpartition(":")
    name = name.strip()
    if not sep or not name or not dims_text.strip():
        raise BadInputError(f"bad --input-shape {text!r}: expected NAME:1,3,224,224")
    try:
        dims = tuple(int(d) for d in dims_text.split(","))
    except ValueError:
        raise BadInputError(
            f"bad --input-shape {text!r}: dims must be integers, e.g. {name}:1,3,224,224"
        ) from None
    if any(d <= 0 for d in dims):
        raise BadInputError(f"bad --input-shape {text!r}: dims must be positive")
    return name, dims


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model together with its external data.

    Args:
        path: The ``.onnx`` file. External data files are looked up relative
            to its directory.

    Returns:
        The model, with all tensor data in memory.

    Raises:
        BadInputError: the file is missing, is a directory, is not a (complete)
            ONNX model, or its external data cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise BadInputError(f"model path is a directory, not an ONNX file: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, RuntimeError, ...
        raise BadInputError(
            f"cannot read {path} as an ONNX model (truncated or not ONNX): {_first_line(exc)}"
        ) from exc
    # Protobuf happily decodes many byte strings (even an empty file) into a
    # ModelProto with no graph; a real export always has an IR version and a graph.
    if model.ir_version == 0 or not model.HasField("graph"):
        raise BadInputError(f"{path} is not an ONNX model (no IR version or no graph)")
    try:
        onnx.load_external_data_for_model(model, os.path.dirname(path))
    except Exception as exc:  # missing file, path outside the model directory, short file
        raise BadInputError(
            f"cannot read the external data of {path}: {_first_line(exc)}"
        ) from exc
    return model


def opset_version(model: onnx.ModelProto) -> int:
    """Return the model's opset version for the default ONNX domain.

    Raises:
        BadInputError: the model imports no default-domain opset.
    """
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS:
            return int(opset.version)
    raise BadInputError("model imports no default-domain (ai.onnx) opset")


# --------------------------------------------------------------------------
# helpers for models that cannot be serialized into one protobuf (>= 2 GiB)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Payload of one tensor from its dims and type (reading ``raw_data`` would copy it)."""
    if tensor.data_type != onnx.TensorProto.STRING:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
        except (KeyError, TypeError, ValueError):
            pass
    return sum(len(b) for b in tensor.string_data)


def is_large(model: onnx.ModelProto) -> bool:
    """Would ``model`` come near protobuf's 2 GiB limit (no ``SerializeToString``)?  (Initializer payloads dominate;
    ``ByteSize()`` is exact but walks the whole message, which costs seconds on large models.)"""
    payload = sum(tensor_bytes(t) for t in model.graph.initializer)
    if payload > EXTERNAL_DATA_THRESHOLD:
        return True
    if payload < EXTERNAL_DATA_THRESHOLD // 2:
        return False
    return model.ByteSize() > EXTERNAL_DATA_THRESHOLD


@contextlib.contextmanager
def _as_file(model: onnx.ModelProto) -> Iterator[str]:
    """Write ``model`` (with external data) to a temporary directory; yield its path."""
    with tempfile.TemporaryDirectory(prefix="onnx_pfgdf_") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save_model(
            copy.deepcopy(model),
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
        )
        yield path


def _check_model(model: onnx.ModelProto) -> None:
    if is_large(model):
        with _as_file(model) as path:
            onnx.checker.check_model(path)
    else:
        onnx.checker.check_model(model)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    if not is_large(model):
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    with _as_file(model) as path:
        out = os.path.join(os.path.dirname(path), "inferred.onnx")
        onnx.shape_inference.infer_shapes_path(path, out, strict_mode=False, data_prop=True)
        return onnx.load(out, load_external_data=True)


def _check_onnxruntime(model: onnx.ModelProto) -> None:
    """Raise BadInputError unless onnxruntime (CPU) can load ``model``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        if is_large(model):
            with _as_file(model) as path:
                ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
    except Exception as exc:
        raise BadInputError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------
# normalisation steps; each works in place on the private copy


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise BadInputError(
            f"tensor '{tensor.name}' keeps its data in an external file that was not loaded"
        )
    return numpy_helper.to_array(tensor)


def _refuse_unusable(model: onnx.ModelProto, weights: Mapping[str, onnx.TensorProto] | None = None) -> None:
    """Step 1: refuse models the pruner cannot work on (``weights``: values of its placeholders)."""
    graph = model.graph
    if len(graph.node) == 0:
        raise BadInputError("model graph has no nodes")
    for i, node in enumerate(graph.node):
        if node.op_type in _QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            raise BadInputError(
                f"quantized model ({node.op_type} at node '{_node_label(node, i)}'): "
                "prune the float model before quantizing"
            )
    if not any(
        n.op_type in ("Conv", "ConvTranspose") and n.domain in _DEFAULT_DOMAINS
        for n in graph.node
    ):
        raise NothingToPruneError("no Conv layer to prune")
    tensors = [(t, "initializer") for t in [*graph.initializer, *(weights or {}).values()]]
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            tensors += [(a.t, "Constant") for a in node.attribute if a.name == "value"]
    for tensor, kind in tensors:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            values = _tensor_array(tensor).astype(np.float64, copy=False)
        if not np.isfinite(values).all():
            name = tensor.name or "?"
            raise BadInputError(f"{kind} '{name}' contains NaN or Inf values")
    try:
        _check_model(model)
    except Exception as exc:
        raise BadInputError(f"invalid ONNX model: {_first_line(exc)}") from exc


def _drop_initializer_inputs(graph: onnx.GraphProto) -> int:
    """Step 2: remove graph inputs that are initializers (pre-IR-4 exporters)."""
    init_names = {t.name for t in graph.initializer}
    kept = [vi for vi in graph.input if vi.name not in init_names]
    removed = len(graph.input) - len(kept)
    if removed:
        del graph.input[:]
        graph.input.extend(kept)
    return removed


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Step 3: turn ``Constant(value=tensor)`` nodes into initializers."""
    kept: list[onnx.NodeProto] = []
    converted = 0
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and value:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            converted += 1
        else:
            kept.append(node)
    if converted:
        del graph.node[:]
        graph.node.extend(kept)
    return converted


#: Ops never folded: non-deterministic or with subgraphs.
_NO_FOLD = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}
)

#: Folding may grow constants (Expand, Tile, ConstantOfShape) by at most this many bytes.
_FOLD_GROWTH_BYTES = 1 << 20


def _fold_constants(model: onnx.ModelProto) -> int:
    """Step 3b: replace every node whose inputs are all initializers by its output values.

    Exporters often compute per-channel constants in the graph (``Unsqueeze``
    of a ``[C]`` BN scale, ``Reshape`` of a Gemm weight); the channel rules
    only see initializers.  Each node is evaluated once with
    :class:`onnx.reference.ReferenceEvaluator`, in graph order, so chains fold.
    Nodes are kept when they feed a graph output, have subgraphs or random
    outputs, or would grow the constants by more than 1 MiB beyond twice
    their inputs; an evaluation error only keeps the node.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opset = opset_version(model)
    values = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for node in graph.node:
        foldable = (
            node.domain in _DEFAULT_DOMAINS
            and node.op_type not in _NO_FOLD
            and len(node.input) > 0
            and all(name and name in values for name in node.input)
            and not any(out in outputs for out in node.output)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        )
        results = None
        if foldable:
            feeds = {name: numpy_helper.to_array(values[name]) for name in node.input}
            # A bare NodeProto would run the newest op version; wrap it in the model's opset.
            tiny = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node],
                    "fold",
                    [onnx.helper.make_tensor_value_info(n, values[n].data_type, values[n].dims) for n in feeds],
                    [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o],
                ),
                opset_imports=[onnx.helper.make_opsetid("", opset)],
            )
            try:
                results = ReferenceEvaluator(tiny).run(None, feeds)
            except Exception as exc:  # an op the reference runtime lacks, bad attributes, ...
                logger.debug("not folding %s node '%s': %s", node.op_type, node.name, _first_line(exc))
            limit = 2 * sum(a.nbytes for a in feeds.values()) + _FOLD_GROWTH_BYTES
            if results is not None and (
                len(results) != len([o for o in node.output if o])
                or not all(isinstance(r, np.ndarray) for r in results)
                or sum(r.nbytes for r in results) > limit
            ):
                results = None
        if results is None:
            kept.append(node)
            continue
        for name, array in zip([o for o in node.output if o], results, strict=True):
            if name:
                tensor = numpy_helper.from_array(np.asarray(array), name)
                values[name] = tensor
                folded.append(tensor)
    if len(kept) == len(graph.node):
        return 0
    count = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    used = {t for n in graph.node for t in n.input} | outputs
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return count


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    return repr(dim.dim_param) if dim.dim_param else "unknown"


def _fix_input_dims(
    graph: onnx.GraphProto, input_shapes: Mapping[str, tuple[int, ...]], placeholders: Collection[str] = ()
) -> None:
    """Step 4: give every graph input a fixed shape (weight placeholders are not inputs)."""
    init_names = {t.name for t in graph.initializer} | set(placeholders)
    inputs = [vi for vi in graph.input if vi.name not in init_names]
    names = [vi.name for vi in inputs]
    for name in input_shapes:
        if name not in names:
            raise BadInputError(
                f"--input-shape names '{name}', which is not a graph input; inputs are: "
                + ", ".join(repr(n) for n in names)
            )
    for vi in inputs:
        given = input_shapes.get(vi.name)
        if not vi.type.HasField("tensor_type"):
            if given is not None:
                raise BadInputError(f"input '{vi.name}' is not a tensor; cannot set its shape")
            continue
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            if given is None:
                raise BadInputError(
                    f"input '{vi.name}' has no shape: pass --input-shape {vi.name}:1,3,224,224"
                )
            for d in given:
                ttype.shape.dim.add().dim_value = d
            continue
        dims = ttype.shape.dim
        if given is not None and len(given) != len(dims):
            raise BadInputError(
                f"--input-shape for '{vi.name}' has rank {len(given)}, "
                f"the input has rank {len(dims)}"
            )
        for i, dim in enumerate(dims):
            fixed = dim.HasField("dim_value") and dim.dim_value > 0
            if given is not None:
                if fixed and dim.dim_value != given[i]:
                    raise BadInputError(
                        f"--input-shape for '{vi.name}' gives dim {i} = {given[i]}, "
                        f"but the model fixes it to {dim.dim_value}"
                    )
                dim.dim_value = given[i]
            elif not fixed:
                if i == 0:
                    logger.info(
                        "input '%s': dynamic batch dim %s set to 1", vi.name, _dim_text(dim)
                    )
                    dim.dim_value = 1
                else:
                    example = ",".join(
                        str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "N"
                        for d in dims
                    )
                    raise BadInputError(
                        f"input '{vi.name}' has dynamic dim {i} ({_dim_text(dim)}): "
                        f"pass --input-shape {vi.name}:{example}"
                    )


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Step 5: onnx-simplifier, keeping BN layers and unshared initializers.

    Returns None (after logging a warning) when onnxsim fails.
    """
    import onnxsim

    init_names = {t.name for t in model.graph.initializer}
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in model.graph.input
        if vi.name not in init_names and vi.type.HasField("tensor_type")
    }
    try:
        simplified, ok = onnxsim.simplify(
            model,
            # BN folding would change the weights the criteria score and drop the
            # BN parameters the paper counts; merging equal initializers would make
            # unrelated layers share a tensor that pruning must slice differently.
            skip_fuse_bn=True,
            skipped_optimizers=["eliminate_duplicate_initializer"],
            overwrite_input_shapes=shapes or None,
        )
    except Exception as exc:
        logger.warning("onnxsim failed, keeping the unsimplified model: %s", _first_line(exc))
        return None
    if not ok:
        logger.warning("onnxsim could not validate its result; keeping the unsimplified model")
        return None
    # onnxsim records its run in metadata_props; keep the user's metadata only.
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    return simplified


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Step 7: give nameless (and duplicate-named) nodes unique names."""
    taken = {n.name for n in graph.node if n.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = f"{node.op_type}_{index}" if not node.name else f"{node.name}_{index}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        if node.name:
            logger.info("node name '%s' is used twice; renamed to '%s'", node.name, name)
        node.name = name
        taken.add(name)
        seen.add(name)


def _prepare(model: onnx.ModelProto) -> None:
    """Steps 2, 3 and 3b (idempotent; run again after onnxsim, which emits Constants)."""
    removed = _drop_initializer_inputs(model.graph)
    if removed:
        logger.info("removed %d initializers listed as graph inputs", removed)
        if model.ir_version < 4:
            # IR < 4 requires initializers to be graph inputs; IR 4 only relaxed that.
            model.ir_version = 4
    converted = _constants_to_initializers(model.graph)
    if converted:
        logger.info("turned %d Constant nodes into initializers", converted)
    folded = _fold_constants(model)
    if folded:
        logger.info("folded %d nodes with constant inputs into initializers", folded)


def _fold_static_shapes(graph: onnx.GraphProto) -> int:
    """Step 6b: a ``Shape`` of a tensor whose shape is fixed becomes an initializer.

    Exporters compute Reshape targets at run time (PyTorch's
    ``x.view(x.size(0), -1)`` is ``Shape -> Gather -> Unsqueeze -> Concat``);
    before opset 13 shape inference does not propagate those values, so the
    Reshape output stays unknown.  Once the input dims are fixed the chain is
    constant and :func:`_fold_constants` folds the rest.
    """
    static = {vi.name: _static_dims(vi) for vi in [*graph.input, *graph.value_info]}
    outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        dims = static.get(node.input[0]) if node.op_type == "Shape" and node.domain in _DEFAULT_DOMAINS else None
        if dims is None or node.output[0] in outputs:
            kept.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        value = np.asarray(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    folded = len(graph.node) - len(kept)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _static_dims(value_info: onnx.ValueInfoProto) -> list[int] | None:
    """The dims of a tensor whose every dim is a number, else None."""
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return None
    dims = value_info.type.tensor_type.shape.dim
    return [int(d.dim_value) for d in dims] if all(d.HasField("dim_value") for d in dims) else None


def _finish(model: onnx.ModelProto, weights: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Steps 6 (with 6b) and 7, the onnxruntime check, and the weights back in place of their placeholders."""
    model = _infer_shapes(model)
    if _fold_static_shapes(model.graph):
        _fold_constants(model)
        del model.graph.value_info[:]
        model = _infer_shapes(model)
    _name_nodes(model.graph)
    _check_onnxruntime(model)  # the weights are still placeholder inputs: nothing to copy
    restore(model, weights)
    return model


def normalize(model: onnx.ModelProto, options: LoadOptions = LoadOptions()) -> onnx.ModelProto:
    """Return a normalised copy of ``model`` ready for pruning.

    Steps, in order: refuse unusable models; drop initializers from the graph
    inputs; turn ``Constant`` nodes into initializers; fold nodes whose inputs
    are all initializers (see :func:`_fold_constants`); fix input dims (batch
    -> 1, others from ``options.input_shapes``); onnx-simplifier (optional,
    with BN fusion and initializer de-duplication turned off; a failure only
    logs a warning); onnx shape inference with data propagation, then ``Shape``
    nodes of fixed-shape tensors folded (and inference re-run); name nameless
    nodes ``{op_type}_{index}``; check that onnxruntime (CPU) loads the result.
    If onnxruntime rejects the simplified model, the unsimplified one is used.
    The steps work on a copy in which the weights (see
    :func:`onnx_pfgdf.weights.weight_names`) are placeholder inputs; they are
    copied once, into the result.

    Args:
        model: The model as loaded; never mutated.
        options: Input shapes and whether to simplify.

    Returns:
        A new model.

    Raises:
        BadInputError: the model cannot be pruned or the options do not fit it.
    """
    # The steps run on a copy whose weights are placeholder inputs (onnx_pfgdf.weights):
    # onnxsim, shape inference and the checks then cost nothing per weight byte.
    work, weights = strip(model, weight_names(model))
    _refuse_unusable(work, weights)
    _prepare(work)
    work, folded = strip(work, weight_names(work))  # weights that were Constant nodes or folded
    weights.update(folded)
    _fix_input_dims(work.graph, options.input_shapes, weights)
    if options.simplify:
        simplified = _simplify(work)
        if simplified is not None:
            _prepare(simplified)
            try:
                return _finish(simplified, weights)
            except BadInputError as exc:
                logger.info("%s; retrying without onnxsim", exc)
            except Exception as exc:
                logger.info(
                    "simplified model failed (%s); retrying without onnxsim", _first_line(exc)
                )
    try:
        return _finish(work, weights)
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"shape inference failed: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------
# saving


#: Tensors of at least this many bytes go to the external data file; offsets are aligned to it.
_EXTERNAL_MIN_BYTES = 1024
_EXTERNAL_ALIGN = 4096


def _externalized(model: onnx.ModelProto, data_path: str, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers live in ``data_path`` (written here).

    The ONNX external-data format (``location``/``offset``/``length``), one
    tensor at a time: unlike ``onnx.save_model(save_as_external_data=True)``
    it needs no deep copy of the model first.
    """
    out = skeleton(model)
    with open(data_path, "wb") as fh:
        for tensor in model.graph.initializer:
            if tensor_bytes(tensor) < _EXTERNAL_MIN_BYTES or tensor.data_location == onnx.TensorProto.EXTERNAL:
                out.graph.initializer.add().CopyFrom(tensor)
                continue
            payload = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
            offset = -fh.tell() % _EXTERNAL_ALIGN + fh.tell()
            fh.seek(offset)
            fh.write(payload)
            moved = out.graph.initializer.add()
            moved.name, moved.data_type = tensor.name, tensor.data_type
            moved.dims.extend(tensor.dims)
            moved.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(payload)))):
                entry = moved.external_data.add()
                entry.key, entry.value = key, value
            del payload
    return out


def write_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
) -> None:
    """Save ``model`` atomically.

    The model is written to a temporary directory next to ``path`` and moved
    into place with ``os.replace``, so ``path`` is either the old file or the
    complete new one. Models whose serialized size exceeds
    :data:`EXTERNAL_DATA_THRESHOLD` are saved with all tensors in one external
    data file named ``<basename of path>.data`` beside it (also moved into
    place atomically, before the model file).

    Args:
        model: The model; not mutated.
        path: Destination ``.onnx`` file.
        input_path: The file the model was read from; writing over it is refused.

    Raises:
        BadInputError: ``path`` is ``input_path`` (after resolving symlinks) or
            its directory does not exist.
    """
    path = os.fspath(path)
    target = os.path.realpath(path)
    if input_path is not None and target == os.path.realpath(os.fspath(input_path)):
        raise BadInputError(f"refusing to overwrite the input model: {path}")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise BadInputError(f"output directory does not exist: {os.path.dirname(path) or '.'}")
    basename = os.path.basename(target)
    tmpdir = tempfile.mkdtemp(prefix=f".{basename}.", suffix=".tmp", dir=directory)
    try:
        tmp_model = os.path.join(tmpdir, basename)
        if is_large(model):
            location = f"{basename}.data"
            onnx.save_model(_externalized(model, os.path.join(tmpdir, location), location), tmp_model)
            os.replace(os.path.join(tmpdir, location), os.path.join(directory, location))
            logger.info("saved tensor data to %s", os.path.join(directory, location))
        else:
            onnx.save_model(model, tmp_model)
        os.replace(tmp_model, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
