"""Apply a plan: a pure, deterministic ``ModelProto -> ModelProto`` rewrite.

Every change is an edit recorded by the channel analysis:

* ``SliceEdit(node, slot, axis, layout)`` — the initializer read at
  ``node.input[slot]`` keeps the positions of ``layout`` along ``axis``
  (for a grouped Conv's input, per block of rows: ``groups > 1``);
* ``AttrEdit("group")`` — a depthwise Conv's ``group`` becomes its kept channels;
* ``AttrEdit("reshape")`` — a Reshape's ``shape[1]`` becomes the kept features;
  ``"sizes"``, ``"split"``, ``"starts"``, ``"ends"`` likewise set one entry of
  a Resize's sizes, a Split's sizes or a Slice's bounds (input, or attribute
  in old opsets); a Split without sizes gets them written out.

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
from onnx_pfgdf.weights import infer_shapes, skeleton

__all__ = ["apply_plan", "mask_original", "masked_weights"]

Transform = Callable[[np.ndarray], np.ndarray]


def _node_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def _new_values(
    model: onnx.ModelProto, transforms: Mapping[tuple[str, int], list[Transform]]
) -> tuple[dict[str, np.ndarray], dict[tuple[str, int], str]]:
    """The transformed values of the initializers read at (node, slot), by tensor name.

    Returns ``(values, renames)``: an initializer keeps its name when every
    use is transformed alike; otherwise each transformed use reads its own
    copy, whose new name ``renames[(node, slot)]`` gives.
    """
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
    taken = set(index.initializers) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    values: dict[str, np.ndarray] = {}
    renames: dict[tuple[str, int], str] = {}
    for name, uses in results.items():
        arrays = list(uses.values())
        same = all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])
        if same and len(uses) == index.use_count(name):
            values[name] = arrays[0]
            continue
        for k, ((node_name, slot), array) in enumerate(sorted(uses.items())):
            new_name = f"{name}__pfgdf{k}"
            while new_name in taken:
                new_name += "_"
            taken.add(new_name)
            values[new_name] = array
            renames[(node_name, slot)] = new_name
    return values, renames


def _rename_inputs(out: onnx.ModelProto, renames: Mapping[tuple[str, int], str]) -> set[str]:
    """Apply ``renames`` to ``out``'s nodes; return every name a node or graph output reads."""
    nodes = _node_map(out)
    for (node_name, slot), new_name in renames.items():
        nodes[node_name].input[slot] = new_name
    return {t for n in out.graph.node for t in n.input} | {o.name for o in out.graph.output}


def _with_values(
    out: onnx.ModelProto,
    model: onnx.ModelProto,
    values: dict[str, np.ndarray],
    renames: Mapping[tuple[str, int], str],
) -> None:
    """Give ``out`` (a :func:`skeleton` of ``model``) the initializers of ``model`` with ``values``.

    ``values`` replace initializers in place or are appended (renamed
    copies); initializers nothing reads any more are dropped.  ``values`` is
    emptied as it is written, so each array is released early.
    """
    used = _rename_inputs(out, renames)
    for tensor in model.graph.initializer:
        if tensor.name not in used:
            continue
        if tensor.name in values:
            out.graph.initializer.append(numpy_helper.from_array(values.pop(tensor.name), tensor.name))
        else:
            out.graph.initializer.add().CopyFrom(tensor)
    while values:
        name = next(iter(values))
        out.graph.initializer.append(numpy_helper.from_array(values.pop(name), name))


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
    out = skeleton(model)
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
    implicit = _implicit_splits(analysis, plan, nodes)
    for edit in analysis.attr_edits:
        if not any(seg.group in plan.keep for seg in edit.layout) or edit.node in implicit:
            continue
        kept = int(layout_positions(edit.layout, plan.keep).size)
        node = nodes[edit.node]
        attr = next((a for a in node.attribute if a.name == edit.kind), None)
        if edit.kind == "group" and attr is not None:
            attr.i = kept
        elif edit.kind in ("split", "starts", "ends") and attr is not None:  # opset < 13 (Split), < 10 (Slice)
            attr.ints[edit.index] = kept
        elif edit.kind in _ENTRY_EDITS:
            slot, entry = _ENTRY_EDITS[edit.kind]
            transforms[(edit.node, slot)].append(_set_entry(edit.index if entry is None else entry, kept))
        else:
            raise ValueError(f"unknown attribute edit {edit.kind!r}")
    values, renames = _new_values(model, transforms)
    values.update(_write_split_sizes(out, nodes, implicit))
    _with_values(out, model, values, renames)
    del out.graph.value_info[:]
    return infer_shapes(out)


def _implicit_splits(analysis: ChannelAnalysis, plan: Plan, nodes: Mapping[str, onnx.NodeProto]) -> dict[str, list[int]]:
    """Kept sizes of every Split that loses channels but lists no sizes (even parts, ``num_outputs``)."""
    parts: dict[str, dict[int, int]] = defaultdict(dict)
    for edit in analysis.attr_edits:
        node = nodes[edit.node]
        if edit.kind == "split" and not any(a.name == "split" for a in node.attribute) and (
            len(node.input) < 2 or not node.input[1]
        ):
            parts[edit.node][edit.index] = int(layout_positions(edit.layout, plan.keep).size)
    losing = {e.node for e in analysis.attr_edits if e.kind == "split" and any(s.group in plan.keep for s in e.layout)}
    return {name: [sizes[i] for i in sorted(sizes)] for name, sizes in parts.items() if name in losing}


def _write_split_sizes(
    out: onnx.ModelProto, nodes: Mapping[str, onnx.NodeProto], implicit: Mapping[str, list[int]]
) -> dict[str, np.ndarray]:
    """Give each Split of ``implicit`` its explicit sizes: attribute before opset 13, input after.

    Returns the new size initializers (by name) for the caller to add.
    """
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    taken = {t for n in out.graph.node for t in (*n.input, *n.output)} | {i.name for i in out.graph.input}
    added: dict[str, np.ndarray] = {}
    for name, sizes in implicit.items():
        node = nodes[name]
        kept_attrs = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept_attrs)
        if opset < 13:
            node.attribute.append(onnx.helper.make_attribute("split", sizes))
            continue
        tensor = f"{name}__pfgdf_split"
        while tensor in taken:
            tensor += "_"
        taken.add(tensor)
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = tensor
        added[tensor] = np.asarray(sizes, dtype=np.int64)
    return added


def _mask_transforms(plan: Plan) -> dict[tuple[str, int], list[Transform]]:
    """Zero the removed input positions of every contracting consumer's weight."""
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
    return transforms


def mask_original(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """The verification oracle: removed channels zeroed at contracting consumers.

    Conv (weight axis 1), ConvTranspose (axis 0) and Gemm/MatMul (weight rows)
    get zeros for every input position the plan removes; nothing else changes,
    so the masked model has the original's shapes and must compute exactly
    what the pruned model computes.
    """
    out = skeleton(model)
    _with_values(out, model, *_new_values(model, _mask_transforms(plan)))
    return out


def masked_weights(model: onnx.ModelProto, plan: Plan) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """:func:`mask_original` for onnxruntime, without a protobuf copy of the weights.

    Returns:
        ``(graph, values)``: a :func:`~onnx_pfgdf.weights.skeleton` of the
        masked original (no initializers) and the value of each initializer
        it reads — the masked weights as new arrays, the others converted from
        ``model`` — to be passed as ``make_session(graph, weights=values)``.
    """
    values, renames = _new_values(model, _mask_transforms(plan))
    out = skeleton(model)
    used = _rename_inputs(out, renames)
    for tensor in model.graph.initializer:
        if tensor.name in used and tensor.name not in values:
            values[tensor.name] = numpy_helper.to_array(tensor)
    return out, values
