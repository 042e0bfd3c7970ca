"""The loss zoo. Each file holds one loss and registers it with ``@register_loss``.

Users add their own without touching the package: subclass :class:`DistillLoss`,
decorate it with :func:`register_loss`, and name its type in a recipe.
"""

# Importing the loss files registers them.
from distill.losses import (  # noqa: E402,F401
    ab,
    attention,
    ce,
    contrastive,
    correlation,
    dist,
    dkd,
    fitnet,
    fsp,
    ft,
    itrd,
    kd,
    mlkd,
    nst,
    pkt,
    reviewkd,
    rkd,
    segmental,
    similarity,
    ttm,
    vid,
)
from distill.losses.base import Batch, DistillLoss, InitStage, LossContext, MultiViewLoss
from distill.losses.registry import LOSSES, build_loss, loss_parameters, loss_schema, register_loss

__all__ = [
    "Batch", "DistillLoss", "InitStage", "LOSSES", "LossContext", "MultiViewLoss",
    "build_loss", "loss_parameters", "loss_schema", "register_loss",
]
