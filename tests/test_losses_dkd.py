"""DKD (Zhao et al., CVPR 2022): hand computations, the KD decomposition, warm-up, gradients, recipe fragments."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import distill.losses.dkd  # noqa: F401  (registers "dkd" until distill.losses imports it)
from distill.benchmark.tasks import TASKS
from distill.losses import LOSSES, Batch, LossContext, build_loss, loss_parameters
from distill.losses.dkd import dkd_loss, dkd_terms
from distill.models.features import FeatureRecord, FeatureShapes

REPO = Path(__file__).resolve().parent.parent
FRAGMENTS = REPO / "recipes" / "cifar100" / "_base_" / "dkd"

# β of the authors' CIFAR-100 configs (mdistiller configs/cifar100/dkd/*.yaml); cfg.py default 8 elsewhere.
EXPECTED_BETA = {
    "wrn_40_2-wrn_16_2": 6.0,
    "wrn_40_2-wrn_40_1": 6.0,
    "resnet56-resnet20": 2.0,
    "resnet110-resnet20": 8.0,  # no config: cfg.py default
    "resnet110-resnet32": 2.0,
    "resnet32x4-resnet8x4": 8.0,
    "vgg13-vgg8": 6.0,
    "vgg13-MobileNetV2": 6.0,
    "ResNet50-MobileNetV2": 8.0,
    "ResNet50-vgg8": 8.0,  # no config: cfg.py default
    "resnet32x4-ShuffleV1": 8.0,
    "resnet32x4-ShuffleV2": 8.0,
    "wrn_40_2-ShuffleV1": 8.0,
}


def record(logits: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=[], preact_maps=[], pooled=torch.zeros(logits.shape[0], 2), logits=logits)


def context(num_classes: int = 4) -> LossContext:
    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(2,), logits=(num_classes,))
    return LossContext(student=shapes, teacher=shapes, num_classes=num_classes, dataset_size=8, labels=torch.zeros(8, dtype=torch.long))


def batch(labels: list[int]) -> Batch:
    n = len(labels)
    return Batch(inputs=torch.zeros(n, 3), labels=torch.tensor(labels), indices=torch.arange(n))


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 0.1, 2.5]]
TEACHER = [[3.0, 0.0, 1.0, -2.0], [0.0, 1.5, -1.0, 4.0]]
LABELS = [0, 3]


def hand_terms(student_row, teacher_row, label, t):
    """TCKD and NCKD (with T²) of one sample, from explicitly written softmaxes."""
    p_s, p_t = softmax(student_row, t), softmax(teacher_row, t)
    b_s = [p_s[label], 1 - p_s[label]]
    b_t = [p_t[label], 1 - p_t[label]]
    # the non-target distributions: a softmax over the other three logits
    others_s = [v for j, v in enumerate(student_row) if j != label]
    others_t = [v for j, v in enumerate(teacher_row) if j != label]
    return t * t * kl(b_t, b_s), t * t * kl(softmax(others_t, t), softmax(others_s, t))


def test_dkd_matches_hand_computation():
    t, alpha, beta = 4.0, 1.0, 8.0
    expected = 0.0
    for s_row, t_row, label in zip(STUDENT, TEACHER, LABELS):
        tckd, nckd = hand_terms(s_row, t_row, label, t)
        expected += alpha * tckd + beta * nckd
    expected /= len(STUDENT)
    loss = build_loss("dkd", context(), {"alpha": alpha, "beta": beta, "temperature": t, "warmup": 20})
    loss.start_epoch(40, 240)  # past the warm-up
    value = loss(record(torch.tensor(STUDENT)), record(torch.tensor(TEACHER)), batch(LABELS))
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_terms_match_hand_computation_per_sample(t):
    tckd, nckd = dkd_terms(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(LABELS), t)
    for i, (s_row, t_row, label) in enumerate(zip(STUDENT, TEACHER, LABELS)):
        hand_tckd, hand_nckd = hand_terms(s_row, t_row, label, t)
        assert tckd[i].item() == pytest.approx(hand_tckd, rel=1e-10)
        assert nckd[i].item() == pytest.approx(hand_nckd, rel=1e-10)


def test_alpha_and_beta_weight_the_two_terms():
    s, te, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    tckd, nckd = dkd_terms(s, te, y, 4.0)
    assert dkd_loss(s, te, y, 1.0, 0.0, 4.0).item() == pytest.approx(tckd.mean().item(), rel=1e-6)
    assert dkd_loss(s, te, y, 0.0, 1.0, 4.0).item() == pytest.approx(nckd.mean().item(), rel=1e-6)
    assert dkd_loss(s, te, y, 2.0, 6.0, 4.0).item() == pytest.approx((2 * tckd + 6 * nckd).mean().item(), rel=1e-6)


def test_matches_the_authors_masked_formulation():
    """The reference masks the target logit by subtracting 1000 (after dividing by T); same numbers here."""
    torch.manual_seed(0)
    s, te = torch.randn(16, 100, dtype=torch.float64) * 3, torch.randn(16, 100, dtype=torch.float64) * 3
    y = torch.randint(0, 100, (16,))
    t = 4.0
    gt = F.one_hot(y, 100).to(s.dtype)
    p_s, p_t = F.softmax(s / t, dim=1), F.softmax(te / t, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() / 16 * t * t
    q_t = F.softmax(te / t - 1000.0 * gt, dim=1)
    log_q_s = F.log_softmax(s / t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") / 16 * t * t
    reference = 1.0 * tckd + 8.0 * nckd
    assert dkd_loss(s, te, y, 1.0, 8.0, t).item() == pytest.approx(reference.item(), rel=1e-9)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_decomposes_into_tckd_and_weighted_nckd(t):
    """KD = TCKD + (1 − p_t^T) · NCKD per sample (Zhao et al., Eq. 7), with α = β = 1 on the same T² scale."""
    torch.manual_seed(1)
    s, te = torch.randn(8, 10, dtype=torch.float64) * 2, torch.randn(8, 10, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (8,))
    tckd, nckd = dkd_terms(s, te, y, t)
    kd = F.kl_div(F.log_softmax(s / t, 1), F.log_softmax(te / t, 1), reduction="none", log_target=True).sum(1) * t * t
    teacher_target_prob = F.softmax(te / t, 1).gather(1, y[:, None]).squeeze(1)
    for i in range(8):
        assert kd[i].item() == pytest.approx(tckd[i].item() + (1 - teacher_target_prob[i].item()) * nckd[i].item(), rel=1e-9)


def test_warmup_scales_linearly_through_start_epoch():
    s, te, b = record(torch.tensor(STUDENT)), record(torch.tensor(TEACHER)), batch(LABELS)
    loss = build_loss("dkd", context(), {"warmup": 20})
    full = dkd_loss(s.logits, te.logits, b.labels, 1.0, 8.0, 4.0).item()
    expected = {1: 1 / 20, 10: 0.5, 19: 19 / 20, 20: 1.0, 21: 1.0, 240: 1.0}
    for epoch, factor in expected.items():
        loss.start_epoch(epoch, 240)
        assert loss(s, te, b).item() == pytest.approx(factor * full, rel=1e-6)
    no_ramp = build_loss("dkd", context(), {"warmup": 0})
    no_ramp.start_epoch(1, 240)
    assert no_ramp(s, te, b).item() == pytest.approx(full, rel=1e-6)


def test_gradient_reaches_the_student_logits_only():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    loss = build_loss("dkd", context(), {})
    loss.start_epoch(1, 240)
    loss(record(student), record(teacher), batch(LABELS)).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert list(loss.trainable_parameters()) == []


def test_zero_for_identical_logits_and_finite_for_a_saturated_teacher():
    logits = torch.randn(4, 100)
    y = torch.randint(0, 100, (4,))
    assert dkd_loss(logits, logits, y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    # a teacher whose target probability rounds to 1 in float32 (log(1 − p_t) would be −inf)
    teacher = torch.zeros(4, 100)
    teacher[torch.arange(4), y] = 200.0
    student = torch.randn(4, 100, requires_grad=True)
    value = dkd_loss(student, teacher, y, 1.0, 8.0, 1.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_parameters_and_validation():
    params = loss_parameters(LOSSES.get("dkd"))
    assert {name: p.default for name, p in params.items()} == {
        "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20, "standardize": False, "standardize_form": "code"
    }
    assert params["warmup"].annotation is int and params["beta"].annotation is float
    assert LOSSES.get("dkd").requires_teacher
    for bad in ({"temperature": 0.0}, {"warmup": -1}, {"beta": -1.0}):
        with pytest.raises(ValueError):
            build_loss("dkd", context(), bad)


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_recipe_fragment(task, tmp_path):
    path = FRAGMENTS / f"{task}.yaml"
    text = path.read_text()
    assert text.startswith("# Source: ")
    data = yaml.safe_load(text)
    assert set(data) == {"losses"}
    assert set(data["losses"]) == {"ce", "dkd"}
    assert data["losses"]["ce"] == {"weight": 1.0}
    dkd = data["losses"]["dkd"]
    assert set(dkd) == {"weight", "alpha", "beta", "temperature", "warmup"}
    assert dkd == {"weight": 1.0, "alpha": 1.0, "beta": EXPECTED_BETA[task], "temperature": 4.0, "warmup": 20}
    # composes with the shared CIFAR-100 base and the teacher into a valid recipe
    from distill.benchmark.tasks import get_task
    from distill.recipe.load import load_recipe

    spec = get_task(task)
    base = REPO / "recipes" / "cifar100" / "_base_"
    recipe_file = tmp_path / f"{task}.yaml"
    recipe_file.write_text(
        yaml.safe_dump(
            {
                "_base_": [str(base / "cifar100.yaml"), str(base / "teacher" / f"{spec.teacher}.yaml"), str(path)],
                "student": {"arch": spec.student},
            }
        )
    )
    recipe = load_recipe(recipe_file)
    assert recipe.losses["dkd"].params["beta"] == EXPECTED_BETA[task]
    assert recipe.losses["dkd"].params["warmup"] == 20


def test_one_fragment_per_task():
    assert sorted(p.stem for p in FRAGMENTS.glob("*.yaml")) == sorted(task.name for task in TASKS)
