"""The projection head of contrastive distillation: linear map to ``feat_dim``, then L2 normalisation.

CRD (Tian et al., ICLR 2020, §3.2) projects the student's and the teacher's pooled
embeddings with one linear layer each onto the unit sphere of dimension 128.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

NORMALISE_EPS = 1e-12
"""The reference normalises without an epsilon (a zero vector gives NaN); this guards that case only."""


class ProjectionHead(nn.Module):
    """``normalise(W·h + b)``: a trainable linear projection onto the unit sphere."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        projected = self.linear(features.flatten(1))
        return F.normalize(projected.float(), dim=1, eps=NORMALISE_EPS)
