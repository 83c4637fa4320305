"""Channel dependency analysis: which tensors' channels must be pruned together.

Conventions (written once, used everywhere):

* The *channel axis* of every tensor that carries channels is axis 1: ``C`` of
  NCHW activations and ``F`` of ``[N, F]`` features after Flatten.
* Conv weights are ``[M, C/group, kH, kW]`` (output channels on axis 0, input
  channels on axis 1).  ConvTranspose weights are ``[C, M/group, kH, kW]`` (the
  axes are swapped).  Gemm's ``B`` is ``[K, N]`` (``transB=0``) or ``[N, K]``
  (``transB=1``); MatMul's constant ``B`` is ``[K, N]``.
* A *group* is a set of channels created by one producer (Conv, ConvTranspose,
  Gemm, MatMul); residual Add/Sum/Mul of two channel tensors merges groups
  (union-find), so all their channels go or stay together.
* A tensor's *layout* is the sequence of group segments laid along its channel
  axis.  Concat appends layouts (offsets come for free); Flatten multiplies the
  ``block`` of each segment by the spatial size ``H*W``.

Example, ``x -> Conv(3->4) -> BN -> Relu -> Conv(4->8) -> y``::

    group 0 (4 channels, member Conv_0)  tensors: conv0_out, bn_out, relu_out
    layouts: relu_out = (Segment(group=0, start=0, length=4, block=1),)
    edits:   Conv_0.W axis 0, Conv_0.B axis 0, BN scale/bias/mean/var axis 0,
             Conv_1.W axis 1 (contracting: the masked original zeroes it)

Per-op facts live in one table, ``RULES``: an op_type without an entry freezes
every group that reaches it, with a reason.  So does a graph output, and so do
ops known to mix channels (LRN, Softmax), whose entries are ``_Refusal``s that
say why.  Split and Slice on the channel axis may only cut between segments (a
part of a cut group could otherwise lose every channel); their sizes/bounds
are rewritten from the kept channels.  Grouped convolutions (1 < group < C)
freeze both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_pfgdf.graph import GraphIndex, node_attr

__all__ = [
    "Segment",
    "Layout",
    "Member",
    "Group",
    "SliceEdit",
    "AttrEdit",
    "ChannelAnalysis",
    "RULES",
    "SUPPORTED_OPS",
    "analyze_channels",
    "layout_positions",
    "layout_size",
]


@dataclass(frozen=True)
class Segment:
    """``length`` channels of ``group`` (from its channel ``start``), each ``block`` wide."""

    group: int
    start: int
    length: int
    block: int = 1


Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Member:
    """A layer whose output channels are a group's channels (a filter owner)."""

    node: str
    op_type: str
    output: str
    weight: str
    axis: int


@dataclass(frozen=True)
class Group:
    """Channels pruned together.

    Example: ``Conv(3->4) -> BN(4) -> Relu`` is one group of 4 channels with one
    member (the Conv) and three tensors; adding a second branch ``Conv(3->4)``
    to it with ``Add`` merges both Convs into one group with two members.

    Attributes:
        id: root id (stable within one analysis).
        channels: number of channels.
        members: the producers whose filters are these channels.
        tensors: tensors whose layout mentions this group.
        frozen: reasons this group cannot be pruned; empty when it can.
        blocks: the channels form this many equal contiguous blocks, each of
            which must keep the same number of channels (a grouped Conv's
            ``group`` — its input or its output — keeps its channel count
            divisible by the group).  1 when unconstrained.
    """

    id: int
    channels: int
    members: tuple[Member, ...]
    tensors: tuple[str, ...]
    frozen: tuple[str, ...]
    blocks: int = 1

    @property
    def prunable(self) -> bool:
        """True when the group may lose channels."""
        return not self.frozen and self.channels > self.blocks and bool(self.members)


@dataclass(frozen=True)
class SliceEdit:
    """Slice the initializer read by ``node`` at input ``slot`` along ``axis``.

    The kept positions are those of ``layout``.  ``contracting`` marks input
    channel slices of Conv/ConvTranspose/Gemm/MatMul: the masked original zeroes
    exactly those weights for the removed channels.  ``groups > 1`` marks the
    input-channel slice of a grouped Conv: the weight's axis 1 holds the
    ``C / groups`` channels of one block, and the rows of block ``b`` keep the
    kept channels of input block ``b`` (every block keeps the same number).
    """

    node: str
    slot: int
    axis: int
    layout: Layout
    contracting: bool = False
    groups: int = 1


@dataclass(frozen=True)
class AttrEdit:
    """Rewrite an attribute or a shape constant of ``node`` after pruning.

    Each kind sets one integer to the number of kept positions of ``layout``:

    * ``"group"``: a depthwise Conv's ``group`` (layout: its input);
    * ``"reshape"``: a Reshape's ``shape[1]`` (layout: its output);
    * ``"sizes"``: a Resize's ``sizes[1]`` (layout: its output);
    * ``"split"``: entry ``index`` of a Split's sizes (layout: output ``index``);
    * ``"starts"`` / ``"ends"``: entry ``index`` of a Slice's starts / ends
      (layout: the channels in front of the bound).
    """

    node: str
    kind: str
    layout: Layout
    index: int = 0


@dataclass(frozen=True)
class ChannelAnalysis:
    """Result of :func:`analyze_channels`; every group id here is a root id."""

    groups: Mapping[int, Group]
    layouts: Mapping[str, Layout]
    edits: tuple[SliceEdit, ...]
    attr_edits: tuple[AttrEdit, ...]

    def prunable_groups(self) -> list[Group]:
        """Groups that may lose channels, in order of first appearance."""
        return [g for g in self.groups.values() if g.prunable]

    def frozen_groups(self) -> list[Group]:
        """Groups that keep all channels, each with its reasons."""
        return [g for g in self.groups.values() if g.frozen]

    def group_of_output(self, tensor: str) -> Group | None:
        """The group whose member writes ``tensor``."""
        for group in self.groups.values():
            if any(m.output == tensor for m in group.members):
                return group
        return None


def layout_size(layout: Layout) -> int:
    """Extent of the channel axis described by ``layout``."""
    return sum(s.length * s.block for s in layout)


def layout_positions(layout: Layout, keep: Mapping[int, np.ndarray]) -> np.ndarray:
    """Positions on the channel axis that survive when each group keeps ``keep[g]``.

    Args:
        layout: a tensor's layout.
        keep: sorted kept channel indices per group id (groups absent keep all).

    Returns:
        Sorted int64 positions into the original channel axis.
    """
    parts: list[np.ndarray] = []
    offset = 0
    for seg in layout:
        kept = keep.get(seg.group)
        if kept is None:
            local = np.arange(seg.length, dtype=np.int64)
        else:
            kept = np.asarray(kept, dtype=np.int64)
            local = kept[(kept >= seg.start) & (kept < seg.start + seg.length)] - seg.start
        pos = offset + (local[:, None] * seg.block + np.arange(seg.block, dtype=np.int64)[None, :]).ravel()
        parts.append(pos)
        offset += seg.length * seg.block
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- state


@dataclass
class _State:
    """Mutable state of one analysis run (union-find over groups)."""

    index: GraphIndex
    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    members: list[list[Member]] = field(default_factory=list)
    frozen: list[list[str]] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    layouts: dict[str, Layout] = field(default_factory=dict)
    last: dict[str, Layout] = field(default_factory=dict)
    edits: list[SliceEdit] = field(default_factory=list)
    attr_edits: list[AttrEdit] = field(default_factory=list)

    def new_group(
        self, channels: int, member: Member | None = None, frozen: str | None = None, blocks: int = 1
    ) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(channels)
        self.members.append([member] if member else [])
        self.frozen.append([frozen] if frozen else [])
        self.blocks.append(blocks)
        return gid

    def require_blocks(self, gid: int, blocks: int) -> None:
        """Every one of ``blocks`` equal blocks of the group must keep as many channels."""
        root = self.find(gid)
        self.blocks[root] = math.lcm(self.blocks[root], blocks)

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members[rb])
        self.frozen[ra].extend(self.frozen[rb])
        self.blocks[ra] = math.lcm(self.blocks[ra], self.blocks[rb])

    def freeze(self, layouts: Iterable[Layout], reason: str) -> None:
        for layout in layouts:
            for seg in layout:
                root = self.find(seg.group)
                if reason not in self.frozen[root]:
                    self.frozen[root].append(reason)

    def layout(self, tensor: str) -> Layout | None:
        return self.layouts.get(tensor)

    def input_layouts(self, node: onnx.NodeProto) -> list[Layout]:
        return [self.layouts[t] for t in node.input if t in self.layouts]

    def fresh(
        self, tensor: str, channels: int, member: Member | None = None, frozen: str | None = None, blocks: int = 1
    ) -> Layout:
        layout = (Segment(self.new_group(channels, member, frozen, blocks), 0, channels),)
        self.layouts[tensor] = layout
        return layout


Rule = Callable[[_State, onnx.NodeProto], None]


def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name}'"


def _unify(st: _State, a: Layout, b: Layout, node: onnx.NodeProto) -> bool:
    """Merge the groups of two layouts that must carry the same channels."""
    aligned = len(a) == len(b) and all(
        x.length == y.length and x.block == y.block for x, y in zip(a, b, strict=True)
    )
    if aligned and all(
        x.start == 0 and y.start == 0 and st.size[x.group] == x.length and st.size[y.group] == y.length
        for x, y in zip(a, b, strict=True)
    ):
        for x, y in zip(a, b, strict=True):
            st.union(x.group, y.group)
        return True
    if aligned and all(st.find(x.group) == st.find(y.group) and x.start == y.start for x, y in zip(a, b, strict=True)):
        return True
    st.freeze([a, b], f"{_where(node)} combines tensors whose channel layouts do not line up")
    return False


# --------------------------------------------------------------------------- rules


def _passthrough(st: _State, node: onnx.NodeProto) -> None:
    """Output channels are input 0's channels (activations, pools, Dropout...)."""
    layout = st.layout(node.input[0]) if node.input else None
    others = [st.layouts[t] for t in node.input[1:] if t in st.layouts]
    if others:
        st.freeze(others + ([layout] if layout else []), f"{_where(node)} reads channels on a parameter input")
        return
    if layout is None:
        return
    for out in node.output:
        if out:
            st.layouts[out] = layout


def _spatial_only(positions: Iterable[int], rank: int) -> bool:
    return all((p % rank) not in (0, 1) for p in positions)


def _pad(st: _State, node: onnx.NodeProto) -> None:
    """Pad passes channels through when it pads spatial axes only."""
    layout = st.layout(node.input[0])
    if layout is None:
        return
    rank = st.index.rank(node.input[0]) or 4
    pads = node_attr(node, "pads")
    if pads is None and len(node.input) > 1 and node.input[1]:
        value = st.index.constant(node.input[1])
        pads = None if value is None else [int(v) for v in value]
    axes: list[int] | None = None
    if len(node.input) > 3 and node.input[3]:
        value = st.index.constant(node.input[3])
        axes = None if value is None else [int(v) % rank for v in value]
    if pads is None or (len(node.input) > 3 and node.input[3] and axes is None):
        st.freeze([layout], f"{_where(node)} has non-constant pads")
        return
    axes = axes if axes is not None else list(range(rank))
    n = len(axes)
    touched = [ax for i, ax in enumerate(axes) if pads[i] != 0 or pads[i + n] != 0]
    if not _spatial_only(touched, rank):
        st.freeze([layout], f"{_where(node)} pads the batch or channel axis")
        return
    st.layouts[node.output[0]] = layout


def _squeeze(st: _State, node: onnx.NodeProto) -> None:
    """Squeeze/Unsqueeze of trailing spatial axes keep channels on axis 1."""
    layout = st.layout(node.input[0])
    if layout is None:
        return
    axes = node_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = st.index.constant(node.input[1])
        axes = None if value is None else [int(v) for v in value]
    out_rank = st.index.rank(node.output[0])
    in_rank = st.index.rank(node.input[0])
    rank = max(out_rank or 0, in_rank or 0)
    if axes is None or rank == 0 or not _spatial_only(axes, rank):
        st.freeze([layout], f"{_where(node)} moves the channel axis")
        return
    st.layouts[node.output[0]] = layout


def _per_channel_params(slots: tuple[int, ...]) -> Rule:
    """Normalisations whose parameter inputs at ``slots`` are ``[C]`` vectors."""

    def rule(st: _State, node: onnx.NodeProto) -> None:
        layout = st.layout(node.input[0])
        if layout is None:
            return
        for slot in slots:
            if slot < len(node.input) and node.input[slot]:
                if not st.index.is_constant(node.input[slot]):
                    st.freeze([layout], f"{_where(node)} has non-constant parameters")
                    return
        for slot in slots:
            if slot < len(node.input) and node.input[slot]:
                st.edits.append(SliceEdit(node.name, slot, 0, layout))
        for out in node.output:
            if out:
                st.layouts[out] = layout

    return rule


def _elementwise(st: _State, node: onnx.NodeProto) -> None:
    """Add/Sub/Mul/Div/Sum/...: channel tensors are merged, constants sliced."""
    layout_inputs = [(slot, t) for slot, t in enumerate(node.input) if t in st.layouts]
    if not layout_inputs:
        return
    layouts = [st.layouts[t] for _, t in layout_inputs]
    out_rank = st.index.rank(node.output[0])
    if out_rank is None or any(st.index.rank(t) != out_rank for _, t in layout_inputs):
        st.freeze(layouts, f"{_where(node)} broadcasts a channel tensor of another rank")
        return
    for slot, tensor in enumerate(node.input):
        if not tensor or tensor in st.layouts:
            continue
        value = st.index.constant(tensor)
        if value is None:
            st.freeze(layouts, f"{_where(node)} combines channels with '{tensor}', whose channels are not "
                               "tracked (an earlier op froze them, or a graph input)")
            return
        axis = 1 - (out_rank - value.ndim)
        if 0 <= axis < value.ndim and value.shape[axis] > 1:
            if value.shape[axis] != layout_size(layouts[0]):
                st.freeze(layouts, f"{_where(node)} has a constant of unexpected channel size")
                return
            st.edits.append(SliceEdit(node.name, slot, axis, layouts[0]))
    for other in layouts[1:]:
        if not _unify(st, layouts[0], other, node):
            return
    st.layouts[node.output[0]] = layouts[0]


def _concat(st: _State, node: onnx.NodeProto) -> None:
    """Concat on the channel axis appends layouts; elsewhere it merges them."""
    layouts = st.input_layouts(node)
    if not layouts:
        return
    rank = st.index.rank(node.output[0])
    if rank is None:
        st.freeze(layouts, f"{_where(node)} has an unknown output rank")
        return
    axis = int(node_attr(node, "axis", 1)) % rank
    if axis == 1:
        out: list[Segment] = []
        for tensor in node.input:
            layout = st.layout(tensor)
            if layout is None:
                shape = st.index.shape(tensor)
                if shape is None:
                    st.freeze(layouts, f"{_where(node)} concatenates a tensor of unknown shape")
                    return
                layout = (Segment(st.new_group(shape[1], frozen=f"channels of '{tensor}' come from outside the pruned layers"), 0, shape[1]),)
            out.extend(layout)
        st.layouts[node.output[0]] = tuple(out)
        return
    if len(layouts) != len([t for t in node.input if t]):
        st.freeze(layouts, f"{_where(node)} concatenates channel tensors with other tensors")
        return
    for other in layouts[1:]:
        if not _unify(st, layouts[0], other, node):
            return
    st.layouts[node.output[0]] = layouts[0]


def _weight(st: _State, node: onnx.NodeProto, slot: int) -> np.ndarray | None:
    return st.index.constant(node.input[slot]) if slot < len(node.input) and node.input[slot] else None


def _conv(st: _State, node: onnx.NodeProto) -> None:
    """Conv: contracts input channels (axis 1), creates output channels (axis 0)."""
    layout = st.layout(node.input[0])
    weight = _weight(st, node, 1)
    if weight is None:
        st.freeze([layout] if layout else [], f"{_where(node)} has a non-constant weight")
        if st.index.shape(node.output[0]):
            st.fresh(node.output[0], st.index.shape(node.output[0])[1], frozen=f"{_where(node)} has a non-constant weight")
        return
    m, cin_g = weight.shape[0], weight.shape[1]
    group = int(node_attr(node, "group", 1))
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if group == 1:
        if layout is not None:
            st.edits.append(SliceEdit(node.name, 1, 1, layout, contracting=True))
        member = Member(node.name, node.op_type, node.output[0], node.input[1], 0)
        out = st.fresh(node.output[0], m, member)
        st.edits.append(SliceEdit(node.name, 1, 0, out))
        if has_bias:
            st.edits.append(SliceEdit(node.name, 2, 0, out))
        return
    if cin_g == 1 and m == group and layout is not None and layout_size(layout) == group:
        # Depthwise: output channel c is input channel c.
        st.edits.append(SliceEdit(node.name, 1, 0, layout))
        if has_bias:
            st.edits.append(SliceEdit(node.name, 2, 0, layout))
        st.attr_edits.append(AttrEdit(node.name, "group", layout))
        st.layouts[node.output[0]] = layout
        return
    if cin_g == 1 and m == group and layout is None:
        reason = f"{_where(node)} is depthwise over channels an earlier op froze"
        st.fresh(node.output[0], m, frozen=reason)
        return
    _grouped_conv(st, node, layout, m, group)


def _grouped_conv(st: _State, node: onnx.NodeProto, layout: Layout | None, m: int, group: int) -> None:
    """Conv with ``1 < group``: block ``b`` of the outputs reads block ``b`` of the inputs.

    ``group`` stays; both the input and the output channels are split into
    ``group`` blocks that must each keep the same number of channels.  The
    input may be pruned only when it is one whole group (not a concatenation).
    """
    if m % group:
        reason = f"{_where(node)} has {m} filters, not a multiple of group={group}"
        st.freeze([layout] if layout else [], reason)
        st.fresh(node.output[0], m, frozen=reason)
        return
    if layout is not None:
        seg = layout[0]
        if len(layout) == 1 and seg.start == 0 and seg.block == 1 and st.size[seg.group] == seg.length:
            st.require_blocks(seg.group, group)
            st.edits.append(SliceEdit(node.name, 1, 1, layout, contracting=True, groups=group))
        else:
            st.freeze([layout], f"{_where(node)} (group={group}) reads a concatenation of channel groups")
    member = Member(node.name, node.op_type, node.output[0], node.input[1], 0)
    out = st.fresh(node.output[0], m, member, blocks=group)
    st.edits.append(SliceEdit(node.name, 1, 0, out))
    if len(node.input) > 2 and node.input[2]:
        st.edits.append(SliceEdit(node.name, 2, 0, out))


def _conv_transpose(st: _State, node: onnx.NodeProto) -> None:
    """ConvTranspose: weight axes swapped — input channels on 0, outputs on 1."""
    layout = st.layout(node.input[0])
    weight = _weight(st, node, 1)
    group = int(node_attr(node, "group", 1))
    if weight is None or group != 1:
        reason = f"{_where(node)} has a non-constant weight or group != 1"
        st.freeze([layout] if layout else [], reason)
        shape = st.index.shape(node.output[0])
        if shape:
            st.fresh(node.output[0], shape[1], frozen=reason)
        return
    if layout is not None:
        st.edits.append(SliceEdit(node.name, 1, 0, layout, contracting=True))
    member = Member(node.name, node.op_type, node.output[0], node.input[1], 1)
    out = st.fresh(node.output[0], weight.shape[1], member)
    st.edits.append(SliceEdit(node.name, 1, 1, out))
    if len(node.input) > 2 and node.input[2]:
        st.edits.append(SliceEdit(node.name, 2, 0, out))


def _linear(st: _State, node: onnx.NodeProto) -> None:
    """Gemm / MatMul with a constant 2-D weight: contracts A's features, creates units."""
    layout = st.layout(node.input[0])
    weight = _weight(st, node, 1)
    if node.op_type == "Gemm":
        trans_a, trans_b = int(node_attr(node, "transA", 0)), int(node_attr(node, "transB", 0))
    else:
        trans_a, trans_b = 0, 0
    a_rank = st.index.rank(node.input[0])
    if weight is None or weight.ndim != 2 or trans_a or (a_rank is not None and a_rank != 2) or node.input[1] in st.layouts:
        reason = f"{_where(node)} is not a 2-D product with a constant weight"
        st.freeze(st.input_layouts(node), reason)
        return
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    if layout is not None:
        st.edits.append(SliceEdit(node.name, 1, in_axis, layout, contracting=True))
    member = Member(node.name, node.op_type, node.output[0], node.input[1], out_axis)
    out = st.fresh(node.output[0], weight.shape[out_axis], member)
    st.edits.append(SliceEdit(node.name, 1, out_axis, out))
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        bias = st.index.constant(node.input[2])
        if bias is None:
            st.freeze([out], f"{_where(node)} has a non-constant bias")
        elif bias.ndim >= 1 and bias.shape[-1] > 1:
            if bias.ndim == 2 and bias.shape[0] > 1:
                st.freeze([out], f"{_where(node)} has a per-row bias")
            else:
                st.edits.append(SliceEdit(node.name, 2, bias.ndim - 1, out))


def _flatten_layout(st: _State, node: onnx.NodeProto, layout: Layout) -> Layout | None:
    in_shape = st.index.shape(node.input[0])
    out_shape = st.index.shape(node.output[0])
    if in_shape is None or out_shape is None or len(in_shape) < 2:
        return None
    spatial = math.prod(in_shape[2:])
    if len(out_shape) != 2 or out_shape[1] != in_shape[1] * spatial:
        return None
    return tuple(Segment(s.group, s.start, s.length, s.block * spatial) for s in layout)


def _channels_last_flat(st: _State, node: onnx.NodeProto) -> Layout | None:
    """Layout of ``[N, H, W, C] -> [N, H*W*C]``: the channel layout repeated H*W times.

    None when the node's input is not channels-last; freezes when it is but
    the output is not that flattening.
    """
    layout = st.last.get(node.input[0])
    if layout is None:
        return None
    in_shape, out_shape = st.index.shape(node.input[0]), st.index.shape(node.output[0])
    if (
        in_shape is None or out_shape is None or len(out_shape) != 2 or out_shape[0] != in_shape[0]
        or out_shape[1] != math.prod(in_shape[1:]) or (node.op_type == "Flatten" and int(node_attr(node, "axis", 1)) != 1)
    ):
        st.freeze([layout], f"{_where(node)} reshapes channels-last features other than to [N, H*W*C]")
        return None
    return tuple(layout) * math.prod(in_shape[1:-1])


def _flatten(st: _State, node: onnx.NodeProto) -> None:
    """Flatten(axis=1): each channel becomes a block of H*W features (channels-last: interleaved)."""
    if node.input[0] in st.last:
        flat = _channels_last_flat(st, node)
        if flat is not None:
            st.layouts[node.output[0]] = flat
        return
    layout = st.layout(node.input[0])
    if layout is None:
        return
    rank = st.index.rank(node.input[0]) or 0
    axis = int(node_attr(node, "axis", 1))
    out = _flatten_layout(st, node, layout) if rank and axis % rank == 1 else None
    if out is None:
        st.freeze([layout], f"{_where(node)} does not flatten from the channel axis")
        return
    st.layouts[node.output[0]] = out


def _reshape_shape(st: _State, node: onnx.NodeProto) -> tuple[np.ndarray | None, str]:
    """A Reshape's constant target shape, or ``None`` and why it cannot be rewritten.

    ``allowzero=1`` (the dynamo exporter writes it on every ``view``) only
    changes what a ``0`` entry means, so it is harmless without one.
    """
    shape = st.index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if shape is None:
        return None, f"{_where(node)} has a shape that is not a known constant"
    if int(node_attr(node, "allowzero", 0)) and bool(np.any(np.asarray(shape) == 0)):
        return None, f"{_where(node)} has allowzero=1 and a 0 in its shape"
    return shape, ""


def _reshape(st: _State, node: onnx.NodeProto) -> None:
    """Reshape that flattens [N,C,...] (or channels-last [N,...,C]) to [N,F], or keeps N and C in place."""
    shape, why = _reshape_shape(st, node)
    if node.input[0] in st.last:
        if shape is None:
            st.freeze([st.last[node.input[0]]], why)
            return
        flat = _channels_last_flat(st, node)
        if flat is not None:
            st.attr_edits.append(AttrEdit(node.name, "reshape", flat))
            st.layouts[node.output[0]] = flat
        return
    layout = st.layout(node.input[0])
    if layout is None:
        return
    in_shape = st.index.shape(node.input[0])
    out_shape = st.index.shape(node.output[0])
    if shape is None or in_shape is None or out_shape is None:
        st.freeze([layout], why or f"{_where(node)} has an unknown input or output shape")
        return
    if len(out_shape) >= 2 and out_shape[0] == in_shape[0] and out_shape[1] == in_shape[1]:
        st.attr_edits.append(AttrEdit(node.name, "reshape", layout))
        st.layouts[node.output[0]] = layout
        return
    flat = _flatten_layout(st, node, layout) if out_shape[0] == in_shape[0] else None
    if flat is None:
        st.freeze([layout], f"{_where(node)} reshapes across the channel axis")
        return
    st.attr_edits.append(AttrEdit(node.name, "reshape", flat))
    st.layouts[node.output[0]] = flat


def _resize(st: _State, node: onnx.NodeProto) -> None:
    """Resize/Upsample with constant spatial scales, or constant ``sizes`` (C entry edited)."""
    layout = st.layout(node.input[0])
    if layout is None:
        return
    if node_attr(node, "axes") is not None:
        st.freeze([layout], f"{_where(node)} resizes selected axes (attribute 'axes')")
        return
    if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
        sizes = st.index.constant(node.input[3])
        in_shape = st.index.shape(node.input[0])
        if sizes is None or in_shape is None or len(sizes) != len(in_shape) or tuple(sizes[:2]) != in_shape[:2]:
            st.freeze([layout], f"{_where(node)} has sizes that are not constant or change batch or channels")
            return
        st.attr_edits.append(AttrEdit(node.name, "sizes", layout))
        st.layouts[node.output[0]] = layout
        return
    scales = node_attr(node, "scales")
    slot = 2 if node.op_type == "Resize" and len(node.input) > 2 else 1
    if scales is None and slot < len(node.input) and node.input[slot]:
        scales = st.index.constant(node.input[slot])
    if scales is None or len(scales) < 2 or float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
        st.freeze([layout], f"{_where(node)} does not resize with constant spatial scales")
        return
    st.layouts[node.output[0]] = layout


@dataclass(frozen=True)
class _Refusal:
    """Rule of an op known to mix channels: freeze every group reaching it, saying ``why``."""

    why: str

    def __call__(self, st: _State, node: onnx.NodeProto) -> None:
        st.freeze(st.input_layouts(node), f"{_where(node)}: {self.why}")


def _transpose(st: _State, node: onnx.NodeProto) -> None:
    """Transpose keeping axes 0 and 1 passes channels through; NCHW -> NHWC moves them last.

    A channels-last tensor (TensorFlow/Keras exports flatten in NHWC order) may
    only be flattened to ``[N, H*W*C]`` (see :func:`_channels_last_flat`) or
    transposed back to NCHW; any other reader freezes its channels.
    """
    perm = node_attr(node, "perm")
    moved = st.last.get(node.input[0])
    if moved is not None:
        rank = len(perm) if perm is not None else 0
        if rank >= 3 and [int(p) for p in perm] == [0, rank - 1, *range(1, rank - 1)]:
            st.layouts[node.output[0]] = moved  # NHWC -> NCHW: channels back on axis 1
        else:
            st.freeze([moved], f"{_where(node)} moves channels-last channels elsewhere")
        return
    layout = st.layout(node.input[0])
    if layout is None:
        return
    if perm is None:
        st.freeze([layout], f"{_where(node)} reverses the axes, moving the channel axis")
        return
    perm = [int(p) for p in perm]
    if perm[:2] == [0, 1]:
        st.layouts[node.output[0]] = layout
        return
    if len(perm) >= 3 and perm == [0, *range(2, len(perm)), 1]:
        st.last[node.output[0]] = layout
        return
    st.freeze([layout], f"{_where(node)} moves the channel axis (perm={perm})")


def _constant_ints(st: _State, node: onnx.NodeProto, attr: str, slot: int) -> tuple[bool, list[int] | None]:
    """``(given, values)`` of an int list given as attribute ``attr`` or input ``slot``."""
    value = node_attr(node, attr)
    if value is not None:
        return True, [int(v) for v in value]
    if slot < len(node.input) and node.input[slot]:
        const = st.index.constant(node.input[slot])
        return True, None if const is None else [int(v) for v in np.ravel(const)]
    return False, None


def _reduce(st: _State, node: onnx.NodeProto) -> None:
    """Reduce* over spatial axes (SE blocks' squeeze); channels stay on axis 1."""
    layout = st.layout(node.input[0])
    if layout is None:
        return
    rank = st.index.rank(node.input[0])
    given, axes = _constant_ints(st, node, "axes", 1)
    if not given and int(node_attr(node, "noop_with_empty_axes", 0)):
        st.layouts[node.output[0]] = layout
        return
    if not given or axes is None or rank is None or not _spatial_only(axes, rank):
        st.freeze([layout], f"{_where(node)} reduces over the batch or channel axis (or its axes are not constant)")
        return
    st.layouts[node.output[0]] = layout


def _cut_points(layout: Layout) -> list[int]:
    points = [0]
    for seg in layout:
        points.append(points[-1] + seg.length * seg.block)
    return points


def _sub_layout(layout: Layout, begin: int, end: int) -> Layout:
    """The segments of ``layout`` between two of its cut points."""
    points = _cut_points(layout)
    return tuple(seg for seg, lo in zip(layout, points, strict=False) if begin <= lo < end)


def _even_split(channels: int, outputs: int, num_outputs: int | None) -> list[int] | None:
    """The sizes of a Split without explicit sizes (the rewrite writes them out).

    Opset 18's ``num_outputs`` makes parts of ``ceil(C / n)`` channels, the last
    one smaller; before, the parts are equal and must divide ``C``.
    """
    if num_outputs is not None:
        chunk = -(-channels // int(num_outputs))
        sizes = [chunk] * (int(num_outputs) - 1) + [channels - chunk * (int(num_outputs) - 1)]
        return sizes if sizes[-1] > 0 else None
    return [channels // outputs] * outputs if outputs and channels % outputs == 0 else None


def _split(st: _State, node: onnx.NodeProto) -> None:
    """Split on the channel axis at segment boundaries; each output gets its segments.

    A Split without sizes (even parts, or opset 18's ``num_outputs``) gets
    explicit sizes from the rewrite.
    """
    layout = st.layout(node.input[0])
    if layout is None:
        return
    rank = st.index.rank(node.input[0])
    axis = int(node_attr(node, "axis", 0))
    if rank is None or axis % rank != 1:
        if rank is not None and axis % rank != 0:
            for out in node.output:
                if out:
                    st.layouts[out] = layout
        else:
            st.freeze([layout], f"{_where(node)} splits the batch axis or has an unknown rank")
        return
    given, sizes = _constant_ints(st, node, "split", 1)
    if not given:
        sizes = _even_split(layout_size(layout), len(node.output), node_attr(node, "num_outputs"))
    if sizes is None or len(sizes) != len(node.output):
        reason = "has non-constant split sizes" if given else "splits channels into unequal parts without sizes"
        st.freeze([layout], f"{_where(node)} {reason}")
        return
    points = _cut_points(layout)
    bounds = np.cumsum([0, *sizes]).tolist()
    if any(b not in points for b in bounds):
        st.freeze([layout], f"{_where(node)} cuts a group's channels mid-way (a part could lose all channels)")
        return
    for i, out in enumerate(node.output):
        part = _sub_layout(layout, bounds[i], bounds[i + 1])
        st.attr_edits.append(AttrEdit(node.name, "split", part, i))
        if out:
            st.layouts[out] = part


def _slice(st: _State, node: onnx.NodeProto) -> None:
    """Slice with constant bounds (inputs, or Slice-1's attributes); on the channel axis only whole segments, step 1."""
    layout = st.layout(node.input[0])
    if layout is None:
        return
    in_shape = st.index.shape(node.input[0])
    attr_starts = node_attr(node, "starts")
    if attr_starts is not None and in_shape is not None:
        starts, ends = list(attr_starts), list(node_attr(node, "ends", []))
        axes = list(node_attr(node, "axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        consts = [st.index.constant(t) if t else None for t in node.input[1:5]]
        if len(node.input) < 3 or in_shape is None or any(
            c is None for c, t in zip(consts, node.input[1:5], strict=False) if t
        ):
            st.freeze([layout], f"{_where(node)} has bounds that are not constant inputs")
            return
        starts, ends = (np.ravel(consts[0]).tolist(), np.ravel(consts[1]).tolist())
        axes = np.ravel(consts[2]).tolist() if len(consts) > 2 and consts[2] is not None else list(range(len(starts)))
        steps = np.ravel(consts[3]).tolist() if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
    rank = len(in_shape)
    axes = [int(a) % rank for a in axes]
    if 1 not in axes:
        st.layouts[node.output[0]] = layout
        return
    i = axes.index(1)
    size = in_shape[1]
    begin, end = (min(max(int(v) + size if int(v) < 0 else int(v), 0), size) for v in (starts[i], ends[i]))
    points = _cut_points(layout)
    if steps[i] != 1 or begin not in points or end not in points or begin >= end:
        st.freeze([layout], f"{_where(node)} slices a group's channels mid-way or with a step")
        return
    st.attr_edits.append(AttrEdit(node.name, "starts", _sub_layout(layout, 0, begin), i))
    st.attr_edits.append(AttrEdit(node.name, "ends", _sub_layout(layout, 0, end), i))
    st.layouts[node.output[0]] = _sub_layout(layout, begin, end)


def _build_rules() -> dict[str, Rule]:
    table: dict[str, Rule] = {}

    def add(ops: Iterable[str], rule: Rule) -> None:
        for op in ops:
            if op in table:
                raise ValueError(f"duplicate channel rule for {op}")
            table[op] = rule

    add(
        [
            "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
            "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Gelu", "Mish", "Identity",
            "Dropout", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Cast",
            "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
        ],
        _passthrough,
    )
    add(["Pad"], _pad)
    add(["Squeeze", "Unsqueeze"], _squeeze)
    add(["BatchNormalization"], _per_channel_params((1, 2, 3, 4)))
    add(["InstanceNormalization"], _per_channel_params((1, 2)))
    add(["Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "PRelu", "Pow"], _elementwise)
    add(["Concat"], _concat)
    add(["Conv"], _conv)
    add(["ConvTranspose"], _conv_transpose)
    add(["Gemm", "MatMul"], _linear)
    add(["Flatten"], _flatten)
    add(["Reshape"], _reshape)
    add(["Resize", "Upsample"], _resize)
    add(["Transpose"], _transpose)
    add(
        [
            "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
        ],
        _reduce,
    )
    add(["Split"], _split)
    add(["Slice"], _slice)
    add(["LRN"], _Refusal("LRN mixes neighbouring channels"))
    add(["Softmax", "LogSoftmax", "Hardmax"], _Refusal("normalises across channels"))
    return table


RULES: Mapping[str, Rule] = _build_rules()
"""op_type -> rule.  ``_Refusal`` rules only freeze, with a reason specific to the op."""

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(op for op, rule in RULES.items() if not isinstance(rule, _Refusal)))
"""Ops through which channels can be pruned."""


def analyze_channels(model: onnx.ModelProto, index: GraphIndex | None = None) -> ChannelAnalysis:
    """Build the channel groups of ``model`` (shapes must be inferred beforehand).

    Args:
        model: a normalized model (see :func:`onnx_pfgdf.io.normalize`).
        index: an existing index of ``model`` to reuse.

    Returns:
        Groups with members and frozen reasons, per-tensor layouts and the
        slicing edits a plan needs.
    """
    st = _State(index or GraphIndex(model))
    for node in st.index.nodes:
        moved = [st.last[t] for t in node.input if t in st.last]
        if moved and node.op_type not in ("Reshape", "Flatten", "Transpose"):
            st.freeze(moved + st.input_layouts(node), f"{_where(node)} reads channels a Transpose moved to the last axis")
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            st.freeze(st.input_layouts(node), f"{_where(node)} has no channel rule")
            continue
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            st.freeze(st.input_layouts(node), f"{_where(node)} outputs indices")
            continue
        rule(st, node)
    for out in st.index.graph_outputs:
        if out in st.layouts or out in st.last:
            st.freeze([st.layouts.get(out) or st.last[out]], f"channels reach graph output '{out}'")
    return _finish(st)


def _finish(st: _State) -> ChannelAnalysis:
    root_layouts = {
        t: tuple(Segment(st.find(s.group), s.start, s.length, s.block) for s in lay) for t, lay in st.layouts.items()
    }
    tensors: dict[int, list[str]] = {}
    for tensor, layout in root_layouts.items():
        for seg in layout:
            tensors.setdefault(seg.group, [])
            if tensor not in tensors[seg.group]:
                tensors[seg.group].append(tensor)
    groups: dict[int, Group] = {}
    for gid in range(len(st.parent)):
        root = st.find(gid)
        if root in groups:
            continue
        frozen = list(st.frozen[root])
        if 1 < st.blocks[root] == st.size[root] and st.members[root] and not frozen:
            frozen.append(
                f"a grouped convolution splits these {st.size[root]} channels into groups of one channel each"
            )
        groups[root] = Group(
            id=root,
            channels=st.size[root],
            members=tuple(st.members[root]),
            tensors=tuple(tensors.get(root, ())),
            frozen=tuple(frozen),
            blocks=st.blocks[root],
        )

    def rooted(layout: Layout) -> Layout:
        return tuple(Segment(st.find(s.group), s.start, s.length, s.block) for s in layout)

    edits = tuple(SliceEdit(e.node, e.slot, e.axis, rooted(e.layout), e.contracting, e.groups) for e in st.edits)
    attr_edits = tuple(AttrEdit(e.node, e.kind, rooted(e.layout), e.index) for e in st.attr_edits)
    return ChannelAnalysis(groups=groups, layouts=root_layouts, edits=edits, attr_edits=attr_edits)
