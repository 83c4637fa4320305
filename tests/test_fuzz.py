"""Byte-level fuzzing of the CLI's model reader: ``prune`` on corrupted files.

A small valid model file (``builders.vgg_chain``, ~6 KB) is mutated with a
seeded generator — flip a few bits, truncate, insert or overwrite random bytes
— and handed to ``onnx-pfgdf prune``.  Whatever the bytes, ``main`` must
return an exit code (0 done, 1 verification/internal failure, 2 bad input),
never raise, never print a traceback, and leave no output file behind when it
fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from onnx_pfgdf.cli import main

CASES = 150
MUTATIONS = ("flip", "truncate", "insert", "overwrite")


@pytest.fixture(scope="module")
def valid_bytes() -> bytes:
    return builders.vgg_chain().model.SerializeToString()


def mutate(data: bytes, case: int) -> tuple[str, bytes]:
    """The ``case``-th seeded mutant of ``data`` and the name of its mutation."""
    rng = np.random.default_rng(1000 + case)
    kind = MUTATIONS[case % len(MUTATIONS)]
    buf = bytearray(data)
    if kind == "flip":
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 4))):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        del buf[int(rng.integers(0, len(buf))):]
    elif kind == "insert":
        pos = int(rng.integers(0, len(buf) + 1))
        buf[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:
        pos = int(rng.integers(0, len(buf)))
        chunk = rng.integers(0, 256, size=int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        buf[pos:pos + len(chunk)] = chunk
    return kind, bytes(buf)


def test_mutants_differ_from_the_original(valid_bytes: bytes) -> None:
    assert all(mutate(valid_bytes, c)[1] != valid_bytes for c in range(CASES))
    onnx.checker.check_model(onnx.load_from_string(valid_bytes))


@pytest.mark.parametrize("case", range(CASES))
def test_prune_survives_corrupted_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        valid_bytes: bytes, case: int) -> None:
    kind, data = mutate(valid_bytes, case)
    path, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    path.write_bytes(data)
    code = main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--criterion", "l1"])
    captured = capsys.readouterr()
    assert code in (0, 1, 2), (kind, code, captured.err)
    assert "Traceback" not in captured.out + captured.err, (kind, captured.err)
    if code == 0:
        onnx.checker.check_model(onnx.load(out))
    else:
        assert captured.err.strip(), f"{kind}: exit {code} without an error message"
        assert not out.exists(), f"{kind}: exit {code} but {out.name} was written"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"], "temporary files left behind"
