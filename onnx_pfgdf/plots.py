"""PNG plots rendered from results (matplotlib, imported lazily, Agg backend).

* :func:`plot_gaussian_fits` — per layer, the histogram of the PFGDF filter
  statistic, the fitted ``N(mu, sigma)``, and the kept vs removed filters.
* :func:`plot_search` — the fidelity-vs-MACs curve the search explored, with
  accepted and rolled-back candidates.
* :func:`plot_kept_filters` — filters per layer before and after pruning.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from onnx_pfgdf.channels import ChannelAnalysis
from onnx_pfgdf.criteria import CriterionConfig, filter_statistics, fit_gaussian
from onnx_pfgdf.graph import GraphIndex
from onnx_pfgdf.plan import Plan, member_matrix
from onnx_pfgdf.search import SearchResult

__all__ = ["plot_gaussian_fits", "plot_search", "plot_kept_filters", "write_plots"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write as PNG and release ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_gaussian_fits(
    model_index: GraphIndex, analysis: ChannelAnalysis, plan: Plan, criterion: CriterionConfig, path: str | Path
) -> Path:
    """Histogram + Gaussian fit of each prunable layer's filter statistic."""
    plt = _pyplot()
    statistic = criterion.statistic if criterion.statistic != "weights" else "l1"
    layers = [(g, m) for g in analysis.prunable_groups() for m in g.members]
    cols = 4
    rows = max(1, math.ceil(len(layers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    for ax, (group, member) in zip(axes.ravel(), layers):
        values = filter_statistics(member_matrix(model_index, member), statistic)
        fit = fit_gaussian(values)
        kept = plan.keep.get(group.id, np.arange(group.channels))
        mask = np.zeros(group.channels, dtype=bool)
        mask[kept] = True
        bins = max(8, min(40, group.channels // 4))
        ax.hist([values[mask], values[~mask]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
                label=["kept", "removed"])
        if fit.sigma > 0:
            xs = np.linspace(values.min(), values.max(), 200)
            width = (values.max() - values.min()) / bins if values.max() > values.min() else 1.0
            pdf = np.exp(-0.5 * ((xs - fit.mu) / fit.sigma) ** 2) / (fit.sigma * math.sqrt(2 * math.pi))
            ax.plot(xs, pdf * len(values) * width, color="black", lw=1)
        ax.set_title(f"{member.output[:28]}  {len(kept)}/{group.channels}  KS={fit.ks_statistic:.2f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(f"filter statistic '{statistic}' per layer: Gaussian fit, kept (blue) and removed (red)")
    return _save(fig, path)


def plot_search(result: SearchResult, path: str | Path) -> Path:
    """Fidelity against MACs removed for every candidate the search evaluated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for accepted, colour, label in ((True, "tab:green", "within budget"), (False, "tab:red", "rolled back")):
        steps = [s for s in result.steps if s.accepted == accepted]
        if steps:
            xs = [100 * s.macs_removed for s in steps]
            ys = [100 * (s.fidelity.accuracy if s.fidelity.accuracy is not None else s.fidelity.agreement)
                  for s in steps]
            ax.scatter(xs, ys, color=colour, label=label)
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("accuracy (or agreement) on search data (%)")
    ax.set_title("budgeted search")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_kept_filters(analysis: ChannelAnalysis, plan: Plan, path: str | Path) -> Path:
    """Bar chart of channels per prunable group before and after."""
    plt = _pyplot()
    groups = analysis.prunable_groups()
    labels = [g.members[0].output[:18] for g in groups]
    before = [g.channels for g in groups]
    after = [len(plan.keep[g.id]) if g.id in plan.keep else g.channels for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(groups)), 4))
    xs = np.arange(len(groups))
    ax.bar(xs, before, color="lightgray", label="original")
    ax.bar(xs, after, color="tab:blue", label="kept")
    ax.set_xticks(xs, labels, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.legend()
    return _save(fig, path)


def write_plots(
    directory: str | Path,
    normalized,
    plan: Plan,
    criterion: CriterionConfig,
    search: SearchResult | None = None,
) -> list[Path]:
    """Write every plot that applies into ``directory``; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    index = GraphIndex(normalized)
    paths = [
        plot_gaussian_fits(index, plan.analysis, plan, criterion, out / "gaussian_fits.png"),
        plot_kept_filters(plan.analysis, plan, out / "kept_filters.png"),
    ]
    if search is not None and search.steps:
        paths.append(plot_search(search, out / "search.png"))
    return paths
