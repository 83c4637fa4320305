"""Count what the PFGDF paper reports: filters, parameters and MACs.

* **Filters**: output channels of every ``Conv`` (``W.shape[0]``) and
  ``ConvTranspose`` (``W.shape[1] * group``).
* **Parameters**: elements of every floating-point initializer of the model
  (convolutions, BN, fully connected layers; integer shape constants are not
  parameters). Float ``Constant`` node values count too, so the number does
  not change when :func:`onnx_pfgdf.io.normalize` turns them into initializers.
* **MACs** (multiply-accumulates) at batch 1; the output's dim 0 is the batch
  and counts as 1 whatever it is:

  ============== ==========================================================
  Conv           ``out elements x C_in/group x kh x kw``
                 (= ``prod(Y.shape[1:]) * prod(W.shape[1:])``)
  ConvTranspose  ``in elements x C_out/group x kh x kw``
                 (= ``prod(X.shape[1:]) * prod(W.shape[1:])``)
  Gemm           ``M x N x K`` with ``M = 1`` (= ``Y.shape[1] * K``)
  MatMul         ``out elements x K`` (dim 0 dropped when the output has
                 rank >= 2; ``K = A.shape[-1]``)
  ============== ==========================================================

Example: ``Conv(3->4, 3x3, pad 1)`` on a ``1x3x8x8`` input has 4 filters,
``4*3*3*3 + 4 = 112`` parameters and ``4*8*8 * 3*3*3 = 6912`` MACs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import onnx

__all__ = ["LayerCount", "ModelCount", "count_model", "reduction"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
_COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class LayerCount:
    """Counts of one Conv/ConvTranspose/Gemm/MatMul node.

    Attributes:
        node: Node name.
        op_type: ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.
        output: Name of the node's first output.
        filters: Output channels for Conv/ConvTranspose, 0 for Gemm/MatMul.
        params: Elements of the floating-point initializers among the node's
            inputs (weight and bias).
        macs: Multiply-accumulates at batch 1.
    """

    node: str
    op_type: str
    output: str
    filters: int
    params: int
    macs: int


@dataclass(frozen=True)
class ModelCount:
    """Whole-model counts.

    Attributes:
        filters: Sum of Conv/ConvTranspose output channels.
        params: Elements of all floating-point initializers (and float
            ``Constant`` values) of the model.
        macs: Sum of the layers' MACs at batch 1.
        layers: The counted nodes in graph order.
    """

    filters: int
    params: int
    macs: int
    layers: tuple[LayerCount, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``layers`` is a list of dicts."""
        return {
            "filters": self.filters,
            "params": self.params,
            "macs": self.macs,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _is_float(data_type: int) -> bool:
    name = onnx.TensorProto.DataType.Name(data_type)
    return name.startswith("FLOAT") or name in ("DOUBLE", "BFLOAT16")


def _float_tensors(graph: onnx.GraphProto) -> dict[str, Shape]:
    """Float initializers and float Constant values of the main graph, by name."""
    tensors: dict[str, Shape] = {}
    for t in graph.initializer:
        if _is_float(t.data_type):
            tensors[t.name] = tuple(int(d) for d in t.dims)
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS:
            continue
        for attr in node.attribute:
            if attr.name == "value" and _is_float(attr.t.data_type):
                tensors[node.output[0]] = tuple(int(d) for d in attr.t.dims)
    return tensors


def _shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Known tensor shapes (``None`` for an unknown dim) from value infos and initializers."""
    graph = model.graph
    shapes: dict[str, Shape] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        ttype = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and ttype.HasField("shape"):
            shapes[vi.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in ttype.shape.dim
            )
    for t in graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
    return shapes


def _needed(node: onnx.NodeProto) -> list[str]:
    """Tensors whose shapes the MAC formula of ``node`` reads."""
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1]]
    if node.op_type in ("Gemm", "MatMul"):
        return [node.output[0], node.input[0], node.input[1]]
    return [node.output[0], node.input[1]]


def _known(shape: Shape | None, skip_batch: bool) -> bool:
    if shape is None:
        return False
    dims = shape[1:] if skip_batch and len(shape) >= 2 else shape
    return all(d is not None for d in dims)


def _elements_batch1(shape: Shape) -> int:
    dims = shape[1:] if len(shape) >= 2 else shape
    return math.prod(int(d) for d in dims if d is not None)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _layer_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> tuple[int, int]:
    """Return ``(filters, macs)`` of one counted node (see the module docstring)."""
    label = node.name or node.output[0]
    for name in _needed(node):
        # Weights need every dim; activations may have an unknown batch dim.
        is_weight = name == node.input[1] and node.op_type in ("Conv", "ConvTranspose")
        if not _known(shapes.get(name), skip_batch=not is_weight):
            raise ValueError(
                f"{node.op_type} node '{label}': shape of '{name}' is unknown; "
                "run onnx_pfgdf.io.normalize first"
            )
    op = node.op_type
    if op == "Conv":
        w = shapes[node.input[1]]
        return int(w[0]), _elements_batch1(shapes[node.output[0]]) * math.prod(w[1:])
    if op == "ConvTranspose":
        w = shapes[node.input[1]]
        filters = int(w[1]) * _attr(node, "group", 1)
        return filters, _elements_batch1(shapes[node.input[0]]) * math.prod(w[1:])
    a, b, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
    if op == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[1]
        if k is None:
            k = b[1] if _attr(node, "transB", 0) else b[0]
        if k is None or y[1] is None:
            raise ValueError(f"Gemm node '{label}': K or N is unknown")
        return 0, int(y[1]) * int(k)
    # MatMul (numpy semantics): K is A's last dim, or B's second-to-last.
    k = a[-1] if a and a[-1] is not None else (b[-2] if len(b) >= 2 else b[0])
    if k is None:
        raise ValueError(f"MatMul node '{label}': K is unknown")
    return 0, _elements_batch1(y) * int(k)


def count_model(model: onnx.ModelProto) -> ModelCount:
    """Count filters, parameters and MACs of ``model``.

    Shapes come from the model's value infos; if one that a formula needs is
    missing, onnx shape inference is run on a copy (the argument is never
    mutated).

    Args:
        model: A model with fixed shapes (e.g. from :func:`onnx_pfgdf.io.normalize`).

    Returns:
        The counts, with one :class:`LayerCount` per Conv/ConvTranspose/Gemm/
        MatMul node in graph order.

    Raises:
        ValueError: a shape needed by a MAC formula is unknown (names the node).
    """
    graph = model.graph
    floats = _float_tensors(graph)
    counted = [
        n for n in graph.node if n.op_type in _COUNTED_OPS and n.domain in _DEFAULT_DOMAINS
    ]
    shapes = _shapes(model)
    if any(
        not _known(shapes.get(name), skip_batch=True) for n in counted for name in _needed(n)
    ):
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        shapes = _shapes(inferred)

    layers = []
    for node in counted:
        filters, macs = _layer_macs(node, shapes)
        weights = dict.fromkeys(name for name in node.input if name in floats)
        params = sum(math.prod(floats[name]) for name in weights)
        layers.append(
            LayerCount(
                node=node.name,
                op_type=node.op_type,
                output=node.output[0],
                filters=int(filters),
                params=int(params),
                macs=int(macs),
            )
        )
    return ModelCount(
        filters=sum(layer.filters for layer in layers),
        params=int(sum(math.prod(shape) for shape in floats.values())),
        macs=sum(layer.macs for layer in layers),
        layers=tuple(layers),
    )


def reduction(before: ModelCount, after: ModelCount) -> dict[str, float]:
    """Return the removed fraction of filters, parameters and MACs.

    ``(before - after) / before`` for each of ``filters``, ``params`` and
    ``macs``: 0 when nothing was removed, 0.75 when a quarter is left. A count
    that is 0 before gives 0.0; a count that grew gives a negative fraction.
    """
    result: dict[str, float] = {}
    for key in ("filters", "params", "macs"):
        b, a = getattr(before, key), getattr(after, key)
        result[key] = (b - a) / b if b else 0.0
    return result
