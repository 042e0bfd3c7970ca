"""Seeds and determinism switches."""

from __future__ import annotations

import os

import torch
from accelerate.utils import set_seed


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (every device); optionally force deterministic kernels.

    ``deterministic`` trades speed for bit-reproducibility: cuDNN benchmarking off,
    deterministic algorithms required (an op without one raises), and cuBLAS
    given the workspace setting it needs for reproducible matmuls.
    """
    set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True
