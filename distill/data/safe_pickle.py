"""Unpickle data files that may come from anywhere, admitting only what a data format holds.

A pickle is a program: any global it names (``os.system``, ``subprocess.Popen``) is
imported and may be called while it loads, so ``pickle.load`` on a file someone handed
you runs whatever they put in it. The CIFAR python files are pickles of plain data:
dicts, lists, strings, bytes, numbers and numpy arrays. :class:`RestrictedUnpickler`
admits exactly the globals needed to rebuild those (numpy's array and dtype
constructors, under both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core``
names, and what Python 3 writes for ``bytes`` at protocol 2) and refuses every other
one *before* it is imported, so nothing in a refused file runs.

The admitted globals are a registry (:data:`ALLOWED_GLOBALS`), not a rule: each entry
is one ``(module, name)`` pair a legitimate file names, mapped to the object built for it.
"""

from __future__ import annotations

import _codecs
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_EMPTY = np.empty(0, dtype=np.uint8)
#: numpy's array reconstructor (protocols 0-4), its protocol-5 buffer constructor and its scalar constructor,
#: taken from numpy's own pickles so that this works whichever module the installed numpy keeps them in.
_RECONSTRUCT = _EMPTY.__reduce__()[0]
_FROMBUFFER = _EMPTY.__reduce_ex__(5)[0]
_SCALAR = np.uint8(0).__reduce__()[0]

LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol 2, and only that.

    The general ``_codecs.encode`` looks codecs up by name; a data file only ever needs latin-1.
    """
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only for latin-1 text, got encoding {encoding!r}")
    return _codecs.encode(text, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as Python 3 pickles ``b""`` at protocol 2; any argument (``bytes(10**12)``) is refused."""
    if args:
        raise pickle.UnpicklingError("bytes() is admitted only without arguments, as Python pickles b''")
    return b""


def _numpy_names(module: str, name: str) -> list[tuple[str, str]]:
    """``(module, name)`` under numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` spelling."""
    return [(f"numpy.core.{module}", name), (f"numpy._core.{module}", name)]


ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **dict.fromkeys(_numpy_names("multiarray", "_reconstruct"), _RECONSTRUCT),
    **dict.fromkeys(_numpy_names("multiarray", "scalar"), _SCALAR),
    **dict.fromkeys(_numpy_names("numeric", "_frombuffer"), _FROMBUFFER),
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}
"""Every global a data pickle may name, and what it resolves to (never the import of the named module)."""


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`; it was neither imported nor called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused global {module}.{name}")
        self.module = module
        self.name = name

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are :data:`ALLOWED_GLOBALS`; persistent ids are refused too."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobalError(str(module), str(name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of a data file")


def load_restricted(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` reads Python 2 strings (the official CIFAR files) as ``str``,
    as torchvision does, and keeps numpy's Python 2 array bytes intact.

    Raises:
        RefusedGlobalError: the file names a global that a data file never holds.
        Exception: whatever else unpickling damaged bytes raises; callers name the file.
    """
    with Path(path).open("rb") as file:
        return RestrictedUnpickler(file, encoding=encoding).load()
