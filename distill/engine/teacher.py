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

    The forward pass runs under ``torch.inference_mode`` (no autograd bookkeeping,
    no version counters) and in whatever autocast the caller has entered, so under
    ``precision: bf16|fp16`` it runs in the compute dtype. Inference tensors may
    not be saved for backward, and losses do use teacher features in products with
    student tensors, so the outputs are cloned into ordinary tensors: one copy of
    the features, small beside the forward pass that made them.
    """

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu", *, channels_last: bool = False) -> None:
        self.module = module.to(device).eval()
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def __call__(self, inputs: Tensor) -> FeatureRecord:
        if self.module.training:  # someone called .train() on it directly; refuse to drift
            self.module.eval()
        with torch.inference_mode():
            record = self.module(inputs, features=True)
        return record.map_tensors(torch.Tensor.clone)
