"""ce and kd against hand computations, and the loss registry's contract."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError, UnknownNameError
from distill.losses import LOSSES, Batch, DistillLoss, LossContext, build_loss, loss_parameters, register_loss
from distill.losses.kd import kd_divergence
from distill.models.features import FeatureRecord, FeatureShapes


def record(logits: torch.Tensor) -> FeatureRecord:
    pooled = torch.zeros(logits.shape[0], 4)
    return FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=logits)


def context(num_classes: int = 3) -> LossContext:
    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(4,), logits=(num_classes,))
    return LossContext(student=shapes, teacher=shapes, num_classes=num_classes, dataset_size=10, labels=torch.zeros(10, dtype=torch.long))


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_ce_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    loss = build_loss("ce", context(), {})(record(logits), None, Batch(logits, labels, torch.arange(2)))
    expected = -(math.log(softmax([2.0, 0.5, -1.0], 1)[0]) + math.log(softmax([0.0, 1.0, 3.0], 1)[1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kd_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.3, -0.2, 0.1]]
    teacher = [[3.0, 0.0, 1.0], [0.0, 0.0, 2.0]]
    t = 4.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected = expected / len(student) * t * t
    loss = build_loss("kd", context(), {"temperature": t})(
        record(torch.tensor(student)), record(torch.tensor(teacher)), Batch(torch.zeros(2), torch.zeros(2), torch.arange(2))
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(5, 7)
    assert kd_divergence(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_divergence(logits, torch.randn(5, 7), 4.0).item() > 0


def test_kd_gradient_reaches_the_student_only():
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6)
    kd_divergence(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        build_loss("kd", context(), {"temperature": 0.0})


def test_loss_parameters_come_from_the_signature():
    params = loss_parameters(LOSSES.get("kd"))
    assert list(params) == ["temperature", "standardize", "standardize_form"]
    assert params["temperature"].annotation is float and params["temperature"].default == 4.0
    assert not LOSSES.get("ce").requires_teacher and LOSSES.get("kd").requires_teacher


def test_unknown_loss_names_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'kd'"):
        LOSSES.get("kdd")


def test_registering_a_name_twice_is_refused():
    class Twice(DistillLoss):
        def __init__(self, context: LossContext) -> None:
            super().__init__(context)

    with pytest.raises(DistillError, match="already registered"):
        register_loss("kd")(Twice)


def test_a_loss_parameter_without_annotation_is_refused():
    class Unannotated(DistillLoss):
        def __init__(self, context: LossContext, *, scale=1.0) -> None:
            super().__init__(context)

    with pytest.raises(DistillError, match="type annotation"):
        register_loss("test-unannotated")(Unannotated)


def no_teacher_context() -> LossContext:
    student = context().student
    return LossContext(student=student, teacher=None, num_classes=3, dataset_size=10, labels=torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("requires_teacher", [True, False])
def test_a_plugin_loss_gets_the_teacher_check_from_its_declaration(requires_teacher, monkeypatch):
    """The base class enforces ``requires_teacher``: a plugin writes no check of its own."""

    class Plugin(DistillLoss):
        def __init__(self, context: LossContext) -> None:
            super().__init__(context)

        def forward(self, student, teacher, batch):
            return student.logits.sum() * 0.0

    Plugin.requires_teacher = requires_teacher
    monkeypatch.setitem(LOSSES._entries, "test-plugin", Plugin)
    if requires_teacher:
        with pytest.raises(ValueError, match=r"^Plugin needs a teacher \(requires_teacher = True\), but none was given"):
            build_loss("test-plugin", no_teacher_context(), {})
    else:
        assert isinstance(build_loss("test-plugin", no_teacher_context(), {}), Plugin)


@pytest.mark.parametrize("loss_type", ["kd", "at", "segmental", "crd"])
def test_built_in_losses_refuse_a_missing_teacher_with_the_same_message(loss_type):
    cls = LOSSES.get(loss_type)
    with pytest.raises(ValueError, match=rf"^{cls.__name__} needs a teacher .* or remove this term"):
        build_loss(loss_type, no_teacher_context(), {})
