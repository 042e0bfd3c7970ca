"""Data errors whose advice is worded for the command the user ran.

A recipe turns the data settings with ``data.root``, ``data.verify`` and
``data.download``; ``distill teachers verify`` has no recipe and takes ``--data-root``
and ``--no-verify-data`` instead, and cannot download at all. Advice that names a key
the user cannot set is no advice, so a dataset raises a :class:`WordedDataError`: its
message is composed from a :class:`DataSettings`, the recipe's words by default, and a
command with its own flags re-words it with :meth:`WordedDataError.worded`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distill.errors import DataError


@dataclass(frozen=True)
class DataSettings:
    """How the user of one command changes the data settings, as advice phrases them.

    Attributes:
        root: what names the data root (``data.root``).
        skip_verify: the step that skips the md5 check (``set data.verify: false``).
        download: the step that downloads the data, or ``None`` where the command cannot.
        no_download: the step that stops downloading, or ``None`` where the command cannot download.
    """

    root: str
    skip_verify: str
    download: str | None
    no_download: str | None


RECIPE_SETTINGS = DataSettings(
    root="data.root",
    skip_verify="set data.verify: false (or pass data.verify=false)",
    download="set data.download: true",
    no_download="set data.download: false",
)
"""The recipe's words: what ``distill train``, ``eval`` and ``sweep`` users set."""


class WordedDataError(DataError):
    """A :class:`DataError` whose message can be composed again for another command's settings."""

    def __init__(self, compose: Callable[[DataSettings], str]) -> None:
        super().__init__(compose(RECIPE_SETTINGS))
        self._compose = compose

    def worded(self, settings: DataSettings) -> str:
        """The same message, its advice in the words of ``settings``."""
        return self._compose(settings)
