"""MLKD: Jin, Wang & Lin, "Multi-Level Logit Distillation" (CVPR 2023).

MLKD aligns student and teacher predictions at three levels, at several temperatures and
on two views of each image (a weak and a strongly augmented one, the "prediction
augmentation"). With P = softmax(z / T), a B×C matrix, for a batch of B samples and C classes:

* instance level, per sample: KL_T,i = T² · KL(softmax(z_t,i / T) ‖ softmax(z_s,i / T));
* batch level, B×B Gram matrices: D^bc_T = (P_t P_tᵀ − P_s P_sᵀ)² / B (entrywise square);
* class level, C×C Gram matrices: D^cc_T = (P_tᵀ P_t − P_sᵀ P_s)² / C.

Each is summed over the temperatures 𝒯 = (T0, 3, 5, 2, 6), T0 the ``temperature`` option
(4 for MLKD, so 𝒯 = {2, …, 6}; τ = 2 for MLKD+LS, so T = 2 counts twice and T = 4 is absent:
reproduced here). Teacher "confidence masks" come from the teacher's raw weak-view logits
at T = 1, never standardized: conf_i = max_k softmax(z_t^w)_ik and mask_i = [conf_i ≤ median],
the less confident half; the class mask thresholds the per-class sums Σ_i softmax(z_t^w)_ic
at their median over the C classes. The median is the 50th percentile with linear
interpolation (numpy's default, which the code calls; ``torch.quantile`` computes the same),
and a value equal to it is in the mask. The masks and the batch-level term are statistics of
the batch: they change with its size and composition (the per-process batch under several
processes, a smaller last batch).

Sources checked (the paper's text was not readable here; everything below is the code):

* ``Jin-Ying/Multi-Level-Logit-Distillation@6327e73``, ``mdistiller/distillers/KD_ours.py``
  L13–47 (``kd_loss``, ``cc_loss``, ``bc_loss``) and L89–255 (``KD_ours.forward_train``);
* ``sunshangquan/logit-standardization-KD@6083e2d``, ``mdistiller/distillers/MLKD.py``
  L12–54 (``normalize`` and the same three losses with an LS switch) and L97–273
  (``MLKD.forward_train``, identical to the above but for ``logit_stand``).

Two forms, the ``form`` option:

``"code"`` (default) is exactly what the authors' code adds up per step (without CE and w):

    Σ_𝒯 m·KL_T(weak) + [Σ_{T0,3,5} KL_T(strong) + Σ_{2,6} KL_T(weak)]
      + Σ_𝒯 m_c·CC_T(weak) + Σ_𝒯 m·BC_T(weak)

with KL_T = (1/B) Σ_i KL_T,i, BC_T = Σ_ij D^bc_T,ij, CC_T = Σ_kl D^cc_T,kl, and m, m_c the
*means* of the two masks. Where it departs from the method its own names and its unused
code point to (the paper's text was not read, so this is not checked against it):

1. The masks select nothing: each term is reduced to a scalar first (the per-sample
   ``reduce=False`` is commented out) and then multiplied by the boolean mask and averaged,
   so a masked term is scaled by m = mean(mask) ≈ 0.5 (exactly 0.5 for an even batch
   without ties, 0.6 for B = 5). The class mask likewise scales the class-level terms by m_c.
2. The "strong" KL sum takes the T = 2 and T = 6 terms from the *weak* view's logits (a
   copy-paste slip, by slot: with T0 = 2 the first slot is strong at T = 2 and the fourth
   weak at T = 2). So the weak KL carries 1.5× weight at T ∈ {2, 6}, 0.5× elsewhere, and the
   strong view has no KL at T = 2 and 6 (with T0 = 4).
3. The strong view's batch- and class-level losses are computed but not returned: the
   strong view reaches only the three KL terms at T0, 3, 5.
4. No T² on the batch- and class-level terms (the KL terms have it).
5. With logit standardization only the logits entering the KL terms are z-scored; the
   Gram terms and the masks use the raw logits.
6. T = 2 twice with T0 = 2 (MLKD+LS): every sum over 𝒯 counts it twice and skips T = 4.

``"intended"`` is the code with its evident slips fixed; it is NOT verified against the
paper's text: the masks weight each sample (class) before the same reduction,
(1/B) Σ_i mask_i·KL_T,i, Σ_ij D^bc_ij·mask_j (the mask over the last index, where the code's
broadcast would put it; both Gram gaps are symmetric, so the first index gives the same) and
Σ_kl D^cc_kl·mask_l, i.e. the code's ``reduce=True`` normalisation kept (un-commenting its
``reduce=False`` and keeping ``.mean()`` would give the same KL but divide the Gram terms by a
further B² or C², a reading "intended" does not take); the strong view gets its own KL at every
T ∈ 𝒯 and its batch-level (masked with the weak view's mask, as the code's unused strong
term is) and class-level (unmasked, as coded) terms are added. Points 4–6 stand in both
forms: they are choices, not slips.

The recipe weight (the code's ``KD_WEIGHT`` w, 0.9; 9 or 6 with LS) multiplies this loss's
whole value, as the code multiplies each term by w. Cross-entropy is not part of it: the
recipe's ``ce`` term, applied by the trainer to each view and summed, is the code's
CE(weak) + CE(strong). No warm-up, no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, LossContext, MultiViewLoss
from distill.losses.logit_standardization import StandardizeForm, check_standardize_options, compared_logits
from distill.losses.precision import at_least_float32
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

WEAK, STRONG = 0, 1
"""Indices of the two views in the records a :class:`MultiViewLoss` receives."""

FIXED_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
"""The temperatures the code hard-codes after ``KD.TEMPERATURE``, in its order."""

MLKDForm = Literal["code", "intended"]


def temperature_slots(base_temperature: float) -> tuple[float, ...]:
    """𝒯 = (T0, 3, 5, 2, 6) in the code's order; a repeated value (T0 = 2) stays repeated."""
    return (float(base_temperature), *FIXED_TEMPERATURES)


# --- the three alignment measures --------------------------------------------------------------


def instance_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) for each row: B values (not averaged)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def batch_gap(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(P_t P_tᵀ − P_s P_sᵀ)² / B entrywise, a B×B matrix: how differently the two relate the samples."""
    p_s = torch.softmax(student_logits / temperature, dim=1)
    p_t = torch.softmax(teacher_logits / temperature, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()) ** 2 / p_t.shape[0]


def class_gap(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(P_tᵀ P_t − P_sᵀ P_s)² / C entrywise, a C×C matrix: how differently the two relate the classes."""
    p_s = torch.softmax(student_logits / temperature, dim=1)
    p_t = torch.softmax(teacher_logits / temperature, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s) ** 2 / p_t.shape[1]


# --- the teacher's confidence masks ------------------------------------------------------------


def at_most_median(values: Tensor) -> Tensor:
    """Boolean mask of the entries ≤ the 50th percentile (linear interpolation, numpy's default)."""
    return values <= torch.quantile(values, 0.5, interpolation="linear")


def confidence_mask(teacher_weak_logits: Tensor) -> Tensor:
    """The less confident half of the samples: max_k softmax(z_t^w)_ik ≤ its median over the batch (B booleans)."""
    return at_most_median(torch.softmax(teacher_weak_logits.detach(), dim=1).amax(dim=1))


def class_mask(teacher_weak_logits: Tensor) -> Tensor:
    """The less predicted half of the classes: Σ_i softmax(z_t^w)_ic ≤ its median over the classes (C booleans)."""
    return at_most_median(torch.softmax(teacher_weak_logits.detach(), dim=1).sum(dim=0))


# --- masked reduction, the one place the two forms differ in arithmetic ------------------------

Reduce = Callable[[Tensor], Tensor]


def reduce_then_scale(values: Tensor, mask: Tensor | None, reduce: Reduce) -> Tensor:
    """The code's form: reduce first, then multiply by mean(mask) (the mask selects nothing)."""
    total = reduce(values)
    return total if mask is None else total * mask.to(total.dtype).mean()


def mask_then_reduce(values: Tensor, mask: Tensor | None, reduce: Reduce) -> Tensor:
    """The intended form: weight each sample (class) by its mask entry, over the last index, then reduce."""
    return reduce(values if mask is None else values * mask.to(values.dtype))


MASKED_REDUCTIONS: dict[str, Callable[[Tensor, Tensor | None, Reduce], Tensor]] = {
    "code": reduce_then_scale,
    "intended": mask_then_reduce,
}


def masked_reduction(values: Tensor, mask: Tensor | None, reduce: Reduce, form: str) -> Tensor:
    """``values`` (B, B×B or C×C) reduced with ``reduce`` under ``mask`` in the named form."""
    return MASKED_REDUCTIONS[form](values, mask, reduce)


# --- which terms each form sums ----------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """One alignment level: its per-entry values, how they reduce, and whether LS applies (KL only)."""

    values: Callable[[Tensor, Tensor, float], Tensor]
    reduce: Reduce
    standardized: bool


MEASURES: dict[str, Measure] = {
    "kl": Measure(instance_kl, torch.mean, standardized=True),
    "bc": Measure(batch_gap, torch.sum, standardized=False),
    "cc": Measure(class_gap, torch.sum, standardized=False),
}


@dataclass(frozen=True)
class Term:
    """A sum over the five temperature slots of one measure.

    ``views`` names the view each slot reads (the code's strong KL reads the weak view in its
    last two slots); ``mask`` is ``"sample"``, ``"class"`` or None.
    """

    name: str
    measure: str
    views: tuple[int, int, int, int, int]
    mask: str | None


ALL_WEAK = (WEAK,) * 5
ALL_STRONG = (STRONG,) * 5

TERMS: dict[str, tuple[Term, ...]] = {
    "code": (
        Term("kl_weak", "kl", ALL_WEAK, "sample"),
        Term("kl_strong", "kl", (STRONG, STRONG, STRONG, WEAK, WEAK), None),  # the slip, by slot
        Term("cc_weak", "cc", ALL_WEAK, "class"),
        Term("bc_weak", "bc", ALL_WEAK, "sample"),
    ),
    "intended": (
        Term("kl_weak", "kl", ALL_WEAK, "sample"),
        Term("kl_strong", "kl", ALL_STRONG, None),
        Term("cc_weak", "cc", ALL_WEAK, "class"),
        Term("cc_strong", "cc", ALL_STRONG, None),
        Term("bc_weak", "bc", ALL_WEAK, "sample"),
        Term("bc_strong", "bc", ALL_STRONG, "sample"),  # the weak view's mask, as coded
    ),
}
MLKD_FORMS = tuple(TERMS)


def mlkd_terms(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    base_temperature: float,
    form: str = "code",
    standardize: bool = False,
    standardize_form: StandardizeForm = "code",
) -> dict[str, Tensor]:
    """MLKD's terms by name (see the module docstring), each summed over 𝒯; their sum is the loss.

    Args:
        student_logits: (weak, strong) view logits of the student, B×C each.
        teacher_logits: the same for the teacher (never differentiated).
        base_temperature: T0, the first of the five temperatures.
        form: ``"code"`` or ``"intended"``.
        standardize: z-score the logits entering the KL terms (MLKD+LS).
        standardize_form: the LS form, ``"code"`` or ``"paper"``.
    """
    student = [at_least_float32(s) for s in student_logits]
    teacher = [at_least_float32(t.detach()).to(s.dtype) for s, t in zip(student, teacher_logits)]
    raw = list(zip(student, teacher))
    kl_pairs = [compared_logits(s, t, standardize, standardize_form) for s, t in raw]
    inputs = {False: raw, True: kl_pairs}  # by Measure.standardized: LS reaches the KL terms only
    masks = {"sample": confidence_mask(teacher[WEAK]), "class": class_mask(teacher[WEAK]), None: None}
    temperatures = temperature_slots(base_temperature)
    terms = {}
    for term in TERMS[form]:
        measure = MEASURES[term.measure]
        pairs = inputs[measure.standardized]
        parts = [
            masked_reduction(measure.values(*pairs[view], temperature), masks[term.mask], measure.reduce, form)
            for view, temperature in zip(term.views, temperatures)
        ]
        terms[term.name] = torch.stack(parts).sum()
    return terms


def mlkd_loss(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    base_temperature: float,
    form: str = "code",
    standardize: bool = False,
    standardize_form: StandardizeForm = "code",
) -> Tensor:
    """The sum of :func:`mlkd_terms` (without CE and without the recipe weight)."""
    terms = mlkd_terms(student_logits, teacher_logits, base_temperature, form, standardize, standardize_form)
    return torch.stack(list(terms.values())).sum()


@register_loss("mlkd")
class MLKDLoss(MultiViewLoss):
    """Multi-level logit distillation on a weak and a strong view (``data.views.shared``, weak first).

    Args:
        temperature: T0, the first of the five temperatures (4 for MLKD, τ = 2 for MLKD+LS).
        form: ``"code"`` (the authors' released code, quirks included) or ``"intended"``
            (its evident slips fixed); see the module docstring.
        standardize: z-score the logits of the KL terms first (MLKD+LS; the code standardizes
            nothing else).
        standardize_form: ``"code"`` (unbiased std + 1e-7, the authors' code) or ``"paper"``.
    """

    def __init__(
        self,
        context: LossContext,
        *,
        temperature: float = 4.0,
        form: MLKDForm = "code",
        standardize: bool = False,
        standardize_form: StandardizeForm = "code",
    ) -> None:
        super().__init__(context)
        if temperature <= 0:
            raise ValueError(f"mlkd temperature must be positive, got {temperature}")
        if form not in TERMS:
            raise ValueError(
                f"mlkd form must be 'code' (the authors' code, quirks included) or 'intended' (its slips fixed), got {form!r}"
            )
        check_standardize_options("mlkd", standardize, standardize_form)
        self.temperature = temperature
        self.form = form
        self.standardize = standardize
        self.standardize_form = standardize_form

    def forward(  # type: ignore[override]
        self, student: Sequence[FeatureRecord], teacher: Sequence[FeatureRecord | None], batch: Batch
    ) -> Tensor:
        if len(student) != self.required_views or len(teacher) != self.required_views or any(t is None for t in teacher):
            raise ValueError(
                f"mlkd needs the student's and the teacher's records of {self.required_views} views (weak, strong), "
                f"got {len(student)} student and {len(teacher)} teacher records"
            )
        return mlkd_loss(
            [r.logits for r in student],
            [r.logits for r in teacher],  # type: ignore[union-attr]
            self.temperature,
            self.form,
            self.standardize,
            self.standardize_form,
        )

    def summary(self) -> str:
        temperatures = ", ".join(f"{t:g}" for t in temperature_slots(self.temperature))
        ls = f"KL logits standardized ({self.standardize_form} form)" if self.standardize else "no logit standardization"
        return f"T = ({temperatures}), {self.form} form, {ls}"

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, form={self.form!r}, standardize={self.standardize}"
