"""Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022).

DKD splits the classical KD loss of one sample into a part about the target class
and a part about the other classes (the paper's Eq. 1-7). With p = softmax(z / T)
and t the sample's label:

* the binary distribution b = [p_t, 1 − p_t] (target vs. all non-target classes, Eq. 1);
* the non-target distribution p̂_j = p_j / (1 − p_t) for j ≠ t, which is the
  softmax over the non-target logits alone (Eq. 2).

KD then decomposes exactly (Eq. 5-7)::

    KD = TCKD + (1 − p_t^T) · NCKD
    TCKD = KL(b^T ‖ b^S)        target class knowledge distillation
    NCKD = KL(p̂^T ‖ p̂^S)        non-target class knowledge distillation

so in KD the non-target term is suppressed exactly when the teacher is confident.
DKD removes that coupling and weights the two terms freely (Eq. 8)::

    L_DKD = α · TCKD + β · NCKD

Both KL terms are multiplied by T² and averaged over the batch, as in KD. As in
the authors' code (mdistiller, ``mdistiller/distillers/DKD.py``) the loss is
ramped up linearly during the first ``warmup`` epochs: the trainer calls
:meth:`DKDLoss.start_epoch` with the epoch counted from 1, and the loss is
scaled by ``min(epoch / warmup, 1)``. The cross-entropy term is separate (the
recipe's ``ce`` term with the config's CE weight, 1.0 on CIFAR-100).

Defaults follow mdistiller's ``mdistiller/engine/cfg.py`` (α = 1, β = 8, T = 4,
warm-up 20 epochs). β is set per task in the authors' CIFAR-100 configs
(``configs/cifar100/dkd/*.yaml``: 2 for resnet56/110 teachers, 6 for wrn_40_2 →
wrn_16_2/wrn_40_1 and the vgg13 teacher, 8 otherwise); see
``recipes/cifar100/_base_/dkd/``.

Numerics: the authors mask the target class out of the non-target softmax by
subtracting 1000 from its (temperature-scaled) logit and take ``log`` of the
binary probabilities. Here everything stays in log space: the log-probabilities
come from ``log_softmax``, log(1 − p_t) is a ``logsumexp`` over the exactly
masked (−inf) non-target entries rather than ``log(1 − p_t)`` (which loses all
precision for a confident teacher and gives −inf when p_t rounds to 1), and the
non-target log-distribution is log p_j − log(1 − p_t), with the target entry
replaced by a constant 0 in teacher and student alike (so it adds exactly
nothing and no inf or NaN can reach the gradient, however confident the
teacher). The result equals the authors' formula up to rounding.

With ``standardize: true`` this is DKD+LS (Sun et al., "Logit Standardization in
Knowledge Distillation", CVPR 2024): both logit sets are z-scored per sample
(:mod:`distill.losses.logit_standardization`) and then enter the DKD above at T = τ,
as in the authors' ``mdistiller/distillers/DKD.py`` L12–39, L73–93
(logit-standardization-KD@f6e5aa5). Their LS switch multiplies both DKD weights by
the KD weight w (α = 1·w, β = β_cfg·w) and keeps CE at 1 and the 20-epoch warm-up;
the recipes (``recipes/cifar100/_base_/dkd_ls/``) carry those products as alpha and beta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.logit_standardization import StandardizeForm, check_standardize_options, compared_logits
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def _decoupled_log_probs(
    logits: Tensor, labels: Tensor, target_mask: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probabilities of one network: (log b_target, log b_other, log p̂).

    ``log b_target`` and ``log b_other`` are B×1; ``log p̂`` is B×C with the
    target column set to 0 (a placeholder that contributes exp(0)·(0 − 0) = 0
    to the KL sum; left as log p_t − log(1 − p_t) it can overflow exp() for a
    confident teacher and turn the gradient into NaN).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the log-space sums below need more than 8-11 mantissa bits
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_target = log_p.gather(1, labels.unsqueeze(1))
    log_other = torch.logsumexp(log_p.masked_fill(target_mask, float("-inf")), dim=1, keepdim=True)
    log_nontarget = (log_p - log_other).masked_fill(target_mask, 0.0)
    return log_target, log_other, log_nontarget


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD), each T² · KL(teacher ‖ student), as two tensors of shape [B].

    Args:
        student_logits: B×C, C ≥ 2.
        teacher_logits: B×C (not differentiated).
        labels: B class indices.
        temperature: the softening temperature T.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dkd needs student and teacher logits of the same shape B×C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[1] < 2:
        raise ValueError("dkd needs at least two classes (a target and a non-target class)")
    labels = labels.long().reshape(-1)
    target_mask = F.one_hot(labels, student_logits.shape[1]).bool()
    s_target, s_other, s_nontarget = _decoupled_log_probs(student_logits, labels, target_mask, temperature)
    t_target, t_other, t_nontarget = _decoupled_log_probs(teacher_logits.detach(), labels, target_mask, temperature)

    # TCKD: KL between the binary distributions [b_target, b_other].
    tckd = t_target.exp() * (t_target - s_target) + t_other.exp() * (t_other - s_other)
    # NCKD: KL between the distributions over the non-target classes.
    # (the target column holds 0 in both, so it adds nothing.)
    nckd = (t_nontarget.exp() * (t_nontarget - s_nontarget)).sum(dim=1)
    scale = temperature**2
    return tckd.squeeze(1) * scale, nckd * scale


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """α · TCKD + β · NCKD (Zhao et al. 2022, Eq. 8), batch mean, without the warm-up factor."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return (alpha * tckd + beta * nckd).mean()


@register_loss("dkd")
class DKDLoss(DistillLoss):
    """Decoupled knowledge distillation from the teacher's logits.

    Args:
        alpha: weight α of the target-class term TCKD (1.0 in mdistiller).
        beta: weight β of the non-target term NCKD (8.0 by default; the authors'
            CIFAR-100 configs use 2, 6 or 8 depending on the task).
        temperature: the softening temperature T (4.0).
        warmup: epochs of linear ramp-up: the loss is scaled by
            ``min(epoch / warmup, 1)`` (20; 0 disables the ramp).
        standardize: z-score both logit sets before the temperature (logit
            standardization, DKD+LS). Off by default: plain DKD.
        standardize_form: ``"code"`` (the authors' released code: unbiased std + 1e-7)
            or ``"paper"`` (the LS paper's Algorithm 1: population std).
    """

    def __init__(
        self,
        context: LossContext,
        *,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        standardize: bool = False,
        standardize_form: StandardizeForm = "code",
    ) -> None:
        super().__init__(context)
        if temperature <= 0:
            raise ValueError(f"dkd temperature must be positive, got {temperature}")
        if warmup < 0:
            raise ValueError(f"dkd warmup must be 0 or more epochs, got {warmup}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"dkd alpha and beta must not be negative, got alpha={alpha}, beta={beta}")
        check_standardize_options("dkd", standardize, standardize_form)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.standardize = standardize
        self.standardize_form = standardize_form
        # Until the trainer announces an epoch the loss is used at full strength.
        self.warmup_factor = 1.0

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        self.warmup_factor = 1.0 if self.warmup == 0 else min(epoch / self.warmup, 1.0)

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_logits, teacher_logits = compared_logits(student.logits, teacher.logits, self.standardize, self.standardize_form)
        loss = dkd_loss(student_logits, teacher_logits, batch.labels, self.alpha, self.beta, self.temperature)
        return self.warmup_factor * loss

    def summary(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, T={self.temperature}, "
            f"linear warm-up over {self.warmup} epochs"
            + (f", logit standardization ({self.standardize_form} form)" if self.standardize else "")
        )

    def extra_repr(self) -> str:
        text = f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, warmup={self.warmup}"
        return text + (f", standardize={self.standardize_form!r}" if self.standardize else "")
