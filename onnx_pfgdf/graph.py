"""Read-only def-use index of an ONNX graph.

``GraphIndex`` answers the questions every later stage asks — who produces a
tensor, who consumes it, is it a constant, what is its static shape — without
ever changing the model.  Build it once per ModelProto::

    index = GraphIndex(model)
    index.producer("conv1_out")      # -> NodeProto or None
    index.consumers("conv1_out")     # -> [(NodeProto, input_slot), ...]
    index.constant("conv1.weight")   # -> np.ndarray or None
    index.shape("conv1_out")         # -> (1, 64, 32, 32) or None
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["CACHE_BYTES", "GraphIndex", "node_attr"]

#: Initializer arrays up to this size are cached by :meth:`GraphIndex.constant`.
CACHE_BYTES: int = 64 * 1024


def node_attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """Return the Python value of attribute ``name`` of ``node`` (or ``default``)."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class GraphIndex:
    """Producer/consumer/initializer/shape lookup for the main graph of a model.

    Args:
        model: the model to index; it is not copied and must not be mutated
            while the index is in use.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs: list[str] = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs: list[str] = [o.name for o in graph.output]
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self._producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    self._consumers[name].append((node, slot))
        self._shapes: dict[str, tuple[int, ...] | None] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            self._shapes[vi.name] = _static_shape(vi)
        for name, tensor in self.initializers.items():
            self._shapes[name] = tuple(int(d) for d in tensor.dims)
        self._arrays: dict[str, np.ndarray] = {}

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node that outputs ``tensor`` (None for graph inputs and initializers)."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """Every ``(node, input slot)`` that reads ``tensor``, in graph order."""
        return list(self._consumers.get(tensor, ()))

    def is_constant(self, tensor: str) -> bool:
        """True when ``tensor`` is an initializer."""
        return tensor in self.initializers

    def constant(self, tensor: str) -> np.ndarray | None:
        """The initializer value of ``tensor`` as a read-only array, else None.

        Arrays up to :data:`CACHE_BYTES` are cached; larger ones (weights) are
        converted on each call, so that an index does not keep a second copy
        of every weight alive.
        """
        if tensor not in self.initializers:
            return None
        if tensor in self._arrays:
            return self._arrays[tensor]
        array = numpy_helper.to_array(self.initializers[tensor])
        array.flags.writeable = False
        if array.nbytes <= CACHE_BYTES:
            self._arrays[tensor] = array
        return array

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        """The fully static shape of ``tensor`` if shape inference knows it."""
        return self._shapes.get(tensor)

    def rank(self, tensor: str) -> int | None:
        """The rank of ``tensor`` if known."""
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def iter_ops(self, op_types: set[str]) -> Iterator[onnx.NodeProto]:
        """Nodes whose op_type is in ``op_types``, in graph order."""
        return (n for n in self.nodes if n.op_type in op_types)

    def use_count(self, tensor: str) -> int:
        """How many node inputs read ``tensor``."""
        return len(self._consumers.get(tensor, ()))


def _static_shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims = []
    for dim in ttype.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)
