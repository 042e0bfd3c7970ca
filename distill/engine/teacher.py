"""The frozen teacher: eval mode, no gradients, never wrapped for data parallelism."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.models.features import FeatureRecord


class FrozenTeacher:
    """Holds a trained network and answers with its feature record, without gradients.

    Deliberately not an ``nn.Module``: it is therefore not a submodule of the
    trainable model, so Accelerate never wraps it in DDP, the optimiser never
    sees it, ``train()`` on the student never flips it out of eval mode, and it
    stays out of the student's checkpoints.
    """

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu") -> None:
        self.module = module.to(device).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> FeatureRecord:
        if self.module.training:  # someone called .train() on it directly; refuse to drift
            self.module.eval()
        return self.module(inputs, features=True)
