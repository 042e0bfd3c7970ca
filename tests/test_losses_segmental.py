"""The segmental (MUSIC-style, variant B) loss: its math on constructed codes, against numpy, and in training."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.losses import LOSSES, Batch, LossContext, build_loss, loss_parameters
from distill.losses.segmental.estimates import MovingAverage, global_means
from distill.losses.segmental.information import (
    between_segment_dependence,
    cross_joint,
    entropy,
    input_information,
    marginal_entropy,
    mutual_information,
    sample_entropy,
    segment_codes,
    segment_gram,
)
from distill.models.features import FeatureRecord, FeatureShapes

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def context(student_dim: int = 6, teacher_dim: int = 5, batch_size: int = 0) -> LossContext:
    def shapes(dim: int) -> FeatureShapes:
        return FeatureShapes(maps=[], preact_maps=[], pooled=(dim,), logits=(10,))

    return LossContext(
        student=shapes(student_dim),
        teacher=shapes(teacher_dim),
        num_classes=10,
        dataset_size=64,
        labels=torch.zeros(64, dtype=torch.long),
        batch_size=batch_size,
    )


def record(pooled: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(pooled.shape[0], 10))


def batch(size: int) -> Batch:
    return Batch(torch.zeros(size, 3, 32, 32), torch.zeros(size, dtype=torch.long), torch.arange(size))


def one_hot_codes(labels: torch.Tensor, attributes: int) -> torch.Tensor:
    """[N, S] attribute labels → [N, S, C] one-hot codes."""
    return torch.nn.functional.one_hot(labels, attributes).float()


def grid_labels(attributes: int) -> torch.Tensor:
    """N = C² samples, segment 0 = i mod C, segment 1 = i div C: uniform and independent segments."""
    index = torch.arange(attributes * attributes)
    return torch.stack([index % attributes, index // attributes], dim=1)


def random_codes(count: int, segments: int, attributes: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(count, segments, attributes, generator=generator), dim=-1)


def np_entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def np_mutual_information(joint: np.ndarray) -> float:
    """Σ P log(P / (P_x P_y)) over the non-zero cells: the textbook plug-in estimate."""
    px, py = joint.sum(1), joint.sum(0)
    total = 0.0
    for a in range(joint.shape[0]):
        for b in range(joint.shape[1]):
            if joint[a, b] > 0:
                total += joint[a, b] * math.log(joint[a, b] / (px[a] * py[b]))
    return total


def np_joint(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(1/N) Σ_i first_i ⊗ second_i for [N, C] and [N, C'] codes, as a loop."""
    joint = np.zeros((first.shape[1], second.shape[1]))
    for i in range(first.shape[0]):
        joint += np.outer(first[i], second[i])
    return joint / first.shape[0]


def np_dependence(codes: np.ndarray) -> float:
    segments = codes.shape[1]
    pairs = [(s, t) for s in range(segments) for t in range(s + 1, segments)]
    return float(np.mean([np_mutual_information(np_joint(codes[:, s], codes[:, t])) for s, t in pairs]))


def np_softmax(logits: np.ndarray, segments: int, temperature: float) -> np.ndarray:
    z = logits.reshape(logits.shape[0], segments, -1) / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ---------------------------------------------------------------- the math on constructed codes


def test_segment_codes_are_a_softmax_per_segment():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    codes = segment_codes(logits, 2, 0.5)
    assert codes.shape == (3, 2, 4)
    assert torch.allclose(codes[:, 1], torch.softmax(logits[:, 4:] / 0.5, dim=1))
    assert torch.allclose(codes.sum(-1), torch.ones(3, 2))
    assert segment_codes(logits.bfloat16(), 2, 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match="do not split into 3 segments"):
        segment_codes(logits, 3, 0.5)


def test_agreeing_one_hot_codes_with_uniform_marginals_reach_log_c():
    attributes = 4
    codes = one_hot_codes(grid_labels(attributes), attributes)  # N = 16, S = 2
    joint = cross_joint(codes, codes)
    # By hand: P^s is diagonal with 1/C on the diagonal, so H(P) = H(P_T) = H(P_S) = log C and I = log C.
    assert torch.allclose(joint[0], torch.eye(attributes) / attributes)
    assert torch.allclose(mutual_information(joint), torch.full((2,), math.log(attributes)))
    assert torch.allclose(marginal_entropy(codes), torch.full((2,), math.log(attributes)))
    assert torch.allclose(sample_entropy(codes), torch.zeros(2))
    assert torch.allclose(input_information(codes), torch.full((2,), math.log(attributes)))


def test_collapse_gives_no_information():
    attributes = 4
    codes = one_hot_codes(torch.zeros(16, 2, dtype=torch.long), attributes)  # every sample: attribute 0
    assert torch.allclose(mutual_information(cross_joint(codes, codes)), torch.zeros(2))
    assert torch.allclose(marginal_entropy(codes), torch.zeros(2))
    uniform = torch.full((16, 2, attributes), 1.0 / attributes)  # every sample: the uniform code
    assert torch.allclose(mutual_information(cross_joint(uniform, uniform)), torch.zeros(2), atol=1e-6)
    assert torch.allclose(input_information(uniform), torch.zeros(2), atol=1e-6)


def test_independent_segments_have_no_dependence_and_a_copy_is_penalised():
    attributes = 4
    labels = grid_labels(attributes)
    independent = one_hot_codes(labels, attributes)
    assert between_segment_dependence(segment_gram(independent), 2).item() == pytest.approx(0.0, abs=1e-6)
    copied = one_hot_codes(torch.stack([labels[:, 0], labels[:, 0]], dim=1), attributes)
    assert between_segment_dependence(segment_gram(copied), 2).item() == pytest.approx(math.log(attributes), abs=1e-6)
    # Three segments, one a copy: one of the three pairs carries log C.
    three = one_hot_codes(torch.stack([labels[:, 0], labels[:, 1], labels[:, 0]], dim=1), attributes)
    assert between_segment_dependence(segment_gram(three), 3).item() == pytest.approx(math.log(attributes) / 3, abs=1e-6)
    # Soft codes drawn independently: the dependence vanishes as the sample grows (plug-in bias ~ (C−1)²/2N).
    soft = random_codes(20000, 3, attributes, seed=1)
    assert between_segment_dependence(segment_gram(soft), 3).item() < 2e-3
    assert between_segment_dependence(segment_gram(soft[:, :1]), 1).item() == 0.0  # one segment: no pairs


def test_cross_information_is_bounded_by_each_sides_input_information():
    teacher, student = random_codes(50, 3, 5, seed=2), random_codes(50, 3, 5, seed=3)
    information = mutual_information(cross_joint(teacher, student))
    assert (information >= -1e-6).all()
    assert (information <= input_information(teacher) + 1e-6).all()
    assert (information <= input_information(student) + 1e-6).all()
    assert (information <= math.log(5) + 1e-6).all()


def test_mutual_information_gradient_is_pointwise_information_minus_one():
    joint = cross_joint(random_codes(40, 1, 3, seed=4), random_codes(40, 1, 4, seed=5))[0].requires_grad_(True)
    mutual_information(joint).backward()
    rows, columns = joint.detach().sum(1, keepdim=True), joint.detach().sum(0, keepdim=True)
    pointwise = joint.detach().log() - rows.log() - columns.log()
    assert torch.allclose(joint.grad, pointwise - 1, atol=1e-5)


def test_entropy_treats_zero_probabilities_as_zero_terms_with_finite_gradients():
    p = torch.tensor([0.5, 0.5, 0.0], requires_grad=True)
    value = entropy(p)
    value.backward()
    assert value.item() == pytest.approx(math.log(2))
    assert torch.isfinite(p.grad).all()


# ---------------------------------------------------------------- against numpy


def test_functions_match_numpy_loops():
    teacher, student = random_codes(30, 3, 3, seed=6), random_codes(30, 3, 4, seed=7)
    t, s = teacher.double().numpy(), student.double().numpy()
    joint = cross_joint(teacher, student)
    for seg in range(3):
        expected = np_joint(t[:, seg], s[:, seg])
        assert np.allclose(joint[seg].numpy(), expected, atol=1e-6)
        assert mutual_information(joint)[seg].item() == pytest.approx(np_mutual_information(expected), abs=1e-5)
        assert marginal_entropy(student)[seg].item() == pytest.approx(np_entropy(s[:, seg].mean(0)), abs=1e-5)
        expected_sample = np.mean([np_entropy(row) for row in s[:, seg]])
        assert sample_entropy(student)[seg].item() == pytest.approx(expected_sample, abs=1e-5)
    gram = segment_gram(student).numpy()
    assert np.allclose(gram[4:8, 8:12], np_joint(s[:, 1], s[:, 2]), atol=1e-6)  # block (1, 2)
    assert between_segment_dependence(segment_gram(student), 3).item() == pytest.approx(np_dependence(s), abs=1e-5)


def np_loss(module, student_pooled, teacher_pooled, teacher_gram=None, student_gram=None) -> float:
    """The loss from the module's own head outputs, recomputed in numpy (float64)."""
    with torch.no_grad():
        s_logits = module.student_head(student_pooled).double().numpy()
        t_logits = module.teacher_head(teacher_pooled).double().numpy()
    segments, attributes = module.segments, module.attributes
    s = np_softmax(s_logits, segments, module.student_temperature)
    t = np_softmax(t_logits, segments, module.teacher_temperature)
    information = np.mean([np_mutual_information(np_joint(t[:, k], s[:, k])) for k in range(segments)])
    if teacher_gram is None:
        dependence = 0.5 * (np_dependence(t) + np_dependence(s))
    else:
        def from_gram(gram: np.ndarray) -> float:
            pairs = [(a, b) for a in range(segments) for b in range(a + 1, segments)]
            blocks = [gram[a * attributes : (a + 1) * attributes, b * attributes : (b + 1) * attributes] for a, b in pairs]
            return float(np.mean([np_mutual_information(block) for block in blocks]))

        dependence = 0.5 * (from_gram(teacher_gram) + from_gram(student_gram))
    return math.log(attributes) - information + module.diversity_weight * dependence


def test_loss_matches_numpy_with_batch_estimates():
    torch.manual_seed(0)
    params = {"segments": 3, "attributes": 4, "diversity_momentum": 0.0, "diversity_weight": 0.7}
    loss = build_loss("segmental", context(), params)
    student, teacher = torch.randn(20, 6), torch.randn(20, 5)
    value = loss(record(student), record(teacher), batch(20))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(np_loss(loss, student, teacher), abs=1e-5)


def test_loss_matches_numpy_with_averaged_segment_pair_joints():
    torch.manual_seed(0)
    m = 0.9
    loss = build_loss("segmental", context(), {"segments": 3, "attributes": 4, "diversity_momentum": m})
    inputs = [(torch.randn(10, 6), torch.randn(10, 5)) for _ in range(3)]
    teacher_average, student_average = np.zeros((12, 12)), np.zeros((12, 12))
    for step, (student, teacher) in enumerate(inputs, start=1):
        value = loss(record(student), record(teacher), batch(10))
        with torch.no_grad():
            t = segment_codes(loss.teacher_head(teacher), 3, 0.1).double().reshape(10, -1).numpy()
            s = segment_codes(loss.student_head(student), 3, 0.1).double().reshape(10, -1).numpy()
        teacher_average = m * teacher_average + (1 - m) * t.T @ t / 10
        student_average = m * student_average + (1 - m) * s.T @ s / 10
        correction = 1 - m**step
        expected = np_loss(loss, student, teacher, teacher_average / correction, student_average / correction)
        assert value.item() == pytest.approx(expected, abs=1e-5), step
    assert loss.student_gram_average.steps.item() == 3


def test_the_minimum_is_zero_at_agreeing_uniform_independent_codes():
    attributes = 4
    labels = grid_labels(attributes)  # N = 16, S = 2
    features = one_hot_codes(labels, attributes).reshape(16, -1)  # [16, S·C]
    loss = build_loss("segmental", context(8, 8), {"segments": 2, "attributes": attributes})
    with torch.no_grad():
        for head in (loss.student_head, loss.teacher_head):
            head.linear.weight.copy_(100 * torch.eye(8))  # logits 100·one-hot: one-hot codes at τ = 0.1
            head.linear.bias.zero_()
    fresh = copy.deepcopy(loss)  # the segment-pair average must not carry the first batch into the second
    assert loss(record(features), record(features), batch(16)).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros_like(features)
    collapsed[:, 0] = collapsed[:, attributes] = 1.0  # every sample: attribute 0 in both segments
    assert fresh(record(collapsed), record(collapsed), batch(16)).item() == pytest.approx(math.log(attributes), abs=1e-6)
    random = build_loss("segmental", context(8, 8), {"segments": 2, "attributes": attributes})
    assert random(record(torch.randn(16, 8)), record(torch.randn(16, 8)), batch(16)).item() > 0.1


def test_the_loss_ignores_how_either_side_labels_its_attributes():
    torch.manual_seed(0)
    loss = build_loss("segmental", context(), {"segments": 3, "attributes": 4})
    student, teacher = torch.randn(12, 6), torch.randn(12, 5)
    reference = copy.deepcopy(loss)(record(student), record(teacher), batch(12))
    # Relabel the student's attributes with a different permutation in every segment.
    generator = torch.Generator().manual_seed(1)
    order = torch.cat([torch.randperm(4, generator=generator) + 4 * k for k in range(3)])
    permuted = copy.deepcopy(loss)
    with torch.no_grad():
        permuted.student_head.linear.weight.copy_(loss.student_head.linear.weight[order])
        permuted.student_head.linear.bias.copy_(loss.student_head.linear.bias[order])
    assert permuted(record(student), record(teacher), batch(12)).item() == pytest.approx(reference.item(), abs=1e-6)
    # A codebook-matching term (variant A's per-sample cross-entropy) is not invariant.
    def matching(module) -> float:
        with torch.no_grad():
            p_t = segment_codes(module.teacher_head(teacher), 3, 0.1)
            p_s = segment_codes(module.student_head(student), 3, 0.1)
        return float(-(p_t * p_s.clamp_min(1e-12).log()).sum(-1).mean())

    assert abs(matching(permuted) - matching(loss)) > 1e-3


def test_gradients_reach_both_heads_and_the_student_but_not_the_teacher():
    torch.manual_seed(0)
    loss = build_loss("segmental", context(), {"segments": 3, "attributes": 4})
    student, teacher = torch.randn(12, 6, requires_grad=True), torch.randn(12, 5, requires_grad=True)
    loss(record(student), record(teacher), batch(12)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    for head in (loss.student_head, loss.teacher_head):
        assert head.linear.weight.grad is not None and head.linear.weight.grad.abs().sum() > 0
    assert set(dict(loss.named_parameters())) == {name for name, p in loss.named_parameters() if p.grad is not None}


def test_reduced_precision_features_give_a_float32_loss():
    torch.manual_seed(0)
    loss = build_loss("segmental", context(), {"segments": 2, "attributes": 4})
    value = loss(record(torch.randn(8, 6).bfloat16()), record(torch.randn(8, 5).half()), batch(8))
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ---------------------------------------------------------------- the moving average


def test_moving_average_is_bias_corrected_with_a_straight_through_gradient():
    average = MovingAverage((2,), momentum=0.5)
    first = average(torch.tensor([2.0, 4.0]))
    assert torch.allclose(first, torch.tensor([2.0, 4.0]))  # one batch: the batch itself
    statistic = torch.tensor([4.0, 0.0], requires_grad=True)
    second = average(statistic)
    # A_2 = 0.5·(0.5·[2, 4]) + 0.5·[4, 0] = [2.5, 1]; corrected by 1 − 0.5² = 0.75.
    assert torch.allclose(second, torch.tensor([2.5, 1.0]) / 0.75)
    (second * torch.tensor([3.0, 5.0])).sum().backward()
    assert torch.allclose(statistic.grad, torch.tensor([3.0, 5.0]))  # weight 1, not (1 − m)
    average.eval()
    average(torch.tensor([100.0, 100.0]))
    assert average.steps.item() == 2 and torch.allclose(average.average, torch.tensor([2.5, 1.0]))
    with pytest.raises(ValueError, match="momentum"):
        MovingAverage((2,), momentum=1.0)


def test_global_means_are_the_means_themselves_in_one_process():
    means = [torch.randn(3, 3), torch.randn(2)]
    assert all(a is b for a, b in zip(global_means(means, 5), means))


# ---------------------------------------------------------------- parameters


def test_registered_with_its_parameters_and_a_summary():
    cls = LOSSES.get("segmental")
    assert cls.requires_teacher
    assert {k: p.default for k, p in loss_parameters(cls).items()} == {
        "segments": 32,
        "attributes": 32,
        "student_temperature": 0.1,
        "teacher_temperature": 0.1,
        "diversity_weight": 1.0,
        "diversity_momentum": 0.99,
    }
    summary = build_loss("segmental", context(), {}).summary()
    assert "S=32 × C=32" in summary and "log C = 3.47" in summary and "momentum 0.99" in summary
    assert "momentum" not in build_loss("segmental", context(), {"diversity_weight": 0.0}).summary()


@pytest.mark.parametrize(
    "params,message",
    [
        ({"segments": 0}, "segments must be at least 1"),
        ({"attributes": 1}, "attributes must be at least 2"),
        ({"student_temperature": 0.0}, "temperatures must be positive"),
        ({"teacher_temperature": -0.1}, "temperatures must be positive"),
        ({"diversity_weight": -1.0}, "diversity_weight must be ≥ 0"),
        ({"diversity_momentum": 1.0}, r"diversity_momentum must be in \[0, 1\)"),
        ({"diversity_momentum": -0.5}, r"diversity_momentum must be in \[0, 1\)"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(params, message):
    with pytest.raises(ValueError, match=message):
        build_loss("segmental", context(), params)


def test_a_teacher_is_required():
    no_teacher = LossContext(
        student=context().student, teacher=None, num_classes=10, dataset_size=8, labels=torch.zeros(8, dtype=torch.long)
    )
    with pytest.raises(ValueError, match="needs a teacher"):
        build_loss("segmental", no_teacher, {})


def test_too_few_samples_for_the_segment_pair_joints_warn():
    with pytest.warns(UserWarning, match="raise diversity_momentum or lower attributes"):
        build_loss("segmental", context(batch_size=64), {"diversity_momentum": 0.0})
    with pytest.warns(UserWarning, match="overstates the dependence"):
        build_loss("segmental", context(batch_size=64), {"attributes": 128})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_loss("segmental", context(batch_size=64), {})  # 32² < 64 / (1 − 0.99)
        build_loss("segmental", context(batch_size=64), {"diversity_weight": 0.0, "attributes": 256})


# ---------------------------------------------------------------- several processes


WORKER = r"""
import sys, torch, torch.distributed as dist
from distill.losses import Batch, LossContext, build_loss
from distill.models.features import FeatureRecord, FeatureShapes
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
shapes = lambda d: FeatureShapes(maps=[], preact_maps=[], pooled=(d,), logits=(2,))
context = LossContext(student=shapes(6), teacher=shapes(5), num_classes=2, dataset_size=8, labels=torch.zeros(8, dtype=torch.long))
torch.manual_seed(0)
loss = build_loss("segmental", context, {"segments": 3, "attributes": 4, "diversity_momentum": 0.9})
mine = slice(0, 5) if rank == 0 else slice(5, 8)  # unequal shares of the global batch of 8
results = {}
for step in range(2):
    g = torch.Generator().manual_seed(100 + step)
    student_all, teacher_all = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
    student = student_all[mine].clone().requires_grad_(True)
    record = lambda pooled: FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(pooled.shape[0], 2))
    loss.zero_grad()
    value = loss(record(student), record(teacher_all[mine]), Batch(torch.zeros(1), torch.zeros(1), torch.zeros(1)))
    value.backward()
results["value"] = value.detach()
results["student_grad"] = student.grad
for name, p in loss.named_parameters():  # what DDP does: average the gradients over the processes
    dist.all_reduce(p.grad)
    results["grad." + name] = p.grad / world
results.update(loss.state_dict())
torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_give_the_global_batch_loss_and_gradients(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    torch.manual_seed(0)
    single = build_loss("segmental", context(), {"segments": 3, "attributes": 4, "diversity_momentum": 0.9})
    for step in range(2):
        g = torch.Generator().manual_seed(100 + step)
        student_all, teacher_all = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
        student = student_all.clone().requires_grad_(True)
        single.zero_grad()
        value = single(record(student), record(teacher_all), batch(8))
        value.backward()
    for ranked in (rank0, rank1):
        assert ranked["value"].item() == pytest.approx(value.item(), abs=1e-6)
        for name, p in single.named_parameters():
            assert torch.allclose(ranked["grad." + name], p.grad, atol=1e-6), name
        for name, buffer in single.state_dict().items():
            if not name.startswith(("student_head", "teacher_head")):
                assert torch.allclose(ranked[name], buffer, atol=1e-6), name
    # Each process's per-sample gradient is the global one times the number of processes (DDP divides by it).
    assert torch.allclose(torch.cat([rank0["student_grad"], rank1["student_grad"]]) / 2, student.grad, atol=1e-6)


# ---------------------------------------------------------------- through the trainer


def test_a_short_run_through_the_trainer_gives_finite_terms(fake_cifar100, tiny_teacher, tmp_path, capsys):
    from distill.cli.main import main
    from distill.engine.metrics import read_metrics

    run_dir = tmp_path / "run"
    recipe = REPO / "recipes/cifar100/segmental_kd/resnet32x4-resnet8x4.yaml"
    args = [
        "train", str(recipe), f"data.root={fake_cifar100}", "data.verify=false", "data.download=false",
        "data.num_workers=0", "schedule.epochs=1", "log_every=2", "student.arch=resnet8", "teacher.name=null",
        "teacher.arch=resnet14", f"teacher.checkpoint={tiny_teacher}", "--run-dir", str(run_dir),
    ]  # fmt: skip
    assert main(args) == 0
    assert "loss segmental: variant B" in capsys.readouterr().out
    rows = read_metrics(run_dir)
    assert all(math.isfinite(row["train/loss/segmental"]) for row in rows if "train/loss/segmental" in row)
    last = rows[-1]
    assert 0.0 <= last["train/loss/segmental"] <= 2 * math.log(32)  # log C − I ≤ log C, λ_d · D ≤ log C
    assert math.isfinite(last["test/top1"])
    checkpoint = torch.load(run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    steps = checkpoint["losses"]["segmental.student_gram_average.steps"]
    assert steps.item() == 4  # 256 images / batch 64
    assert checkpoint["losses"]["segmental.teacher_gram_average.average"].shape == (1024, 1024)
