"""The ONNX model zoo topologies shipped with the ``onnx`` package, with seeded weights.

``onnx/backend/test/data/light/light_<name>.onnx`` holds real exported CNNs
(IR version 3, opset 9) whose weights were replaced by ``ConstantOfShape``
nodes reading a shape initializer ``<weight>__SHAPE``::

    <w>__SHAPE (initializer, int64) -> ConstantOfShape -> <w> -> Conv / Gemm / BN ...

:func:`load_zoo` turns every such node into a seeded random initializer named
``<w>`` — He-scaled normal (``std = sqrt(2 / fan_in)``) for rank >= 2,
``U(0.5, 1.5)`` for 1-D tensors so BN variances are positive — drops the shape
initializers and graph inputs nobody reads any more, and raises the IR version
to 4 (initializers need not be graph inputs from IR 4 on).
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ZOO_DIR", "ZOO_MODELS", "zoo_path", "load_zoo", "seed_constant_of_shape"]

ZOO_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")

ZOO_MODELS = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)


def zoo_path(name: str) -> str:
    """Path of ``light_<name>.onnx`` inside the installed onnx package."""
    return os.path.join(ZOO_DIR, f"light_{name}.onnx")


def _random_weight(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(shape) >= 2:
        fan_in = max(1, math.prod(shape[1:]))
        value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    else:
        value = rng.uniform(0.5, 1.5, shape)
    return value.astype(dtype)


def seed_constant_of_shape(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace each ``ConstantOfShape`` whose shape is an initializer by random weights.

    Args:
        model: a zoo model; not mutated.
        seed: seed of the weights (one generator, graph order).

    Returns:
        A new model with IR version >= 4 and no unused initializers or inputs.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    kept_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept_nodes.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        dtype = np.dtype(np.float32)
        for attr in node.attribute:
            if attr.name == "value":
                dtype = numpy_helper.to_array(attr.t).dtype
        new_inits.append(numpy_helper.from_array(_random_weight(rng, shape, dtype), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(new_inits)
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    init_names = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name in used and vi.name not in init_names]
    del graph.input[:]
    graph.input.extend(inputs)
    out.ir_version = max(out.ir_version, 4)
    return out


def load_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """Load ``light_<name>.onnx`` with seeded weights (see :func:`seed_constant_of_shape`)."""
    return seed_constant_of_shape(onnx.load(zoo_path(name)), seed)
