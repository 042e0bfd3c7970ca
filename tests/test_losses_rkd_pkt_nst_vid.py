"""rkd, pkt, nst and vid against loop computations, their properties, and real zoo pairs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import distill.losses.nst  # noqa: F401  (importing a loss file registers it)
import distill.losses.pkt  # noqa: F401
import distill.losses.rkd  # noqa: F401
import distill.losses.vid  # noqa: F401
from distill.losses import LOSSES, Batch, LossContext, build_loss, loss_parameters
from distill.losses.nst import nst_mmd
from distill.losses.pkt import pkt_divergence
from distill.losses.rkd import rkd_angle_loss, rkd_distance_loss
from distill.losses.vid import VIDRegressor
from distill.models import create_model, probe_feature_shapes
from distill.models.features import FeatureRecord, FeatureShapes

NAMES = ["rkd", "pkt", "nst", "vid"]


# ---------------------------------------------------------------- helpers


def shapes(maps: list[tuple[int, ...]], pooled: int) -> FeatureShapes:
    return FeatureShapes(maps=maps, preact_maps=maps, pooled=(pooled,), logits=(10,))


def context(student: FeatureShapes, teacher: FeatureShapes | None) -> LossContext:
    labels = torch.zeros(8, dtype=torch.long)
    return LossContext(student=student, teacher=teacher, num_classes=10, dataset_size=8, labels=labels)


def record(maps: list[torch.Tensor], pooled: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=maps, preact_maps=maps, pooled=pooled, logits=torch.zeros(pooled.shape[0], 10))


def record_shapes(rec: FeatureRecord) -> FeatureShapes:
    return rec.shapes()


def batch(size: int) -> Batch:
    return Batch(torch.zeros(size, 3, 32, 32), torch.zeros(size, dtype=torch.long), torch.arange(size))


def huber(x: float, y: float) -> float:
    diff = abs(x - y)
    return 0.5 * diff * diff if diff <= 1 else diff - 0.5


def vec(rows: torch.Tensor) -> list[list[float]]:
    return rows.tolist()


def sub(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


# ---------------------------------------------------------------- RKD


def loop_normalised_distances(x: list[list[float]]) -> list[list[float]]:
    n = len(x)
    d = [[norm(sub(x[i], x[j])) if i != j else 0.0 for j in range(n)] for i in range(n)]
    positive = [v for row in d for v in row if v > 0]
    mu = sum(positive) / len(positive)
    return [[v / mu for v in row] for row in d]


def loop_rkd_distance(s: list[list[float]], t: list[list[float]]) -> float:
    ds, dt = loop_normalised_distances(s), loop_normalised_distances(t)
    n = len(s)
    return sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2


def loop_angle(x: list[list[float]], i: int, j: int, k: int) -> float:
    if i == j or k == j:  # e_jj is the zero vector
        return 0.0
    e_ij = sub(x[i], x[j])
    e_kj = sub(x[k], x[j])
    return dot(e_ij, e_kj) / (norm(e_ij) * norm(e_kj))


def loop_rkd_angle(s: list[list[float]], t: list[list[float]]) -> float:
    n = len(s)
    triplets = itertools.product(range(n), repeat=3)
    total = sum(huber(loop_angle(s, i, j, k), loop_angle(t, i, j, k)) for i, j, k in triplets)
    return total / n**3


def test_rkd_matches_loop_computation():
    torch.manual_seed(0)
    student = torch.randn(5, 3)
    teacher = torch.randn(5, 6) * 3.0  # different dimension and scale
    s, t = vec(student), vec(teacher)
    expected_d = loop_rkd_distance(s, t)
    expected_a = loop_rkd_angle(s, t)
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(expected_d, rel=1e-5)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(expected_a, rel=1e-5)

    loss = build_loss("rkd", context(shapes([], 3), shapes([], 6)), {})
    value = loss(record([], student), record([], teacher), batch(5))
    assert value.item() == pytest.approx(25.0 * expected_d + 50.0 * expected_a, rel=1e-5)
    weighted = build_loss("rkd", context(shapes([], 3), shapes([], 6)), {"distance_weight": 2.0, "angle_weight": 0.5})
    value = weighted(record([], student), record([], teacher), batch(5))
    assert value.item() == pytest.approx(2.0 * expected_d + 0.5 * expected_a, rel=1e-5)


def test_rkd_huber_uses_both_branches():
    # angles of opposite sign differ by more than 1: exercises the linear branch of l_δ
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.2]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]])
    s, t = vec(student), vec(teacher)
    diffs = [abs(loop_angle(s, i, j, k) - loop_angle(t, i, j, k)) for i, j, k in itertools.product(range(3), repeat=3)]
    assert max(diffs) > 1 and 0 < min(d for d in diffs if d > 0) < 1
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(loop_rkd_angle(s, t), rel=1e-5)


def test_rkd_is_zero_for_identical_embeddings_and_scale_invariant():
    torch.manual_seed(1)
    x = torch.randn(8, 16)
    loss = build_loss("rkd", context(shapes([], 16), shapes([], 16)), {})
    assert loss(record([], x), record([], x.clone()), batch(8)).item() == pytest.approx(0.0, abs=1e-6)

    teacher = torch.randn(8, 16)
    base = rkd_distance_loss(x, teacher).item()
    assert base > 0
    for scale in (0.01, 7.5, 1000.0):
        assert rkd_distance_loss(x * scale, teacher).item() == pytest.approx(base, rel=1e-4)
        assert rkd_distance_loss(x, teacher * scale).item() == pytest.approx(base, rel=1e-4)
    # the distance loss of the scaled student is 0 against its unscaled self
    assert rkd_distance_loss(x * 3.0, x).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_is_finite_for_a_single_sample_and_coincident_embeddings():
    one = torch.randn(1, 4, requires_grad=True)
    same = torch.ones(3, 4, requires_grad=True)
    loss = build_loss("rkd", context(shapes([], 4), shapes([], 4)), {})
    for student in (one, same):
        value = loss(record([], student), record([], torch.randn(student.shape[0], 4)), batch(student.shape[0]))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_rkd_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative"):
        build_loss("rkd", context(shapes([], 4), shapes([], 4)), {"angle_weight": -1.0})


# ---------------------------------------------------------------- PKT


def loop_pkt(s: list[list[float]], t: list[list[float]], eps: float = 1e-7) -> float:
    def probabilities(x: list[list[float]]) -> list[list[float]]:
        unit = [[v / (norm(row) + eps) for v in row] for row in x]
        n = len(x)
        k = [[(dot(unit[i], unit[j]) + 1.0) / 2.0 for j in range(n)] for i in range(n)]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    p_s, p_t = probabilities(s), probabilities(t)
    n = len(s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
    return total / n**2  # the reference averages over the B² entries


def test_pkt_matches_loop_computation():
    torch.manual_seed(2)
    student = torch.randn(6, 4)
    teacher = torch.randn(6, 9)
    expected = loop_pkt(vec(student), vec(teacher))
    assert pkt_divergence(student, teacher).item() == pytest.approx(expected, rel=1e-4)
    loss = build_loss("pkt", context(shapes([], 4), shapes([], 9)), {})
    assert loss(record([], student), record([], teacher), batch(6)).item() == pytest.approx(expected, rel=1e-4)


def test_pkt_is_zero_for_identical_embeddings_and_positive_otherwise():
    torch.manual_seed(3)
    x = torch.randn(8, 5)
    assert pkt_divergence(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # cosine similarity: invariant to a positive scaling of every vector
    assert pkt_divergence(x * 4.0, x).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt_divergence(x, torch.randn(8, 5)).item() > 0


# ---------------------------------------------------------------- NST


def loop_nst(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Explicit kernel sums; the teacher (2× the student's size) is averaged over 2×2 blocks."""
    b, _, h, w = student.shape
    def block_mean(n: int, c: int, y: int, x: int) -> float:
        return teacher[n, c, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean().item()

    pooled = [
        [[[block_mean(n, c, y, x) for x in range(w)] for y in range(h)] for c in range(teacher.shape[1])]
        for n in range(b)
    ]

    def patterns(maps) -> list[list[list[float]]]:
        out = []
        for sample in maps:
            channels = []
            for channel in sample:
                flat = [v for row in channel for v in row]
                length = norm(flat)
                channels.append([v / length for v in flat])
            out.append(channels)
        return out

    f_s = patterns(student.tolist())
    f_t = patterns(pooled)

    def kernel_mean(a, b_) -> float:
        total, count = 0.0, 0
        for n in range(len(a)):
            for x in a[n]:
                for y in b_[n]:
                    total += dot(x, y) ** 2
                    count += 1
        return total / count

    return kernel_mean(f_t, f_t) + kernel_mean(f_s, f_s) - 2 * kernel_mean(f_s, f_t)


def test_nst_matches_loop_computation():
    torch.manual_seed(4)
    stem = torch.randn(2, 2, 8, 8)
    student_maps = [stem, torch.rand(2, 2, 2, 2), torch.rand(2, 3, 3, 3)]
    teacher_maps = [stem, torch.rand(2, 3, 4, 4), torch.rand(2, 4, 3, 3)]  # first pair: teacher pooled 4→2
    expected = [loop_nst(student_maps[1], teacher_maps[1])]
    # second pair: equal sizes (pooling by 1×1 blocks is the identity, so reuse the loop through a 2× upsample)
    upsampled = teacher_maps[2].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    expected.append(loop_nst(student_maps[2], upsampled))
    assert nst_mmd(student_maps[1], teacher_maps[1]).item() == pytest.approx(expected[0], rel=1e-5)
    assert nst_mmd(student_maps[2], teacher_maps[2]).item() == pytest.approx(expected[1], rel=1e-5)

    student, teacher = record(student_maps, torch.zeros(2, 4)), record(teacher_maps, torch.zeros(2, 4))
    loss = build_loss("nst", context(record_shapes(student), record_shapes(teacher)), {})
    assert loss(student, teacher, batch(2)).item() == pytest.approx(sum(expected), rel=1e-5)


def test_nst_pools_the_larger_student_map_too():
    torch.manual_seed(5)
    student = torch.rand(2, 3, 4, 4)
    teacher = torch.rand(2, 2, 2, 2)
    # MMD² is symmetric in its two arguments, so the loop (which pools its second argument) applies swapped
    assert nst_mmd(student, teacher).item() == pytest.approx(loop_nst(teacher, student), rel=1e-5)


def test_nst_is_zero_for_identical_maps():
    torch.manual_seed(6)
    maps = [torch.rand(3, 4, 8, 8), torch.rand(3, 5, 4, 4), torch.rand(3, 6, 2, 2)]
    rec = record(maps, torch.zeros(3, 4))
    loss = build_loss("nst", context(record_shapes(rec), record_shapes(rec)), {})
    same = record([m.clone() for m in maps], torch.zeros(3, 4))
    assert loss(rec, same, batch(3)).item() == pytest.approx(0.0, abs=1e-6)
    # the channel patterns are l2-normalised: scaling a map changes nothing
    scaled = record([m * 9.0 for m in maps], torch.zeros(3, 4))
    assert loss(scaled, rec, batch(3)).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", ["nst", "vid"])
def test_map_losses_reject_a_map_count_mismatch(name):
    student = shapes([(4, 8, 8), (8, 4, 4), (16, 2, 2)], 16)
    teacher = shapes([(4, 8, 8), (8, 4, 4), (16, 2, 2), (32, 1, 1)], 32)
    with pytest.raises(ValueError, match="maps"):
        build_loss(name, context(student, teacher), {})
    with pytest.raises(ValueError, match="teacher"):
        build_loss(name, context(student, None), {})


# ---------------------------------------------------------------- VID


def loop_vid_layer(regressor: VIDRegressor, student: torch.Tensor, teacher: torch.Tensor) -> float:
    """The three 1×1 convs as per-pixel matrix products, then the Gaussian NLL element by element."""
    convs = (regressor.mean[0], regressor.mean[2], regressor.mean[4])
    w1, w2, w3 = (conv.weight[:, :, 0, 0].tolist() for conv in convs)
    variance = [math.log1p(math.exp(a)) + 1e-5 for a in regressor.log_scale.tolist()]

    def matvec(w, x):
        return [dot(row, x) for row in w]

    def relu(x):
        return [max(v, 0.0) for v in x]

    b, _, h, w = student.shape
    total, count = 0.0, 0
    for n in range(b):
        for y in range(h):
            for x in range(w):
                s = student[n, :, y, x].tolist()
                mu = matvec(w3, relu(matvec(w2, relu(matvec(w1, s)))))
                for c, m in enumerate(mu):
                    t = teacher[n, c, y, x].item()
                    total += 0.5 * ((m - t) ** 2 / variance[c] + math.log(variance[c]))
                    count += 1
    return total / count


def test_vid_matches_explicit_gaussian_nll():
    torch.manual_seed(7)
    student_maps = [torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 2, 2, 2)]
    teacher_maps = [torch.randn(2, 2, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 5, 2, 2)]
    student, teacher = record(student_maps, torch.zeros(2, 4)), record(teacher_maps, torch.zeros(2, 4))
    loss = build_loss("vid", context(record_shapes(student), record_shapes(teacher)), {"init_variance": 2.0})
    with torch.no_grad():  # move the variances off their common initial value
        for regressor in loss.regressors:
            regressor.log_scale.add_(torch.linspace(-1.0, 1.0, regressor.log_scale.numel()))
    expected = sum(loop_vid_layer(r, s, t) for r, s, t in zip(loss.regressors, student_maps[1:], teacher_maps[1:]))
    assert loss(student, teacher, batch(2)).item() == pytest.approx(expected, rel=1e-5)


def test_vid_pools_the_larger_map_of_a_pair():
    torch.manual_seed(8)
    regressor = VIDRegressor(3, 2, 5.0)
    small, large = torch.randn(2, 3, 2, 2), torch.randn(2, 2, 4, 4)
    expected = loop_vid_layer(regressor, small, torch.nn.functional.avg_pool2d(large, 2))
    assert regressor(small, large).item() == pytest.approx(expected, rel=1e-5)
    student_large, teacher_small = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 2, 2)
    expected = loop_vid_layer(regressor, torch.nn.functional.avg_pool2d(student_large, 2), teacher_small)
    assert regressor(student_large, teacher_small).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("init_variance", [5.0, 0.5, 1e-3, 100.0])
def test_vid_initial_variance(init_variance):
    student = shapes([(4, 8, 8), (8, 4, 4), (16, 2, 2)], 16)
    teacher = shapes([(4, 8, 8), (6, 4, 4), (12, 2, 2)], 12)
    loss = build_loss("vid", context(student, teacher), {"init_variance": init_variance})
    for regressor in loss.regressors:
        variance = torch.nn.functional.softplus(regressor.log_scale.double()) + 1e-5
        assert torch.allclose(variance, torch.full_like(variance, init_variance), rtol=1e-6)
        assert torch.allclose(regressor.variance().double(), variance, rtol=1e-6)


def test_vid_rejects_a_variance_below_eps():
    student = shapes([(4, 8, 8), (8, 4, 4)], 8)
    with pytest.raises(ValueError, match="init_variance"):
        build_loss("vid", context(student, student), {"init_variance": 0.0})


def vid_parameter_count(pairs: list[tuple[int, int]]) -> int:
    # three bias-free 1×1 convs C_s→C_t→C_t→C_t, plus C_t log_scale entries
    return sum(c_s * c_t + c_t * c_t + c_t * c_t + c_t for c_s, c_t in pairs)


def test_vid_parameter_count_for_reference_pairs():
    expected = {
        ("resnet32x4", "resnet8x4"): vid_parameter_count([(64, 64), (128, 128), (256, 256)]),
        ("vgg13", "MobileNetV2"): vid_parameter_count([(12, 128), (16, 256), (48, 512), (160, 512)]),
    }
    by_hand = (3 * 64 * 64 + 64) + (3 * 128 * 128 + 128) + (3 * 256 * 256 + 256)
    assert expected[("resnet32x4", "resnet8x4")] == by_hand == 258_496
    for (teacher_name, student_name), count in expected.items():
        ctx = zoo_context(teacher_name, student_name)
        loss = build_loss("vid", ctx, {})
        assert sum(p.numel() for p in loss.parameters()) == count
        assert sum(p.numel() for p in loss.trainable_parameters()) == count
        assert all(conv.bias is None for r in loss.regressors for conv in r.mean if isinstance(conv, torch.nn.Conv2d))


# ---------------------------------------------------------------- registry and real zoo pairs


def test_registered_with_their_parameters():
    expected = {
        "rkd": {"distance_weight": 25.0, "angle_weight": 50.0},
        "pkt": {"eps": 1e-7},
        "nst": {},
        "vid": {"init_variance": 5.0},
    }
    for name, params in expected.items():
        cls = LOSSES.get(name)
        assert cls.requires_teacher
        found = loss_parameters(cls)
        assert {k: p.default for k, p in found.items()} == params
        assert all(p.annotation is float for p in found.values())


_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name, num_classes=100)
    return _MODELS[name]


def zoo_context(teacher_name: str, student_name: str) -> LossContext:
    return LossContext(
        student=probe_feature_shapes(model(student_name), (3, 32, 32)),
        teacher=probe_feature_shapes(model(teacher_name), (3, 32, 32)),
        num_classes=100,
        dataset_size=8,
        labels=torch.zeros(8, dtype=torch.long),
        student_arch=student_name,
        teacher_arch=teacher_name,
        batch_size=4,
    )


@pytest.mark.parametrize("teacher_name,student_name", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_zoo_pair_forward_backward(teacher_name, student_name):
    """Each loss on one batch of 4: a finite scalar, gradient on the student (and VID's modules), none on the teacher."""
    teacher_model, student_model = model(teacher_name), model(student_name)
    teacher_model.eval()
    student_model.train()
    ctx = zoo_context(teacher_name, student_name)
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    # one forward of each network, shared by the four losses; the teacher's record is passed *with*
    # its graph, so the loss itself must keep gradient away from the teacher
    student_record = student_model(images, features=True)
    teacher_record = teacher_model(images, features=True)

    for name in NAMES:
        for net in (teacher_model, student_model):
            net.zero_grad(set_to_none=True)
        loss = build_loss(name, ctx, {})
        value = loss(student_record, teacher_record, batch(4))
        assert value.dim() == 0 and torch.isfinite(value), name
        value.backward(retain_graph=True)

        student_grads = [p.grad for p in student_model.parameters() if p.grad is not None]
        assert student_grads and any(g.abs().sum() > 0 for g in student_grads), name
        assert all(torch.isfinite(g).all() for g in student_grads), name
        assert all(p.grad is None for p in teacher_model.parameters()), name
        own = list(loss.trainable_parameters())
        if name == "vid":
            assert own and all(p.grad is not None and torch.isfinite(p.grad).all() for p in own)
            assert all(r.log_scale.grad.abs().sum() > 0 for r in loss.regressors)
        else:
            assert own == [], name
    student_model.zero_grad(set_to_none=True)
