"""Errors a user can act on.

Every problem caused by the user's input (a recipe, a checkpoint, a data directory)
raises a :class:`DistillError` subclass with a message that says what was wrong,
where, and what to do. The CLI prints these without a traceback.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class of the errors the CLI reports as plain messages."""


class RecipeError(DistillError):
    """A recipe is malformed: bad YAML, unknown key, wrong type, missing field."""


class UnknownNameError(DistillError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(DistillError):
    """A dataset is missing, corrupted or does not match what the recipe expects."""


class CheckpointError(DistillError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class LossError(DistillError):
    """A loss (built-in or a recipe plugin) failed to build or to compute its term."""
