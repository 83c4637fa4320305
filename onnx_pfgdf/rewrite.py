"""Apply a plan: a pure, deterministic ``ModelProto -> ModelProto`` rewrite.

Every change is an edit recorded by the channel analysis:

* ``SliceEdit(node, slot, axis, layout)`` — the initializer read at
  ``node.input[slot]`` keeps the positions of ``layout`` along ``axis``
  (for a grouped Conv's input, per block of rows: ``groups > 1``);
* ``AttrEdit("group")`` — a depthwise Conv's ``group`` becomes its kept channels;
* ``AttrEdit("reshape")`` — a Reshape's ``shape[1]`` becomes the kept features;
  ``"sizes"``, ``"split"``, ``"starts"``, ``"ends"`` likewise set one entry of
  a Resize's sizes, a Split's sizes (input or attribute) or a Slice's bounds.

An initializer shared by several uses is rewritten in place only when every use
wants the same result; otherwise the use gets its own renamed copy.  Tensor
names of activations never change.  :func:`mask_original` reuses the same
machinery to build the verification oracle: the original model with the
removed input channels of every contracting consumer set to zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pfgdf.channels import ChannelAnalysis, layout_positions
from onnx_pfgdf.graph import GraphIndex
from onnx_pfgdf.plan import Plan

__all__ = ["apply_plan", "mask_original"]

Transform = Callable[[np.ndarray], np.ndarray]


def _node_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def _set_initializers(model: onnx.ModelProto, transforms: Mapping[tuple[str, int], list[Transform]]) -> None:
    """Replace the initializers read at (node, slot) by their transformed values."""
    index = GraphIndex(model)
    nodes = _node_map(model)
    results: dict[str, dict[tuple[str, int], np.ndarray]] = defaultdict(dict)
    for (node_name, slot), funcs in transforms.items():
        name = nodes[node_name].input[slot]
        value = index.constant(name)
        if value is None:
            raise ValueError(f"input {slot} of node '{node_name}' is not an initializer")
        for func in funcs:
            value = func(value)
        results[name][(node_name, slot)] = np.ascontiguousarray(value)
    init_pos = {t.name: i for i, t in enumerate(model.graph.initializer)}
    taken = set(init_pos) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for name, uses in results.items():
        arrays = list(uses.values())
        same = all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])
        if same and len(uses) == index.use_count(name):
            model.graph.initializer[init_pos[name]].CopyFrom(numpy_helper.from_array(arrays[0], name))
            continue
        for k, ((node_name, slot), array) in enumerate(sorted(uses.items())):
            new_name = f"{name}__pfgdf{k}"
            while new_name in taken:
                new_name += "_"
            taken.add(new_name)
            model.graph.initializer.append(numpy_helper.from_array(array, new_name))
            nodes[node_name].input[slot] = new_name
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _take(axis: int, positions: np.ndarray) -> Transform:
    return lambda a: np.take(a, positions, axis=axis)


def _block_local(positions: np.ndarray, total: int, groups: int) -> list[np.ndarray]:
    """``positions`` into ``total`` channels, split into the local positions of each of ``groups`` blocks."""
    width = total // groups
    return [positions[(positions >= b * width) & (positions < (b + 1) * width)] - b * width for b in range(groups)]


def _take_grouped(groups: int, total: int, positions: np.ndarray) -> Transform:
    """Grouped Conv weight ``[M, C/groups, ...]``: rows of block ``b`` keep input block ``b``'s positions."""
    local = _block_local(positions, total, groups)

    def func(a: np.ndarray) -> np.ndarray:
        rows = a.shape[0] // groups
        return np.concatenate([np.take(a[b * rows:(b + 1) * rows], local[b], axis=1) for b in range(groups)])

    return func


def _zero_grouped(groups: int, total: int, removed: np.ndarray) -> Transform:
    """Masked grouped Conv weight: rows of block ``b`` get zeros at input block ``b``'s removed positions."""
    local = _block_local(removed, total, groups)

    def func(a: np.ndarray) -> np.ndarray:
        out = np.array(a, copy=True)
        rows = a.shape[0] // groups
        for b in range(groups):
            out[b * rows:(b + 1) * rows, local[b]] = 0
        return out

    return func


def _zero(axis: int, removed: np.ndarray) -> Transform:
    def func(a: np.ndarray) -> np.ndarray:
        out = np.array(a, copy=True)
        index = [slice(None)] * out.ndim
        index[axis] = removed
        out[tuple(index)] = 0
        return out

    return func


def _set_entry(index: int, value: int) -> Transform:
    def func(array: np.ndarray) -> np.ndarray:
        out = np.array(array, copy=True)
        out[index] = value
        return out

    return func


#: AttrEdit kinds that set one entry of a constant input: kind -> (input slot, entry or None for edit.index).
_ENTRY_EDITS: dict[str, tuple[int, int | None]] = {
    "reshape": (1, 1),
    "sizes": (3, 1),
    "split": (1, None),
    "starts": (1, None),
    "ends": (2, None),
}


def apply_plan(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Return a new model with the plan's removed channels cut out.

    Args:
        model: the (normalized) model the plan's analysis was built on; it is
            not modified.
        plan: kept channels per group.

    Returns:
        The pruned model with re-inferred shapes.
    """
    analysis: ChannelAnalysis = plan.analysis
    out = onnx.ModelProto()
    out.CopyFrom(model)
    transforms: dict[tuple[str, int], list[Transform]] = defaultdict(list)
    for edit in analysis.edits:
        if not any(seg.group in plan.keep for seg in edit.layout):
            continue
        positions = layout_positions(edit.layout, plan.keep)
        if edit.groups > 1:
            total = layout_positions(edit.layout, {}).size
            transforms[(edit.node, edit.slot)].append(_take_grouped(edit.groups, total, positions))
        else:
            transforms[(edit.node, edit.slot)].append(_take(edit.axis, positions))
    nodes = _node_map(out)
    for edit in analysis.attr_edits:
        if not any(seg.group in plan.keep for seg in edit.layout):
            continue
        kept = int(layout_positions(edit.layout, plan.keep).size)
        node = nodes[edit.node]
        if edit.kind == "group":
            attr = next(a for a in node.attribute if a.name == "group")
            attr.i = kept
        elif edit.kind == "split" and any(a.name == "split" for a in node.attribute):
            attr = next(a for a in node.attribute if a.name == "split")
            attr.ints[edit.index] = kept
        elif edit.kind in _ENTRY_EDITS:
            slot, entry = _ENTRY_EDITS[edit.kind]
            transforms[(edit.node, slot)].append(_set_entry(edit.index if entry is None else entry, kept))
        else:
            raise ValueError(f"unknown attribute edit {edit.kind!r}")
    _set_initializers(out, transforms)
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, strict_mode=False, data_prop=True)


def mask_original(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """The verification oracle: removed channels zeroed at contracting consumers.

    Conv (weight axis 1), ConvTranspose (axis 0) and Gemm/MatMul (weight rows)
    get zeros for every input position the plan removes; nothing else changes,
    so the masked model has the original's shapes and must compute exactly
    what the pruned model computes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    transforms: dict[tuple[str, int], list[Transform]] = defaultdict(list)
    for edit in plan.analysis.edits:
        if not edit.contracting or not any(seg.group in plan.keep for seg in edit.layout):
            continue
        total = layout_positions(edit.layout, {})
        kept = layout_positions(edit.layout, plan.keep)
        removed = np.setdiff1d(total, kept)
        if edit.groups > 1:
            transforms[(edit.node, edit.slot)].append(_zero_grouped(edit.groups, total.size, removed))
        else:
            transforms[(edit.node, edit.slot)].append(_zero(edit.axis, removed))
    _set_initializers(out, transforms)
    return out
