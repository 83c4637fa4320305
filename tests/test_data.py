"""Tests of onnx_pfgdf.data: the npz loader, the CIFAR-10 loader, the committed files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from onnx_pfgdf.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    Dataset,
    load_cifar10,
    load_npz,
)
from onnx_pfgdf.errors import BadInputError

DATA_DIR = Path(__file__).resolve().parents[1] / "models" / "data"


def _x(n: int = 4) -> np.ndarray:
    return np.arange(n * 3 * 2 * 2, dtype=np.float32).reshape(n, 3, 2, 2)


# --- load_npz -----------------------------------------------------------------


def test_npz_by_input_name_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=_x(), labels=np.array([0, 1, 2, 3], np.int32))
    ds = load_npz(path, ["input"])
    assert list(ds.inputs) == ["input"]
    np.testing.assert_array_equal(ds.inputs["input"], _x())
    assert ds.labels is not None and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 3])
    assert len(ds) == 4
    assert len(ds.take(2)) == 2 and ds.take(2).labels.tolist() == [0, 1]


def test_npz_single_input_any_array_name(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=_x(3))
    ds = load_npz(path, ["data_0"])
    assert list(ds.inputs) == ["data_0"]
    assert ds.inputs["data_0"].shape == (3, 3, 2, 2)
    assert ds.labels is None


def test_npz_multi_input_by_name(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=_x(2), b=np.ones((2, 5), np.float32), extra=np.zeros(7))
    ds = load_npz(path, ["a", "b"])
    assert sorted(ds.inputs) == ["a", "b"]
    assert ds.inputs["b"].shape == (2, 5)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_npz(tmp_path / "nope.npz", ["input"])


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(BadInputError, match="junk.npz") as info:
        load_npz(path, ["input"])
    assert "\n" not in str(info.value)


def test_npz_plain_npy_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "arr.npy"
    np.save(path, _x())
    with pytest.raises(BadInputError, match="not an .npz"):
        load_npz(path, ["input"])


def test_npz_missing_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=_x(2), c=_x(2))
    with pytest.raises(BadInputError, match="lacks array.*b"):
        load_npz(path, ["a", "b"])


def test_npz_single_input_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, one=_x(2), two=_x(2))
    with pytest.raises(BadInputError, match="lacks array"):
        load_npz(path, ["input"])


def test_npz_only_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, labels=np.array([1, 2]))
    with pytest.raises(BadInputError, match="lacks array"):
        load_npz(path, ["input"])


def test_npz_mismatched_lengths(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=_x(2), b=_x(3))
    with pytest.raises(BadInputError, match="differ in length"):
        load_npz(path, ["a", "b"])


def test_npz_labels_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=_x(4), labels=np.array([0, 1, 2]))
    with pytest.raises(BadInputError, match="labels have shape"):
        load_npz(path, ["input"])


def test_npz_labels_not_integer(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=_x(2), labels=np.array([0.0, 1.0]))
    with pytest.raises(BadInputError, match="labels must be integers"):
        load_npz(path, ["input"])


def test_npz_scalar_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=np.float32(3.0))
    with pytest.raises(BadInputError, match="no sample axis"):
        load_npz(path, ["input"])


def test_dataset_is_frozen() -> None:
    ds = Dataset({"input": _x(1)})
    with pytest.raises(AttributeError):
        ds.labels = np.array([0])  # type: ignore[misc]


# --- load_cifar10 ---------------------------------------------------------------


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels,
                     b"filenames": [b"f"] * len(labels)}, fh)


@pytest.fixture()
def cifar_dir(tmp_path: Path) -> Path:
    """A tiny ``cifar-10-batches-py``: 5 train batches of 2 images, 3 test images."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}", rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                     [i, i + 1])
    test = np.zeros((3, 3072), np.uint8)
    test[1] = 255
    test[2, :1024] = 255  # red plane only
    _write_batch(root / "test_batch", test, [7, 8, 9])
    return tmp_path


def test_cifar_test_split_normalization(cifar_dir: Path) -> None:
    x, y = load_cifar10(cifar_dir, "test")
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [7, 8, 9]
    mean = np.asarray(CIFAR10_MEAN, np.float32)
    std = np.asarray(CIFAR10_STD, np.float32)
    np.testing.assert_allclose(x[0, :, 0, 0], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(x[1, :, 5, 7], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(x[2, :, 3, 3], [(1 - mean[0]) / std[0], -mean[1] / std[1],
                                               -mean[2] / std[2]], rtol=1e-6)


def test_cifar_train_split_and_root_variants(cifar_dir: Path) -> None:
    x, y = load_cifar10(cifar_dir / "cifar-10-batches-py", "train")
    assert x.shape == (10, 3, 32, 32)
    assert y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]


def test_cifar_errors(cifar_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unknown CIFAR-10 split"):
        load_cifar10(cifar_dir, "val")
    with pytest.raises(BadInputError, match="not found"):
        load_cifar10(tmp_path / "empty", "test")
    bad = cifar_dir / "cifar-10-batches-py" / "test_batch"
    _write_batch(bad, np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(BadInputError, match="malformed"):
        load_cifar10(cifar_dir, "test")


# --- committed MNIST-32 files ---------------------------------------------------


@pytest.mark.parametrize("name, n", [("mnist32_calib.npz", 500), ("mnist32_test.npz", 1000)])
def test_committed_mnist32_files(name: str, n: int) -> None:
    path = DATA_DIR / name
    with np.load(path) as npz:
        assert sorted(npz.files) == ["input", "labels"]
        x, y = npz["input"], npz["labels"]
    assert x.shape == (n, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() <= 9
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
    # 2-pixel zero padding, normalized; three identical channels
    np.testing.assert_allclose(x[:, :, :2, :], -MNIST_MEAN / MNIST_STD, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    assert os.path.getsize(path) < 1_000_000
    ds = load_npz(path, ["input"])
    assert len(ds) == n and ds.labels is not None


def test_committed_splits_are_disjoint() -> None:
    with np.load(DATA_DIR / "mnist32_calib.npz") as a, np.load(DATA_DIR / "mnist32_test.npz") as b:
        calib = {row.tobytes() for row in a["input"][:, 0]}
        test = {row.tobytes() for row in b["input"][:, 0]}
    assert not calib & test


def test_conform_casts_float_data_and_refuses_other_mismatches() -> None:
    from onnx_pfgdf.data import conform

    ds = Dataset({"x": np.ones((2, 3), np.float32)}, np.array([0, 1]))
    half = conform(ds, {"x": np.dtype(np.float16)})
    assert half.inputs["x"].dtype == np.float16 and half.labels is ds.labels
    assert conform(ds, {"x": np.dtype(np.float32)}).inputs["x"] is ds.inputs["x"]
    with pytest.raises(BadInputError, match="input 'x' is uint8, the model expects float32"):
        conform(Dataset({"x": np.ones((2, 3), np.uint8)}), {"x": np.dtype(np.float32)})
