"""Progress reporting: a tqdm bar on a terminal, plain periodic lines otherwise.

Only the main process reports. Callers pass running averages that they read from
the device once per reporting interval, never once per step.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm


class Progress:
    """Reports the steps of one epoch."""

    def __init__(self, total: int, description: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = enabled and self.stream.isatty()
        self._bar = tqdm(total=total, desc=description, file=self.stream, leave=False, dynamic_ncols=True) if self.interactive else None
        self._done = 0

    def update(self, steps: int, stats: dict[str, float] | None = None) -> None:
        """Advance by ``steps``; show ``stats`` (loss, images/s …) with the update."""
        self._done += steps
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(steps)
            if stats:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
        elif stats is not None:
            shown = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
            print(f"{self.description} step {self._done}/{self.total} {shown}", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
