"""ab, ft and fsp: formulas against hand computations, and their init stages on real zoo pairs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import distill.losses.ab  # noqa: F401  (registers "ab")
import distill.losses.fsp  # noqa: F401  (registers "fsp")
import distill.losses.ft  # noqa: F401  (registers "ft")
from distill.losses import Batch, LossContext, build_loss, loss_parameters
from distill.losses.ab import ABLoss, LinearConvRegressor, ab_criterion, ab_layer_weights, ab_loss
from distill.losses.fsp import fsp_loss, fsp_matrix
from distill.losses.ft import FT_INIT_LR, factor_transfer_loss, ft_init_lr
from distill.models import create_model, probe_feature_shapes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches of two images gain nothing from intra-op threads, and lose a lot to them on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    _MODELS.clear()


# ---------------------------------------------------------------- formulas


def test_ab_criterion_element_cases():
    m = 1.0
    # (s, t, expected): teacher off (t ≤ 0) → (s+m)² while s > −m; teacher on (t > 0) → (s−m)² while s ≤ m.
    cases = [
        (0.5, -1.0, 2.25),   # off, s above −m
        (-0.5, 0.0, 0.25),   # t = 0 counts as off
        (-1.0, -2.0, 0.0),   # off, s exactly −m: satisfied
        (-3.0, -2.0, 0.0),   # off, s below −m
        (0.5, 2.0, 0.25),    # on, s below +m
        (1.0, 2.0, 0.0),     # on, s exactly +m: (s−m)² = 0
        (-2.0, 0.1, 9.0),    # on, s far below
        (3.0, 0.1, 0.0),     # on, s above +m
    ]
    s = torch.tensor([c[0] for c in cases])
    t = torch.tensor([c[1] for c in cases])
    expected = torch.tensor([c[2] for c in cases])
    assert torch.allclose(ab_criterion(s, t, m), expected)
    # margin 2: off, s = −1.5 > −2 → (0.5)²
    assert ab_criterion(torch.tensor([-1.5]), torch.tensor([-1.0]), 2.0).item() == pytest.approx(0.25)


def test_ab_loss_weights_and_scale_by_hand():
    assert ab_layer_weights(3) == [0.25, 0.5, 1.0]
    torch.manual_seed(0)
    students = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    teachers = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    margin = 1.0
    expected = 0.0
    for weight, s, t in zip([0.5, 1.0], students, teachers):
        layer = 0.0
        for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
            if tv <= 0 and sv > -margin:
                layer += (sv + margin) ** 2
            if tv > 0 and sv <= margin:
                layer += (sv - margin) ** 2
        expected += weight * layer / 2 * 3 / 1000
    assert ab_loss(students, teachers, margin).item() == pytest.approx(expected, rel=1e-5)


def test_fsp_matrix_by_explicit_loops():
    torch.manual_seed(0)
    first = torch.randn(2, 3, 4, 4)  # larger: pooled to 2×2
    second = torch.randn(2, 5, 2, 2)
    pooled = torch.zeros(2, 3, 2, 2)
    for b, c, y, x in itertools.product(range(2), range(3), range(2), range(2)):
        pooled[b, c, y, x] = first[b, c, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean()
    expected = torch.zeros(2, 3, 5)
    for b, i, j in itertools.product(range(2), range(3), range(5)):
        total = 0.0
        for y, x in itertools.product(range(2), range(2)):
            total += pooled[b, i, y, x].item() * second[b, j, y, x].item()
        expected[b, i, j] = total / 4
    assert torch.allclose(fsp_matrix(first, second), expected, atol=1e-6)
    # the pooling is symmetric in which map is the larger
    assert torch.allclose(fsp_matrix(second, first), expected.transpose(1, 2), atol=1e-6)


def test_fsp_loss_sums_the_mean_squared_differences():
    torch.manual_seed(1)
    s = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    t = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    expected = 0.0
    for i in range(2):
        gs, gt = fsp_matrix(s[i], s[i + 1]), fsp_matrix(t[i], t[i + 1])
        batch, m, n = gs.shape
        expected += ((gs - gt) ** 2).sum().item() / (batch * m * n)
    assert fsp_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_factor_transfer_loss_by_hand():
    # student factor 1×2×2×2 (same size); channel mean of squares, flatten, L2-normalise, mean |difference|
    fs = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]])
    ft = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 4.0]]]])
    ms = [(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (1 + 1) / 2]  # [1, 2, 2, 1]
    mt = [(9 + 1) / 2, 0.0, 0.0, (0 + 16) / 2]  # [5, 0, 0, 8]
    ns = sum(v * v for v in ms) ** 0.5
    nt = sum(v * v for v in mt) ** 0.5
    expected = sum(abs(a / ns - b / nt) for a, b in zip(ms, mt)) / 4
    assert factor_transfer_loss(fs, ft).item() == pytest.approx(expected, rel=1e-6)
    # a larger teacher factor is average-pooled to the student's size first
    big = ft.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert factor_transfer_loss(fs, big).item() == pytest.approx(expected, rel=1e-6)


def test_ft_init_lr_rule():
    for arch in ["resnet8", "resnet20", "resnet110", "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1"]:
        assert ft_init_lr(arch) == FT_INIT_LR
    for arch in ["ShuffleV1", "ShuffleV2", "MobileNetV2", "vgg8", "ResNet50", ""]:
        assert ft_init_lr(arch) is None


def test_ab_connector_is_fitnets_regressor_without_relu():
    reg = LinearConvRegressor((4, 2, 2), (3, 4, 4)).eval()
    x = torch.randn(5, 4, 2, 2)
    out = reg(x)
    assert out.shape == (5, 3, 4, 4) and (out < 0).any()  # no ReLU
    assert torch.allclose(out, reg.bn(reg.conv(x)))


# ---------------------------------------------------------------- real zoo pairs


_MODELS: dict[str, tuple[nn.Module, object]] = {}


def _model(arch: str):
    """A zoo model and its feature shapes, built once per module (gradients cleared on every use)."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        model = create_model(arch)
        _MODELS[arch] = (model, probe_feature_shapes(model, (3, 32, 32)))
    model, shapes = _MODELS[arch]
    model.zero_grad(set_to_none=True)
    model.train()
    return model, shapes


def _build(loss_type: str, student_arch: str, teacher_arch: str, params: dict | None = None):
    torch.manual_seed(0)
    (student, student_shapes), (teacher, teacher_shapes) = _model(student_arch), _model(teacher_arch)
    context = LossContext(
        student=student_shapes,
        teacher=teacher_shapes,
        num_classes=100,
        dataset_size=100,
        labels=torch.zeros(100, dtype=torch.long),
        student_arch=student_arch,
        teacher_arch=teacher_arch,
        batch_size=4,
    )
    return build_loss(loss_type, context, params or {}), student, teacher


def _forward(student, teacher, batch_size: int = 2):
    x = torch.randn(batch_size, 3, 32, 32)
    batch = Batch(inputs=x, labels=torch.zeros(batch_size, dtype=torch.long), indices=torch.arange(batch_size))
    return student(x, features=True), teacher(x, features=True), batch  # teacher with autograd on, on purpose


def _grad_norm(module: nn.Module) -> float:
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def _no_teacher_grads(teacher: nn.Module) -> bool:
    return all(p.grad is None for p in teacher.parameters())


AB_FT_PAIRS = [("resnet8x4", "resnet32x4"), ("ShuffleV1", "resnet32x4")]


@pytest.mark.parametrize("student_arch,teacher_arch", AB_FT_PAIRS)
def test_ab_on_zoo_pairs(student_arch, teacher_arch):
    loss, student, teacher = _build("ab", student_arch, teacher_arch)
    assert isinstance(loss, ABLoss) and set(loss_parameters(type(loss))) == {"margin"}
    kinds = [type(c) for c in loss.connectors]
    if student_arch == "resnet8x4":
        assert kinds == [nn.Identity] * 3
    else:
        assert kinds == [LinearConvRegressor] * 3 and all(c.kind == "convT4x4_stride2" for c in loss.connectors)
    stage = loss.init_stage()
    assert stage.modules == list(loss.connectors)
    assert stage.train_student_features and stage.lr is None and stage.epochs == 30 and stage.freeze_after
    # one init step: the connectors (if any have parameters) and a student feature layer get gradients
    s, t, batch = _forward(student, teacher)
    value = stage.loss(s, t, batch)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    if student_arch != "resnet8x4":
        assert all(_grad_norm(c) > 0 for c in loss.connectors)
    assert _grad_norm(student.feature_modules()[0]) > 0
    assert _no_teacher_grads(teacher)
    # main stage: a finite zero; nothing trainable
    s, t, batch = _forward(student, teacher)
    main = loss(s, t, batch)
    assert main.dim() == 0 and main.item() == 0.0
    assert list(loss.trainable_parameters()) == []


@pytest.mark.parametrize("student_arch,teacher_arch", AB_FT_PAIRS)
def test_ft_on_zoo_pairs(student_arch, teacher_arch):
    loss, student, teacher = _build("ft", student_arch, teacher_arch)
    assert set(loss_parameters(type(loss))) == {"rate"}
    c_t = loss.context.teacher.maps[-1][0]
    assert loss.factor_channels == c_t // 2
    assert loss.paraphraser.encoder[-2].out_channels == loss.translator.encoder[-2].num_features == c_t // 2
    stage = loss.init_stage()
    assert stage.modules == [loss.paraphraser]
    assert not stage.train_student_features and stage.freeze_after and stage.epochs == 30
    assert stage.lr == (0.01 if student_arch == "resnet8x4" else None)
    # one init step trains the paraphraser only
    s, t, batch = _forward(student, teacher)
    value = stage.loss(s, t, batch)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert _grad_norm(loss.paraphraser) > 0
    assert _no_teacher_grads(teacher)
    assert all(p.grad is None for p in student.parameters())
    # the trainer's freeze (freeze_after), then a main-stage step
    loss.paraphraser.zero_grad(set_to_none=True)
    loss.paraphraser.requires_grad_(False)
    loss.train()
    assert not loss.paraphraser.training and loss.translator.training
    trainable = {id(p) for p in loss.trainable_parameters()}
    assert trainable == {id(p) for p in loss.translator.parameters()}
    assert not trainable & {id(p) for p in loss.paraphraser.parameters()}
    s, t, batch = _forward(student, teacher)
    main = loss(s, t, batch)
    assert main.dim() == 0 and torch.isfinite(main) and main.item() > 0
    main.backward()
    assert _grad_norm(loss.translator) > 0 and _grad_norm(student.feature_modules()[-1]) > 0
    assert all(p.grad is None for p in loss.paraphraser.parameters())
    assert _no_teacher_grads(teacher)


def test_ft_paraphraser_gets_no_gradient_even_when_not_frozen():
    loss, student, teacher = _build("ft", "resnet8x4", "resnet32x4")
    s, t, batch = _forward(student, teacher)
    loss(s, t, batch).backward()
    assert all(p.grad is None for p in loss.paraphraser.parameters())


@pytest.mark.parametrize("student_arch,teacher_arch", [("resnet8x4", "resnet32x4"), ("resnet20", "resnet56")])
def test_fsp_on_zoo_pairs(student_arch, teacher_arch):
    loss, student, teacher = _build("fsp", student_arch, teacher_arch)
    assert loss_parameters(type(loss)) == {}
    stage = loss.init_stage()
    assert stage.modules == [] and stage.train_student_features and stage.lr is None and stage.epochs == 30
    s, t, batch = _forward(student, teacher)
    value = stage.loss(s, t, batch)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert _grad_norm(student.feature_modules()[0]) > 0
    assert _no_teacher_grads(teacher)
    s, t, batch = _forward(student, teacher)
    main = loss(s, t, batch)
    assert main.dim() == 0 and main.item() == 0.0
    assert list(loss.trainable_parameters()) == []


@pytest.mark.parametrize("student_arch,teacher_arch", [("wrn_40_1", "wrn_40_2"), ("MobileNetV2", "vgg13")])
def test_fsp_refuses_pairs_with_different_channels(student_arch, teacher_arch):
    with pytest.raises(ValueError, match="FSP") as error:
        _build("fsp", student_arch, teacher_arch)
    message = str(error.value)
    assert "equal shapes" in message and student_arch in message and teacher_arch in message
    assert "student channels [" in message and "teacher channels [" in message
