"""The feature record: the one thing losses see of a network.

Every model of the zoo (and every timm model through its adapter) answers
``model(x, features=True)`` with a :class:`FeatureRecord`. Its fields follow the
feature list of the reference implementation (RepDistiller's ``is_feat=True``):
``maps`` are its ``feats[:-1]``, ``pooled`` is its ``feats[-1]``, and
``preact_maps`` are its ``feats[:-1]`` under ``preact=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FeatureRecord:
    """Intermediate features of one forward pass.

    Attributes:
        maps: stage feature maps, stem first, post-activation (B×C×H×W each).
        preact_maps: the same maps before their last activation, where the
            architecture defines one; otherwise the very same tensors as ``maps``.
        pooled: the pooled embedding, the vector the classifier sees (B×D).
        logits: the classifier output (B×num_classes).
    """

    maps: list[Tensor]
    preact_maps: list[Tensor]
    pooled: Tensor
    logits: Tensor

    def reference_list(self, preact: bool = False) -> list[Tensor]:
        """The reference's ``feats`` list: the maps followed by the pooled vector."""
        return [*(self.preact_maps if preact else self.maps), self.pooled]

    def map_tensors(self, function: Callable[[Tensor], Tensor]) -> FeatureRecord:
        """A record with ``function`` applied once to every distinct tensor (shared maps stay shared)."""
        done: dict[int, Tensor] = {}

        def apply(tensor: Tensor) -> Tensor:
            if id(tensor) not in done:
                done[id(tensor)] = function(tensor)
            return done[id(tensor)]

        return FeatureRecord(
            maps=[apply(m) for m in self.maps],
            preact_maps=[apply(m) for m in self.preact_maps],
            pooled=apply(self.pooled),
            logits=apply(self.logits),
        )

    def shapes(self) -> FeatureShapes:
        """Per-sample shapes (without the batch dimension) of every field."""
        return FeatureShapes(
            maps=[tuple(m.shape[1:]) for m in self.maps],
            preact_maps=[tuple(m.shape[1:]) for m in self.preact_maps],
            pooled=tuple(self.pooled.shape[1:]),
            logits=tuple(self.logits.shape[1:]),
        )


@dataclass(frozen=True)
class FeatureShapes:
    """Per-sample shapes of a :class:`FeatureRecord`: what losses size their modules from."""

    maps: list[tuple[int, ...]]
    preact_maps: list[tuple[int, ...]]
    pooled: tuple[int, ...]
    logits: tuple[int, ...]

    @property
    def pooled_dim(self) -> int:
        return self.pooled[0]

    @property
    def num_classes(self) -> int:
        return self.logits[0]


@torch.no_grad()
def probe_feature_shapes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> FeatureShapes:
    """Shapes of the model's features, from one dry forward pass on two zero images.

    The model is put in eval mode for the pass (so no BatchNorm statistic moves)
    and returned to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        record = model(torch.zeros(2, *input_shape, device=device), features=True)
    finally:
        model.train(was_training)
    return record.shapes()
