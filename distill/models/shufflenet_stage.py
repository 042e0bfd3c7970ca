"""What ShuffleNet v1 and v2 share: the channel shuffle and a stage that returns its last pre-activation.

Both networks (Zhang et al. 2018; Ma et al. 2018) interleave the channels of
their groups so that the next convolution mixes information across groups, and
both run a stage as a sequence of units, each returning ``(out, preact)``; the
feature taps need the pre-activation of a stage's last unit. The stage is an
``nn.Sequential`` so that the reference's checkpoint keys (``layerL.N.*``) hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

__all__ = ["ShuffleStage", "channel_shuffle", "run_stages"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups: (g, C/g) → (C/g, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleStage(nn.Sequential):
    """A run of units that returns ``(out, preact)`` of its last unit (keys stay ``layerL.N.*``)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = x
        for unit in self:
            x, preact = unit(x)
        return x, preact


def run_stages(stem: Tensor, stages: Iterable[ShuffleStage]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run ``stages`` from the stem output: (last output, maps, pre-activation maps).

    The stem has no pre-activation tap, so its post-ReLU output stands first in both lists.
    """
    maps, preact_maps = [stem], [stem]
    out = stem
    for stage in stages:
        out, preact = stage(out)
        maps.append(out)
        preact_maps.append(preact)
    return out, maps, preact_maps
