"""Reports as data objects, rendered to JSON, markdown and short text tables.

The library builds :class:`AnalyzeReport` and :class:`PruneReport`; only the
CLI decides what to print.  All counts follow the paper: filters are Conv /
ConvTranspose output channels, parameters are all floating-point initializer
elements, FLOPs are multiply-accumulates (MACs) at batch 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_pfgdf.count import ModelCount

__all__ = ["LayerRow", "FrozenGroup", "AnalyzeReport", "PruneReport", "render_table"]


@dataclass(frozen=True)
class LayerRow:
    """One Conv/ConvTranspose/Gemm/MatMul layer before (and after) pruning.

    ``blocks > 1``: the layer's group feeds or is made by a grouped Conv, so
    each of ``blocks`` equal blocks of its channels keeps as many.
    """

    node: str
    op_type: str
    output: str
    group: int | None
    prunable: bool
    filters: int
    params: int
    macs: int
    kept: int | None = None
    params_after: int | None = None
    macs_after: int | None = None
    fit: Mapping[str, float] | None = None
    channels: int | None = None
    blocks: int = 1

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class FrozenGroup:
    """A group that keeps all its channels, and why."""

    group: int
    channels: int
    layers: tuple[str, ...]
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return {"group": self.group, "channels": self.channels, "layers": list(self.layers), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class AnalyzeReport:
    """What ``analyze`` found: counts, layers, prunable and frozen groups."""

    count: ModelCount
    layers: tuple[LayerRow, ...]
    prunable_groups: int
    frozen: tuple[FrozenGroup, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return {
            "totals": {"filters": self.count.filters, "params": self.count.params, "macs": self.count.macs},
            "prunable_groups": self.prunable_groups,
            "layers": [r.to_dict() for r in self.layers],
            "frozen_groups": [f.to_dict() for f in self.frozen],
        }


@dataclass(frozen=True)
class PruneReport:
    """Before/after figures of one pruning run and its verification."""

    original: ModelCount
    pruned: ModelCount
    reduction: Mapping[str, float]
    layers: tuple[LayerRow, ...]
    frozen: tuple[FrozenGroup, ...]
    settings: Mapping[str, object]
    verification: Mapping[str, object] | None = None
    stages: Sequence[Mapping[str, object]] = field(default_factory=tuple)
    search: Mapping[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (the ``--report`` file)."""
        return {
            "settings": dict(self.settings),
            "units": {"macs": "multiply-accumulates at batch 1", "params": "float initializer elements"},
            "original": {"filters": self.original.filters, "params": self.original.params, "macs": self.original.macs},
            "pruned": {"filters": self.pruned.filters, "params": self.pruned.params, "macs": self.pruned.macs},
            "reduction": dict(self.reduction),
            "verification": dict(self.verification) if self.verification is not None else None,
            "stages": [dict(s) for s in self.stages],
            "search": dict(self.search) if self.search is not None else None,
            "layers": [r.to_dict() for r in self.layers],
            "frozen_groups": [f.to_dict() for f in self.frozen],
        }

    def summary_rows(self) -> list[list[str]]:
        """Rows of the short before/after table."""
        rows = [["", "original", "pruned", "removed"]]
        for key, label in (("filters", "filters"), ("params", "params"), ("macs", "MACs")):
            before, after = getattr(self.original, key), getattr(self.pruned, key)
            rows.append([label, f"{before:,}", f"{after:,}", f"{100.0 * self.reduction[key]:.2f}%"])
        return rows

    def to_markdown(self) -> str:
        """A markdown report a user can paste into a pull request."""
        lines = ["# onnx-pfgdf pruning report", ""]
        lines += _markdown_table(self.summary_rows())
        if self.verification is not None:
            v = self.verification
            lines += ["", f"Verification: {'passed' if v.get('passed') else 'FAILED'} "
                          f"(max relative error {float(v.get('max_rel_error', float('nan'))):.2e}, "
                          f"tolerance {float(v.get('tolerance', float('nan'))):.0e}, checker {v.get('checker')})"]
        if self.stages:
            lines += ["", f"## Accuracy and fidelity ({self.stages[0].get('data', '')})", ""]
            rows = [["stage", "top-1 accuracy", "agreement with original", "relative L2 error"]]
            for st in self.stages:
                acc = st.get("accuracy")
                rows.append([str(st["stage"]), "-" if acc is None else f"{100 * float(acc):.2f}%",
                             f"{100 * float(st['agreement']):.2f}%", f"{float(st['rel_error']):.4f}"])
            lines += _markdown_table(rows)
        if self.search is not None:
            steps = self.search.get("steps", [])
            lines += ["", f"Automated search: {len(steps)} candidates evaluated in "
                          f"{float(self.search.get('seconds', 0.0)):.0f} s, "
                          f"{sum(1 for s in steps if s.get('accepted'))} within the budget."]
        lines += ["", "## Layers", ""]
        rows = [["layer", "op", "output channels", "kept", "MACs before", "MACs after"]]
        for r in self.layers:
            total = r.channels if r.channels is not None else r.filters
            rows.append([r.output, r.op_type, str(total), str(r.kept if r.kept is not None else total),
                         f"{r.macs:,}", f"{(r.macs_after if r.macs_after is not None else r.macs):,}"])
        lines += _markdown_table(rows)
        if self.frozen:
            lines += ["", "## Not pruned", ""]
            for f in self.frozen:
                lines.append(f"- group {f.group} ({f.channels} ch; {', '.join(f.layers) or 'no layer'}): {'; '.join(f.reasons)}")
        return "\n".join(lines) + "\n"


def _markdown_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table with aligned columns (first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
