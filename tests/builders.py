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

import math
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
    "grouped_convs",
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
        blocks: ``{first member of a group: blocks}`` for groups read or made by a
            grouped Conv: every one of ``blocks`` equal blocks keeps as many channels.
    """

    name: str
    model: onnx.ModelProto
    groups: tuple[tuple[tuple[str, ...], int], ...]
    frozen: dict[str, str] = field(default_factory=dict)
    dw_convs: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)


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


def grouped_convs(seed: int = 13) -> Case:
    """Grouped (ResNeXt/AlexNet-style) convolutions::

        x -> Conv c1(3->8) -> BN -> Relu -> Conv g2(8->12, group=2) -> BN -> Relu
          -> Conv g3(12->6, group=3) -> BN -> Relu -> Conv c4(6->10, 1x1) -> Relu -> head

    c1's 8 channels feed group=2: 2 blocks of 4.  g2's 12 channels are made in
    2 blocks and read in 3: lcm = 6 blocks of 2.  g3's 6 are made in 3 blocks.
    """
    g = GraphBuilder(seed)
    h = g.cbr("x", 3, 8, "c1")
    h = g.cbr(h, 8, 12, "g2", group=2)
    h = g.cbr(h, 12, 6, "g3", group=3)
    h = g.relu(g.conv(h, 6, 10, "c4", k=1))
    g.head(h, 10)
    return Case("grouped_convs", g.model({"y": [1, CLASSES]}),
                ((("c1",), 8), (("g2",), 12), (("g3",), 6), (("c4",), 10)), {"y": "y"},
                blocks={"c1": 2, "g2": 6, "g3": 3})


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
    grouped_convs,
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
        "grouped":  h -> Conv(cin->w, group=gcd(cin, w)) -> BN -> Relu; w is always
                    a multiple of the group (a plain conv when the gcd is 1, depthwise when
                    cin == w); a grouped conv reading a concatenation freezes its groups
    """
    g = GraphBuilder(seed)
    w0 = blocks[0][1]
    h = g.cbr("x", 3, w0, "stem")
    cin = w0
    # Group bookkeeping: segments of the current tensor's channel axis -> group index.
    groups: list[list[object]] = [[["stem"], w0]]
    blocks_of: dict[int, int] = {}
    current = [0]  # groups laid along h's channels, in order
    for i, (kind, w) in enumerate(blocks[1:], start=1):
        if kind == "grouped" and math.gcd(cin, w) == cin == w:  # depthwise: carries h's channels
            h = g.cbr(h, cin, cin, f"d{i}", group=cin)
        elif kind == "grouped" and math.gcd(cin, w) > 1:
            grp = math.gcd(cin, w)
            if len(current) == 1:
                blocks_of[current[0]] = math.lcm(blocks_of.get(current[0], 1), grp)
            else:
                for gi in current:
                    groups[gi].append("frozen")
            h = g.cbr(h, cin, w, f"g{i}", group=grp)
            groups.append([[f"g{i}"], w])
            blocks_of[len(groups) - 1] = grp
            current, cin = [len(groups) - 1], w
        elif kind in ("conv", "grouped"):
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
    for gi, b in blocks_of.items():
        if b == groups[gi][1] and len(groups[gi]) == 2:  # one channel per block: nothing to remove
            groups[gi].append("groups of one")
    prunable = tuple((tuple(m), c) for m, c, *rest in groups if not rest)
    frozen = {m[0]: ("groups of one" if rest == ["groups of one"] else "") for m, c, *rest in groups if rest}
    frozen["y"] = "y"
    blocks = {groups[gi][0][0]: b for gi, b in blocks_of.items() if len(groups[gi]) == 2}
    return Case("random_chain", g.model({"y": [1, CLASSES]}), prunable, frozen, blocks=blocks)


# --------------------------------------------------------------------------- opset-aware graphs
# Exporters write the same network differently at each opset (attribute vs input
# forms, Upsample vs Resize).  ``OpsetBuilder`` writes each op in the form valid
# at its opset; the ``opset_*`` builders below are the opset matrix of
# ``tests/test_exporters.py``.

__all__ += [
    "OPSET_MATRIX",
    "OpsetBuilder",
    "OPSET_BUILDERS",
    "opset_vgg_bn",
    "opset_residual",
    "opset_concat_split",
    "opset_depthwise",
    "opset_se_gemm",
    "opset_flatten_gemm",
    "opset_upsample",
    "opset_pad",
]

#: Opsets every opset-aware builder is exercised at (28: the newest onnx 1.23 and onnxruntime 1.32 know).
OPSET_MATRIX = (9, 11, 13, 17, 21, 28)


class OpsetBuilder(GraphBuilder):
    """A :class:`GraphBuilder` whose version-dependent ops follow ``opset``.

    ==============  =====================  ==========================
    op              before                 from
    ==============  =====================  ==========================
    Clip            min/max attributes     inputs (11)
    Pad             ``pads`` attribute     ``pads`` input (11)
    Squeeze, ...    ``axes`` attribute     ``axes`` input (13)
    Split           ``split`` attribute    ``split`` input (13)
    ReduceMean      ``axes`` attribute     ``axes`` input (18)
    upsampling      Upsample (9)           Resize (10; ``roi`` input 11, optional 13)
    ==============  =====================  ==========================
    """

    def __init__(self, seed: int, opset: int, in_shape: tuple[int, ...] = IN_SHAPE) -> None:
        super().__init__(seed, in_shape)
        self.opset = opset

    def ints(self, values: list[int] | list[float], name: str | None = None, dtype: type = np.int64) -> str:
        """An int64 (or ``dtype``) initializer holding ``values``."""
        name = name or self._fresh("const")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def clip(self, x: str, lo: float, hi: float) -> str:
        if self.opset < 11:
            return self.node("Clip", [x], min=lo, max=hi)
        bounds = [self.const(self._fresh(k), np.float32(v)) for k, v in (("lo", lo), ("hi", hi))]
        return self.node("Clip", [x, *bounds])

    def _axes_op(self, op: str, x: str, axes: list[int], since: int, **attrs: object) -> str:
        if self.opset < since:
            return self.node(op, [x], axes=axes, **attrs)
        return self.node(op, [x, self.ints(axes)], **attrs)

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self._axes_op("Squeeze", x, axes, 13)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self._axes_op("Unsqueeze", x, axes, 13)

    def reduce_mean(self, x: str, axes: list[int], keepdims: int = 1) -> str:
        return self._axes_op("ReduceMean", x, axes, 18, keepdims=keepdims)

    def pad(self, x: str, pads: list[int], mode: str = "constant") -> str:
        if self.opset < 11:
            return self.node("Pad", [x], pads=pads, mode=mode)
        return self.node("Pad", [x, self.ints(pads)], mode=mode)

    def split(self, x: str, sizes: list[int], outs: list[str], axis: int = 1) -> list[str]:
        if self.opset < 13:
            node = helper.make_node("Split", [x], outs, name=f"Split_{outs[0]}", axis=axis, split=sizes)
        else:
            node = helper.make_node("Split", [x, self.ints(sizes)], outs, name=f"Split_{outs[0]}", axis=axis)
        self.nodes.append(node)
        return outs

    def upsample(self, x: str, scale: float) -> str:
        """Nearest-neighbour upsampling of H and W by ``scale``."""
        scales = self.ints([1.0, 1.0, scale, scale], dtype=np.float32)
        if self.opset < 10:
            return self.node("Upsample", [x, scales], mode="nearest")
        if self.opset < 11:
            return self.node("Resize", [x, scales], mode="nearest")
        roi = self.ints([], dtype=np.float32) if self.opset < 13 else ""
        return self.node("Resize", [x, roi, scales], mode="nearest")

    def model(self, outputs: dict[str, list[int]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.in_shape))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.inits,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-pfgdf-tests")
        model.ir_version = max(4, helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(model, full_check=True)
        return model


def opset_vgg_bn(opset: int, seed: int = 30) -> Case:
    """x -> Conv c1(3->6) -> BN -> Relu -> Conv c2(6->8) -> BN -> Clip(0,6) -> MaxPool -> head.

    Groups: {c1: 6}, {c2: 8}.
    """
    g = OpsetBuilder(seed, opset)
    h = g.cbr("x", 3, 6, "c1")
    h = g.clip(g.bn(g.conv(h, 6, 8, "c2"), 8), 0.0, 6.0)
    g.head(g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2]), 8)
    return Case("opset_vgg_bn", g.model({"y": [1, CLASSES]}), ((("c1",), 6), (("c2",), 8)), {"y": "y"})


def opset_residual(opset: int, seed: int = 31) -> Case:
    """x -> Conv stem(3->6) -> BN -> Relu = s -> Conv r1(6->6) -> BN -> Relu -> Conv r2(6->6) -> BN
    -> Add(s) -> Relu -> head.

    Groups: {stem, r2: 6}, {r1: 6}.
    """
    g = OpsetBuilder(seed, opset)
    s = g.cbr("x", 3, 6, "stem")
    h = g.bn(g.conv(g.cbr(s, 6, 6, "r1"), 6, 6, "r2"), 6)
    g.head(g.relu(g.node("Add", [h, s])), 6)
    return Case("opset_residual", g.model({"y": [1, CLASSES]}), ((("stem", "r2"), 6), (("r1",), 6)), {"y": "y"})


def opset_concat_split(opset: int, seed: int = 32) -> Case:
    """Concat of two branches, split back at the branch boundary::

        x -> Conv a(3->4) -> Relu --Concat [9]-- Conv b(3->5) -> Relu
          -> Split([4, 5]) -> Conv pa(4->6), Conv pb(5->6) -> Add -> Relu
          -> Concat(with b) [11] -> Conv cc(11->6) -> Relu -> head

    Groups: {a: 4}, {b: 5}, {pa, pb: 6}, {cc: 6}.
    """
    g = OpsetBuilder(seed, opset)
    a, b = g.relu(g.conv("x", 3, 4, "a")), g.relu(g.conv("x", 3, 5, "b"))
    s0, s1 = g.split(g.node("Concat", [a, b], axis=1), [4, 5], ["s0", "s1"])
    h = g.relu(g.node("Add", [g.conv(s0, 4, 6, "pa"), g.conv(s1, 5, 6, "pb")]))
    h = g.relu(g.conv(g.node("Concat", [h, b], axis=1), 11, 6, "cc"))
    g.head(h, 6)
    return Case("opset_concat_split", g.model({"y": [1, CLASSES]}),
                ((("a",), 4), (("b",), 5), (("pa", "pb"), 6), (("cc",), 6)), {"y": "y"})


def opset_depthwise(opset: int, seed: int = 33) -> Case:
    """x -> Conv c1(3->8) -> BN -> Clip(0,6) -> Conv dw(8->8, group=8) -> BN -> Clip(0,6)
    -> Conv pw(8->6, 1x1) -> BN -> Relu -> head.

    Groups: {c1: 8} (carried through dw), {pw: 6}.
    """
    g = OpsetBuilder(seed, opset)
    h = g.clip(g.bn(g.conv("x", 3, 8, "c1"), 8), 0.0, 6.0)
    h = g.clip(g.bn(g.conv(h, 8, 8, "dw", group=8), 8), 0.0, 6.0)
    g.head(g.cbr(h, 8, 6, "pw", k=1), 6)
    return Case("opset_depthwise", g.model({"y": [1, CLASSES]}), ((("c1",), 8), (("pw",), 6)), {"y": "y"},
                dw_convs={"dw": "c1"})


def opset_se_gemm(opset: int, seed: int = 34) -> Case:
    """Squeeze-and-excitation with fully connected layers (MobileNetV3 style)::

        x -> Conv stem(3->8) -> BN -> Relu = t -> ReduceMean(axes 2,3, keepdims 0) [1,8]
          -> Gemm se1(8->4) -> Relu -> Gemm se2(4->8) -> HardSigmoid -> Unsqueeze(axes 2,3) [1,8,1,1]
        Mul(t, gate) -> Conv c2(8->6) -> Relu -> head

    Groups: {stem, se2: 8}, {se1: 4}, {c2: 6}.
    """
    g = OpsetBuilder(seed, opset)
    t = g.cbr("x", 3, 8, "stem")
    s = g.reduce_mean(t, [2, 3], keepdims=0)
    s = g.relu(g.gemm(s, 8, 4, "se1"))
    gate = g.unsqueeze(g.node("HardSigmoid", [g.gemm(s, 4, 8, "se2", trans_b=0)], alpha=1.0 / 6, beta=0.5), [2, 3])
    h = g.relu(g.conv(g.node("Mul", [t, gate]), 8, 6, "c2"))
    g.head(h, 6)
    return Case("opset_se_gemm", g.model({"y": [1, CLASSES]}),
                ((("stem", "se2"), 8), (("se1",), 4), (("c2",), 6)), {"y": "y"})


def opset_flatten_gemm(opset: int, seed: int = 35) -> Case:
    """x -> Conv c1(3->6) -> BN -> Relu -> MaxPool 2x2 -> Flatten [1,96] (blocks of 16)
    -> Gemm fc(96->12) -> Relu -> Gemm y(12->10).

    Groups: {c1: 6} (blocks of 16 features), {fc: 12}.
    """
    g = OpsetBuilder(seed, opset)
    h = g.node("MaxPool", [g.cbr("x", 3, 6, "c1")], kernel_shape=[2, 2], strides=[2, 2])
    h = g.relu(g.gemm(g.node("Flatten", [h], axis=1), 96, 12, "fc"))
    g.gemm(h, 12, CLASSES, "y")
    return Case("opset_flatten_gemm", g.model({"y": [1, CLASSES]}), ((("c1",), 6), (("fc",), 12)), {"y": "y"})


def opset_upsample(opset: int, seed: int = 36) -> Case:
    """Decoder-style upsampling (Upsample at opset 9, Resize later)::

        x -> Conv c1(3->6, s2) -> BN -> Relu [1,6,4,4] -> Upsample/Resize x2 [1,6,8,8]
          -> Conv c2(6->8) -> Relu -> head

    Groups: {c1: 6}, {c2: 8}.
    """
    g = OpsetBuilder(seed, opset)
    h = g.upsample(g.cbr("x", 3, 6, "c1", stride=2), 2.0)
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    return Case("opset_upsample", g.model({"y": [1, CLASSES]}), ((("c1",), 6), (("c2",), 8)), {"y": "y"})


def opset_pad(opset: int, seed: int = 37) -> Case:
    """Explicit Pad before an unpadded conv (TF/Keras 'same' exports)::

        x -> Conv c1(3->6) -> Relu -> Pad(H, W by 1; attribute <11, input >=11)
          -> Conv c2(6->8, 3x3, no pads) -> BN -> Relu -> head

    Groups: {c1: 6}, {c2: 8}.
    """
    g = OpsetBuilder(seed, opset)
    h = g.pad(g.relu(g.conv("x", 3, 6, "c1")), [0, 0, 1, 1, 0, 0, 1, 1])
    w = g.const("c2.W", g.rng.standard_normal((8, 6, 3, 3)) * np.sqrt(2.0 / 54))
    h = g.relu(g.bn(g.node("Conv", [h, w], "c2", kernel_shape=[3, 3]), 8))
    g.head(h, 8)
    return Case("opset_pad", g.model({"y": [1, CLASSES]}), ((("c1",), 6), (("c2",), 8)), {"y": "y"})


OPSET_BUILDERS = (
    opset_vgg_bn,
    opset_residual,
    opset_concat_split,
    opset_depthwise,
    opset_se_gemm,
    opset_flatten_gemm,
    opset_upsample,
    opset_pad,
)
