"""Latency bar chart of a :class:`~onnx_pfgdf.bench.report.BenchReport` (matplotlib, imported on use)."""

from __future__ import annotations

import os

import numpy as np

from onnx_pfgdf.bench.report import PROFILES, BenchReport

__all__ = ["plot_report"]


def plot_report(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Grouped bar chart of median latency (ms per run) per model and profile, as PNG.

    One group of bars per model, one bar per profile; p90 is drawn as an error
    bar above the median.  Each profile has its own y axis scale via a subplot,
    since batch sizes differ.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = report.profiles()
    labels = report.labels()
    fig, axes = plt.subplots(1, len(profiles), figsize=(max(5.0, 1.2 * len(labels)) * len(profiles), 4.2),
                             squeeze=False)
    for ax, pname in zip(axes[0], profiles):
        rows = [report.row(label, pname) for label in labels]
        med = [r.median_ms for r in rows]
        err = [max(0.0, r.p90_ms - r.median_ms) for r in rows]
        x = np.arange(len(rows))
        bars = ax.bar(x, med, yerr=[[0.0] * len(err), err], capsize=3, color="tab:blue")
        for bar, r, e in zip(bars, rows, err):
            ax.annotate(f"{report.speedup(r.label, pname):.2f}x",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height() + e),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        batches = sorted({r.batch for r in rows})
        prof = PROFILES.get(pname)
        threads = prof.threads if prof else rows[0].threads
        ax.set_title(f"{pname}: {threads} thread(s), batch {'/'.join(map(str, batches))}")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("median ms per run (bar: p90)")
        ax.set_ylim(0, max(m + e for m, e in zip(med, err)) * 1.2 if med else 1)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=110)
    plt.close(fig)
