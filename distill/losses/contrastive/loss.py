"""Contrastive representation distillation: heads + memory + negatives + estimator.

One machinery, three presets (recipe ``type``):

* ``crd``: binary NCE against the memory (Tian et al., ICLR 2020, Eq. 18 of the code);
* ``cpc``: α-CPC / InfoNCE per anchor row (Oord et al. 2018; Song & Ermon 2020);
* ``ml_cpc``: multi-label CPC with one batch-wide normaliser (Song & Ermon, NeurIPS 2020).

Each is applied symmetrically, as in CRD: the student's embedding is the anchor
against the teacher's memory, and the teacher's embedding against the student's
memory; the loss is the sum of both sides. A score is exp(⟨v, m⟩/T); the
estimators work on the log-scores ⟨v, m⟩/T.

Speed: the reference gathers B×(K+1)×d memory rows (about 1 GiB per step at
B=64, K=16384, d=128) and multiplies them with the anchors. Here, when the
memory is not much larger than the candidate set, all anchors are scored against
the whole memory with one B×N matrix product and the K+1 candidate columns are
picked from it (``scoring: bank_product``), which costs B×N floats instead.

``bank: batch`` keeps no memory: the negatives are the other samples of the global
batch, scored against the other network's current embeddings (``in_batch.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import torch
from torch import Tensor

from distill import distributed
from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.contrastive.estimators import (
    cpc_bound,
    cpc_ceiling,
    log_normaliser_from_batch,
    ml_cpc_bound,
    ml_cpc_min_valid_alpha,
    nce_loss,
)
from distill.losses.contrastive.heads import ProjectionHead
from distill.losses.contrastive.in_batch import (
    EXCLUDED_LOG_SCORE,
    excluded_negatives,
    gather_with_local_gradient,
    in_batch_logits,
)
from distill.losses.contrastive.memory_bank import EmbeddingQueue, MomentumMemoryBank
from distill.losses.contrastive.negatives import (
    ClassOrder,
    SamplingMode,
    class_order,
    draw_candidates,
    draw_negatives,
    eligible_negatives,
    fewest_eligible,
)
from distill.losses.contrastive.subset_draw import ClaimTable
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

Estimator = Literal["nce", "cpc", "ml_cpc"]
Scoring = Literal["auto", "bank_product", "gather"]
Bank = Literal["memory", "queue", "batch"]
DEFAULT_NUM_NEGATIVES = 16384


def score_candidates(anchors: Tensor, memory: Tensor, candidates: Tensor, temperature: float, scoring: Scoring) -> Tensor:
    """Log-scores ⟨anchor_i, memory[candidates_ij]⟩ / T as a [B, K+1] tensor.

    ``gather`` materialises the B×(K+1)×d candidate rows (the reference's way);
    ``bank_product`` scores every memory row once (B×N) and picks the columns.
    Both give the same values and gradients; ``auto`` picks the one that moves
    fewer bytes (bank_product unless N exceeds d·(K+1)).
    """
    memory = memory.detach()
    if scoring == "auto":
        scoring = "bank_product" if memory.shape[0] <= memory.shape[1] * candidates.shape[1] else "gather"
    anchors = anchors.float()
    if scoring == "bank_product":
        return (anchors @ memory.t()).gather(1, candidates) / temperature
    rows = memory[candidates]  # B × (K+1) × d
    return torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2) / temperature


class ContrastiveDistillLoss(DistillLoss):
    """The shared machinery; the registered presets fix ``estimator``.

    Args:
        feat_dim: dimension of the projected embeddings (128 in CRD).
        num_negatives: K, negatives per anchor (16384 in CRD).
        temperature: T of exp(⟨v, m⟩/T) (0.07 in CRD).
        momentum: μ of the memory update row ← normalise(μ·row + (1−μ)·v) (0.5).
        mode: ``exact`` (negatives from other classes, positive = the anchor's own
            row), ``relax`` (positive = a random row of the same class), or ``uniform``
            (no labels).
        alpha: α of α-CPC / α-ML-CPC (1 = plain); not used by ``crd``.
        bank: ``memory`` (a row per training sample), ``queue`` (FIFO of ``queue_size``) or
            ``batch`` (the other samples of the global batch: K = B_global − 1, no memory;
            ``num_negatives`` does not apply and must stay at its default).
        queue_size: length of the queue when ``bank: queue``.
        z_momentum: ``crd`` only: 0 keeps Z fixed from the first batch (the reference);
            e.g. 0.99 follows it with an exponential moving average.
        scoring: ``auto``, ``bank_product`` or ``gather`` (see :func:`score_candidates`).
    """

    estimator: ClassVar[Estimator]

    def __init__(
        self,
        context: LossContext,
        *,
        feat_dim: int = 128,
        num_negatives: int = DEFAULT_NUM_NEGATIVES,
        temperature: float = 0.07,
        momentum: float = 0.5,
        mode: SamplingMode = "exact",
        alpha: float = 1.0,
        bank: Bank = "memory",
        queue_size: int = 16384,
        z_momentum: float = 0.0,
        scoring: Scoring = "auto",
    ) -> None:
        super().__init__(context)
        if num_negatives < 1 or feat_dim < 1 or temperature <= 0:
            raise ValueError("num_negatives and feat_dim must be ≥ 1 and temperature > 0")
        if self.estimator == "nce" and alpha != 1.0:
            raise ValueError("alpha belongs to cpc and ml_cpc; crd (NCE) has none")
        if self.estimator != "nce" and z_momentum != 0.0:
            raise ValueError("z_momentum belongs to crd (NCE); cpc and ml_cpc do not use Z")
        if bank in ("queue", "batch") and mode == "relax":
            raise ValueError(f"mode 'relax' needs a row per sample, which bank: {bank} does not keep: use bank: memory")
        if bank == "batch" and num_negatives != DEFAULT_NUM_NEGATIVES:
            raise ValueError(
                f"num_negatives does not apply to bank: batch (the negatives are the other B_global − 1 samples of the "
                f"global batch; raise data.batch_size for more): remove num_negatives={num_negatives} from the recipe"
            )
        num_candidates = num_negatives + 1
        if not 0 < alpha <= num_candidates:
            raise ValueError(f"alpha must be in (0, K+1] = (0, {num_candidates}], got {alpha}")
        self.num_negatives, self.temperature, self.mode = num_negatives, temperature, mode
        self.alpha, self.bank_kind, self.z_momentum, self.scoring = alpha, bank, z_momentum, scoring
        self.student_head = ProjectionHead(context.student.pooled_dim, feat_dim)
        self.teacher_head = ProjectionHead(context.teacher.pooled_dim, feat_dim)
        if bank == "memory":
            self.student_memory = MomentumMemoryBank(context.dataset_size, feat_dim, momentum)
            self.teacher_memory = MomentumMemoryBank(context.dataset_size, feat_dim, momentum)
        elif bank == "queue":
            self.student_memory = EmbeddingQueue(queue_size, feat_dim)
            self.teacher_memory = EmbeddingQueue(queue_size, feat_dim)
        if bank == "batch":  # nothing of the dataset's size: no banks, no copy of its labels
            self._fewest_eligible = 0
        else:
            self.register_buffer("dataset_labels", context.labels.clone().long(), persistent=False)
            self._fewest_eligible = fewest_eligible(self.dataset_labels if mode != "uniform" else None, mode, context.dataset_size)
        self.register_buffer("log_z", torch.full((2,), math.nan))  # student side, teacher side (NCE)
        self._log_z_known = False  # a host-side flag: reading log_z every step would sync with the device
        self._generator: torch.Generator | None = None
        self._class_order: ClassOrder | None = None  # the pool sorted by class, made on the labels' device
        self._claim_table = ClaimTable()  # the index-space draw's scratch, reused every step
        self._pending_generator_state: Tensor | None = None  # from a checkpoint, until the generator exists
        self._generator_seed = torch.initial_seed() + 7919 * distributed.rank()  # independent per process
        self._warn_about_alpha(context.batch_size)

    def global_batch_size(self) -> int:
        """B_global: the per-process batch size of the context times the number of processes (0 if unknown)."""
        return self.context.batch_size * distributed.world_size()

    def _anchors_and_candidates(self) -> tuple[int, int]:
        """(n, m): the anchors sharing one ML-CPC normaliser and the candidates per anchor (K + 1).

        With ``bank: batch`` both are B_global (every process scores the whole global
        batch); otherwise n is the process's batch and m = num_negatives + 1.
        """
        if self.bank_kind == "batch":
            return self.global_batch_size(), self.global_batch_size()
        return self.context.batch_size, self.num_negatives + 1

    def _warn_about_alpha(self, batch_size: int) -> None:
        n, m = self._anchors_and_candidates()
        if self.estimator != "ml_cpc" or batch_size < 1 or m < 2:
            return
        floor = ml_cpc_min_valid_alpha(n, m)
        if self.alpha < floor:
            warnings.warn(
                f"ml_cpc alpha {self.alpha:g} is below m/(n(m−1)+1) = {floor:.4g} for batch {n} and "
                f"K={m - 1}: the estimate may no longer bound the mutual information",
                stacklevel=3,
            )

    def summary(self) -> str:
        n, m = self._anchors_and_candidates()
        if self.bank_kind == "batch":
            text = (
                f"{self.estimator}, in-batch negatives: K = B_global − 1" + (f" = {m - 1} (B_global = {n})" if n else "")
                + f", T={self.temperature}, {self.mode} negatives, batch bank (no memory)"
            )
            if self.estimator == "nce":
                text += "; NCE noise P_n = 1/B_global" + (f" = 1/{n}" if n else "")
        else:
            text = f"{self.estimator}, K={self.num_negatives}, T={self.temperature}, {self.mode} negatives, {self.bank_kind} bank"
        if self.estimator != "nce" and m >= 2:
            name = "log B_global" if self.bank_kind == "batch" else "log m"
            text += f"; ceiling {name} = {math.log(m):.2f} nats, log(m/α) = {cpc_ceiling(m, self.alpha):.2f} (α={self.alpha:g})"
        return text

    def self_synchronised_buffers(self) -> list[str]:
        """Buffers this loss keeps equal across processes itself (DDP must not broadcast them)."""
        return [name for name, _ in self.named_buffers() if not name.endswith("dataset_labels")]

    def generator(self, device: torch.device) -> torch.Generator:
        """This process's generator of negatives, on ``device``: seeded once, then a stream."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._generator_seed)
            if self._pending_generator_state is not None:
                self._generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._generator

    def random_generators(self) -> list[torch.Generator]:
        """The negatives generator, once made (by the first draw)."""
        return [self._generator] if self._generator is not None else []

    def process_state(self) -> dict[str, Tensor]:
        """The negatives generator's position (it differs per process); none before the first draw."""
        if self._generator is not None:
            return {"generator": self._generator.get_state()}
        if self._pending_generator_state is not None:
            return {"generator": self._pending_generator_state}
        return {}

    def load_process_state(self, state: dict[str, Tensor]) -> None:
        """Continue the negatives stream where it was (applied when the generator is next made)."""
        self._generator = None
        self._pending_generator_state = state.get("generator")

    def candidates(self, batch: Batch, memory: MomentumMemoryBank | EmbeddingQueue) -> Tensor:
        """[B, K+1] memory rows to score: the positive first, then K negatives (not for ``bank: batch``)."""
        if self.bank_kind == "batch":
            raise ValueError("bank: batch draws no candidates: every other sample of the global batch is one")
        labels = batch.labels.to(self.dataset_labels.device)
        generator = self.generator(labels.device)
        if isinstance(memory, MomentumMemoryBank):
            pool_labels = self.dataset_labels if self.mode != "uniform" else None
            return draw_candidates(
                batch.indices, labels, self.num_negatives, self.mode, pool_labels, memory.size, generator, self._fewest_eligible,
                self.class_order() if pool_labels is not None else None, scratch=self._claim_table,
            )
        eligible = eligible_negatives(labels, memory.labels, self.mode, memory.size)
        return draw_negatives(eligible, self.num_negatives, generator)

    def class_order(self) -> ClassOrder:
        """The dataset's labels sorted by class, computed once per device (not state: derived from the labels)."""
        if self._class_order is None or self._class_order.order.device != self.dataset_labels.device:
            self._class_order = class_order(self.dataset_labels)
        return self._class_order

    def side_logits(self, anchors: Tensor, others: Tensor, memory, candidates: Tensor) -> Tensor:
        """[B, K+1] log-scores of ``anchors`` against the other side's memory."""
        if isinstance(memory, MomentumMemoryBank):
            return score_candidates(anchors, memory.memory, candidates, self.temperature, self.scoring)
        positive = (anchors.float() * others.detach().float()).sum(dim=1, keepdim=True) / self.temperature
        negatives = score_candidates(anchors, memory.memory, candidates, self.temperature, self.scoring)
        return torch.cat([positive, negatives], dim=1)

    def noise_size(self, logits: Tensor) -> int:
        """NCE's N, with P_n = 1/N: the dataset size against a memory; m = B_global in the batch.

        Against the memory (or queue) the negatives are drawn uniformly from the N
        training samples, CRD's noise distribution. In-batch, the noise an anchor's
        candidates come from is the batch itself: uniform over its m = K + 1 = B_global
        samples, so P_n = 1/m, K·P_n = (m − 1)/m, and Z = m·mean exp(s) normalises
        the scores over those m, as N·mean exp(s) does over the dataset.
        """
        return logits.shape[1] if self.bank_kind == "batch" else self.context.dataset_size

    def criterion(self, logits: Tensor, side: int, z_logits: Tensor | None = None) -> Tensor:
        """The side's loss; ``z_logits`` (default ``logits``) are the scores Z is estimated from."""
        if self.estimator == "cpc":
            return -cpc_bound(logits, self.alpha)
        if self.estimator == "ml_cpc":
            return -ml_cpc_bound(logits, self.alpha)
        noise = self.noise_size(logits)
        return nce_loss(logits, self._normaliser(logits if z_logits is None else z_logits, side, noise), noise)

    def _normaliser(self, logits: Tensor, side: int, noise_size: int) -> Tensor:
        """CRD's log Z: set from the first batch (agreed across processes), then fixed or EMA-tracked."""
        with torch.no_grad():
            stored = self.log_z[side]
            if not self._log_z_known:  # a checkpoint may have brought Z: one read, then never again
                self._log_z_known = not bool(torch.isnan(self.log_z).any())
            if not self._log_z_known or self.z_momentum > 0:
                local = log_normaliser_from_batch(logits.detach().float(), noise_size)
                gathered = distributed.all_gather_rows(local.reshape(1))
                batch_log_z = torch.logsumexp(gathered, 0) - math.log(gathered.numel())
                if not self._log_z_known:
                    self.log_z[side] = batch_log_z
                    self._log_z_known = side == 1  # both sides are set on the first batch
                else:
                    ema = torch.logaddexp(stored + math.log(self.z_momentum), batch_log_z + math.log1p(-self.z_momentum))
                    self.log_z[side] = ema
            return self.log_z[side].clone()

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_embedding = self.student_head(student.pooled)
        teacher_embedding = self.teacher_head(teacher.pooled.detach())
        if self.bank_kind == "batch":
            return self.in_batch_loss(student_embedding, teacher_embedding, batch)
        # One draw serves both directions, as the reference's per-sample contrast_idx does:
        # the two memories are indexed alike (dataset rows, or queue slots written together).
        candidates = self.candidates(batch, self.teacher_memory)
        student_logits = self.side_logits(student_embedding, teacher_embedding, self.teacher_memory, candidates)
        teacher_logits = self.side_logits(teacher_embedding, student_embedding, self.student_memory, candidates)
        loss = self.criterion(student_logits, 0) + self.criterion(teacher_logits, 1)
        if self.training:
            self.update_memory(batch, student_embedding.detach(), teacher_embedding.detach())
        return loss

    def in_batch_loss(self, student_embedding: Tensor, teacher_embedding: Tensor, batch: Batch) -> Tensor:
        """Both directions against the global batch's current embeddings (``bank: batch``).

        Every process scores all B_global anchors, so the value is the single-process
        one; see :func:`gather_with_local_gradient` for the gradients. In NCE, Z is
        estimated from the unmasked scores: every pair of the batch is a sample of the
        score distribution, the excluded ones included.
        """
        students = gather_with_local_gradient(student_embedding)
        teachers = gather_with_local_gradient(teacher_embedding)
        excluded = excluded_negatives(
            distributed.all_gather_rows(batch.labels.long()), distributed.all_gather_rows(batch.indices.long()), self.mode
        )
        loss = students.new_zeros(())
        for side, (anchors, others) in enumerate(((students, teachers), (teachers, students))):
            scores = in_batch_logits(anchors, others, self.temperature)
            loss = loss + self.criterion(scores.masked_fill(excluded, EXCLUDED_LOG_SCORE), side, z_logits=scores)
        return loss

    @torch.no_grad()
    def update_memory(self, batch: Batch, student_embedding: Tensor, teacher_embedding: Tensor) -> None:
        """Write the batch (from every process) into both memories, after scoring."""
        student_all = distributed.all_gather_rows(student_embedding.float())
        teacher_all = distributed.all_gather_rows(teacher_embedding.float())
        if self.bank_kind == "memory":
            indices = distributed.all_gather_rows(batch.indices.long())
            self.student_memory.update(indices, student_all)
            self.teacher_memory.update(indices, teacher_all)
        else:
            labels = distributed.all_gather_rows(batch.labels.long())
            self.student_memory.update(student_all, labels)
            self.teacher_memory.update(teacher_all, labels)


@register_loss("crd")
class CRDLoss(ContrastiveDistillLoss):
    """CRD: NCE against the momentum memory, both directions (Tian et al., ICLR 2020)."""

    estimator = "nce"


@register_loss("cpc")
class CPCLoss(ContrastiveDistillLoss):
    """α-CPC / InfoNCE per anchor over its K+1 candidates, on CRD's machinery."""

    estimator = "cpc"


@register_loss("ml_cpc")
class MLCPCLoss(ContrastiveDistillLoss):
    """Multi-label CPC (Song & Ermon, NeurIPS 2020) on CRD's machinery: one normaliser per batch."""

    estimator = "ml_cpc"
