"""Weight-free copies of a model, so that graph work never copies the weights.

On a ResNet-50 (25M parameters, ~100 MB) every protobuf copy, serialization,
onnx-simplifier or shape-inference pass over the whole model costs its size
again in memory and time, although that work needs only the weights' names,
types and shapes:

* :func:`skeleton` copies a model without its initializers;
* :func:`strip` replaces chosen initializers by graph inputs of the same name,
  type and shape (*placeholders*) in such a copy and returns the original
  ``TensorProto`` objects (shared, not copied); :func:`restore` turns the
  placeholders back into initializers;
* :func:`weight_names` picks the initializers whose values graph rewriters
  (onnx-simplifier, constant folding) never need: float tensors read only at
  the weight, bias or BN-parameter slots of ``Conv``, ``ConvTranspose``,
  ``Gemm``, ``MatMul`` and ``BatchNormalization`` nodes whose data input is
  not constant and whose output is not scaled or shifted by a constant
  (``Conv -> Mul(k) -> Add(b)``, a decomposed BN, is folded into the weights by
  onnx-simplifier).  A weight computed by a chain (``Constant -> Transpose ->
  Conv``) is not an initializer of the input model, so its chain still folds;
* :func:`infer_shapes` runs onnx shape inference on a weight-free copy.

Example::

    work, tensors = strip(model, weight_names(model))   # Conv weights -> placeholders
    work = onnxsim_or_any_rewrite(work)                   # cheap: no weights inside
    restore(work, tensors)                                # placeholders -> initializers
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import onnx
from google.protobuf.message import Message

__all__ = ["WEIGHT_SLOTS", "infer_shapes", "restore", "skeleton", "strip", "weight_names"]

#: Input slots that hold a weight, bias or BN parameter, by op type (default domain).
WEIGHT_SLOTS: Mapping[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "Gemm": frozenset({1, 2}),
    "MatMul": frozenset({1}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")

_ARITHMETIC = frozenset({"Mul", "Add", "Sub", "Div"})

_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)


def _copy_fields(message: Message, skip: str) -> Message:
    """A copy of ``message`` without its field ``skip``."""
    out = type(message)()
    for fd, value in message.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(out, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(out, fd.name).CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    return out


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph has no initializers (everything else is copied)."""
    out = _copy_fields(model, "graph")
    out.graph.CopyFrom(_copy_fields(model.graph, "initializer"))
    return out


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside the subgraphs of ``graph``'s nodes (any depth)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names.update(n for sn in sub.node for n in sn.input)
                names |= _subgraph_inputs(sub)
    return names


def weight_names(model: onnx.ModelProto) -> list[str]:
    """Initializers that may be stripped before graph rewriting, in initializer order.

    A float initializer qualifies when every read of it is at a
    :data:`WEIGHT_SLOTS` slot of a default-domain node whose input 0 is not
    constant (not an initializer, not computed from constants only) and whose
    output no ``Mul``/``Add``/``Sub``/``Div`` combines with a constant, and it
    is not a graph output, not read by a subgraph and not defined twice.
    """
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(not n or n in constant for n in node.input)):
            constant.update(o for o in node.output if o)
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                uses[name].append((node, slot))
    folded_into = {  # outputs that onnx-simplifier may fold a constant Mul/Add/Sub/Div into
        node.input[i]
        for node in graph.node
        if node.op_type in _ARITHMETIC and any(n in constant for n in node.input)
        for i in range(len(node.input))
    }
    excluded = {o.name for o in graph.output} | _subgraph_inputs(graph)
    counts: dict[str, int] = defaultdict(int)
    for tensor in graph.initializer:
        counts[tensor.name] += 1
    names = []
    for tensor in graph.initializer:
        name = tensor.name
        if (
            tensor.data_type not in _FLOAT_TYPES
            or tensor.data_location == onnx.TensorProto.EXTERNAL
            or counts[name] > 1
            or name in excluded
            or not uses[name]
        ):
            continue
        if all(
            node.domain in _DEFAULT_DOMAINS
            and slot in WEIGHT_SLOTS.get(node.op_type, ())
            and node.input[0] not in constant
            and not any(o in folded_into for o in node.output)
            for node, slot in uses[name]
        ):
            names.append(name)
    return names


def strip(model: onnx.ModelProto, names: Iterable[str]) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` with the initializers ``names`` replaced by placeholder graph inputs.

    A placeholder has the tensor's element type and dims; an initializer that
    is already listed as a graph input (IR < 4) keeps its input, retyped.

    Args:
        model: the model; not mutated.
        names: initializer names (e.g. from :func:`weight_names`).

    Returns:
        ``(stripped copy, {name: TensorProto of model})``; the tensors are the
        model's own objects, not copies.
    """
    wanted = set(names)
    tensors = {t.name: t for t in model.graph.initializer if t.name in wanted}
    out = skeleton(model)
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name not in tensors)
    listed = {vi.name: vi for vi in out.graph.input}
    for name, tensor in tensors.items():
        placeholder = onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
        if name in listed:
            listed[name].CopyFrom(placeholder)
        else:
            out.graph.input.append(placeholder)
    return out, tensors


def restore(model: onnx.ModelProto, tensors: Mapping[str, onnx.TensorProto]) -> None:
    """Turn the placeholders of ``tensors`` back into initializers, in place.

    Placeholders are removed from the graph inputs; each tensor still read by a
    node or a graph output is appended to the initializers (a copy).  The IR
    version is raised to 4 when needed (initializers that are not inputs).
    """
    graph = model.graph
    inputs = [vi for vi in graph.input if vi.name not in tensors]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    for name, tensor in tensors.items():
        if name in used:
            graph.initializer.add().CopyFrom(tensor)
    if tensors and model.ir_version < 4:
        model.ir_version = 4


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` (data propagation on) without copying the weights.

    Inference runs on a copy whose :func:`weight_names` are placeholders (their
    values never decide a shape); the inferred ``value_info`` and outputs are
    copied into ``model``, which is returned.
    """
    stripped, _ = strip(model, weight_names(model))
    inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=True)
    for field in ("value_info", "output"):
        target = getattr(model.graph, field)
        del target[:]
        target.extend(getattr(inferred.graph, field))
    return model
