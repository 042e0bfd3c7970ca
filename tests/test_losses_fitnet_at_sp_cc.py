"""hint (FitNet), at, sp and cc: hand computations, regressor sizing, zoo pairs, build-time errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import distill.losses.attention  # noqa: F401  (registers "at")
import distill.losses.correlation  # noqa: F401  (registers "cc")
import distill.losses.fitnet  # noqa: F401  (registers "hint")
import distill.losses.similarity  # noqa: F401  (registers "sp")
from distill.losses import LOSSES, Batch, LossContext, build_loss
from distill.losses.attention import attention_map, attention_transfer_loss
from distill.losses.correlation import correlation_congruence
from distill.losses.fitnet import ConvRegressor, regressor_layout
from distill.losses.similarity import similarity_preserving_loss
from distill.models import create_model, probe_feature_shapes
from distill.models.features import FeatureRecord, FeatureShapes

NAMES = ("hint", "at", "sp", "cc")


def shapes(maps: list[tuple[int, ...]], pooled: int = 4, classes: int = 3) -> FeatureShapes:
    return FeatureShapes(maps=list(maps), preact_maps=list(maps), pooled=(pooled,), logits=(classes,))


def context(student: FeatureShapes, teacher: FeatureShapes | None, student_arch: str = "", teacher_arch: str | None = None) -> LossContext:
    return LossContext(
        student=student,
        teacher=teacher,
        num_classes=student.num_classes,
        dataset_size=8,
        labels=torch.zeros(8, dtype=torch.long),
        student_arch=student_arch,
        teacher_arch=teacher_arch,
    )


def record(maps: list[torch.Tensor], pooled: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> FeatureRecord:
    batch = maps[0].shape[0] if maps else pooled.shape[0]
    pooled = pooled if pooled is not None else torch.zeros(batch, 4)
    logits = logits if logits is not None else torch.zeros(batch, 3)
    return FeatureRecord(maps=list(maps), preact_maps=list(maps), pooled=pooled, logits=logits)


def no_batch(b: int = 2) -> Batch:
    return Batch(inputs=torch.zeros(b, 3, 32, 32), labels=torch.zeros(b, dtype=torch.long), indices=torch.arange(b))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_all_four_need_a_teacher():
    for name in NAMES:
        assert LOSSES.get(name).requires_teacher is True


# ---------------------------------------------------------------- AT


# B=2, C=2, H=W=2
AT_STUDENT = [
    [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]],
    [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]],
]
AT_TEACHER = [
    [[[2.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]],
    [[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 3.0]]],
]


def hand_attention(sample: list, p: float = 2.0) -> list[float]:
    """mean over channels of |a|^p at each position (row-major), then divided by its L2 norm."""
    channels = len(sample)
    positions = [(i, j) for i in range(len(sample[0])) for j in range(len(sample[0][0]))]
    raw = [sum(abs(sample[c][i][j]) ** p for c in range(channels)) / channels for i, j in positions]
    norm = math.sqrt(sum(v * v for v in raw))
    return [v / norm for v in raw]


def test_attention_map_explicit_numbers():
    # sample 0: squares [1,4,9,16] and [0,1,1,0] → channel mean [0.5, 2.5, 5, 8], norm √95.5
    q = attention_map(torch.tensor(AT_STUDENT))
    expected = [v / math.sqrt(95.5) for v in (0.5, 2.5, 5.0, 8.0)]
    assert q[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert q.shape == (2, 4)


def test_at_matches_hand_computation():
    qs = [hand_attention(s) for s in AT_STUDENT]
    qt = [hand_attention(t) for t in AT_TEACHER]
    per_layer = sum((a - b) ** 2 for rs, rt in zip(qs, qt) for a, b in zip(rs, rt)) / (2 * 4)  # batch × positions
    s, t = torch.tensor(AT_STUDENT), torch.tensor(AT_TEACHER)
    # Two layers, each the same pair: the loss sums over layers.
    loss = attention_transfer_loss([s, s], [t, t])
    assert loss.item() == pytest.approx(2 * per_layer, rel=1e-6)
    # Through the registered loss: maps[1:] only (maps[0] is NaN and must be ignored).
    nan = torch.full((2, 2, 2, 2), float("nan"))
    ctx = context(shapes([(2, 2, 2)] * 3), shapes([(2, 2, 2)] * 3))
    at = build_loss("at", ctx, {})
    value = at(record([nan, s, s]), record([nan, t, t], pooled=torch.full((2, 4), float("nan"))), no_batch())
    assert value.item() == pytest.approx(2 * per_layer, rel=1e-6)


def test_at_with_p_other_than_two():
    s, t = torch.tensor(AT_STUDENT), torch.tensor(AT_TEACHER)
    qs = [hand_attention(x, p=3.0) for x in AT_STUDENT]
    qt = [hand_attention(x, p=3.0) for x in AT_TEACHER]
    expected = sum((a - b) ** 2 for rs, rt in zip(qs, qt) for a, b in zip(rs, rt)) / 8
    assert attention_transfer_loss([s], [t], p=3.0).item() == pytest.approx(expected, rel=1e-6)


def test_at_pools_the_larger_map_to_the_smaller():
    torch.manual_seed(0)
    big = torch.randn(2, 3, 4, 4)
    small = torch.randn(2, 5, 2, 2)
    pooled_big = big.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 2×2 block means
    reference = attention_transfer_loss([pooled_big], [small]).item()
    assert attention_transfer_loss([big], [small]).item() == pytest.approx(reference, rel=1e-6)  # student larger
    reference_swapped = attention_transfer_loss([small], [pooled_big]).item()
    assert attention_transfer_loss([small], [big]).item() == pytest.approx(reference_swapped, rel=1e-6)  # teacher larger


def test_at_rejects_different_map_counts_at_build():
    ctx = context(shapes([(16, 32, 32)] * 4), shapes([(16, 32, 32)] * 5), "resnet8x4", "vgg13")
    with pytest.raises(ValueError, match=r"resnet8x4 has 3.*vgg13 has 4"):
        build_loss("at", ctx, {})
    with pytest.raises(ValueError, match="p must be positive"):
        build_loss("at", context(shapes([(2, 2, 2)] * 3), shapes([(2, 2, 2)] * 3)), {"p": 0.0})


# ---------------------------------------------------------------- SP

SP_STUDENT = [[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]], [[[2.0, 1.0], [0.0, 0.0]], [[1.0, 3.0], [0.0, 1.0]]]]
SP_TEACHER = [[[[0.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 0.0]]]]


def flatten(sample: list) -> list[float]:
    return [v for channel in sample for row in channel for v in row]


def hand_similarity(batch: list) -> list[list[float]]:
    flat = [flatten(x) for x in batch]
    gram = [[sum(a * b for a, b in zip(u, v)) for v in flat] for u in flat]
    return [[g / math.sqrt(sum(x * x for x in row)) for g in row] for row in gram]


def test_sp_matches_hand_computation():
    # student sample vectors: u = [1,0,2,1,0,1,1,1], v = [2,1,0,0,1,3,0,1];  u·u = 9, u·v = 6, v·v = 16
    gs = hand_similarity(SP_STUDENT)
    assert gs[0] == pytest.approx([9 / math.sqrt(81 + 36), 6 / math.sqrt(81 + 36)])
    gt = hand_similarity(SP_TEACHER)
    expected = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(2) for j in range(2)) / 2**2
    s, t = torch.tensor(SP_STUDENT), torch.tensor(SP_TEACHER)
    assert similarity_preserving_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    # Registered loss: the last map only.
    nan = torch.full((2, 2, 2, 2), float("nan"))
    sp = build_loss("sp", context(shapes([(2, 2, 2)] * 2), shapes([(2, 2, 2)] * 2)), {})
    assert sp(record([nan, s]), record([nan, t]), no_batch()).item() == pytest.approx(expected, rel=1e-6)


def test_sp_gram_is_float32_under_autocast():
    torch.manual_seed(0)
    s, t = torch.rand(4, 8, 4, 4) * 3, torch.rand(4, 16, 2, 2) * 3
    exact = similarity_preserving_loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = similarity_preserving_loss(s, t)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(exact.item(), rel=1e-5)


# ---------------------------------------------------------------- CC


def test_cc_pure_function_matches_hand_computation():
    e_s = torch.tensor([[1.0, 0.0], [1.5, 2.0], [-1.0, 1.0]])
    e_t = torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 1.0]])
    # Δ = [[1, −2], [0.5, 1], [−3, 0]]; pairs (1,2): 1·0.5 + 2·1 = 2.5; (2,3): 0.5·3 + 1·0 = 1.5; mean over 2 pairs
    assert correlation_congruence(e_s, e_t).item() == pytest.approx(2.0)
    single = correlation_congruence(e_s[:1].requires_grad_(), e_t[:1])
    assert single.item() == 0.0


def test_cc_module_embeds_then_correlates():
    torch.manual_seed(0)
    ctx = context(shapes([(2, 2, 2)], pooled=5), shapes([(2, 2, 2)], pooled=7))
    cc = build_loss("cc", ctx, {"feat_dim": 3})
    assert cc.embed_student.linear.weight.shape == (3, 5) and cc.embed_teacher.linear.weight.shape == (3, 7)
    assert count(cc) == (5 * 3 + 3) + (7 * 3 + 3)
    p_s, p_t = torch.randn(4, 5), torch.randn(4, 7)
    e_s = p_s @ cc.embed_student.linear.weight.t() + cc.embed_student.linear.bias
    e_t = p_t @ cc.embed_teacher.linear.weight.t() + cc.embed_teacher.linear.bias
    delta = (e_s - e_t).abs().tolist()
    expected = sum(sum(a * b for a, b in zip(delta[i], delta[i + 1])) for i in range(3)) / 3
    nan_maps = [torch.full((4, 2, 2, 2), float("nan"))]
    value = cc(record(nan_maps, pooled=p_s, logits=torch.full((4, 3), float("nan"))), record(nan_maps, pooled=p_t), no_batch(4))
    assert value.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- FitNet


def test_regressor_kinds_and_output_shapes():
    cases = [
        ((16, 8, 8), (256, 8, 8), nn.Conv2d, (1, 1), (1, 1)),
        ((8, 8, 8), (4, 4, 4), nn.Conv2d, (3, 3), (2, 2)),
        ((256, 8, 8), (512, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2)),
        ((4, 5, 6), (6, 3, 3), nn.Conv2d, (3, 4), (1, 1)),
    ]
    for s, t, layer, kernel, stride in cases:
        regressor = ConvRegressor(s, t)
        assert type(regressor.conv) is layer and regressor.conv.kernel_size == kernel and regressor.conv.stride == stride
        out = regressor(torch.randn(2, *s))
        assert out.shape == (2, *t)
        assert (out >= 0).all()  # ends with ReLU


def test_regressor_parameter_counts_for_reference_pairs():
    # conv weight + conv bias + BN (γ, β)
    assert count(ConvRegressor((16, 8, 8), (256, 8, 8))) == 16 * 256 * 1 * 1 + 256 + 2 * 256 == 4864  # vgg13→MobileNetV2
    assert count(ConvRegressor((256, 8, 8), (512, 16, 16))) == 256 * 512 * 4 * 4 + 512 + 2 * 512 == 2_098_688  # ResNet50→vgg8
    assert count(ConvRegressor((480, 8, 8), (128, 16, 16))) == 480 * 128 * 16 + 128 + 256 == 983_424  # resnet32x4→ShuffleV1
    assert count(ConvRegressor((128, 16, 16), (128, 16, 16))) == 128 * 128 + 128 + 256  # resnet32x4→resnet8x4
    assert count(ConvRegressor((8, 8, 8), (4, 4, 4))) == 8 * 4 * 9 + 4 + 8


def test_hint_matches_independent_formulation():
    torch.manual_seed(0)
    s_map, t_map = torch.randn(3, 2, 2, 2), torch.randn(3, 4, 2, 2)
    nan = torch.full((3, 1, 1, 1), float("nan"))
    ctx = context(shapes([(1, 1, 1), (1, 1, 1), (2, 2, 2)]), shapes([(1, 1, 1), (1, 1, 1), (4, 2, 2)]))
    hint = build_loss("hint", ctx, {})
    hint.train()
    conv = hint.regressor.conv
    assert conv.kernel_size == (1, 1)
    with torch.no_grad():
        hint.regressor.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        hint.regressor.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    # 1×1 conv, batch-statistics BN (biased variance), ReLU, then the mean of squared errors.
    z = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], s_map) + conv.bias.view(1, -1, 1, 1)
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    y = (z - mean) / torch.sqrt(var + 1e-5) * hint.regressor.bn.weight.view(1, -1, 1, 1) + hint.regressor.bn.bias.view(1, -1, 1, 1)
    expected = ((y.clamp_min(0) - t_map) ** 2).sum() / t_map.numel()
    value = hint(record([nan, nan, s_map]), record([nan, nan, t_map]), no_batch(3))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_hint_rejects_incompatible_sizes_at_build():
    with pytest.raises(ValueError, match=r"student map 4×3×3 onto the teacher map 4×5×5"):
        build_loss("hint", context(shapes([(1, 1, 1)] * 2 + [(4, 3, 3)]), shapes([(1, 1, 1)] * 2 + [(4, 5, 5)])), {})
    with pytest.raises(ValueError, match=r"4×8×6.*4×4×4"):  # heights halve, widths do not
        regressor_layout((4, 8, 6), (4, 4, 4))
    with pytest.raises(ValueError, match=r"4×2×2.*4×4×8"):  # heights double, widths do not
        regressor_layout((4, 2, 2), (4, 4, 8))
    with pytest.raises(ValueError, match=r"hint_layer 4 is out of range: the student resnet8x4 has 4"):
        build_loss("hint", context(shapes([(1, 1, 1)] * 4), shapes([(1, 1, 1)] * 5), "resnet8x4", "vgg13"), {"hint_layer": 4})
    with pytest.raises(ValueError, match="needs a teacher"):
        build_loss("hint", context(shapes([(1, 1, 1)] * 4), None), {})


# ---------------------------------------------------------------- zoo pairs


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    models = {name: create_model(name, num_classes=100) for name in ("resnet32x4", "resnet8x4", "ShuffleV1")}
    return {name: (model, probe_feature_shapes(model, (3, 32, 32))) for name, model in models.items()}


@pytest.mark.parametrize("student_arch", ["resnet8x4", "ShuffleV1"])
def test_zoo_pair_forward_backward(zoo, student_arch):
    teacher_arch = "resnet32x4"
    student, s_shapes = zoo[student_arch]
    teacher, t_shapes = zoo[teacher_arch]
    student.train()
    teacher.eval()
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    # The teacher's record deliberately keeps its autograd graph: each loss itself must cut it.
    s_record, t_record = student(images, features=True), teacher(images, features=True)
    student_params, teacher_params = list(student.parameters()), list(teacher.parameters())
    for name in NAMES:
        loss = build_loss(name, context(s_shapes, t_shapes, student_arch, teacher_arch), {})
        if name == "hint":  # the reference's table: resnet8x4 gets a 1×1 conv, ShuffleV1 (480×8×8 → 128×16×16) a 4×4 convT
            assert type(loss.regressor.conv) is (nn.ConvTranspose2d if student_arch == "ShuffleV1" else nn.Conv2d)
        own = list(loss.trainable_parameters())
        assert bool(own) == (name in ("hint", "cc")), name
        value = loss(s_record, t_record, no_batch(4))
        assert value.dim() == 0 and torch.isfinite(value), name
        grads = torch.autograd.grad(value, [*student_params, *own, *teacher_params], retain_graph=True, allow_unused=True)
        g_student = grads[: len(student_params)]
        g_own = grads[len(student_params) : len(student_params) + len(own)]
        g_teacher = grads[len(student_params) + len(own) :]
        assert any(g is not None and g.abs().sum() > 0 for g in g_student), name
        assert all(g is not None and torch.isfinite(g).all() for g in g_own), name
        assert all(g is None for g in g_teacher), name
