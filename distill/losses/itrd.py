"""ITRD: Miles, Lopez-Rodriguez, Mikolajczyk, "Information Theoretic Representation Distillation", BMVC 2022.

Two terms on the pooled penultimate features (``FeatureRecord.pooled``, the reference's
``feat[-1]``; its ``preact=True`` has no effect there), with the student first passed
through one trainable ``nn.Linear(student dim, teacher dim)`` with bias (the reference's
``Embed`` with n = 1: no BatchNorm, no ReLU), shared by both terms:

**Correlation** (always on the projected student ẑ_s = W f_s + b, even when the dims agree):

    x̂ = (x − mean_b x) / std_b x          per dimension, over the batch; unbiased std, no ε
                                           (a dimension constant over the batch: x̂ = 0, see below)
    c_k = (1/B) Σ_b ŝ[b,k] · t̂[b,k]       the diagonal of the cross-correlation matrix only
    L_corr = log₂ Σ_k ((c_k − 1)²)^α       α = ``alpha`` (the reference's ``--alpha_it``)

computed as the code does: |c_k − 1| squared, then raised to the power α.

**Mutual information** (order-2 matrix-Rényi quantities, logarithms dropped as coded):

    G_s = N(s) N(s)ᵀ,  G_t = N(t) N(t)ᵀ   N: each row to unit L2 norm (``F.normalize``, ε 1e-12)
    G_st = G_s ⊙ G_t                       the joint (Hadamard product), B×B
    A_s = G_s / tr G_s,  A_st = G_st / tr G_st
    L_MI = ‖A_s‖²_F − ‖A_st‖²_F

Since |G_t| ≤ 1 entrywise and both diagonals are 1 (so both traces are B for non-zero rows),
L_MI ≥ 0, with 0 reached when the student's rows are mutually orthogonal or the teacher's
rows are all parallel. For student = teacher (up to a positive scale of each row) it is
(Σ G² − Σ G⁴)/B², not 0.

**Which student features the MI term sees.** The reference projects the student for the MI
term *only when the dims differ* (``if self.s_dim != self.t_dim: f_s = self.embed(f_s)``);
when they agree, the MI term is still computed, on the raw student features, and the
projection learns from the correlation term alone. ``mi_projection: code`` (default) does
exactly that; ``mi_projection: always`` projects the student for both terms.

Total, as the reference's loop (``helper/loops.py``): this loss returns
``corr_weight · L_corr + mi_weight · L_MI``; the recipe's CE weight is the reference's ``-r``
and this term's weight its ``-b``. There is no logit-KD term in ITRD. With ``--add wttm``
(the TTM authors' fork) the WTTM term is a separate recipe term.

Sources (read, not copied):
  * ``roymiles/ITRD@e7ebf53`` ``distiller_zoo/IT.py``: ``Embed`` L22–46; ``ITLoss`` L49–128
    (projection L61, correlation L63–87, MI L89–128, the dims test L102–103).
  * ``roymiles/ITRD`` ``helper/loops.py`` L56–74: ``feat[-1]`` of both networks, the teacher
    under ``no_grad``, ``loss = r·CE + b·(λ_corr·L_corr + λ_mutual·L_MI)``.
  * ``roymiles/ITRD`` ``train_student.py``: the projection trains with the student (SGD with
    weight decay); λ_corr default 2.0, **λ_mutual default 0.05** (L84) and α default 1.5 — the
    README's commands pass λ_mutual 1.0 (and α 1.01 for the same-family pairs), which our
    defaults and recipes follow.
  * ``zkxufo/TTM`` ``distiller_zoo/itrd.py``: the same code (one line lower), λ_mutual default 1.0.

Differences from the reference:
  * The projection runs once per step and feeds both terms (the reference calls it twice on
    the same input: the same values and gradients).
  * The math runs in float32 whatever the input precision (the engine also switches autocast
    off for losses); the reference ran in float32.
  * A batch of fewer than 2 samples has no unbiased std; the reference gives NaN, this loss
    gives 0 (connected to the projection so every trainable parameter gets a zero gradient).
  * A feature dimension constant over the batch (std 0: a teacher channel after ReLU that is
    zero on every image of the batch, common in randomly initialised networks and possible in
    trained ones) makes the reference's z-score 0/0 = NaN, which ends its run. Here that
    dimension's z-scores are 0, so its c_k = 0 and it adds 1 to the sum (an uncorrelated
    dimension). No ε anywhere: every other dimension is computed exactly as coded.
  * With several processes each computes the batch statistics on its own part of the batch
    (no gathering), as the per-process batch of a DDP run; the reference ran on one GPU with
    batch 64.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.precision import at_least_float32
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

ROW_NORM_EPS = 1e-12
"""``F.normalize``'s default ε, as in the reference's MI term."""

MiProjection = Literal["code", "always"]
"""``"code"``: project the student for the MI term only when the dims differ (the reference); ``"always"``: always."""


def _check_pair(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"itrd {name} needs two B×D feature batches of the same B, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < 2:
        raise ValueError(f"itrd {name} needs at least 2 samples (the batch statistics), got {student.shape[0]}")


def standardize_over_batch(features: Tensor) -> Tensor:
    """(x − mean over the batch) / unbiased std over the batch, per dimension, no ε (the reference's ``std(0)``).

    A dimension constant over the batch (std 0, e.g. a ReLU channel dead on every image of
    the batch) is all zeros here: its centred values are exactly 0, and 0 is returned where
    the reference's 0/0 gives NaN. Every other dimension is divided by its std unchanged.
    """
    centred = features - features.mean(dim=0)
    std = features.std(dim=0)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def itrd_correlation(projected_student: Tensor, teacher: Tensor, alpha: float) -> Tensor:
    """L_corr = log₂ Σ_k ((c_k − 1)²)^α, c_k the batch correlation of dimension k (float32 scalar).

    ``projected_student`` and ``teacher`` are B×D with the same D (the student already
    projected); the teacher is detached.
    """
    _check_pair("correlation", projected_student, teacher)
    if projected_student.shape != teacher.shape:
        raise ValueError(
            f"itrd correlation needs the projected student and the teacher of the same shape, got "
            f"{tuple(projected_student.shape)} and {tuple(teacher.shape)}"
        )
    student_z = standardize_over_batch(at_least_float32(projected_student))
    teacher_z = standardize_over_batch(at_least_float32(teacher.detach()).to(student_z.dtype))
    correlation = (student_z * teacher_z).sum(dim=0) / projected_student.shape[0]
    return torch.log2((correlation - 1).abs().pow(2.0).pow(alpha).sum())


def normalized_gram(features: Tensor) -> Tensor:
    """G = N(x) N(x)ᵀ with each row of x scaled to unit L2 norm (ε 1e-12): B×B cosine similarities."""
    unit = F.normalize(features, dim=1, eps=ROW_NORM_EPS)
    return unit @ unit.t()


def itrd_mutual_information(student: Tensor, teacher: Tensor) -> Tensor:
    """L_MI = ‖G_s/tr G_s‖²_F − ‖G_st/tr G_st‖²_F with G_st = G_s ⊙ G_t (float32 scalar).

    ``student`` (B×D_s, projected or not) and ``teacher`` (B×D_t) may differ in D: only
    the B×B Gram matrices meet. The teacher is detached.
    """
    _check_pair("mutual information", student, teacher)
    gram_s = normalized_gram(at_least_float32(student))
    gram_t = normalized_gram(at_least_float32(teacher.detach()).to(gram_s.dtype))
    joint = gram_s * gram_t
    a_s = gram_s / torch.trace(gram_s)
    a_st = joint / torch.trace(joint)
    return a_s.pow(2).sum() - a_st.pow(2).sum()


@register_loss("itrd")
class ITRDLoss(DistillLoss):
    """ITRD on the pooled features: ``corr_weight · L_corr + mi_weight · L_MI`` through one shared projection.

    Args:
        alpha: the order α of the correlation term (the reference's ``--alpha_it``): the
            README's commands use 1.01 for the 7 same-family pairs and 1.5 for the 6 others.
        corr_weight: λ_corr, 2.0 in every published command (and the code's default).
        mi_weight: λ_mutual, 1.0 in every published command (``train_student.py``'s own
            default is 0.05; do not copy that one).
        mi_projection: ``code`` (default): the MI term sees the projected student only when the
            student's and the teacher's pooled dims differ, else the raw student features, as
            the reference; ``always``: it always sees the projected student.
    """

    def __init__(
        self,
        context: LossContext,
        *,
        alpha: float = 1.01,
        corr_weight: float = 2.0,
        mi_weight: float = 1.0,
        mi_projection: MiProjection = "code",
    ) -> None:
        super().__init__(context)
        if not alpha > 0:
            raise ValueError(f"itrd alpha (the correlation term's order) must be positive, got {alpha}")
        for key, value in (("corr_weight", corr_weight), ("mi_weight", mi_weight)):
            if value < 0:
                raise ValueError(f"itrd {key} must be 0 or more, got {value}")
        if mi_projection not in ("code", "always"):
            raise ValueError(f"itrd mi_projection must be 'code' or 'always', got {mi_projection!r}")
        self.alpha, self.corr_weight, self.mi_weight, self.mi_projection = alpha, corr_weight, mi_weight, mi_projection
        self.student_dim, self.teacher_dim = context.student.pooled_dim, context.teacher.pooled_dim
        self.projection = nn.Linear(self.student_dim, self.teacher_dim)

    @property
    def mi_sees_projection(self) -> bool:
        """Whether the MI term sees the projected student (the reference: only when the dims differ)."""
        return self.mi_projection == "always" or self.student_dim != self.teacher_dim

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        raw = at_least_float32(student.pooled.flatten(1))
        projected = self.projection(raw.to(self.projection.weight.dtype))
        target = teacher.pooled.flatten(1).detach()
        if raw.shape[0] < 2:
            return projected.sum() * 0.0
        loss = self.corr_weight * itrd_correlation(projected, target, self.alpha)
        if self.mi_weight:
            mi_input = projected if self.mi_sees_projection else raw
            loss = loss + self.mi_weight * itrd_mutual_information(mi_input, target)
        return loss

    def summary(self) -> str:
        seen = "the projected student" if self.mi_sees_projection else "the raw student (dims agree, as the reference)"
        return (
            f"{self.corr_weight}·L_corr (alpha={self.alpha}) + {self.mi_weight}·L_MI on {seen}; "
            f"projection Linear({self.student_dim} → {self.teacher_dim})"
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, corr_weight={self.corr_weight}, mi_weight={self.mi_weight}, mi_projection={self.mi_projection}"
