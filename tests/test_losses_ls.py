"""Logit standardization (LS) switched on in kd and dkd: against numpy loops, its invariances, the two forms.

The reference is the LSKD code (``sunshangquan/logit-standardization-KD@f6e5aa5``,
``mdistiller/distillers/KD.py`` and ``DKD.py``): both logit sets are z-scored with the
unbiased std plus 1e-7, then the usual loss runs at T = τ. The numpy loops below
re-derive every number without torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from logit_losses import batch, context, record

from distill.benchmark.tasks import TASKS
from distill.losses import LOSSES, build_loss, loss_parameters
from distill.losses.dkd import dkd_loss
from distill.losses.kd import kd_divergence

# ---------------------------------------------------------------- numpy references


def np_standardize(row: np.ndarray, form: str) -> np.ndarray:
    """One row z-scored: the code's (x − mean) / (1e-7 + std with K − 1) or the paper's population std."""
    k = len(row)
    mean = sum(row) / k
    squares = sum((v - mean) ** 2 for v in row)
    if form == "code":
        return (row - mean) / (1e-7 + math.sqrt(squares / (k - 1)))
    return (row - mean) / math.sqrt(squares / k)


def np_softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))


def np_kd_ls(student: np.ndarray, teacher: np.ndarray, tau: float, form: str = "code") -> float:
    """τ² · mean over samples of KL(softmax(Z(z_t)/τ) ‖ softmax(Z(z_s)/τ))."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_t = np_softmax(np_standardize(t_row, form) / tau)
        p_s = np_softmax(np_standardize(s_row, form) / tau)
        total += np_kl(p_t, p_s)
    return tau * tau * total / len(student)


def np_dkd_ls(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, alpha: float, beta: float, tau: float) -> float:
    """α·TCKD + β·NCKD (each × τ²), batch mean, on code-form standardized logits, from explicit softmaxes."""
    total = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        p_s = np_softmax(np_standardize(s_row, "code") / tau)
        p_t = np_softmax(np_standardize(t_row, "code") / tau)
        tckd = np_kl(np.array([p_t[y], 1 - p_t[y]]), np.array([p_s[y], 1 - p_s[y]]))
        others = [j for j in range(len(s_row)) if j != y]
        nckd = np_kl(p_t[others] / p_t[others].sum(), p_s[others] / p_s[others].sum())
        total += tau * tau * (alpha * tckd + beta * nckd)
    return total / len(student)


def logits(seed: int, rows: int = 6, classes: int = 10, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, classes)) * scale + 1.5


# ---------------------------------------------------------------- kd


@pytest.mark.parametrize("tau", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("form", ["code", "paper"])
def test_kd_with_ls_matches_a_numpy_loop(tau, form):
    s, t = logits(0), logits(1)
    loss = build_loss("kd", context(10), {"temperature": tau, "standardize": True, "standardize_form": form})
    value = loss(record(torch.tensor(s)), record(torch.tensor(t)), batch(torch.zeros(6, dtype=torch.long)))
    assert value.dim() == 0
    assert value.item() == pytest.approx(np_kd_ls(s, t, tau, form), rel=1e-9)


@pytest.mark.parametrize("shift, scale", [(7.0, 1.0), (0.0, 3.5), (-20.0, 0.25)])
def test_kd_with_ls_ignores_a_shift_and_a_positive_scale_of_the_teacher(shift, scale):
    s, t = torch.tensor(logits(2)), torch.tensor(logits(3))
    loss = build_loss("kd", context(10), {"temperature": 2.0, "standardize": True})
    b = batch(torch.zeros(6, dtype=torch.long))
    plain = loss(record(s), record(t), b).item()
    moved = loss(record(s), record(t * scale + shift), b).item()
    assert moved == pytest.approx(plain, rel=1e-6)
    # plain KD ignores the shift too (softmax does) but not the scale: the test tells LS from KD there
    raw = build_loss("kd", context(10), {"temperature": 2.0})
    raw_moved, raw_plain = raw(record(s), record(t * scale + shift), b).item(), raw(record(s), record(t), b).item()
    assert (raw_moved == pytest.approx(raw_plain, rel=1e-3)) == (scale == 1.0)


@pytest.mark.parametrize("k", [4, 10, 100])
def test_the_paper_form_is_the_code_form_at_a_temperature_larger_by_sqrt_k_over_k_minus_1(k):
    """Code Z = paper Z · √((K−1)/K) (up to ε), so code(τ) = (K−1)/K · paper(τ·√(K/(K−1))) with the τ² factors."""
    s, t = torch.tensor(logits(4, classes=k)), torch.tensor(logits(5, classes=k))
    b = batch(torch.zeros(6, dtype=torch.long))
    tau = 2.0

    def kd(form: str, temperature: float) -> float:
        loss = build_loss("kd", context(k), {"temperature": temperature, "standardize": True, "standardize_form": form})
        return loss(record(s), record(t), b).item()

    code, paper = kd("code", tau), kd("paper", tau)
    assert code != pytest.approx(paper, rel=1e-4)  # the forms differ ...
    stretched = tau * math.sqrt(k / (k - 1))
    assert code == pytest.approx((k - 1) / k * kd("paper", stretched), rel=1e-6)  # ... by exactly this factor


def test_kd_without_ls_is_plain_kd():
    s, t = torch.randn(5, 100), torch.randn(5, 100) * 4
    b = batch(torch.zeros(5, dtype=torch.long))
    for params in ({"temperature": 4.0}, {"temperature": 4.0, "standardize": False}):
        assert build_loss("kd", context(100), params)(record(s), record(t), b).item() == kd_divergence(s, t, 4.0).item()


def test_kd_with_ls_differentiates_through_the_student_standardization():
    student = torch.tensor(logits(6), requires_grad=True)
    teacher = torch.tensor(logits(7), requires_grad=True)
    loss = build_loss("kd", context(10), {"temperature": 2.0, "standardize": True})
    loss(record(student), record(teacher), batch(torch.zeros(6, dtype=torch.long))).backward()
    assert teacher.grad is None
    grad = student.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # a z-score ignores a shift and a scale of its input, so the gradient is orthogonal to both per row
    assert torch.allclose(grad.sum(dim=1), torch.zeros(6, dtype=grad.dtype), atol=1e-9)
    assert torch.allclose((grad * student.detach()).sum(dim=1), torch.zeros(6, dtype=grad.dtype), atol=1e-6)


# ---------------------------------------------------------------- dkd


@pytest.mark.parametrize("tau, w, beta_cfg", [(2.0, 12.0, 2.0), (3.0, 18.0, 2.0), (2.0, 9.0, 8.0)])
def test_dkd_with_ls_matches_a_numpy_loop(tau, w, beta_cfg):
    s, t = logits(8, rows=5, classes=12), logits(9, rows=5, classes=12)
    y = np.array([0, 3, 11, 3, 7])
    params = {"alpha": 1.0 * w, "beta": beta_cfg * w, "temperature": tau, "warmup": 20, "standardize": True}
    loss = build_loss("dkd", context(12), params)
    loss.start_epoch(21, 240)  # past the warm-up
    value = loss(record(torch.tensor(s)), record(torch.tensor(t)), batch(torch.tensor(y)))
    assert value.item() == pytest.approx(np_dkd_ls(s, t, y, w, beta_cfg * w, tau), rel=1e-9)
    loss.start_epoch(5, 240)  # the warm-up still applies: 5/20 of it
    value = loss(record(torch.tensor(s)), record(torch.tensor(t)), batch(torch.tensor(y)))
    assert value.item() == pytest.approx(0.25 * np_dkd_ls(s, t, y, w, beta_cfg * w, tau), rel=1e-9)


def test_dkd_with_ls_ignores_a_shift_and_scale_of_the_teacher_and_without_ls_is_plain_dkd():
    s, t = torch.tensor(logits(10, classes=100)), torch.tensor(logits(11, classes=100))
    y = torch.tensor([1, 5, 9, 50, 99, 0])
    b = batch(y)
    ls = build_loss("dkd", context(100), {"standardize": True, "temperature": 2.0})
    assert ls(record(s), record(t * 0.3 - 4.0), b).item() == pytest.approx(ls(record(s), record(t), b).item(), rel=1e-6)
    for params in ({}, {"standardize": False}):
        assert build_loss("dkd", context(100), params)(record(s), record(t), b).item() == dkd_loss(s, t, y, 1.0, 8.0, 4.0).item()


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_the_switch_is_off_by_default_and_the_form_is_checked(name):
    params = loss_parameters(LOSSES.get(name))
    assert params["standardize"].default is False and params["standardize"].annotation is bool
    assert params["standardize_form"].default == "code"
    with pytest.raises(ValueError, match="standardize: true"):
        build_loss(name, context(10), {"standardize_form": "paper"})  # the form alone would silently do nothing
    with pytest.raises(ValueError, match="'code' or 'paper'"):
        build_loss(name, context(10), {"standardize": True, "standardize_form": "population"})
    assert "standardize" in repr(build_loss(name, context(10), {"standardize": True}))


# ---------------------------------------------------------------- recipe fragments

BASE = Path(__file__).resolve().parent.parent / "recipes" / "cifar100" / "_base_"
UNPUBLISHED = {"ResNet50-vgg8", "resnet32x4-ShuffleV1", "wrn_40_2-ShuffleV1"}
# The reference sheet's §1.3 table (from the LSKD log names): KD+LS (τ, w) and DKD+LS (τ, w, BETA_cfg);
# the three tasks without a published run take the authors' default (τ 2, w 9; BETA_cfg 8 as in _base_/dkd/).
KD_LS = {
    "wrn_40_2-wrn_16_2": (2, 9), "wrn_40_2-wrn_40_1": (2, 9), "resnet56-resnet20": (2, 9),
    "resnet110-resnet20": (4, 12), "resnet110-resnet32": (2, 9), "resnet32x4-resnet8x4": (2, 9),
    "vgg13-vgg8": (3, 9), "vgg13-MobileNetV2": (3, 9), "ResNet50-MobileNetV2": (3, 1),
    "resnet32x4-ShuffleV2": (2, 9), "ResNet50-vgg8": (2, 9), "resnet32x4-ShuffleV1": (2, 9), "wrn_40_2-ShuffleV1": (2, 9),
}
DKD_LS = {
    "wrn_40_2-wrn_16_2": (2, 12, 2), "wrn_40_2-wrn_40_1": (2, 12, 2), "resnet56-resnet20": (3, 18, 2),
    "resnet110-resnet20": (2, 15, 2), "resnet110-resnet32": (2, 15, 2), "resnet32x4-resnet8x4": (2, 9, 8),
    "vgg13-vgg8": (2, 15, 2), "vgg13-MobileNetV2": (3, 9, 2), "ResNet50-MobileNetV2": (2, 15, 2),
    "resnet32x4-ShuffleV2": (2, 9, 8), "ResNet50-vgg8": (2, 9, 8), "resnet32x4-ShuffleV1": (2, 9, 8), "wrn_40_2-ShuffleV1": (2, 9, 8),
}


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_the_kd_ls_fragment_holds_the_authors_settings(task):
    text = (BASE / "kd_ls" / f"{task}.yaml").read_text()
    assert text.startswith("# Source: ") and (("no published run" in text) == (task in UNPUBLISHED))
    tau, w = KD_LS[task]
    assert yaml.safe_load(text) == {"losses": {
        "ce": {"weight": 0.1},
        "kd": {"weight": w, "temperature": tau, "standardize": True, "standardize_form": "code"},
    }}


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_the_dkd_ls_fragment_multiplies_both_dkd_weights_by_w(task):
    text = (BASE / "dkd_ls" / f"{task}.yaml").read_text()
    assert text.startswith("# Source: ") and (("no published run" in text) == (task in UNPUBLISHED))
    tau, w, beta_cfg = DKD_LS[task]
    assert yaml.safe_load(text) == {"losses": {
        "ce": {"weight": 1.0},
        "dkd": {"weight": 1.0, "alpha": 1.0 * w, "beta": beta_cfg * w, "temperature": tau, "warmup": 20,
                "standardize": True, "standardize_form": "code"},
    }}
