"""Exception types shared by the library and mapped to exit codes by the CLI.

``BadInputError`` (exit 2) means the user gave something the tool cannot take:
the message is one line that names the problem.  ``VerificationError`` (exit 1)
means the tool produced something it refuses to write.
"""

from __future__ import annotations

__all__ = ["PfgdfError", "BadInputError", "NothingToPruneError", "VerificationError", "BudgetError"]


class PfgdfError(Exception):
    """Base class of every error onnx-pfgdf raises on purpose."""

    exit_code: int = 1


class BadInputError(PfgdfError):
    """The input model, data, plan or option cannot be used (exit code 2)."""

    exit_code = 2


class NothingToPruneError(BadInputError):
    """The model has no layer that may lose filters: no Conv, or every group is frozen (exit code 2).

    The CLI's ``prune --allow-unchanged`` writes the model unchanged and exits 0 instead.
    """


class VerificationError(PfgdfError):
    """A produced model failed its own verification (exit code 1)."""

    exit_code = 1


class BudgetError(PfgdfError):
    """No pruned model meets the user's accuracy/fidelity budget (exit code 1)."""

    exit_code = 1
