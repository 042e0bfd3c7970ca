"""Logit standardization (LS): Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

Each sample's logit vector is z-scored before the temperature is applied, so the student
matches the teacher's logit *relations* rather than their magnitude; a large KD weight
then stays stable (paper Table 4). Paper, Algorithm 1 (§4.3):

    Z(x; τ) = (x − mean(x)) / σ(x) / τ,   σ the population standard deviation.

The authors' code (``sunshangquan/logit-standardization-KD@f6e5aa5``,
``mdistiller/distillers/KD.py`` L7–10, the same in ``DKD.py`` and ``MLKD.py``) divides by
``1e-7 + std(x)`` with torch's *unbiased* std (divisor K − 1): that produced the
published numbers, so it is the default here; ``unbiased=False, eps=0`` is the paper's
form. For K = 100 classes the two differ by √(99/100), a 0.5 % change of τ.

Losses switch it on with two parameters, ``standardize`` (bool) and ``standardize_form``
(``"code"`` or ``"paper"``); :func:`compared_logits` and :func:`check_standardize_options`
serve them all, so kd, dkd and later logit losses read the same way in a recipe.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from distill.losses.precision import at_least_float32

CODE_EPS = 1e-7
"""The epsilon the authors' code adds to the standard deviation (not inside the square root)."""


def standardize_logits(logits: Tensor, *, unbiased: bool = True, eps: float = CODE_EPS) -> Tensor:
    """Each row of ``logits`` (B×C) minus its mean, divided by ``eps + std`` (std over the C classes).

    Invariant to adding a constant to a row and to multiplying it by a positive number
    (up to ``eps``); the result has zero mean and unit standard deviation per row.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    return (logits - mean) / (eps + std)


StandardizeForm = Literal["code", "paper"]
"""``"code"``: the authors' released code (unbiased std + 1e-7); ``"paper"``: Algorithm 1 (population std)."""

STANDARDIZE_FORMS: dict[str, dict[str, float | bool]] = {
    "code": {"unbiased": True, "eps": CODE_EPS},
    "paper": {"unbiased": False, "eps": 0.0},
}


def standardize_as(logits: Tensor, form: StandardizeForm) -> Tensor:
    """:func:`standardize_logits` in the named form; half-precision logits are z-scored in float32.

    (A row's standard deviation in 8 to 11 mantissa bits would move every standardized
    logit by up to a few per mille, more than the code/paper difference.)
    """
    options = STANDARDIZE_FORMS[form]
    return standardize_logits(at_least_float32(logits), unbiased=bool(options["unbiased"]), eps=float(options["eps"]))


def standardize_pair(student_logits: Tensor, teacher_logits: Tensor, form: StandardizeForm) -> tuple[Tensor, Tensor]:
    """Both logit sets z-scored in ``form``, as every logit loss with ``standardize: true`` needs them.

    The teacher's logits are detached: they are the target, never trained through.
    """
    return standardize_as(student_logits, form), standardize_as(teacher_logits.detach(), form)


def compared_logits(
    student_logits: Tensor, teacher_logits: Tensor, standardize: bool, form: StandardizeForm
) -> tuple[Tensor, Tensor]:
    """The logit pair a logit loss compares: :func:`standardize_pair` in ``form`` when ``standardize`` is on,
    else the logits as they are (the one switch every logit loss reads the same way)."""
    if standardize:
        return standardize_pair(student_logits, teacher_logits, form)
    return student_logits, teacher_logits


def check_standardize_options(loss: str, standardize: bool, form: str) -> None:
    """Raise ``ValueError`` for an unknown form, or a form chosen while standardization is off."""
    if form not in STANDARDIZE_FORMS:
        raise ValueError(
            f"{loss} standardize_form must be 'code' or 'paper' (the authors' code or the paper's Algorithm 1), got {form!r}"
        )
    if form != "code" and not standardize:
        raise ValueError(
            f"{loss} standardize_form={form!r} has no effect while standardization is off; "
            f"set standardize: true as well, or drop standardize_form"
        )
