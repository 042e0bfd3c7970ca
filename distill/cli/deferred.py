"""Subcommand parsers whose options are added only when that subcommand is used.

``distill --help`` builds every subcommand's parser but reads only its one-line
summary. A subcommand whose option help quotes values from a heavy module (the
MI bench's defaults live beside torch code) hands those options to
:func:`defer_options`: they are added the first time the parser parses or prints
help, so ``distill --help`` and every other subcommand never import torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

AddOptions = Callable[[argparse.ArgumentParser], None]


class DeferredOptionsParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that runs its pending option builders before parsing or formatting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[AddOptions] = []

    def defer(self, add_options: AddOptions) -> None:
        self._pending.append(add_options)

    def _complete(self) -> None:
        while self._pending:
            self._pending.pop(0)(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def defer_options(parser: argparse.ArgumentParser, add_options: AddOptions) -> None:
    """Add ``add_options(parser)`` when the parser is first used; at once on a plain parser."""
    if isinstance(parser, DeferredOptionsParser):
        parser.defer(add_options)
    else:
        add_options(parser)
