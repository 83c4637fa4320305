"""Assertions shared by the corpus tests (zoo topologies, PyTorch exports)."""

from __future__ import annotations

from collections.abc import Iterable

from onnx_pfgdf.api import PruneResult


def assert_frozen_reasons(result: PruneResult, words: Iterable[str]) -> None:
    """Every frozen group (analysis and report) has non-empty reasons, and each word appears among them."""
    frozen = result.plan.analysis.frozen_groups()
    assert all(g.frozen and all(reason.strip() for reason in g.frozen) for g in frozen)
    assert all(f.reasons and all(r.strip() for r in f.reasons) for f in result.report.frozen)
    reasons = " | ".join(r for g in frozen for r in g.frozen)
    for word in words:
        assert word in reasons, reasons
