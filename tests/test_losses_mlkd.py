"""MLKD (Jin, Wang & Lin, CVPR 2023): each piece against numpy loops, the whole loss against a
term-by-term numpy re-computation of the authors' code, its quirks, gradients and refusals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from logit_losses import batch, context, record

from distill.losses import LOSSES, build_loss, loss_parameters
from distill.losses.logit_standardization import StandardizeForm
from distill.losses.mlkd import (
    MLKDForm,
    batch_gap,
    class_gap,
    class_mask,
    confidence_mask,
    instance_kl,
    masked_reduction,
    mlkd_loss,
    mlkd_terms,
    temperature_slots,
)

# --- independent numpy computations ------------------------------------------------------------


def np_softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / temperature)
    return e / e.sum(axis=1, keepdims=True)


def np_kl_rows(zs: np.ndarray, zt: np.ndarray, temperature: float) -> list[float]:
    """T² · Σ_c p_t (log p_t − log p_s) per row, with explicit sums."""
    rows = []
    for s_row, t_row in zip(zs, zt):
        p_t = [math.exp(v / temperature) for v in t_row]
        p_s = [math.exp(v / temperature) for v in s_row]
        p_t = [v / sum(p_t) for v in p_t]
        p_s = [v / sum(p_s) for v in p_s]
        rows.append(temperature**2 * sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s)))
    return rows


def np_gram_loop(p: np.ndarray, over_classes: bool) -> np.ndarray:
    """P Pᵀ (B×B) or Pᵀ P (C×C) with explicit double loops."""
    q = p.T if over_classes else p
    n, k = q.shape
    out = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            out[a, b] = sum(q[a, c] * q[b, c] for c in range(k))
    return out


def np_standardize(z: np.ndarray, form: str) -> np.ndarray:
    ddof, eps = (1, 1e-7) if form == "code" else (0, 0.0)
    return (z - z.mean(axis=1, keepdims=True)) / (eps + z.std(axis=1, ddof=ddof, keepdims=True))


def np_kd(zs, zt, temperature, ls, ls_form, reduce=True):
    """The code's kd_loss: T² · KL per row (mean over rows when reduce), LS on both sides first."""
    if ls:
        zs, zt = np_standardize(zs, ls_form), np_standardize(zt, ls_form)
    log_p_s = np.log(np_softmax(zs, temperature))
    p_t = np_softmax(zt, temperature)
    rows = (p_t * (np.log(p_t) - log_p_s)).sum(axis=1) * temperature**2
    return rows.mean() if reduce else rows


def np_cc(zs, zt, temperature, reduce=True):
    ps, pt = np_softmax(zs, temperature), np_softmax(zt, temperature)
    d = (pt.T @ pt - ps.T @ ps) ** 2 / zt.shape[1]
    return d.sum() if reduce else d


def np_bc(zs, zt, temperature, reduce=True):
    ps, pt = np_softmax(zs, temperature), np_softmax(zt, temperature)
    d = (pt @ pt.T - ps @ ps.T) ** 2 / zt.shape[0]
    return d.sum() if reduce else d


def np_masks(tw):
    p = np_softmax(tw, 1.0)
    conf = p.max(axis=1)
    mask = conf <= np.percentile(conf, 50)
    per_class = p.sum(axis=0)
    return mask, per_class <= np.percentile(per_class, 50)


def np_code_total(sw, tw, ss, ts, t0, ls=False, ls_form="code"):
    """What the authors' forward_train sums, term by term in their order (without CE and w)."""
    mask, cmask = np_masks(tw)
    kd_weak = sum((np_kd(sw, tw, t, ls, ls_form) * mask).mean() for t in (t0, 3.0, 5.0, 2.0, 6.0))
    kd_strong = (
        np_kd(ss, ts, t0, ls, ls_form) + np_kd(ss, ts, 3.0, ls, ls_form) + np_kd(ss, ts, 5.0, ls, ls_form)
        + np_kd(sw, tw, 2.0, ls, ls_form) + np_kd(sw, tw, 6.0, ls, ls_form)
    )
    cc_weak = sum((np_cc(sw, tw, t) * cmask).mean() for t in (t0, 3.0, 5.0, 2.0, 6.0))
    bc_weak = sum((np_bc(sw, tw, t) * mask).mean() for t in (t0, 3.0, 5.0, 2.0, 6.0))
    return kd_weak + kd_strong + cc_weak + bc_weak


def np_intended_total(sw, tw, ss, ts, t0, ls=False, ls_form="code"):
    """The code with its slips fixed: masks per sample/class before the reduce=True reduction, strong terms all added."""
    mask, cmask = np_masks(tw)
    total = 0.0
    for t in (t0, 3.0, 5.0, 2.0, 6.0):
        total += (np_kd(sw, tw, t, ls, ls_form, reduce=False) * mask).mean()
        total += np_kd(ss, ts, t, ls, ls_form)
        total += (np_cc(sw, tw, t, reduce=False) * cmask[None, :]).sum()
        total += np_cc(ss, ts, t)
        total += (np_bc(sw, tw, t, reduce=False) * mask[None, :]).sum()
        total += (np_bc(ss, ts, t, reduce=False) * mask[None, :]).sum()
    return total


def views(seed: int, b: int = 64, c: int = 100, scale: float = 3.0):
    """(student weak, teacher weak, student strong, teacher strong) logits, float64 numpy."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(b, c)) * scale for _ in range(4))


def torch_views(arrays):
    return [torch.from_numpy(a) for a in arrays]


def mlkd_context(num_classes: int, views_: int = 2):
    return dataclasses.replace(context(num_classes), views=views_)


def call(loss, sw, tw, ss, ts):
    return loss([record(sw), record(ss)], [record(tw), record(ts)], batch(sw.shape[0]))


# --- the pieces --------------------------------------------------------------------------------


def test_temperature_slots_keep_the_code_order_and_a_repeated_two():
    assert temperature_slots(4.0) == (4.0, 3.0, 5.0, 2.0, 6.0)
    assert temperature_slots(2) == (2.0, 3.0, 5.0, 2.0, 6.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_instance_kl_against_a_hand_written_kl(temperature):
    sw, tw, _, _ = views(0, b=6, c=5)
    got = instance_kl(torch.from_numpy(sw), torch.from_numpy(tw), temperature)
    assert got.shape == (6,)
    assert np.allclose(got.numpy(), np_kl_rows(sw, tw, temperature), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_batch_and_class_gaps_against_double_loops(temperature):
    sw, tw, _, _ = views(1, b=6, c=5)
    ps, pt = np_softmax(sw, temperature), np_softmax(tw, temperature)
    expected_bc = (np_gram_loop(pt, False) - np_gram_loop(ps, False)) ** 2 / 6
    expected_cc = (np_gram_loop(pt, True) - np_gram_loop(ps, True)) ** 2 / 5
    got_bc = batch_gap(torch.from_numpy(sw), torch.from_numpy(tw), temperature)
    got_cc = class_gap(torch.from_numpy(sw), torch.from_numpy(tw), temperature)
    assert got_bc.shape == (6, 6) and got_cc.shape == (5, 5)
    assert np.allclose(got_bc.numpy(), expected_bc, rtol=1e-12, atol=1e-15)
    assert np.allclose(got_cc.numpy(), expected_cc, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("b, c", [(64, 100), (7, 10), (16, 100)])
def test_the_masks_against_np_percentile(b, c):
    _, tw, _, _ = views(2, b=b, c=c, scale=2.0)
    for dtype in (torch.float64, torch.float32):
        z = torch.from_numpy(tw).to(dtype)
        expected_mask, expected_cmask = np_masks(z.double().numpy())
        assert confidence_mask(z).tolist() == expected_mask.tolist()
        assert class_mask(z).tolist() == expected_cmask.tolist()


def test_the_masks_are_exactly_half_for_an_even_batch_without_ties():
    _, tw, _, _ = views(3)  # B = 64, C = 100
    z = torch.from_numpy(tw)
    assert confidence_mask(z).double().mean().item() == 0.5
    assert class_mask(z).double().mean().item() == 0.5


def test_a_sample_at_the_threshold_is_in_the_mask_and_the_mask_keeps_the_less_confident():
    # Odd batch: the median is a sample's own confidence. Logits (k, 0, 0) give confidence
    # e^k / (e^k + 2), increasing in k: the median sample is k = 2, and it is masked.
    z = torch.tensor([[k, 0.0, 0.0] for k in (4.0, 0.5, 2.0, 3.0, 1.0)], dtype=torch.float64)
    assert confidence_mask(z).tolist() == [False, True, True, False, True]
    # an even batch with a tie across the middle: median = the tied value, all of them in
    z = torch.tensor([[k, 0.0, 0.0] for k in (1.0, 2.0, 2.0, 3.0)], dtype=torch.float64)
    assert confidence_mask(z).tolist() == [True, True, True, False]
    # even without ties the median interpolates between the two middle values: exactly half in
    z = torch.tensor([[k, 0.0, 0.0] for k in (1.0, 2.0, 3.0, 4.0)], dtype=torch.float64)
    assert confidence_mask(z).tolist() == [True, True, False, False]


def test_the_class_mask_keeps_the_less_predicted_classes():
    # the teacher favours class 0 on every sample, class 1 on some: per-class sums 0 > 1 > 2 = 3
    z = torch.tensor([[5.0, 2.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [4.0, 3.0, 0.0, 0.0]], dtype=torch.float64)
    assert class_mask(z).tolist() == [False, False, True, True]


def test_the_masks_ignore_the_gradient_of_the_teacher():
    z = torch.randn(8, 5, requires_grad=True)
    assert not confidence_mask(z).requires_grad and not class_mask(z).requires_grad


def test_masked_reduction_in_both_forms_against_loops():
    rng = np.random.default_rng(4)
    vec, mat = rng.random(6), rng.random((6, 6))
    mask = np.array([True, False, True, True, False, False])
    m = torch.from_numpy(mask)
    # code: reduce first, then × mean(mask)
    assert masked_reduction(torch.from_numpy(vec), m, torch.mean, "code").item() == pytest.approx(vec.mean() * 0.5, rel=1e-12)
    assert masked_reduction(torch.from_numpy(mat), m, torch.sum, "code").item() == pytest.approx(mat.sum() * 0.5, rel=1e-12)
    # intended: (1/B) Σ_i mask_i v_i and Σ_ij V_ij mask_j (the mask over the last index)
    assert masked_reduction(torch.from_numpy(vec), m, torch.mean, "intended").item() == pytest.approx(
        sum(vec[i] for i in range(6) if mask[i]) / 6, rel=1e-12
    )
    assert masked_reduction(torch.from_numpy(mat), m, torch.sum, "intended").item() == pytest.approx(
        sum(mat[i, j] for i in range(6) for j in range(6) if mask[j]), rel=1e-12
    )
    # no mask: the plain reduction in both
    for form in ("code", "intended"):
        assert masked_reduction(torch.from_numpy(mat), None, torch.sum, form).item() == pytest.approx(mat.sum(), rel=1e-12)


# --- the whole loss against the authors' structure ---------------------------------------------

CASES = [
    pytest.param(4.0, False, "code", id="mlkd-T4"),
    pytest.param(2.0, True, "code", id="mlkd+ls-T2-code-std"),
    pytest.param(2.0, True, "paper", id="mlkd+ls-T2-paper-std"),
]


@pytest.mark.parametrize("t0, ls, ls_form", CASES)
def test_the_code_form_equals_a_term_by_term_recomputation_of_the_authors_code(t0, ls, ls_form):
    arrays = views(5)
    loss = build_loss("mlkd", mlkd_context(100), {"temperature": t0, "standardize": ls, "standardize_form": ls_form})
    value = call(loss, *torch_views(arrays))
    assert value.item() == pytest.approx(np_code_total(*arrays, t0, ls, ls_form), rel=1e-10)


@pytest.mark.parametrize("t0, ls, ls_form", CASES)
def test_the_intended_form_equals_a_numpy_recomputation(t0, ls, ls_form):
    arrays = views(6)
    params = {"temperature": t0, "form": "intended", "standardize": ls, "standardize_form": ls_form}
    value = call(build_loss("mlkd", mlkd_context(100), params), *torch_views(arrays))
    assert value.item() == pytest.approx(np_intended_total(*arrays, t0, ls, ls_form), rel=1e-10)


def test_with_t0_two_the_temperature_two_counts_twice_and_four_not_at_all():
    arrays = torch_views(views(7))
    sw, tw, ss, ts = arrays
    plain = mlkd_terms([sw, ss], [tw, ts], 2.0)["cc_weak"]
    # class-masked class-level sum at (2, 3, 5, 2, 6): twice T = 2, with m_c = 0.5
    expected = 0.5 * sum(class_gap(sw, tw, t).sum() for t in (2.0, 2.0, 3.0, 5.0, 6.0))
    assert plain.item() == pytest.approx(expected.item(), rel=1e-12)


def test_the_code_form_scales_each_masked_term_by_the_mean_of_its_mask():
    sw, tw, ss, ts = torch_views(views(8))
    terms = mlkd_terms([sw, ss], [tw, ts], 4.0, "code")
    slots = temperature_slots(4.0)
    assert set(terms) == {"kl_weak", "kl_strong", "cc_weak", "bc_weak"}
    assert terms["kl_weak"].item() == pytest.approx(0.5 * sum(instance_kl(sw, tw, t).mean().item() for t in slots), rel=1e-12)
    assert terms["bc_weak"].item() == pytest.approx(0.5 * sum(batch_gap(sw, tw, t).sum().item() for t in slots), rel=1e-12)
    assert terms["cc_weak"].item() == pytest.approx(0.5 * sum(class_gap(sw, tw, t).sum().item() for t in slots), rel=1e-12)
    # the strong KL: T0, 3, 5 from the strong view, then T = 2 and 6 from the weak view (the slip)
    strong = sum(instance_kl(ss, ts, t).mean().item() for t in (4.0, 3.0, 5.0))
    strong += sum(instance_kl(sw, tw, t).mean().item() for t in (2.0, 6.0))
    assert terms["kl_strong"].item() == pytest.approx(strong, rel=1e-12)
    # and the forms differ: intended masks per sample, which is not mean(mask) × the unmasked sum
    intended = mlkd_terms([sw, ss], [tw, ts], 4.0, "intended")
    assert intended["kl_weak"].item() != pytest.approx(terms["kl_weak"].item(), rel=1e-3)


def test_in_the_code_form_the_strong_view_reaches_only_the_kl_at_t0_3_and_5():
    sw, tw, ss, ts = torch_views(views(9))
    other = ss + torch.from_numpy(np.random.default_rng(10).normal(size=ss.shape))
    change = mlkd_loss([sw, other], [tw, ts], 4.0) - mlkd_loss([sw, ss], [tw, ts], 4.0)
    kl_change = sum(instance_kl(other, ts, t).mean() - instance_kl(ss, ts, t).mean() for t in (4.0, 3.0, 5.0))
    assert abs(change.item()) > 1e-2
    assert change.item() == pytest.approx(kl_change.item(), rel=1e-10)
    # so the gradient at the strong logits is that of those three KL terms alone
    strong = ss.clone().requires_grad_(True)
    mlkd_loss([sw, strong], [tw, ts], 4.0).backward()
    reference = ss.clone().requires_grad_(True)
    sum(instance_kl(reference, ts, t).mean() for t in (4.0, 3.0, 5.0)).backward()
    assert torch.allclose(strong.grad, reference.grad, rtol=1e-10, atol=1e-15)


def test_in_the_intended_form_the_strong_view_reaches_the_batch_and_class_levels():
    sw, tw, ss, ts = torch_views(views(11))
    other = ss + torch.from_numpy(np.random.default_rng(12).normal(size=ss.shape))
    before = mlkd_terms([sw, ss], [tw, ts], 4.0, "intended")
    after = mlkd_terms([sw, other], [tw, ts], 4.0, "intended")
    changed = {name for name in before if after[name].item() != pytest.approx(before[name].item(), rel=1e-9)}
    assert changed == {"kl_strong", "cc_strong", "bc_strong"}
    slots = temperature_slots(4.0)
    assert after["kl_strong"].item() == pytest.approx(sum(instance_kl(other, ts, t).mean().item() for t in slots), rel=1e-12)


# --- gradients, zero, precision ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["code", "intended"])
@pytest.mark.parametrize("ls", [False, True])
def test_gradients_reach_both_student_views_and_never_the_teacher(form: MLKDForm, ls):
    torch.manual_seed(13)
    sw, ss = torch.randn(16, 10, requires_grad=True), torch.randn(16, 10, requires_grad=True)
    tw, ts = torch.randn(16, 10, requires_grad=True), torch.randn(16, 10, requires_grad=True)
    loss = build_loss("mlkd", mlkd_context(10), {"form": form, "standardize": ls})
    value = call(loss, sw, tw, ss, ts)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    for grad in (sw.grad, ss.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert tw.grad is None and ts.grad is None


@pytest.mark.parametrize("form", ["code", "intended"])
@pytest.mark.parametrize("ls", [False, True])
def test_a_student_equal_to_the_teacher_in_every_view_gives_zero(form: MLKDForm, ls):
    sw, tw, ss, ts = torch_views(views(14, b=16, c=10))
    loss = build_loss("mlkd", mlkd_context(10), {"form": form, "standardize": ls})
    assert call(loss, tw.clone(), tw, ts.clone(), ts).item() == 0.0
    # equal in the weak view only: the strong terms remain
    assert call(loss, tw.clone(), tw, ss, ts).item() > 0


def test_half_precision_logits_give_a_float32_loss():
    sw, tw, ss, ts = torch_views(views(15, b=16, c=10))
    loss = build_loss("mlkd", mlkd_context(10), {"standardize": True})
    value = call(loss, sw.half(), tw.half(), ss.half(), ts.half())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    expected = mlkd_loss([sw.half().float(), ss.half().float()], [tw.half().float(), ts.half().float()], 4.0, standardize=True)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


# --- the registered loss -----------------------------------------------------------------------


def test_registered_with_typed_parameters_and_the_code_defaults():
    params = loss_parameters(LOSSES.get("mlkd"))
    assert {name: (p.annotation, p.default) for name, p in params.items()} == {
        "temperature": (float, 4.0),
        "form": (MLKDForm, "code"),
        "standardize": (bool, False),
        "standardize_form": (StandardizeForm, "code"),
    }


def test_one_view_is_refused_with_the_multi_view_message():
    with pytest.raises(ValueError, match=r"MLKDLoss needs 2 views of each image per step, but the run has 1; list them in data\.views\.shared"):
        build_loss("mlkd", mlkd_context(10, views_=1), {})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"temperature": -2.0}, "temperature must be positive"),
        ({"form": "paper"}, "form must be 'code' .* or 'intended'"),
        ({"standardize_form": "paper"}, "has no effect while standardization is off"),
        ({"standardize": True, "standardize_form": "population"}, "standardize_form must be 'code' or 'paper'"),
    ],
)
def test_bad_options_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        build_loss("mlkd", mlkd_context(10), params)


def test_a_call_with_the_records_of_one_view_is_refused():
    loss = build_loss("mlkd", mlkd_context(10), {})
    z = torch.randn(4, 10)
    with pytest.raises(ValueError, match="records of 2 views"):
        loss([record(z)], [record(z)], batch(4))


def test_summary_names_the_temperatures_the_form_and_ls():
    loss = build_loss("mlkd", mlkd_context(10), {"temperature": 2.0, "standardize": True})
    assert loss.summary() == "T = (2, 3, 5, 2, 6), code form, KL logits standardized (code form)"
    plain = build_loss("mlkd", mlkd_context(10), {"form": "intended"})
    assert plain.summary() == "T = (4, 3, 5, 2, 6), intended form, no logit standardization"
    assert "form='intended'" in repr(plain)
