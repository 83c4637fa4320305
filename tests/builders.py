"""Small seeded CNNs built with ``onnx.helper`` for the engine, CLI and bad-input tests.

Every builder returns a :class:`Case`: the model plus what a reader of the graph
knows about it *without* running the library — which layers form one prunable
channel group (coupled layers listed together) and which layers must stay
whole, with a word the refusal reason has to mention.

Weights are He-scaled (``std = sqrt(2 / fan_in)``), BN scale ~ U(0.5, 1.5),
BN var ~ U(0.5, 1.5) > 0, so activations neither vanish nor explode and a
masked-vs-pruned comparison at 1e-4 is meaningful.

Conventions: input ``x`` is ``[1, 3, 8, 8]`` (float32), the logits output is
``y``; every Conv/Gemm output tensor is named after its layer (``c1``, ``fc``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "Case",
    "GraphBuilder",
    "ALL_BUILDERS",
    "vgg_chain",
    "spatial_flatten",
    "resnet_blocks",
    "concat_branches",
    "depthwise_separable",
    "decomposed_bn",
    "se_block",
    "mlp_head",
    "unsupported_op",
    "conv_graph_output",
    "shared_weight",
    "concat_spatial_flatten",
    "random_chain",
]

OPSET = 13
IN_SHAPE = (1, 3, 8, 8)
CLASSES = 10


@dataclass(frozen=True)
class Case:
    """A test model and its hand-derived channel groups.

    Attributes:
        name: builder name (for test ids).
        model: the ONNX model.
        groups: prunable groups, ``(member output tensors, channels)``; members
            of one group are coupled (residual Add, SE Mul) and must share
            their keep list.
        frozen: ``{member output tensor: word the frozen reason must contain}``.
        dw_convs: ``{depthwise conv output: output of the layer whose group it carries}``.
    """

    name: str
    model: onnx.ModelProto
    groups: tuple[tuple[tuple[str, ...], int], ...]
    frozen: dict[str, str] = field(default_factory=dict)
    dw_convs: dict[str, str] = field(default_factory=dict)


class GraphBuilder:
    """Append-only graph under construction; each op method returns its output name."""

    def __init__(self, seed: int, in_shape: tuple[int, ...] = IN_SHAPE) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.in_shape = in_shape
        self._k = 0

    def _fresh(self, prefix: str) -> str:
        self._k += 1
        return f"{prefix}_{self._k}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self._fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, out: str, *, k: int = 3, stride: int = 1,
             group: int = 1, bias: bool = True) -> str:
        fan_in = (cin // group) * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        inputs = [x, self.const(f"{out}.W", w)]
        if bias:
            inputs.append(self.const(f"{out}.B", self.rng.normal(0.0, 0.1, cout)))
        return self.node("Conv", inputs, out, kernel_shape=[k, k], pads=[k // 2] * 4,
                         strides=[stride, stride], group=group)

    def bn(self, x: str, c: int) -> str:
        out = self._fresh(f"{x}_bn")
        params = [
            self.const(f"{out}.scale", self.rng.uniform(0.5, 1.5, c)),
            self.const(f"{out}.bias", self.rng.normal(0.0, 0.1, c)),
            self.const(f"{out}.mean", self.rng.normal(0.0, 0.1, c)),
            self.const(f"{out}.var", self.rng.uniform(0.5, 1.5, c)),
        ]
        return self.node("BatchNormalization", [x, *params], out, epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def cbr(self, x: str, cin: int, cout: int, out: str, **kw: object) -> str:
        """Conv + BN + Relu."""
        return self.relu(self.bn(self.conv(x, cin, cout, out, **kw), cout))

    def gemm(self, x: str, k: int, n: int, out: str, *, trans_b: int = 1) -> str:
        w = self.rng.standard_normal((n, k) if trans_b else (k, n)) * np.sqrt(2.0 / k)
        b = self.rng.normal(0.0, 0.1, n)
        return self.node("Gemm", [x, self.const(f"{out}.W", w), self.const(f"{out}.B", b)], out, transB=trans_b)

    def head(self, x: str, c: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm(c -> 10) = y."""
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        return self.gemm(flat, c, CLASSES, "y")

    def model(self, outputs: dict[str, list[int]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.in_shape))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnx-pfgdf-tests")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def vgg_chain(seed: int = 0, widths: tuple[int, int, int] = (8, 8, 16)) -> Case:
    """VGG-style chain::

        x[1,3,8,8] -> Conv c1(3->a) -> BN -> Relu -> Conv c2(a->b) -> BN -> Relu
                   -> Conv c3(b->c) -> BN -> Relu -> MaxPool 2x2 -> GlobalAveragePool
                   -> Flatten -> Gemm y(c->10)

    Groups: {c1: a}, {c2: b}, {c3: c}; y is frozen (graph output).
    """
    a, b, c = widths
    g = GraphBuilder(seed)
    h = g.cbr("x", 3, a, "c1")
    h = g.cbr(h, a, b, "c2")
    h = g.cbr(h, b, c, "c3")
    h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    g.head(h, c)
    return Case("vgg_chain", g.model({"y": [1, CLASSES]}),
                ((("c1",), a), (("c2",), b), (("c3",), c)), {"y": "y"})


def spatial_flatten(seed: int = 1) -> Case:
    """Chain ending in Flatten of a 4x4 map (each channel is a block of 16 features)::

        x[1,3,8,8] -> Conv c1(3->6) -> Relu -> MaxPool 2x2 -> Conv c2(6->5) -> BN -> Relu
                   -> Flatten [1,80] -> Gemm y(80->10)

    Groups: {c1: 6}, {c2: 5}; y frozen.
    """
    g = GraphBuilder(seed)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.cbr(h, 6, 5, "c2")
    flat = g.node("Flatten", [h], axis=1)
    g.gemm(flat, 5 * 16, CLASSES, "y")
    return Case("spatial_flatten", g.model({"y": [1, CLASSES]}),
                ((("c1",), 6), (("c2",), 5)), {"y": "y"})


def resnet_blocks(seed: int = 2, c: int = 8, d: int = 12) -> Case:
    """ResNet basic blocks, identity then projection shortcut::

        x -> Conv stem(3->c) -> BN -> Relu = s
        s -> Conv b1a(c->c) -> BN -> Relu -> Conv b1b(c->c) -> BN --+
        s ----------------------- identity -------------------------Add -> Relu = r1
        r1 -> Conv b2a(c->d, s2) -> BN -> Relu -> Conv b2b(d->d) -> BN --+
        r1 -> Conv b2s(c->d, 1x1, s2) -> BN --------------------------Add -> Relu
           -> GlobalAveragePool -> Flatten -> Gemm y(d->10)

    Groups: {stem, b1b: c} (identity Add), {b1a: c}, {b2a: d}, {b2b, b2s: d}.
    """
    g = GraphBuilder(seed)
    s = g.cbr("x", 3, c, "stem")
    h = g.cbr(s, c, c, "b1a")
    h = g.bn(g.conv(h, c, c, "b1b"), c)
    r1 = g.relu(g.node("Add", [h, s]))
    h = g.cbr(r1, c, d, "b2a", stride=2)
    h = g.bn(g.conv(h, d, d, "b2b"), d)
    sc = g.bn(g.conv(r1, c, d, "b2s", k=1, stride=2), d)
    r2 = g.relu(g.node("Add", [h, sc]))
    g.head(r2, d)
    return Case("resnet_blocks", g.model({"y": [1, CLASSES]}),
                ((("stem", "b1b"), c), (("b1a",), c), (("b2a",), d), (("b2b", "b2s"), d)), {"y": "y"})


def concat_branches(seed: int = 3, a: int = 5, b: int = 7) -> Case:
    """Two branches concatenated on channels (the second starts at offset a)::

        x -> Conv ba(3->a) -> Relu --+
        x -> Conv bb(3->b) -> BN -> Relu --Concat(axis 1) [a+b] -> Conv cc(a+b->6) -> Relu
           -> GlobalAveragePool -> Flatten -> Gemm y(6->10)

    Groups: {ba: a}, {bb: b}, {cc: 6}.
    """
    g = GraphBuilder(seed)
    ha = g.relu(g.conv("x", 3, a, "ba"))
    hb = g.cbr("x", 3, b, "bb")
    h = g.node("Concat", [ha, hb], axis=1)
    h = g.relu(g.conv(h, a + b, 6, "cc"))
    g.head(h, 6)
    return Case("concat_branches", g.model({"y": [1, CLASSES]}),
                ((("ba",), a), (("bb",), b), (("cc",), 6)), {"y": "y"})


def depthwise_separable(seed: int = 4, c: int = 8) -> Case:
    """Depthwise-separable block::

        x -> Conv c1(3->c) -> BN -> Relu -> Conv dw(c->c, 3x3, group=c) -> BN -> Relu
          -> Conv pw(c->10, 1x1) -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm y(10->10)

    The depthwise conv carries c1's channels. Groups: {c1: c}, {pw: 10}.
    """
    g = GraphBuilder(seed)
    h = g.cbr("x", 3, c, "c1")
    h = g.cbr(h, c, c, "dw", group=c)
    h = g.cbr(h, c, 10, "pw", k=1)
    g.head(h, 10)
    return Case("depthwise_separable", g.model({"y": [1, CLASSES]}),
                ((("c1",), c), (("pw",), 10)), {"y": "y"}, dw_convs={"dw": "c1"})


def decomposed_bn(seed: int = 5, c: int = 8) -> Case:
    """BN written as Mul + Add with per-channel constants of shape [C,1,1]::

        x -> Conv c1(3->c, no bias) -> Mul(k[c,1,1]) -> Add(b[c,1,1]) -> Relu
          -> Conv c2(c->6) -> Mul(k[6,1,1]) -> Add(b[6,1,1]) -> Relu
          -> GlobalAveragePool -> Flatten -> Gemm y(6->10)

    Groups: {c1: c}, {c2: 6}.
    """
    g = GraphBuilder(seed)
    h = "x"
    for name, cin, cout in (("c1", 3, c), ("c2", c, 6)):
        h = g.conv(h, cin, cout, name, bias=False)
        h = g.node("Mul", [h, g.const(f"{name}.k", g.rng.uniform(0.5, 1.5, (cout, 1, 1)))])
        h = g.node("Add", [h, g.const(f"{name}.b", g.rng.normal(0.0, 0.1, (cout, 1, 1)))])
        h = g.relu(h)
    g.head(h, 6)
    return Case("decomposed_bn", g.model({"y": [1, CLASSES]}), ((("c1",), c), (("c2",), 6)), {"y": "y"})


def se_block(seed: int = 6, c: int = 8, r: int = 4) -> Case:
    """Squeeze-and-excitation block::

        x -> Conv stem(3->c) -> BN -> Relu = t
        t -> GlobalAveragePool -> Conv se1(c->r, 1x1) -> Relu -> Conv se2(r->c, 1x1) -> Sigmoid = gate
        Mul(t, gate) -> Conv c2(c->6) -> Relu -> GlobalAveragePool -> Flatten -> Gemm y(6->10)

    The Mul couples stem and se2. Groups: {stem, se2: c}, {se1: r}, {c2: 6}.
    """
    g = GraphBuilder(seed)
    t = g.cbr("x", 3, c, "stem")
    s = g.node("GlobalAveragePool", [t])
    s = g.relu(g.conv(s, c, r, "se1", k=1))
    gate = g.node("Sigmoid", [g.conv(s, r, c, "se2", k=1)])
    h = g.node("Mul", [t, gate])
    h = g.relu(g.conv(h, c, 6, "c2"))
    g.head(h, 6)
    return Case("se_block", g.model({"y": [1, CLASSES]}),
                ((("stem", "se2"), c), (("se1",), r), (("c2",), 6)), {"y": "y"})


def mlp_head(seed: int = 7, c: int = 8, hidden: int = 12) -> Case:
    """Conv trunk with a two-layer MLP head (hidden units prunable)::

        x -> Conv c1(3->c) -> BN -> Relu -> GlobalAveragePool -> Flatten
          -> Gemm fc1(c->hidden, transB=0) -> Relu -> Gemm y(hidden->10, transB=1)

    Groups: {c1: c}, {fc1: hidden}.
    """
    g = GraphBuilder(seed)
    h = g.cbr("x", 3, c, "c1")
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [h])], axis=1)
    h = g.relu(g.gemm(flat, c, hidden, "fc1", trans_b=0))
    g.gemm(h, hidden, CLASSES, "y", trans_b=1)
    return Case("mlp_head", g.model({"y": [1, CLASSES]}), ((("c1",), c), (("fc1",), hidden)), {"y": "y"})


def unsupported_op(seed: int = 8) -> Case:
    """An LRN (mixes neighbouring channels, no channel rule) in the middle::

        x -> Conv c1(3->6) -> Relu -> LRN(size 3) -> Conv c2(6->8) -> BN -> Relu
          -> GlobalAveragePool -> Flatten -> Gemm y(8->10)

    c1 is frozen (reason names LRN); c2 stays prunable. Groups: {c2: 8}.
    """
    g = GraphBuilder(seed)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    h = g.node("LRN", [h], size=3)
    h = g.cbr(h, 6, 8, "c2")
    g.head(h, 8)
    return Case("unsupported_op", g.model({"y": [1, CLASSES]}), ((("c2",), 8),), {"c1": "LRN", "y": "y"})


def conv_graph_output(seed: int = 9) -> Case:
    """A Conv whose output is also a graph output::

        x -> Conv c1(3->6) -> Relu -> Conv feat(6->8) ---------------> (graph output 'feat')
                                           \\-> Relu -> GlobalAveragePool -> Flatten -> Gemm y(8->10)

    feat is frozen (its channels reach a graph output). Groups: {c1: 6}.
    """
    g = GraphBuilder(seed)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    feat = g.conv(h, 6, 8, "feat")
    g.head(g.relu(feat), 8)
    return Case("conv_graph_output", g.model({"y": [1, CLASSES], "feat": [1, 8, 8, 8]}),
                ((("c1",), 6),), {"feat": "feat", "y": "y"})


def shared_weight(seed: int = 10) -> Case:
    """One weight initializer read by two convs (each slices it differently)::

        x -> Conv c1(3->6) -> BN -> Relu -> Conv s1(W) -> Relu -> Conv s2(W) -> Relu
          -> GlobalAveragePool -> Flatten -> Gemm y(6->10)        (W: [6,6,3,3], shared)

    Groups: {c1: 6}, {s1: 6}, {s2: 6}.
    """
    g = GraphBuilder(seed)
    h = g.cbr("x", 3, 6, "c1")
    g.const("W", g.rng.standard_normal((6, 6, 3, 3)) * np.sqrt(2.0 / 54))
    h = g.relu(g.node("Conv", [h, "W"], "s1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    h = g.relu(g.node("Conv", [h, "W"], "s2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    g.head(h, 6)
    return Case("shared_weight", g.model({"y": [1, CLASSES]}), ((("c1",), 6), (("s1",), 6), (("s2",), 6)), {"y": "y"})


def concat_spatial_flatten(seed: int = 12) -> Case:
    """Concat of two branches flattened with their 4x4 maps (blocks of 16 at offsets)::

        x -> Conv ba(3->3, s2) -> Relu --+
        x -> Conv bb(3->5, s2) -> Relu --Concat [8,4,4] -> Flatten [128] -> Gemm y(128->10, transB=0)

    Groups: {ba: 3}, {bb: 5}.
    """
    g = GraphBuilder(seed)
    a = g.relu(g.conv("x", 3, 3, "ba", stride=2))
    b = g.relu(g.conv("x", 3, 5, "bb", stride=2))
    flat = g.node("Flatten", [g.node("Concat", [a, b], axis=1)], axis=1)
    g.gemm(flat, 8 * 16, CLASSES, "y", trans_b=0)
    return Case("concat_spatial_flatten", g.model({"y": [1, CLASSES]}), ((("ba",), 3), (("bb",), 5)), {"y": "y"})


ALL_BUILDERS = (
    vgg_chain,
    spatial_flatten,
    resnet_blocks,
    concat_branches,
    depthwise_separable,
    decomposed_bn,
    se_block,
    mlp_head,
    unsupported_op,
    conv_graph_output,
    shared_weight,
    concat_spatial_flatten,
)


def random_chain(seed: int, blocks: list[tuple[str, int]]) -> Case:
    """A random chain for property tests; each block is ``(kind, width)``::

        x -> Conv stem(3->w0) -> BN -> Relu -> block_1 -> ... -> block_n
          -> GlobalAveragePool -> Flatten -> Gemm y(->10)

        "conv":     h -> Conv(cin->w) -> BN -> Relu
        "residual": h -> Conv(cin->cin) -> BN -> Relu -> Conv(cin->cin) -> BN -> Add(h) -> Relu
                    (width ignored; the second conv joins the group that made h)
        "concat":   h -> Conv(cin->w) -> Relu, h -> Conv(cin->w+1) -> Relu -> Concat
    """
    g = GraphBuilder(seed)
    w0 = blocks[0][1]
    h = g.cbr("x", 3, w0, "stem")
    cin = w0
    # Group bookkeeping: segments of the current tensor's channel axis -> group index.
    groups: list[list[object]] = [[["stem"], w0]]
    current = [0]  # groups laid along h's channels, in order
    for i, (kind, w) in enumerate(blocks[1:], start=1):
        if kind == "conv":
            h = g.cbr(h, cin, w, f"k{i}")
            groups.append([[f"k{i}"], w])
            current, cin = [len(groups) - 1], w
        elif kind == "residual":
            a = g.cbr(h, cin, cin, f"r{i}a")
            groups.append([[f"r{i}a"], cin])
            b = g.bn(g.conv(a, cin, cin, f"r{i}b"), cin)
            h = g.relu(g.node("Add", [b, h]))
            if len(current) == 1:
                groups[current[0]][0].append(f"r{i}b")
            else:  # Add of a concat and a conv output: channels do not line up
                groups.append([[f"r{i}b"], cin])
                for gi in current:
                    groups[gi].append("frozen")
                groups[-1].append("frozen")
                current = [len(groups) - 1]
        else:
            p = g.relu(g.conv(h, cin, w, f"p{i}"))
            q = g.relu(g.conv(h, cin, w + 1, f"q{i}"))
            h = g.node("Concat", [p, q], axis=1)
            groups += [[[f"p{i}"], w], [[f"q{i}"], w + 1]]
            current, cin = [len(groups) - 2, len(groups) - 1], 2 * w + 1
    g.head(h, cin)
    prunable = tuple((tuple(m), c) for m, c, *rest in groups if not rest)
    frozen = {m[0]: "" for m, c, *rest in groups if rest}
    frozen["y"] = "y"
    return Case("random_chain", g.model({"y": [1, CLASSES]}), prunable, frozen)
