"""Tests of onnx_pfgdf.evaluate on tiny onnx.helper models with known answers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pfgdf.data import Dataset
from onnx_pfgdf.evaluate import (
    make_session,
    relative_l2_error,
    run_batched,
    top1_accuracy,
    top1_agreement,
)

# Swap model (3 classes): logits = x @ W^T with W a permutation
#
#   x[N,3] --Gemm(W, transB=1)--> logits[N,3] --Relu--> relu[N,3]
#
# W maps (x0, x1, x2) to (x2, x0, x1), so argmax(logits) = (argmax(x) + 1) % 3.
W_SWAP = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32)


def _gemm_model(weight: np.ndarray, batch: int | str = "N") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])
    relu = helper.make_tensor_value_info("relu", TensorProto.FLOAT, [batch, 3])
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1),
            helper.make_node("Relu", ["logits"], ["relu"]),
        ],
        "gemm",
        [x],
        [logits, relu],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# Ten one-hot-ish samples: the largest entry of x[i] is at i % 3.
X = np.full((10, 3), -1.0, np.float32)
X[np.arange(10), np.arange(10) % 3] = np.arange(1, 11, dtype=np.float32)
PRED_SWAP = (np.arange(10) % 3 + 1) % 3


def test_run_batched_concatenates_all_outputs() -> None:
    logits, relu = run_batched(_gemm_model(W_SWAP), {"x": X}, batch_size=4)
    np.testing.assert_allclose(logits, X @ W_SWAP.T, rtol=0, atol=0)
    np.testing.assert_allclose(relu, np.maximum(X @ W_SWAP.T, 0), rtol=0, atol=0)


def test_run_batched_selected_output_and_session() -> None:
    session = make_session(_gemm_model(W_SWAP), threads=1)
    (relu,) = run_batched(session, {"x": X}, batch_size=3, output_names=["relu"], progress=True)
    assert relu.shape == (10, 3)
    np.testing.assert_array_equal(relu.argmax(1), PRED_SWAP)


def test_run_batched_fixed_batch_one() -> None:
    model = _gemm_model(W_SWAP, batch=1)
    logits, _ = run_batched(model, {"x": X}, batch_size=256)
    np.testing.assert_allclose(logits, X @ W_SWAP.T, rtol=0, atol=0)
    labels = PRED_SWAP.copy()
    labels[:4] = (labels[:4] + 1) % 3
    assert top1_accuracy(model, Dataset({"x": X}, labels)) == 0.6


def test_run_batched_rejects_ragged_inputs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        run_batched(_gemm_model(W_SWAP), {"x": X, "y": X[:3]})


def test_top1_accuracy_exact() -> None:
    labels = PRED_SWAP.copy()
    labels[[1, 5, 8]] = (labels[[1, 5, 8]] + 1) % 3  # three wrong labels
    ds = Dataset({"x": X}, labels)
    assert top1_accuracy(_gemm_model(W_SWAP), ds, batch_size=3) == 0.7
    assert top1_accuracy(_gemm_model(W_SWAP), Dataset({"x": X}, PRED_SWAP)) == 1.0


def test_top1_accuracy_needs_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        top1_accuracy(_gemm_model(W_SWAP), Dataset({"x": X}))


def test_top1_agreement_model_and_outputs() -> None:
    identity = _gemm_model(np.eye(3, dtype=np.float32))
    swap = _gemm_model(W_SWAP)
    ds = Dataset({"x": X})
    # identity predicts i % 3, swap predicts (i % 3 + 1) % 3: never equal
    assert top1_agreement(identity, swap, ds) == 0.0
    assert top1_agreement(swap, swap, ds) == 1.0
    ref = run_batched(swap, ds.inputs)
    assert top1_agreement(ref, swap, ds, batch_size=2) == 1.0
    # reference logits with 4 predictions changed
    changed = ref[0].copy()
    changed[:4] = np.eye(3, dtype=np.float32)[(PRED_SWAP[:4] + 1) % 3] * 100
    assert top1_agreement(changed, swap, ds) == 0.6


def test_relative_l2_error_exact() -> None:
    a = [np.array([3.0, 4.0]), np.array([[1.0, 0.0]])]
    b = [np.array([3.0, 0.0]), np.array([[1.0, 0.5]])]
    # ||(0,4)|| / ||(3,4)|| = 0.8 ; ||(0,0.5)|| / ||(1,0)|| = 0.5 ; max = 0.8
    assert relative_l2_error(a, b) == pytest.approx(0.8, abs=1e-15)
    assert relative_l2_error(a, a) == 0.0
    assert relative_l2_error([np.zeros(2)], [np.zeros(2)]) == 0.0
    assert relative_l2_error([np.zeros(2)], [np.ones(2)]) == float("inf")


def test_relative_l2_error_mismatch() -> None:
    with pytest.raises(ValueError, match="outputs"):
        relative_l2_error([np.zeros(2)], [])
    with pytest.raises(ValueError, match="shapes"):
        relative_l2_error([np.zeros(2)], [np.zeros(3)])
