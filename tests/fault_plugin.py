"""Fault injection for the reliability tests, loaded as a recipe plugin (``plugins: [tests/fault_plugin.py]``).

Inactive unless ``DISTILL_FAULT`` is set, so a run can be started with a fault and
resumed, with the very same recipe, without one. ``DISTILL_FAULT`` is one of:

* ``kill_after_step=N``: SIGKILL this process right after optimisation step N;
* ``kill_after_save=N``: SIGKILL right after the N-th checkpoint was written;
* ``kill_during_save=N``: SIGKILL half-way through writing the N-th checkpoint file;
* ``slow_steps=SECONDS``: sleep after every step (to signal a run mid-training);
* ``fail_on_rank=R:N``: raise on process R at step N (a crashing rank);
* ``signal_after_step=NAME:N``: send signal NAME (``USR2``, ``TERM``) to this process right after
  step N, as a scheduler's warning reaches a job's process (rank 0 only, with several).

The kills are real ``SIGKILL``s: nothing runs after them, as when a node dies.
"""

from __future__ import annotations

import io
import os
import signal
import time

import torch
import torch.distributed as dist

from distill.engine import checkpoint as checkpoint_module
from distill.engine.trainer import Trainer

FAULT = os.environ.get("DISTILL_FAULT", "")
KIND, _, VALUE = FAULT.partition("=")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


if KIND in ("kill_after_step", "slow_steps", "fail_on_rank", "signal_after_step"):
    original_step = Trainer.train_step

    def faulty_step(self, inputs, labels, indices):
        result = original_step(self, inputs, labels, indices)
        if KIND == "kill_after_step" and self.state.step == int(VALUE):
            _kill()
        if KIND == "slow_steps":
            time.sleep(float(VALUE))
        if KIND == "signal_after_step":
            name, step = VALUE.split(":")
            if _rank() == 0 and self.state.step == int(step):
                os.kill(os.getpid(), signal.Signals[f"SIG{name}"])
        if KIND == "fail_on_rank":
            rank, step = (int(v) for v in VALUE.split(":"))
            if _rank() == rank and self.state.step == step:
                raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        return result

    Trainer.train_step = faulty_step

if KIND == "kill_after_save":
    original_save = Trainer.save_checkpoint
    saves = 0

    def save_then_kill(self, **kwargs):
        global saves
        original_save(self, **kwargs)
        self.wait_for_checkpoint()  # with async_checkpoint, "written" means on disk
        saves += 1
        if saves == int(VALUE):
            _kill()

    Trainer.save_checkpoint = save_then_kill

if KIND == "kill_during_save":
    real_save = torch.save
    writes = 0

    def half_save(obj, handle, *args, **kwargs):
        global writes
        writes += 1
        if writes < int(VALUE):
            return real_save(obj, handle, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        _kill()

    checkpoint_module.torch.save = half_save
