"""Segmental information distillation, MUSIC-style: cross-network mutual information per segment.

Both networks' pooled features go through a trainable linear head each to S
segments of C logits; a per-segment softmax turns them into codes p_T^s(· | x)
and p_S^s(· | x) (MUSIC, verified: segments as distributions over discrete
attributes). The loss is ours, Variant B of ``objectives.md`` §3.3 (IIC-style):

    L = log C − (1/S) Σ_s I(c_T^s; c_S^s)  +  λ_d · ½ (D_T + D_S)

* I(c_T^s; c_S^s) is the plug-in mutual information of the global-batch joint
  P^s_TS(c, c') = (1/N) Σ_i p_T^s(c | x_i) · p_S^s(c' | x_i). It equals
  H(P_T^s) + H(P_S^s) − H(P^s_TS), so the marginal entropies inside it resist
  collapse, and it is unchanged when either side's attributes are relabelled
  (there is no teacher codebook to align with). It is at most log C, so the
  first part lies in [0, log C]: 0 when the two networks assign agreeing one-hot
  codes that use every attribute equally.
* D = the mean over pairs s < t of I(c^s; c^t) within one network: the diversity
  penalty, on both sides, 0 for pairwise independent segments. Its joints are
  averaged over batches with momentum m (``estimates.py``): from one batch, the
  plug-in dependence of independent segments reads about (C − 1)² / (2N) nats,
  and penalising that bias pushes the codes to use fewer attributes.
* The cross joint is *not* averaged over batches. Its gradient is the pointwise
  mutual information at the estimate; evaluated at a running average, the
  marginal entropies answer a drift of the current batch only after about
  1/(1 − m) batches, and on a synthetic check (linear heads on correlated
  features, SGD lr 0.05) m = 0.99 collapsed every code onto one attribute, m =
  0.9 half-collapsed and recovered, while the batch estimate did not collapse
  (``docs/segmental.md``).
  The batch estimate reads high when C² is not well below N, a roughly constant
  offset that did not stop the information from growing (C = 32, 64 at N = 64).

Whether MUSIC uses these terms, weights or temperatures is unverified; the loss
is a proposal (EXPERIMENTAL).
"""

from __future__ import annotations

import math
import warnings

from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.losses.segmental.estimates import MovingAverage, global_means
from distill.losses.segmental.information import (
    between_segment_dependence,
    cross_joint,
    mutual_information,
    segment_codes,
    segment_gram,
)
from distill.models.features import FeatureRecord


class SegmentHead(nn.Module):
    """One linear layer from a pooled feature to S·C segment logits (MUSIC needs no deep projector)."""

    def __init__(self, in_dim: int, segments: int, attributes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, segments * attributes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.flatten(1).float())


@register_loss("segmental")
class SegmentalInformationLoss(DistillLoss):
    """Maximise the teacher–student mutual information of each segment; penalise dependent segments.

    Args:
        segments: S, the number of segments (each a distribution over attributes).
        attributes: C, the attributes per segment; each segment's information is at
            most log C nats.
        student_temperature: τ_S of the student codes' softmax.
        teacher_temperature: τ_T of the teacher codes' softmax (smaller is sharper).
        diversity_weight: λ_d of the between-segment dependence (0 turns it off).
        diversity_momentum: m of the moving average of the between-segment joints (the
            diversity term's); 0 uses each batch alone, which overstates the
            dependence when C² is not well below the global batch.
    """

    def __init__(
        self,
        context: LossContext,
        *,
        segments: int = 32,
        attributes: int = 32,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.1,
        diversity_weight: float = 1.0,
        diversity_momentum: float = 0.99,
    ) -> None:
        super().__init__(context)
        if segments < 1:
            raise ValueError(f"segments must be at least 1, got {segments}")
        if attributes < 2:
            raise ValueError(
                f"attributes must be at least 2, got {attributes}: with one attribute every code is the same "
                "and carries no information"
            )
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(
                f"temperatures must be positive, got student_temperature={student_temperature} and "
                f"teacher_temperature={teacher_temperature} (0.1 is the suggested value; smaller is sharper)"
            )
        if diversity_weight < 0:
            raise ValueError(
                f"diversity_weight must be ≥ 0, got {diversity_weight}: a negative weight would reward redundant "
                "segments; use 0 to turn the term off"
            )
        if not 0.0 <= diversity_momentum < 1.0:
            raise ValueError(
                f"diversity_momentum must be in [0, 1), got {diversity_momentum}: 0 estimates the between-segment "
                "joints from each batch alone, 0.9–0.99 averages them over about 1/(1 − momentum) batches"
            )
        self.segments, self.attributes = segments, attributes
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.diversity_weight, self.diversity_momentum = diversity_weight, diversity_momentum
        self.diverse = diversity_weight > 0 and segments > 1
        self.student_head = SegmentHead(context.student.pooled_dim, segments, attributes)
        self.teacher_head = SegmentHead(context.teacher.pooled_dim, segments, attributes)
        self.teacher_gram_average: MovingAverage | None = None
        self.student_gram_average: MovingAverage | None = None
        if diversity_momentum > 0 and self.diverse:
            width = segments * attributes
            self.teacher_gram_average = MovingAverage((width, width), diversity_momentum)
            self.student_gram_average = MovingAverage((width, width), diversity_momentum)
        self._warn_about_bias(context.batch_size)

    def effective_samples(self, batch_size: int) -> float:
        """About how many samples one estimate of the between-segment joints averages: N / (1 − m)."""
        return batch_size / (1.0 - self.diversity_momentum)

    def _warn_about_bias(self, batch_size: int) -> None:
        if batch_size < 1 or not self.diverse:
            return
        samples = self.effective_samples(batch_size)
        if self.attributes**2 > samples:
            warnings.warn(
                f"segmental: C² = {self.attributes ** 2} attribute pairs but the between-segment joints average "
                f"only about {samples:.0f} samples (batch {batch_size}, diversity_momentum "
                f"{self.diversity_momentum}): the diversity term overstates the dependence and pushes codes to use "
                "fewer attributes; raise diversity_momentum or lower attributes",
                stacklevel=3,
            )

    def summary(self) -> str:
        text = (
            f"variant B (cross-network MI per segment), S={self.segments} × C={self.attributes}, "
            f"τ_S={self.student_temperature:g}, τ_T={self.teacher_temperature:g}; "
            f"ceiling log C = {math.log(self.attributes):.2f} nats per segment; diversity λ_d={self.diversity_weight:g}"
        )
        if not self.diverse:
            return text
        if self.diversity_momentum == 0:
            return text + ", segment-pair joints from each batch alone"
        span = 1.0 / (1.0 - self.diversity_momentum)
        return text + f", segment-pair joints averaged with momentum {self.diversity_momentum:g} (~{span:.0f} batches)"

    def self_synchronised_buffers(self) -> list[str]:
        """The averaged joints: every process averages the same global-batch statistics."""
        return [name for name, _ in self.named_buffers()]

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_codes = segment_codes(self.student_head(student.pooled), self.segments, self.student_temperature)
        teacher_codes = segment_codes(
            self.teacher_head(teacher.pooled.detach()), self.segments, self.teacher_temperature
        )
        if not self.diverse:
            (joint,) = global_means([cross_joint(teacher_codes, student_codes)], student_codes.shape[0])
            return self.information_gap(joint)
        joint, teacher_gram, student_gram = global_means(
            [cross_joint(teacher_codes, student_codes), segment_gram(teacher_codes), segment_gram(student_codes)],
            student_codes.shape[0],
        )
        if self.teacher_gram_average is not None:
            teacher_gram, student_gram = self.teacher_gram_average(teacher_gram), self.student_gram_average(student_gram)
        dependence = 0.5 * (
            between_segment_dependence(teacher_gram, self.segments)
            + between_segment_dependence(student_gram, self.segments)
        )
        return self.information_gap(joint) + self.diversity_weight * dependence

    def information_gap(self, joint: Tensor) -> Tensor:
        """log C − (1/S) Σ_s I(c_T^s; c_S^s): how far the segments' cross-network information is from its ceiling."""
        return math.log(self.attributes) - mutual_information(joint).mean()

    def extra_repr(self) -> str:
        return (
            f"segments={self.segments}, attributes={self.attributes}, student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, diversity_weight={self.diversity_weight}, "
            f"diversity_momentum={self.diversity_momentum}"
        )
