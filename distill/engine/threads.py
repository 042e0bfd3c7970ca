"""CPU threading defaults that degrade gracefully on a shared machine, and a line that says what was chosen.

torch runs its CPU kernels on one OpenMP thread per core, and by default an
OpenMP thread that waits for the others *spins* (``OMP_WAIT_POLICY`` unset:
active wait). When another process holds one of the cores, every parallel
region waits for the thread that cannot run, while the spinning one burns the
core it has: on this project's 2-core machine a resnet8x4 student fell from 93
to 33 images/s when another process took one core (an issue reported ~250 to ~19
elsewhere). With ``OMP_WAIT_POLICY=PASSIVE`` a waiting thread sleeps, so a busy
core costs a share of the speed instead (80 to 48 images/s; 13 % slower on an idle
machine): ``tools/bench_threads.py`` measures the choices, BENCHMARKS.md has the figures.

OpenMP reads these variables once, when torch loads, so :func:`configure_cpu_threads`
runs at the very start of the ``distill`` command, before anything imports torch.
What the user set wins:

- ``OMP_WAIT_POLICY`` set: kept; unset: ``PASSIVE``.
- ``DISTILL_CPU_THREADS=N``: N threads (sets ``OMP_NUM_THREADS``, replacing a
  launcher's default such as torchrun's 1); else ``OMP_NUM_THREADS`` when set;
  else torch's default (one per core).

This module uses only the standard library: it runs before torch is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

from distill.errors import DistillError

THREADS_VARIABLE = "DISTILL_CPU_THREADS"
"""The user's thread count for distill's CPU work (a positive integer); it replaces ``OMP_NUM_THREADS``."""
DEFAULT_WAIT_POLICY = "PASSIVE"
"""Waiting OpenMP threads sleep instead of spinning: what makes a busy core cost a share, not everything."""
DEFAULTED_MARK = "DISTILL_OMP_WAIT_POLICY_DEFAULTED"
"""Set beside the default, so a child ``distill`` (a sweep's run) still calls the policy distill's, not the user's."""


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_cpu_threads` found and set, for the start-up line."""

    wait_policy: str | None
    wait_policy_by: str
    threads: str | None
    threads_by: str
    too_late: bool = False


_choice: ThreadChoice | None = None


def _requested_threads(environ: MutableMapping[str, str]) -> str | None:
    text = environ.get(THREADS_VARIABLE)
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise DistillError(f"{THREADS_VARIABLE}={text!r}: expected a positive number of threads, e.g. {THREADS_VARIABLE}=2")
    return text


def configure_cpu_threads(environ: MutableMapping[str, str] | None = None) -> ThreadChoice:
    """Set the OpenMP variables (before torch loads) unless the user did; returns and remembers the choice.

    Raises:
        DistillError: ``DISTILL_CPU_THREADS`` is not a positive integer.
    """
    global _choice
    environ = os.environ if environ is None else environ
    requested = _requested_threads(environ)
    too_late = "torch" in sys.modules  # OpenMP has read its variables: leave the environment alone
    current = environ.get("OMP_WAIT_POLICY")
    if current and environ.get(DEFAULTED_MARK) != current:
        policy, policy_by = current, "your environment"
    elif current or not too_late:
        policy, policy_by = current or DEFAULT_WAIT_POLICY, "distill's default"
        environ["OMP_WAIT_POLICY"] = environ[DEFAULTED_MARK] = policy
    else:
        policy, policy_by = None, "unset"
    if requested is not None:
        if too_late:
            sys.modules["torch"].set_num_threads(int(requested))
        else:
            environ["OMP_NUM_THREADS"] = requested
        threads, threads_by = requested, THREADS_VARIABLE
    elif environ.get("OMP_NUM_THREADS"):
        threads, threads_by = environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"
    else:
        threads, threads_by = None, "torch's default: one per core"
    _choice = ThreadChoice(policy, policy_by, threads, threads_by, too_late)
    return _choice


def _torch_threads() -> int | None:
    """torch's intra-op thread count when torch is loaded (this module never imports it)."""
    torch = sys.modules.get("torch")
    get = getattr(torch, "get_num_threads", None)
    return int(get()) if callable(get) else None


def cpu_threads_description(choice: ThreadChoice | None = None) -> str:
    """One line for the trainer's start-up: the thread count, the wait policy, who chose them, how to change.

    Reads the choice :func:`configure_cpu_threads` made (or, when it never ran,
    the environment as it is) and torch's actual thread count when torch is loaded.
    """
    choice = choice or _choice
    if choice is None:
        policy = os.environ.get("OMP_WAIT_POLICY")
        choice = ThreadChoice(policy, "your environment" if policy else "unset", os.environ.get("OMP_NUM_THREADS"),
                              "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else "torch's default: one per core")
    actual = _torch_threads()
    count = actual if actual is not None else (choice.threads or "one per core")
    policy = f"OMP_WAIT_POLICY={choice.wait_policy} ({choice.wait_policy_by})" if choice.wait_policy else (
        "OMP_WAIT_POLICY unset (OpenMP's active spin-wait)"
    )
    line = f"CPU threads: {count} ({choice.threads_by}), {policy}"
    if choice.too_late:
        line += "; torch was loaded before distill could set them, so OpenMP may not follow these"
    return f"{line}; change with {THREADS_VARIABLE}=N or OMP_WAIT_POLICY=ACTIVE|PASSIVE"
