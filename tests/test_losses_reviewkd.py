"""ReviewKD (Chen et al., CVPR 2021): HCL and ABF against hand computations, the levels of the 13 tasks,
warm-up, gradients, recipes, and one epoch through the CLI on one and on two processes."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import run_distill, tiny_pair_overrides

from distill.benchmark.tasks import TASKS
from distill.cli.main import main
from distill.engine.metrics import read_metrics
from distill.losses import LOSSES, Batch, LossContext, build_loss
from distill.losses.reviewkd import AttentionBasedFusion, ReviewLevel, hcl_level_loss, hcl_loss, review_levels, warmup_factor
from distill.models import create_model, probe_feature_shapes
from distill.models.features import FeatureRecord, FeatureShapes
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent

# The official build_review_kd (dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py L90-158), as methods-2026.md
# section 4.2 tabulates it: in/out channels in the code's order (shallow → deep: stage 1, ..., last stage, pooled),
# shapes and out_shapes deep → shallow (pooled 1×1 first). out_shapes None: equal to shapes.
OFFICIAL_LEVELS = {
    "resnet32x4-resnet8x4": ([64, 128, 256, 256], [1, 8, 16, 32], [64, 128, 256, 256], None),
    "resnet56-resnet20": ([16, 32, 64, 64], [1, 8, 16, 32], [16, 32, 64, 64], None),
    "resnet110-resnet32": ([16, 32, 64, 64], [1, 8, 16, 32], [16, 32, 64, 64], None),
    "resnet110-resnet20": ([16, 32, 64, 64], [1, 8, 16, 32], [16, 32, 64, 64], None),
    "wrn_40_2-wrn_16_2": ([32, 64, 128, 128], [1, 8, 16, 32], [32, 64, 128, 128], None),
    "wrn_40_2-wrn_40_1": ([16, 32, 64, 64], [1, 8, 16, 32], [32, 64, 128, 128], None),
    "vgg13-vgg8": ([128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [128, 256, 512, 512, 512], None),
    "ResNet50-vgg8": ([128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32]),
    "vgg13-MobileNetV2": ([12, 16, 48, 160, 1280], [1, 2, 4, 8, 16], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16]),
    "ResNet50-MobileNetV2": ([12, 16, 48, 160, 1280], [1, 2, 4, 8, 16], [256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32]),
    "resnet32x4-ShuffleV1": ([240, 480, 960, 960], [1, 4, 8, 16], [64, 128, 256, 256], [1, 8, 16, 32]),
    "wrn_40_2-ShuffleV1": ([240, 480, 960, 960], [1, 4, 8, 16], [32, 64, 128, 128], [1, 8, 16, 32]),
    "resnet32x4-ShuffleV2": ([116, 232, 464, 1024], [1, 4, 8, 16], [64, 128, 256, 256], [1, 8, 16, 32]),
}

# w_RKD: the official CIFAR-100/script/reviewKD.sh where it has the task; our choice (in the fragment) otherwise.
EXPECTED_WEIGHT = {
    "wrn_40_2-wrn_16_2": 5.0,
    "wrn_40_2-wrn_40_1": 5.0,
    "resnet56-resnet20": 0.6,
    "resnet110-resnet20": 1.0,  # not in the script: our choice
    "resnet110-resnet32": 1.0,
    "resnet32x4-resnet8x4": 5.0,
    "vgg13-vgg8": 5.0,  # not in the script: our choice
    "vgg13-MobileNetV2": 5.0,  # not in the script: our choice
    "ResNet50-MobileNetV2": 5.0,  # not in the script: our choice
    "ResNet50-vgg8": 5.0,  # not in the script: our choice
    "resnet32x4-ShuffleV1": 5.0,
    "resnet32x4-ShuffleV2": 8.0,
    "wrn_40_2-ShuffleV1": 5.0,
}


# ---------------------------------------------------------------- HCL


def pool_np(x: np.ndarray, k: int) -> np.ndarray:
    """Adaptive average pooling to k×k for H and W divisible by k, by block means."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, k, k))
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = x[:, :, i * h // k : (i + 1) * h // k, j * w // k : (j + 1) * w // k].mean(axis=(2, 3))
    return out


def hcl_np(fs: np.ndarray, ft: np.ndarray) -> float:
    """HCL of one level with the weights written out per height (methods-2026.md section 4.1)."""
    mse = lambda a, b: float(((a - b) ** 2).mean())  # noqa: E731
    weights = {8: {4: 0.5, 2: 0.25, 1: 0.125}, 4: {2: 0.5, 1: 0.25}, 2: {1: 0.5}, 1: {}}[fs.shape[2]]
    total = mse(fs, ft) + sum(w * mse(pool_np(fs, k), pool_np(ft, k)) for k, w in weights.items())
    return total / (1 + sum(weights.values()))


@pytest.mark.parametrize("height", [8, 4, 2, 1])
def test_hcl_level_matches_a_numpy_computation(height):
    rng = np.random.default_rng(height)
    fs, ft = rng.normal(size=(3, 2, height, height)), rng.normal(size=(3, 2, height, height))
    got = hcl_level_loss(torch.tensor(fs), torch.tensor(ft))
    assert got.item() == pytest.approx(hcl_np(fs, ft), rel=1e-12)


def test_hcl_sums_over_levels_and_equals_the_plain_squared_gap_on_constant_maps():
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(2, 3, h, h)), rng.normal(size=(2, 3, h, h))) for h in (1, 2, 4, 8)]
    got = hcl_loss([torch.tensor(s) for s, _ in pairs], [torch.tensor(t) for _, t in pairs])
    assert got.item() == pytest.approx(sum(hcl_np(s, t) for s, t in pairs), rel=1e-12)
    # every pooled copy of a constant map is the same constant: each MSE, and so the weighted mean, is (a − b)²
    student, teacher = torch.full((2, 3, 8, 8), 1.5), torch.full((2, 3, 8, 8), -0.5)
    assert hcl_level_loss(student, teacher).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same shape"):
        hcl_level_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------- ABF, by hand


def bn_train(x: np.ndarray, bn: torch.nn.BatchNorm2d) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # biased: what BatchNorm normalises with in training
    gamma = bn.weight.detach().numpy()[None, :, None, None]
    beta = bn.bias.detach().numpy()[None, :, None, None]
    return (x - mean) / np.sqrt(var + bn.eps) * gamma + beta


def conv1x1(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    out = np.einsum("oc,bchw->bohw", conv.weight.detach().numpy()[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias.detach().numpy()[None, :, None, None]


def conv3x3(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    weight = conv.weight.detach().numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    return sum(
        np.einsum("oc,bchw->bohw", weight[:, :, i, j], padded[:, :, i : i + h, j : j + w]) for i in range(3) for j in range(3)
    )


def nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = [i * x.shape[2] // size[0] for i in range(size[0])]
    cols = [j * x.shape[3] // size[1] for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def abf_by_hand(abf: AttentionBasedFusion, x: np.ndarray, residual: np.ndarray | None, out_size):
    x = bn_train(conv1x1(x, abf.reduce[0]), abf.reduce[1])
    if residual is not None:
        residual = nearest(residual, x.shape[2:])
        gates = 1 / (1 + np.exp(-conv1x1(np.concatenate([x, residual], axis=1), abf.attention)))
        x = x * gates[:, 0:1] + residual * gates[:, 1:2]
    if x.shape[2:] != tuple(out_size):
        x = nearest(x, out_size)
    return bn_train(conv3x3(x, abf.output[0]), abf.output[1]), x


def randomise_batchnorms(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data = torch.rand(bn.weight.shape, generator=generator, dtype=bn.weight.dtype) + 0.5
            bn.bias.data = torch.randn(bn.bias.shape, generator=generator, dtype=bn.bias.dtype)


CHAINS = {
    # the shallower two levels smaller than the teacher's, as ShuffleV1 under resnet32x4
    "upsampled": [((4, 1), (1, 1)), ((3, 2), (4, 4)), ((2, 4), (8, 8))],
    # a 2×2 level put out at 3×3: the next level fuses that 3×3 map resized to 2×2 (rows 0, 1 of the 3×3 map,
    # i.e. rows 0, 0 of the 2×2 one), not the 2×2 map itself, as the code hands on X' after the output resize
    "handed_on_after_resize": [((4, 1), (1, 1)), ((3, 2), (3, 3)), ((2, 2), (4, 4))],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_abf_chain_matches_a_hand_computation_with_its_own_weights(chain):
    """Three levels, deep → shallow; (in channels, student size), teacher size per level."""
    torch.manual_seed(0)
    levels = CHAINS[chain]
    abfs = [AttentionBasedFusion(c, 2, 3, fuse=i > 0).double() for i, ((c, _), _) in enumerate(levels)]
    for i, abf in enumerate(abfs):
        randomise_batchnorms(abf, i)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(3, c, s, s)) for (c, s), _ in levels]
    residual_t, residual_np = None, None
    for abf, x, (_, out_size) in zip(abfs, inputs, levels):
        y_t, residual_t = abf(torch.tensor(x), residual_t, out_size)
        y_np, residual_np = abf_by_hand(abf, x, residual_np, out_size)
        assert y_t.shape == (3, 3, *out_size)
        np.testing.assert_allclose(y_t.detach().numpy(), y_np, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(residual_t.detach().numpy(), residual_np, rtol=1e-10, atol=1e-10)
    assert abfs[0].attention is None and abfs[1].attention is not None


# ---------------------------------------------------------------- levels of the 13 tasks


@cache
def shapes_of(arch: str) -> FeatureShapes:
    return probe_feature_shapes(create_model(arch, 100), (3, 32, 32))


def context_of(student: FeatureShapes, teacher: FeatureShapes) -> LossContext:
    return LossContext(student=student, teacher=teacher, num_classes=100, dataset_size=8, labels=torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_levels_from_the_feature_shapes_equal_the_official_tables(task):
    teacher, student = task.split("-")
    in_channels, shapes, out_channels, out_shapes = OFFICIAL_LEVELS[task]
    out_shapes = out_shapes or shapes
    official = [
        ReviewLevel(c, (s, s), o, (t, t)) for c, s, o, t in zip(in_channels[::-1], shapes, out_channels[::-1], out_shapes)
    ]
    loss = build_loss("reviewkd", context_of(shapes_of(student), shapes_of(teacher)), {})
    assert loss.levels == official
    assert loss.mid_channels == min(512, in_channels[-1])
    for abf, level in zip(loss.abfs, official):
        assert abf.reduce[0].weight.shape == (loss.mid_channels, level.in_channels, 1, 1)
        assert abf.output[0].weight.shape == (level.out_channels, loss.mid_channels, 3, 3)


def test_networks_with_different_numbers_of_levels_are_refused():
    with pytest.raises(ValueError, match="the student has 4 and the teacher 5"):
        review_levels(shapes_of("resnet8x4"), shapes_of("vgg13"))


# ---------------------------------------------------------------- the loss module


def tiny_shapes(channels: list[int], sizes: list[int], pooled: int) -> FeatureShapes:
    maps = [(channels[0], sizes[0], sizes[0]), *((c, s, s) for c, s in zip(channels, sizes))]
    return FeatureShapes(maps=maps, preact_maps=maps, pooled=(pooled,), logits=(4,))


def tiny_record(shapes: FeatureShapes, batch: int, seed: int, requires_grad: bool = False) -> FeatureRecord:
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, *s, generator=generator, requires_grad=requires_grad) for s in shapes.maps]
    preact = [torch.randn(batch, *s, generator=generator, requires_grad=requires_grad) for s in shapes.maps]
    pooled = torch.randn(batch, *shapes.pooled, generator=generator, requires_grad=requires_grad)
    return FeatureRecord(maps=maps, preact_maps=preact, pooled=pooled, logits=torch.zeros(batch, 4))


STUDENT = tiny_shapes([4, 6], [8, 4], 6)
TEACHER = tiny_shapes([5, 7], [8, 4], 7)
BATCH = Batch(inputs=torch.zeros(3, 3, 8, 8), labels=torch.zeros(3, dtype=torch.long), indices=torch.arange(3))


def test_forward_is_hcl_of_the_fused_student_levels_against_the_teacher_preact_levels():
    torch.manual_seed(0)
    loss = build_loss("reviewkd", context_of(STUDENT, TEACHER), {})
    student, teacher = tiny_record(STUDENT, 3, 1), tiny_record(TEACHER, 3, 2)
    outputs = loss.fused(student)
    # deep → shallow: pooled (1×1), the last stage (4×4), the first stage after the stem (8×8), each the teacher's shape
    assert [tuple(y.shape) for y in outputs] == [(3, 7, 1, 1), (3, 7, 4, 4), (3, 5, 8, 8)]
    targets = [teacher.pooled[:, :, None, None], teacher.preact_maps[2], teacher.preact_maps[1]]
    expected = sum(hcl_level_loss(y, t) for y, t in zip(outputs, targets))
    assert loss(student, teacher, BATCH).item() == pytest.approx(expected.item(), rel=1e-6)
    # post-activation student maps by default: changing the student's preact maps changes nothing
    student.preact_maps = [m + 1 for m in student.preact_maps]
    assert loss(student, teacher, BATCH).item() == pytest.approx(expected.item(), rel=1e-6)


def test_zero_when_the_teacher_levels_equal_the_abf_outputs():
    torch.manual_seed(0)
    loss = build_loss("reviewkd", context_of(STUDENT, TEACHER), {})
    student = tiny_record(STUDENT, 3, 1)
    outputs = [y.detach() for y in loss.fused(student)]
    teacher = tiny_record(TEACHER, 3, 2)
    teacher.pooled = outputs[0][:, :, 0, 0]
    teacher.preact_maps = [teacher.preact_maps[0], outputs[2], outputs[1]]
    assert loss(student, teacher, BATCH).item() == pytest.approx(0.0, abs=1e-12)


def test_gradients_reach_the_student_and_every_abf_never_the_teacher():
    torch.manual_seed(0)
    loss = build_loss("reviewkd", context_of(STUDENT, TEACHER), {})
    student, teacher = tiny_record(STUDENT, 3, 1, requires_grad=True), tiny_record(TEACHER, 3, 2, requires_grad=True)
    loss(student, teacher, BATCH).backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in [*student.maps[1:], student.pooled])
    assert student.maps[0].grad is None  # the stem is not a level
    trainable = list(loss.trainable_parameters())
    assert {id(p) for p in trainable} == {id(p) for p in loss.abfs.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(t.grad is None for t in [*teacher.maps, *teacher.preact_maps, teacher.pooled])


def test_warmup_factor_counts_epochs_from_one():
    assert [warmup_factor(epoch, 20) for epoch in (1, 10, 20, 30)] == [0.05, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0
    torch.manual_seed(0)
    loss = build_loss("reviewkd", context_of(STUDENT, TEACHER), {"warmup_epochs": 20})
    student, teacher = tiny_record(STUDENT, 3, 1), tiny_record(TEACHER, 3, 2)
    loss.start_epoch(30, 240)
    full = loss(student, teacher, BATCH).item()
    for epoch, factor in ((1, 0.05), (10, 0.5), (20, 1.0)):
        loss.start_epoch(epoch, 240)
        assert loss(student, teacher, BATCH).item() == pytest.approx(factor * full, rel=1e-6)


def test_parameters_and_validation():
    assert LOSSES.get("reviewkd").requires_teacher
    loss = build_loss("reviewkd", context_of(STUDENT, TEACHER), {"max_mid_channel": 4, "student_preact": True})
    assert loss.mid_channels == 4 and loss.student_preact
    for bad in ({"max_mid_channel": 0}, {"warmup_epochs": -1}):
        with pytest.raises(ValueError):
            build_loss("reviewkd", context_of(STUDENT, TEACHER), bad)


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_recipe(task):
    teacher, student = task.split("-")
    fragment = (REPO / "recipes/cifar100/_base_/reviewkd" / f"{task}.yaml").read_text(encoding="utf-8")
    assert fragment.startswith("# Source: ")
    assert ("our choice" in fragment) == (task in {"resnet110-resnet20", "vgg13-vgg8", "vgg13-MobileNetV2", "ResNet50-MobileNetV2", "ResNet50-vgg8"})
    recipe = load_recipe(REPO / "recipes/cifar100/reviewkd" / f"{task}.yaml")
    assert set(recipe.losses) == {"ce", "reviewkd"}
    assert recipe.losses["ce"].weight == 1.0
    assert recipe.losses["reviewkd"].weight == EXPECTED_WEIGHT[task]
    assert recipe.losses["reviewkd"].params == {"max_mid_channel": 512, "warmup_epochs": 20, "student_preact": False}
    assert (recipe.data.batch_size, recipe.schedule.epochs, recipe.schedule.milestones) == (64, 240, [150, 180, 210])
    assert recipe.optimizer.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
    assert recipe.teacher.name == teacher and recipe.student.arch == student


# ---------------------------------------------------------------- end to end

TASK_RECIPE = REPO / "recipes/cifar100/reviewkd/resnet32x4-resnet8x4.yaml"


def check_epoch(run_dir: Path) -> None:
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    assert math.isfinite(row["train/loss/reviewkd"]) and row["train/loss/reviewkd"] > 0
    assert row["train/loss/total"] == pytest.approx(row["train/loss/ce"] + 5.0 * row["train/loss/reviewkd"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.e2e
def test_one_epoch_through_the_cli(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "reviewkd"
    args = ["train", str(TASK_RECIPE), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir), "--no-tensorboard"]
    assert main(args) == 0
    # resnet8's levels: pooled 64, stages 64@8, 32@16, 16@32; resnet14's the same: mid min(512, 64) = 64
    assert "4 levels deep→shallow [64@1x1→64@1x1, 64@8x8→64@8x8, 32@16x16→32@16x16, 16@32x32→16@32x32], mid 64" in capsys.readouterr().out
    check_epoch(run_dir)


@pytest.mark.slow
@pytest.mark.e2e
def test_one_epoch_on_two_processes(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "reviewkd2"
    result = run_distill("train", str(TASK_RECIPE), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "data.batch_size=32",
                         "--run-dir", str(run_dir), processes=2, port=29581)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 process(es)" in (run_dir / "log.txt").read_text(encoding="utf-8")
    check_epoch(run_dir)
