"""The two critics of the MI bench: separable g(x)ᵀh(y) and joint f([x, y]).

Both follow ``mutual-information-estimation/utils.py`` of github.com/jiamings/ml-cpc
(itself from Poole et al., ICML 2019, and ermongroup/smile-mi-estimator), with
the settings of objectives.md §1.7: hidden width 256, embedding 32, ``layers = 2``
extra hidden layers, ReLU. Each returns the [n, n] score matrix S with
S[i, j] = f(x_i, y_j): rows are the anchors x, columns the candidates y, and the
positives on the diagonal. (The reference's separable critic returns the
transpose, rows indexed by y; for the row-normalised CPC estimators the rows here
are x, as in its joint critic.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.registry import Registry

__all__ = ["CRITICS", "CriticShape", "JointCritic", "SeparableCritic", "build_critic", "mlp"]


@dataclass(frozen=True)
class CriticShape:
    """The network sizes of a critic (defaults: the paper's, objectives.md §1.7)."""

    dim: int = 20
    hidden: int = 256
    embed: int = 32
    layers: int = 2


def mlp(in_features: int, hidden: int, out_features: int, layers: int) -> nn.Sequential:
    """Linear → ReLU, then ``layers`` × (Linear → ReLU), then Linear: the reference ``mlp(..., 'relu')``.

    So ``layers = 2`` gives three hidden ReLU layers of width ``hidden``.
    """
    seq: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU()]
    for _ in range(layers):
        seq += [nn.Linear(hidden, hidden), nn.ReLU()]
    seq.append(nn.Linear(hidden, out_features))
    return nn.Sequential(*seq)


class SeparableCritic(nn.Module):
    """S[i, j] = g(x_i)ᵀ h(y_j) with two MLP embeddings of width ``embed`` (Poole et al. 2019)."""

    def __init__(self, shape: CriticShape) -> None:
        super().__init__()
        self.g = mlp(shape.dim, shape.hidden, shape.embed, shape.layers)
        self.h = mlp(shape.dim, shape.hidden, shape.embed, shape.layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.g(x) @ self.h(y).T


class JointCritic(nn.Module):
    """S[i, j] = f([x_i, y_j]): one MLP on the concatenated pair, evaluated on all n² pairs.

    The reference's "concat" critic. It costs n² MLP evaluations per batch
    (16,384 at n = 128), about 30 times the separable critic's work. The first
    layer is applied to x and y separately and the two halves summed per pair,
    W[x, y] + b = W_x x + W_y y + b: the same function and parameters as the
    reference's Linear on the concatenation, without building the [n², 2d] pairs.
    """

    def __init__(self, shape: CriticShape) -> None:
        super().__init__()
        self.dim = shape.dim
        self.f = mlp(2 * shape.dim, shape.hidden, 1, shape.layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        first = self.f[0]
        from_x = F.linear(x, first.weight[:, : self.dim], first.bias)  # [n, hidden]
        from_y = F.linear(y, first.weight[:, self.dim :])  # [m, hidden]
        hidden = from_x.unsqueeze(1) + from_y.unsqueeze(0)  # [n, m, hidden]: the first layer on every pair
        return self.f[1:](hidden).squeeze(2)


CRITICS: Registry[Callable[[CriticShape], nn.Module]] = Registry("critic")
CRITICS.register("separable")(SeparableCritic)
CRITICS.register("joint")(JointCritic)


def build_critic(name: str, shape: CriticShape, seed: int) -> nn.Module:
    """A fresh critic ``name`` with weights drawn from ``seed``, on the CPU; the global RNG is left untouched.

    Raises:
        UnknownNameError: ``name`` is not a registered critic (the message suggests the closest).
    """
    factory = CRITICS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(shape)
