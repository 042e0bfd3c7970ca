"""TTM and WTTM (Zheng & Yang, ICLR 2024): KL against numpy, the weight U_γ, the exact relation to KD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from logit_losses import batch, context, record

from distill.losses import LOSSES, build_loss, loss_parameters
from distill.losses.kd import kd_divergence
from distill.losses.logit_standardization import StandardizeForm, standardize_logits
from distill.losses.ttm import power_sum, transformed_teacher_log_probs, ttm_divergence, ttm_loss, wttm_loss


def numpy_ttm_rows(zs: np.ndarray, zt: np.ndarray, gamma: float) -> tuple[list[float], list[float]]:
    """Per sample: KL(p_t^γ / Σ p_t^γ ‖ softmax(z_s)) and U_γ = Σ p_t^γ, the way the authors write it (power, then renormalise)."""
    kls, weights = [], []
    for s_row, t_row in zip(zs, zt):
        p = np.exp(t_row - t_row.max())
        p /= p.sum()
        powered = [v**gamma for v in p]
        u = sum(powered)
        p_tilde = [v / u for v in powered]
        q = np.exp(s_row - s_row.max())
        q /= q.sum()
        kls.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_tilde, q)))
        weights.append(u)
    return kls, weights


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5, 1.0])
def test_ttm_and_wttm_against_a_numpy_loop(gamma):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    kls, weights = numpy_ttm_rows(zs, zt, gamma)
    s, t = torch.from_numpy(zs), torch.from_numpy(zt)
    assert torch.allclose(ttm_divergence(s, t, gamma), torch.tensor(kls, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(power_sum(t, gamma), torch.tensor(weights, dtype=torch.float64), atol=1e-12)
    assert ttm_loss(s, t, gamma).item() == pytest.approx(np.mean(kls), abs=1e-12)
    assert wttm_loss(s, t, gamma).item() == pytest.approx(np.mean([u * kl for u, kl in zip(weights, kls)]), abs=1e-12)


def test_the_transformed_teacher_is_the_teacher_at_temperature_one_over_gamma():
    torch.manual_seed(0)
    zt = torch.randn(4, 7, dtype=torch.float64)
    powered = torch.softmax(zt, dim=1) ** 0.25
    assert torch.allclose(transformed_teacher_log_probs(zt, 0.25).exp(), powered / powered.sum(dim=1, keepdim=True), atol=1e-14)
    assert torch.allclose(transformed_teacher_log_probs(zt, 0.25).exp(), torch.softmax(zt / 4.0, dim=1), atol=1e-14)


def test_a_hand_worked_weight():
    # p_t = (0.8, 0.2) from logits (log 4, 0); γ = 1/2: U = √0.8 + √0.2
    zt = torch.tensor([[math.log(4.0), 0.0]], dtype=torch.float64)
    assert power_sum(zt, 0.5).item() == pytest.approx(math.sqrt(0.8) + math.sqrt(0.2), abs=1e-12)


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5])
def test_the_weight_of_a_uniform_teacher_is_c_to_the_one_minus_gamma(gamma):
    zt = torch.full((3, 100), 2.5)  # equal logits: p = 1/C, U = C · C^(−γ)
    assert torch.allclose(power_sum(zt, gamma), torch.full((3,), 100.0 ** (1 - gamma)), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5])
def test_the_weight_of_a_one_hot_teacher_tends_to_one(gamma):
    # The limit p = e_k gives U = 1^γ + 0 = 1; logits 400 apart leave (C − 1)·e^(−400γ) ≤ 99·e^(−40).
    zt = torch.zeros(2, 100)
    zt[0, 3] = zt[1, 97] = 400.0
    assert torch.allclose(power_sum(zt, gamma), torch.ones(2), atol=1e-6)
    # and a sharper teacher weighs less than a smoother one (γ < 1)
    assert power_sum(torch.tensor([[4.0, 0.0, 0.0]]), gamma) < power_sum(torch.tensor([[1.0, 0.0, 0.0]]), gamma)


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5])
def test_ttm_is_kd_at_temperature_one_over_gamma_without_t_squared_and_without_the_student_temperature(gamma):
    """L_TTM(z_s, z_t; γ) = γ² · KD(z_s / γ, z_t; T = 1/γ): KD divides the student's logits by T, so
    multiplying them by T first cancels it, and KD's T² factor is divided out. KD of the same student
    logits is a different loss (its student is softened too)."""
    torch.manual_seed(1)
    zs, zt = torch.randn(8, 10, dtype=torch.float64) * 2, torch.randn(8, 10, dtype=torch.float64) * 2
    temperature = 1 / gamma
    assert ttm_loss(zs, zt, gamma).item() == pytest.approx(gamma**2 * kd_divergence(zs * temperature, zt, temperature).item(), rel=1e-10)
    assert ttm_loss(zs, zt, gamma).item() != pytest.approx(kd_divergence(zs, zt, temperature).item() / temperature**2, rel=1e-3)


def test_gradients_reach_the_student_only_and_wttm_scales_each_sample_by_its_weight():
    torch.manual_seed(2)
    zt = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    zs_ttm = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    zs_wttm = zs_ttm.detach().clone().requires_grad_(True)
    ttm_loss(zs_ttm, zt, 0.2).backward()
    wttm_loss(zs_wttm, zt, 0.2).backward()
    assert zt.grad is None  # neither the transformed teacher nor the weight is differentiated
    weights = power_sum(zt.detach(), 0.2).unsqueeze(1)
    assert torch.allclose(zs_wttm.grad, weights * zs_ttm.grad, atol=1e-14)
    # the TTM gradient per sample is (softmax(z_s) − p̃_t) / B
    expected = (torch.softmax(zs_ttm.detach(), dim=1) - torch.softmax(0.2 * zt.detach(), dim=1)) / 4
    assert torch.allclose(zs_ttm.grad, expected, atol=1e-14)


def test_a_near_one_hot_teacher_gives_finite_values_and_gradients():
    zt = torch.zeros(2, 100)
    zt[:, 0] = 1000.0
    zs = torch.randn(2, 100, requires_grad=True)
    value = wttm_loss(zs, zt, 0.2)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(zs.grad).all()


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="same shape B×C"):
        ttm_loss(torch.zeros(4, 5), torch.zeros(3, 5), 0.1)


# --- the registered losses ---------------------------------------------------------------------


def test_registered_with_typed_parameters():
    for name, default in (("ttm", 0.1), ("wttm", 0.2)):
        params = loss_parameters(LOSSES.get(name))
        assert {key: (p.annotation, p.default) for key, p in params.items()} == {
            "gamma": (float, default), "standardize": (bool, False), "standardize_form": (StandardizeForm, "code"),
        }


@pytest.mark.parametrize("name, function", [("ttm", ttm_loss), ("wttm", wttm_loss)])
def test_the_modules_compute_their_functions(name, function):
    torch.manual_seed(3)
    zs, zt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    loss = build_loss(name, context(), {"gamma": 0.3})
    assert loss(record(zs), record(zt), batch(6)).item() == pytest.approx(function(zs, zt, 0.3).item(), rel=1e-12)
    standardized = build_loss(name, context(), {"gamma": 0.3, "standardize": True})
    expected = function(standardize_logits(zs), standardize_logits(zt), 0.3)
    assert standardized(record(zs), record(zt), batch(6)).item() == pytest.approx(expected.item(), rel=1e-12)
    # with LS, a shifted and rescaled teacher gives the same loss
    assert standardized(record(zs), record(3 * zt - 1), batch(6)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_half_precision_logits_give_a_float32_loss():
    torch.manual_seed(4)
    zs, zt = torch.randn(6, 5).half(), torch.randn(6, 5).half()
    value = build_loss("wttm", context(), {})(record(zs), record(zt), batch(6))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(wttm_loss(zs.float(), zt.float(), 0.2).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ttm", "wttm"])
def test_a_non_positive_gamma_is_refused(name):
    with pytest.raises(ValueError, match=f"{name} gamma .* must be positive"):
        build_loss(name, context(), {"gamma": 0.0})


@pytest.mark.parametrize("name", ["ttm", "wttm", "dist"])
def test_the_paper_form_of_standardization_is_offered_and_checked(name):
    torch.manual_seed(3)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    code = build_loss(name, context(), {"standardize": True})(record(student), record(teacher), batch(6))
    paper = build_loss(name, context(), {"standardize": True, "standardize_form": "paper"})(record(student), record(teacher), batch(6))
    assert torch.isfinite(code) and torch.isfinite(paper) and not torch.isclose(code, paper)
    with pytest.raises(ValueError, match="has no effect while standardization is off"):
        build_loss(name, context(), {"standardize_form": "paper"})
