"""DIST (Huang et al., NeurIPS 2022): Pearson ρ by hand, both relations against numpy loops, batch dependence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from logit_losses import batch, context, record

from distill.losses import LOSSES, build_loss, loss_parameters
from distill.losses.dist import dist_loss, dist_terms, pearson_rows
from distill.losses.logit_standardization import StandardizeForm, standardize_logits


def numpy_pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    """ρ of two vectors with explicit sums (ε on the product of the norms)."""
    n = len(a)
    mean_a, mean_b = sum(a) / n, sum(b) / n
    dot = sum((a[k] - mean_a) * (b[k] - mean_b) for k in range(n))
    norm_a = math.sqrt(sum((a[k] - mean_a) ** 2 for k in range(n)))
    norm_b = math.sqrt(sum((b[k] - mean_b) ** 2 for k in range(n)))
    return dot / (norm_a * norm_b + eps)


def numpy_softmax(z: np.ndarray, tau: float) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / tau)
    return e / e.sum(axis=1, keepdims=True)


def numpy_dist_terms(zs: np.ndarray, zt: np.ndarray, tau: float) -> tuple[float, float]:
    ys, yt = numpy_softmax(zs, tau), numpy_softmax(zt, tau)
    rows, cols = ys.shape
    inter = 1 - sum(numpy_pearson(ys[i, :], yt[i, :]) for i in range(rows)) / rows
    intra = 1 - sum(numpy_pearson(ys[:, c], yt[:, c]) for c in range(cols)) / cols
    return inter, intra


# --- Pearson ρ ---------------------------------------------------------------------------------


def test_identical_rows_correlate_one_and_negated_rows_minus_one():
    torch.manual_seed(0)
    a = torch.randn(4, 10, dtype=torch.float64)
    assert torch.allclose(pearson_rows(a, a), torch.ones(4, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(pearson_rows(a, -a), -torch.ones(4, dtype=torch.float64), atol=1e-7)
    # invariant to a shift and a positive scale of either side
    assert torch.allclose(pearson_rows(a, 3 * a + 7), torch.ones(4, dtype=torch.float64), atol=1e-7)


def test_a_hand_worked_pair_of_three_vectors():
    # a − ā = (−1, 0, 1); b = (2, 4, 7), b̄ = 13/3, b − b̄ = (−7, −1, 8)/3
    # ⟨·,·⟩ = (7 + 8)/3 = 5; ‖a − ā‖ = √2; ‖b − b̄‖ = √114 / 3  →  ρ = 5 / (√228 / 3 + ε) ≈ 15 / √228
    a = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 4.0, 7.0]], dtype=torch.float64)
    assert pearson_rows(a, b).item() == pytest.approx(5 / (math.sqrt(228) / 3 + 1e-8), abs=1e-12)
    # and a permutation: b = (1, 3, 2), b − b̄ = (−1, 1, 0): ⟨·,·⟩ = 1, norms √2·√2 = 2 → ρ = 1 / (2 + ε)
    assert pearson_rows(a, torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)).item() == pytest.approx(1 / (2 + 1e-8), abs=1e-12)


def test_epsilon_is_added_to_the_product_of_the_norms():
    # a = b = (0, s, 0): ‖a − ā‖² = 2s²/3, so ρ = (2s²/3) / (2s²/3 + ε). With s = 1e-4 that is
    # 6.67e-9 / (6.67e-9 + 1e-8) = 0.4; ε added to each norm instead would give ≈ 1.
    s = 1e-4
    a = torch.tensor([[0.0, s, 0.0]], dtype=torch.float64)
    product = 2 * s * s / 3
    assert pearson_rows(a, a).item() == pytest.approx(product / (product + 1e-8), rel=1e-9)
    assert pearson_rows(a, a).item() == pytest.approx(0.4, abs=1e-9)


def test_a_constant_row_correlates_zero_with_a_finite_gradient():
    a = torch.ones(1, 4, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    rho = pearson_rows(a, b)
    rho.sum().backward()
    assert rho.item() == 0.0 and torch.isfinite(a.grad).all()


# --- the two relations and the loss ------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_inter_and_intra_terms_against_a_numpy_loop(tau):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    inter, intra = dist_terms(torch.from_numpy(zs), torch.from_numpy(zt), tau)
    expected_inter, expected_intra = numpy_dist_terms(zs, zt, tau)
    assert inter.item() == pytest.approx(expected_inter, abs=1e-10)
    assert intra.item() == pytest.approx(expected_intra, abs=1e-10)
    loss = dist_loss(torch.from_numpy(zs), torch.from_numpy(zt), tau, beta=0.5, gamma=2.0)
    assert loss.item() == pytest.approx(tau**2 * (0.5 * expected_inter + 2.0 * expected_intra), abs=1e-9)


def test_a_student_equal_to_the_teacher_leaves_only_the_epsilon_and_an_opposite_one_a_positive_loss():
    # With Y_s = Y_t each ρ is n²/(n² + ε) (n the centred norm), so 1 − ρ = ε/(n² + ε): small but not 0.
    torch.manual_seed(1)
    z = torch.randn(8, 10, dtype=torch.float64)
    y = numpy_softmax(z.numpy(), 4.0)
    rows = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    cols = ((y - y.mean(axis=0, keepdims=True)) ** 2).sum(axis=0)
    floor = 16 * (np.mean(1e-8 / (rows + 1e-8)) + np.mean(1e-8 / (cols + 1e-8)))
    assert 0 < floor < 1e-3
    assert dist_loss(z, z, 4.0, 1.0, 1.0).item() == pytest.approx(floor, rel=1e-6)
    inter, intra = dist_terms(-z, z, 1.0)
    assert 0 < inter.item() <= 2 and 0 < intra.item() <= 2


def test_the_intra_class_term_depends_on_the_batch_and_the_inter_class_term_does_not():
    torch.manual_seed(2)
    zs, zt = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    inter, intra = dist_terms(zs, zt, 4.0)
    halves = [dist_terms(zs[part], zt[part], 4.0) for part in (slice(0, 4), slice(4, 8))]
    # inter is a per-sample mean: the batch's value is the mean of its halves'
    assert inter.item() == pytest.approx((halves[0][0].item() + halves[1][0].item()) / 2, abs=1e-12)
    # intra correlates each class across the batch: splitting the batch changes it
    assert abs(intra.item() - (halves[0][1].item() + halves[1][1].item()) / 2) > 1e-3
    # and so does replacing one sample of the batch, even for the samples left unchanged
    other = zs.clone()
    other[0] = torch.randn(10, dtype=torch.float64)
    assert dist_terms(other, zt, 4.0)[1].item() != pytest.approx(intra.item(), abs=1e-6)


def test_one_sample_gives_the_constant_intra_term_one_and_finite_gradients():
    zs = torch.randn(1, 5, requires_grad=True)
    inter, intra = dist_terms(zs, torch.randn(1, 5), 4.0)
    assert intra.item() == pytest.approx(1.0)
    (inter + intra).backward()
    assert torch.isfinite(zs.grad).all()


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="same shape B×C"):
        dist_loss(torch.zeros(4, 5), torch.zeros(4, 6), 4.0, 1.0, 1.0)


# --- the registered loss -----------------------------------------------------------------------


def test_registered_with_typed_parameters_and_reference_defaults():
    params = loss_parameters(LOSSES.get("dist"))
    assert {name: (p.annotation, p.default) for name, p in params.items()} == {
        "tau": (float, 4.0), "beta": (float, 1.0), "gamma": (float, 1.0), "standardize": (bool, False),
        "standardize_form": (StandardizeForm, "code"),
    }


def test_the_module_computes_dist_loss_and_trains_only_the_student():
    torch.manual_seed(3)
    zs = torch.randn(6, 5, requires_grad=True)
    zt = torch.randn(6, 5, requires_grad=True)
    loss = build_loss("dist", context(), {"tau": 2.0, "beta": 1.5, "gamma": 0.5})
    value = loss(record(zs), record(zt), batch(6))
    assert value.item() == pytest.approx(dist_loss(zs, zt, 2.0, 1.5, 0.5).item(), rel=1e-6)
    value.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None  # the teacher is never differentiated


def test_standardize_applies_logit_standardization_to_both_sides_before_the_temperature():
    torch.manual_seed(4)
    zs, zt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    loss = build_loss("dist", context(), {"standardize": True})
    expected = dist_loss(standardize_logits(zs), standardize_logits(zt), 4.0, 1.0, 1.0)
    assert loss(record(zs), record(zt), batch(6)).item() == pytest.approx(expected.item(), rel=1e-9)
    # so rescaling and shifting the teacher's logits changes nothing, while without LS it does
    moved = 5 * zt + 2
    assert loss(record(zs), record(moved), batch(6)).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = build_loss("dist", context(), {})
    assert plain(record(zs), record(moved), batch(6)).item() != pytest.approx(plain(record(zs), record(zt), batch(6)).item(), rel=1e-3)


def test_half_precision_logits_give_a_float32_loss():
    torch.manual_seed(5)
    zs, zt = torch.randn(6, 5).half(), torch.randn(6, 5).half()
    value = build_loss("dist", context(), {})(record(zs), record(zt), batch(6))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(dist_loss(zs.float(), zt.float(), 4.0, 1.0, 1.0).item(), rel=1e-6)


@pytest.mark.parametrize("params, message", [({"tau": 0.0}, "tau must be positive"), ({"beta": -1.0}, "must not be negative")])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        build_loss("dist", context(), params)
