"""The PNG plots are written and are PNG files (their content is looked at by people, not asserted)."""

from __future__ import annotations

import numpy as np

import builders
import onnx_pfgdf
from onnx_pfgdf import PruneConfig
from onnx_pfgdf.data import Dataset
from onnx_pfgdf.plots import write_plots
from onnx_pfgdf.search import Budget


def test_write_plots_after_a_search(tmp_path) -> None:
    case = builders.vgg_chain(widths=(12, 12, 16))
    calib = Dataset({"x": np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32)})
    result = onnx_pfgdf.prune(case.model, PruneConfig(budget=Budget("max_error", 0.2), recover="lsq"), calib)
    paths = write_plots(tmp_path / "plots", result.normalized, result.plan, PruneConfig().criterion, result.search)
    assert sorted(p.name for p in paths) == ["gaussian_fits.png", "kept_filters.png", "search.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 2000
