"""Training-free recovery applied after the rewrite (registry of methods).

``none`` returns the rewritten model unchanged, which is exactly what
verification checks against the masked original.  Data-driven methods
(bias folding, least-squares re-fit) register here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

from onnx_pfgdf.plan import Plan

__all__ = ["RecoverFn", "RECOVERY", "recover"]

RecoverFn = Callable[[onnx.ModelProto, onnx.ModelProto, Plan], onnx.ModelProto]


def _none(original: onnx.ModelProto, pruned: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Keep the rewritten model as it is."""
    return pruned


RECOVERY: Mapping[str, RecoverFn] = {"none": _none}


def recover(method: str, original: onnx.ModelProto, pruned: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Apply recovery ``method`` (a key of :data:`RECOVERY`)."""
    if method not in RECOVERY:
        raise ValueError(f"unknown recovery method {method!r}; choose from {', '.join(RECOVERY)}")
    return RECOVERY[method](original, pruned, plan)
