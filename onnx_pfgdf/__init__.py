"""onnx-pfgdf: PFGDF filter pruning (Gaussian distribution feature) for ONNX CNNs.

The pipeline, one module per step: ``io`` (load, normalize) -> ``graph`` (def-use
index) -> ``channels`` (per-op rules, groups) -> ``criteria`` (PFGDF and
baselines) -> ``plan`` (which channels stay) -> ``rewrite`` (apply) ->
``recover`` -> ``verify`` (masked-original equivalence) -> ``report``.
"""

from onnx_pfgdf.api import Analysis, PruneConfig, PruneResult, analyze, apply_plan, prune, verify
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.errors import BadInputError, NothingToPruneError, PfgdfError, VerificationError
from onnx_pfgdf.io import LoadOptions
from onnx_pfgdf.plan import KeepRule, Plan

__all__ = [
    "Analysis",
    "BadInputError",
    "NothingToPruneError",
    "CriterionConfig",
    "KeepRule",
    "LoadOptions",
    "PfgdfError",
    "Plan",
    "PruneConfig",
    "PruneResult",
    "VerificationError",
    "analyze",
    "apply_plan",
    "prune",
    "verify",
]

__version__ = "0.1.0"
