"""The error the MI bench raises for input a user can fix (printed by the CLI with exit code 2)."""

from __future__ import annotations

from distill.errors import DistillError

__all__ = ["MIBenchError"]


class MIBenchError(DistillError):
    """A bench setting is invalid: a malformed estimator, MI level, step count, device or output."""
