"""Shared pytest fixtures (``vgg_file``, ``listing``) and the ``slow`` marker (deselect with ``-m "not slow"``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

import builders


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: runs for more than ~15 s (large zoo models)")


@pytest.fixture
def vgg_file(tmp_path: Path) -> Path:
    """``builders.vgg_chain()`` saved as ``tmp_path/vgg.onnx``."""
    path = tmp_path / "vgg.onnx"
    onnx.save(builders.vgg_chain().model, path)
    return path


@pytest.fixture
def listing(tmp_path: Path) -> Callable[[], dict[str, tuple[int, int]]]:
    """A snapshot function: every file under ``tmp_path`` -> (size, mtime_ns)."""

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(tmp_path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file()
        }

    return snapshot
