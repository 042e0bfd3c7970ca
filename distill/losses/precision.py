"""The precision logit losses compute in: float32 at least, whatever autocast the networks ran under."""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is half or bfloat16 (too few mantissa bits for z-scores, ε = 1e-8 and power sums)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
