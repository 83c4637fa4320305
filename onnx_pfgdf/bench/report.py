"""The benchmark's data object and its renderings.

:class:`Profile` / :data:`PROFILES` name the deployment settings, a
:class:`BenchRow` is one model under one profile, and :class:`BenchReport`
holds the rows, settings and notes, with speedup/ideal/efficiency ratios and
its JSON, markdown and table views.  :func:`ideal_speedup` is the MAC ratio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Profile", "PROFILES", "BenchRow", "BenchReport", "ideal_speedup"]


@dataclass(frozen=True)
class Profile:
    """A deployment setting: intra-op threads and batch size of one run."""

    name: str
    threads: int
    batch: int


PROFILES: dict[str, Profile] = {
    "edge": Profile("edge", 1, 1),
    "server": Profile("server", os.cpu_count() or 1, 8),
}
"""``edge``: one thread, one sample; ``server``: all cores, batches of 8."""


@dataclass(frozen=True)
class BenchRow:
    """Latency of one model under one profile.

    Attributes:
        label: the model's name in the report (``original``, ``pruned``...).
        path_or_name: where the model came from (file path or a name).
        profile: the :class:`Profile` name.
        median_ms: median latency of one ``session.run`` in milliseconds.
        p90_ms: 90th percentile of the same samples.
        runs: number of timed runs.
        size_bytes: serialized size of the model.
        peak_rss_mb: growth of a fresh process's peak RSS when loading and
            running the model, in MiB; ``None`` when not measured.
        accuracy: top-1 accuracy on the labelled data, or ``None``.
        macs: multiply-accumulates at batch 1, or ``None`` when unknown.
        batch: batch size actually fed (may differ from the profile's, see notes).
        threads: intra-op threads of the session.
    """

    label: str
    path_or_name: str
    profile: str
    median_ms: float
    p90_ms: float
    runs: int
    size_bytes: int
    peak_rss_mb: float | None
    accuracy: float | None
    macs: int | None
    batch: int = 1
    threads: int = 1

    @property
    def ms_per_sample(self) -> float:
        """Median latency divided by the batch."""
        return self.median_ms / max(1, self.batch)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


@dataclass(frozen=True)
class BenchReport:
    """All rows of one benchmark, the settings they were measured with, and notes.

    ``rows`` are ordered profile by profile, models in the order given; the
    first model of each profile is the reference of :meth:`speedup`.
    ``notes`` say what could not be done as asked (batch fallbacks, skipped
    quantization variants, memory not measured...).
    """

    rows: tuple[BenchRow, ...]
    settings: Mapping[str, Any]
    notes: tuple[str, ...] = field(default=())

    def labels(self) -> list[str]:
        """Model labels in the order given."""
        return list(dict.fromkeys(r.label for r in self.rows))

    def profiles(self) -> list[str]:
        """Profile names in the order measured."""
        return list(dict.fromkeys(r.profile for r in self.rows))

    def row(self, label: str, profile: str) -> BenchRow:
        """The row of ``label`` under ``profile``.

        Raises:
            KeyError: no such row.
        """
        for r in self.rows:
            if r.label == label and r.profile == profile:
                return r
        raise KeyError(f"no row for model {label!r} under profile {profile!r}")

    def _first(self, profile: str) -> BenchRow:
        for r in self.rows:
            if r.profile == profile:
                return r
        raise KeyError(f"no row under profile {profile!r}")

    def speedup(self, label: str, profile: str) -> float:
        """Per-sample speedup of ``label`` over the first model under ``profile``.

        ``(t_first / b_first) / (t_label / b_label)``; 1.0 for the first model.
        """
        first, row = self._first(profile), self.row(label, profile)
        if row is first:
            return 1.0
        return first.ms_per_sample / row.ms_per_sample

    def ideal(self, label: str, profile: str) -> float | None:
        """``MACs_first / MACs_label``, or ``None`` when either is unknown."""
        first, row = self._first(profile), self.row(label, profile)
        if first.macs is None or row.macs is None or row.macs <= 0:
            return None
        return ideal_speedup(first.macs, row.macs)

    def efficiency(self, label: str, profile: str) -> float | None:
        """Realized speedup divided by the ideal (MAC) speedup, or ``None``.

        ``None`` for the first model (the reference) and when MACs are unknown.
        """
        if self._first(profile).label == label:
            return None
        ideal = self.ideal(label, profile)
        return None if ideal is None else self.speedup(label, profile) / ideal

    def rows_table(self) -> list[list[str]]:
        """Text table, header first.

        Columns: model, profile, median ms, p90 ms, speedup vs first model,
        size MB, accuracy, then MACs (M), realized/ideal, batch, peak RSS MB.
        """
        table = [[
            "model", "profile", "median ms", "p90 ms", "speedup vs first model", "size MB",
            "accuracy", "MACs (M)", "realized/ideal", "batch", "peak RSS MB",
        ]]
        for r in self.rows:
            table.append([
                r.label,
                r.profile,
                f"{r.median_ms:.3f}",
                f"{r.p90_ms:.3f}",
                f"{self.speedup(r.label, r.profile):.2f}x",
                f"{r.size_bytes / 1e6:.2f}",
                _fmt(None if r.accuracy is None else 100.0 * r.accuracy, ".2f", "%"),
                _fmt(None if r.macs is None else r.macs / 1e6, ".2f"),
                _fmt(self.efficiency(r.label, r.profile), ".2f"),
                str(r.batch),
                _fmt(r.peak_rss_mb, ".1f"),
            ])
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: ``settings``, ``rows`` (with derived ratios) and ``notes``."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["speedup"] = self.speedup(r.label, r.profile)
            d["ideal_speedup"] = self.ideal(r.label, r.profile)
            d["realized_over_ideal"] = self.efficiency(r.label, r.profile)
            rows.append(d)
        return {"settings": json.loads(json.dumps(dict(self.settings), default=str)),
                "rows": rows, "notes": list(self.notes)}

    def to_markdown(self) -> str:
        """A markdown section: settings line, the table, then the notes."""
        s = self.settings
        lines = ["## Latency (onnxruntime CPU)", ""]
        profs = s.get("profiles", {})
        desc = ", ".join(f"{n}: {p['threads']} thread(s), batch {p['batch']}" for n, p in profs.items())
        lines.append(
            f"onnxruntime {s.get('onnxruntime', '?')}, {s.get('runs', '?')} interleaved runs "
            f"after {s.get('warmup', '?')} warm-up runs, seed {s.get('seed', '?')}; {desc}."
        )
        lines.append("")
        table = self.rows_table()
        lines.append("| " + " | ".join(table[0]) + " |")
        lines.append("|" + "---|" * len(table[0]))
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        lines.append("")
        lines.append(
            "Speedup is per sample relative to the first model of the same profile; "
            "realized/ideal divides it by the MAC ratio."
        )
        if self.notes:
            lines += ["", "Notes:", ""]
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def ideal_speedup(original_macs: int, pruned_macs: int) -> float:
    """Best speedup the removed arithmetic allows: ``original_macs / pruned_macs``.

    Raises:
        ValueError: a non-positive MAC count.
    """
    if original_macs <= 0 or pruned_macs <= 0:
        raise ValueError(f"MAC counts must be positive, got {original_macs} and {pruned_macs}")
    return original_macs / pruned_macs
