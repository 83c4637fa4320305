"""Which channels each group keeps: selection, JSON save/load and replay.

A plan is keyed by group internally (``keep[group_id]``) and by layer on disk,
in the documented format::

    {"format": "onnx-pfgdf-plan", "version": 1,
     "layers": {"<output tensor>": {"node": "<node name>", "filters": M,
                                      "keep": [sorted kept output channels]}}}

Every member of every group that loses channels is listed, including layers
pruned only because they are coupled to another one.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnx_pfgdf.channels import ChannelAnalysis, Group, Member
from onnx_pfgdf.criteria import CriterionConfig, GaussianFit, LayerScore, score_group, score_layer, select_keep
from onnx_pfgdf.errors import BadInputError
from onnx_pfgdf.graph import GraphIndex

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "KeepRule",
    "GroupScore",
    "Plan",
    "member_matrix",
    "protect_layers",
    "score_groups",
    "select_plan",
    "plan_from_dict",
    "load_plan",
]

PLAN_FORMAT = "onnx-pfgdf-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class KeepRule:
    """How many channels a group may keep at least.

    ``n_keep`` is raised to ``max(min_keep, ceil(min_keep_fraction * C))`` and,
    for groups of at least ``round_min_channels`` channels, rounded up to a
    multiple of ``round_to`` (never above ``C``).  Narrow groups are not
    rounded: a multiple of 8 would keep all of a 12-channel layer.
    """

    min_keep: int = 1
    min_keep_fraction: float = 0.0
    round_to: int = 1
    round_min_channels: int = 32

    def apply(self, n_keep: int, channels: int, blocks: int = 1) -> int:
        """The admissible keep count closest to ``n_keep`` from above.

        With ``blocks > 1`` (a group feeding or made by a grouped Conv) the
        count is also a multiple of ``blocks``, so every block keeps as many
        channels, and at least one each.
        """
        floor = max(1, self.min_keep, math.ceil(self.min_keep_fraction * channels))
        n = max(n_keep, floor)
        step = blocks
        if self.round_to > 1 and channels >= self.round_min_channels:
            step = math.lcm(step, self.round_to)
        n = math.ceil(n / step) * step
        return min(n, channels)


@dataclass(frozen=True)
class GroupScore:
    """Scores of one prunable group: aggregated importance, PFGDF marks, fits."""

    group: int
    importance: np.ndarray
    insignificant: np.ndarray | None
    layers: Mapping[str, LayerScore]

    def fits(self) -> dict[str, GaussianFit]:
        """Gaussian fit per member output tensor (PFGDF only)."""
        return {name: s.fit for name, s in self.layers.items() if s.fit is not None}


@dataclass(frozen=True)
class Plan:
    """Kept channels per group, with the analysis they refer to.

    Attributes:
        keep: sorted kept indices for each group that loses channels.
        analysis: the channel analysis of the model the plan applies to.
    """

    keep: Mapping[int, np.ndarray]
    analysis: ChannelAnalysis = field(repr=False)

    def layers(self) -> dict[str, dict[str, object]]:
        """The per-layer view written to JSON, ordered as the graph lists groups."""
        out: dict[str, dict[str, object]] = {}
        for gid, kept in self.keep.items():
            group = self.analysis.groups[gid]
            for member in group.members:
                out[member.output] = {
                    "node": member.node,
                    "filters": group.channels,
                    "keep": [int(i) for i in kept],
                }
        return out

    def to_dict(self) -> dict[str, object]:
        """The documented JSON document."""
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "layers": self.layers()}

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def removed(self) -> int:
        """Total number of channels the plan removes."""
        return sum(self.analysis.groups[g].channels - len(k) for g, k in self.keep.items())


def protect_layers(analysis: ChannelAnalysis, patterns: Sequence[str]) -> ChannelAnalysis:
    """``analysis`` with every group owning a layer that matches a pattern frozen, saying so.

    A pattern (``fnmatch`` syntax) matches a layer's node name or its output
    tensor; the whole group freezes, since coupled layers share their channels.

    Raises:
        BadInputError: a pattern matches no layer that owns filters.
    """
    if not patterns:
        return analysis
    groups = dict(analysis.groups)
    for pattern in patterns:
        hits = [(gid, m) for gid, g in groups.items() for m in g.members
                if fnmatch.fnmatchcase(m.node, pattern) or fnmatch.fnmatchcase(m.output, pattern)]
        if not hits:
            raise BadInputError(f"--keep-layer '{pattern}' matches no Conv/Gemm layer (see 'onnx-pfgdf analyze')")
        for gid, member in hits:
            reason = f"kept whole on request: '{pattern}' matches layer {member.output}"
            if reason not in groups[gid].frozen:
                groups[gid] = replace(groups[gid], frozen=(*groups[gid].frozen, reason))
    return replace(analysis, groups=groups)


def member_matrix(index: GraphIndex, member: Member) -> np.ndarray:
    """The member's weight as ``[filters, -1]`` (output channels as rows)."""
    weight = index.constant(member.weight)
    if weight is None:
        raise ValueError(f"weight '{member.weight}' of {member.node} is not an initializer")
    return np.moveaxis(weight, member.axis, 0).reshape(weight.shape[member.axis], -1).astype(np.float64)


def score_groups(
    analysis: ChannelAnalysis, index: GraphIndex, config: CriterionConfig
) -> dict[int, GroupScore]:
    """Score every prunable group with ``config`` (members aggregated)."""
    scores: dict[int, GroupScore] = {}
    for group in analysis.prunable_groups():
        layers = {m.output: score_layer(member_matrix(index, m), config) for m in group.members}
        importance, insignificant = score_group(list(layers.values()))
        scores[group.id] = GroupScore(group.id, importance, insignificant, layers)
    return scores


def select_plan(
    analysis: ChannelAnalysis,
    scores: Mapping[int, GroupScore],
    *,
    ratio: float | Mapping[int, float] | None = None,
    keep_rule: KeepRule = KeepRule(),
) -> Plan:
    """Choose kept channels per group.

    With ``ratio`` (one value, or one per group id) a group of ``C`` channels
    keeps the ``C - round(ratio * C)`` most important ones.  Without it, the
    PFGDF interval decides: filters marked insignificant go (the scores must
    come from a config with ``alpha``).  ``keep_rule`` always applies on top.
    """
    keep: dict[int, np.ndarray] = {}
    for gid, score in scores.items():
        group: Group = analysis.groups[gid]
        c = group.channels
        if ratio is not None:
            r = ratio.get(gid, 0.0) if isinstance(ratio, Mapping) else ratio
            n_keep = c - int(round(float(r) * c))
        elif score.insignificant is not None:
            n_keep = c - int(np.count_nonzero(score.insignificant))
        else:
            raise ValueError("select_plan needs a ratio or scores computed with an alpha")
        n_keep = keep_rule.apply(n_keep, c, group.blocks)
        if n_keep >= c:
            continue
        marked = None if ratio is not None or score.insignificant is None else np.flatnonzero(~score.insignificant)
        if marked is not None and marked.size == n_keep and _blocks_balanced(marked, c, group.blocks):
            kept = marked.astype(np.int64)
        else:
            kept = _select_in_blocks(score.importance, n_keep, group.blocks)
        keep[gid] = kept
    return Plan(keep=keep, analysis=analysis)


def _block_counts(kept: np.ndarray, channels: int, blocks: int) -> np.ndarray:
    """How many of ``kept`` fall in each of ``blocks`` equal blocks of ``channels``."""
    return np.bincount(np.asarray(kept, dtype=np.int64) // (channels // blocks), minlength=blocks)


def _blocks_balanced(kept: np.ndarray, channels: int, blocks: int) -> bool:
    counts = _block_counts(kept, channels, blocks)
    return bool(np.all(counts == counts[0]) and counts[0] > 0)


def _select_in_blocks(importance: np.ndarray, n_keep: int, blocks: int) -> np.ndarray:
    """The ``n_keep / blocks`` most important channels of every block (all when ``blocks == 1``)."""
    if blocks == 1:
        return select_keep(importance, n_keep)
    width = importance.size // blocks
    parts = [b * width + select_keep(importance[b * width:(b + 1) * width], n_keep // blocks) for b in range(blocks)]
    return np.concatenate(parts).astype(np.int64)


def plan_from_dict(data: Mapping[str, object], analysis: ChannelAnalysis) -> Plan:
    """Map a plan document onto ``analysis``; refuse anything that does not match.

    Raises:
        BadInputError: wrong format or version, unknown layer, filter count
            mismatch, a frozen group, or coupled layers that disagree.
    """
    if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
        raise BadInputError(f"plan is not an {PLAN_FORMAT} document")
    if data.get("version") != PLAN_VERSION:
        raise BadInputError(f"plan version {data.get('version')!r} is not supported (expected {PLAN_VERSION})")
    layers = data.get("layers")
    if not isinstance(layers, Mapping):
        raise BadInputError("plan has no 'layers' object")
    keep: dict[int, np.ndarray] = {}
    for tensor, entry in layers.items():
        group = analysis.group_of_output(str(tensor))
        if group is None:
            raise BadInputError(f"plan layer '{tensor}' is not a prunable layer output of this model")
        if not isinstance(entry, Mapping) or "keep" not in entry:
            raise BadInputError(f"plan layer '{tensor}' has no 'keep' list")
        filters = entry.get("filters", group.channels)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters != group.channels:
            raise BadInputError(
                f"plan layer '{tensor}' has {entry.get('filters')} filters, the model has {group.channels}"
            )
        if group.frozen:
            raise BadInputError(f"plan prunes layer '{tensor}', which cannot be pruned: {group.frozen[0]}")
        try:
            kept = np.asarray(sorted({int(i) for i in entry["keep"]}), dtype=np.int64)
        except (TypeError, ValueError):
            raise BadInputError(f"plan layer '{tensor}' has a malformed 'keep' list") from None
        if kept.size == 0 or kept[0] < 0 or kept[-1] >= group.channels:
            raise BadInputError(f"plan layer '{tensor}' keeps channels outside 0..{group.channels - 1} or none")
        if group.blocks > 1 and not _blocks_balanced(kept, group.channels, group.blocks):
            raise BadInputError(
                f"plan layer '{tensor}' must keep the same number of channels in each of its "
                f"{group.blocks} blocks (grouped convolution)"
            )
        if group.id in keep and not np.array_equal(keep[group.id], kept):
            raise BadInputError(f"plan layer '{tensor}' disagrees with a layer it is coupled to")
        keep[group.id] = kept
    for gid, kept in keep.items():
        missing = [m.output for m in analysis.groups[gid].members if m.output not in layers]
        if missing:
            raise BadInputError(f"plan omits layer '{missing[0]}', which is coupled to the layers it prunes")
    keep = {g: k for g, k in keep.items() if len(k) < analysis.groups[g].channels}
    return Plan(keep=keep, analysis=analysis)


def load_plan(path: str | Path) -> dict[str, object]:
    """Read a plan JSON file (the mapping onto a model is :func:`plan_from_dict`)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"plan file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"plan file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"plan file '{path}' is not a JSON object")
    return data
