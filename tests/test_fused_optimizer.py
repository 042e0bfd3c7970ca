"""``optimizer.fused``: PyTorch's fused optimiser kernels, the same update as the default ones up to rounding."""

from __future__ import annotations

import pytest
import torch

from distill.engine.optim import build_optimizer
from distill.recipe.schema import OptimizerSpec


def trained(spec: OptimizerSpec, steps: int = 5, **kwargs) -> list[torch.Tensor]:
    """Parameters of a small two-tensor problem after ``steps`` updates with the same gradients every run."""
    torch.manual_seed(0)
    parameters = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
    optimizer = build_optimizer(spec, parameters, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for parameter in parameters:
            parameter.grad = torch.randn(parameter.shape, generator=generator)
        optimizer.step()
    return [parameter.detach().clone() for parameter in parameters]


@pytest.mark.parametrize(
    "settings",
    [{"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}, {"name": "sgd", "momentum": 0.9, "nesterov": True},
     {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}],
    ids=["sgd", "sgd-nesterov", "adamw"],
)  # fmt: skip
def test_a_fused_optimiser_makes_the_default_update(settings):
    fused = OptimizerSpec(**settings, fused=True)
    plain = OptimizerSpec(**settings)
    optimizer = build_optimizer(fused, [torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.defaults["fused"] is True
    assert not build_optimizer(plain, [torch.nn.Parameter(torch.zeros(2))]).defaults["fused"]
    # a different update would differ by ~lr · |grad| ≈ 1e-2 after five steps; fused kernels differ by rounding only
    for ours, theirs in zip(trained(fused), trained(plain)):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_adamw_keeps_its_step_count_on_the_device_when_the_step_is_graphed():
    """(PyTorch allows ``capturable`` on CUDA only: the update itself is compared in tests/test_cuda_paths.py.)"""
    spec = OptimizerSpec(name="adamw", lr=1e-3)
    assert build_optimizer(spec, [torch.nn.Parameter(torch.zeros(2))], capturable=True).defaults["capturable"] is True
    assert build_optimizer(spec, [torch.nn.Parameter(torch.zeros(2))]).defaults["capturable"] is False
    sgd = build_optimizer(OptimizerSpec(name="sgd"), [torch.nn.Parameter(torch.zeros(2))], capturable=True)
    assert "capturable" not in sgd.defaults  # SGD keeps no step count: capturable as it is
