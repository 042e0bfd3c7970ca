"""The contrastive machinery: memory bank, queue, negatives, scoring paths, Z, gradients, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import Batch, LossContext, build_loss
from distill.losses.contrastive.loss import score_candidates
from distill.losses.contrastive.memory_bank import EmbeddingQueue, MomentumMemoryBank, last_occurrence
from distill.losses.contrastive.negatives import draw_candidates
from distill.models.features import FeatureRecord, FeatureShapes

N, NUM_CLASSES, S_DIM, T_DIM = 60, 6, 12, 20


def context(batch_size: int = 8) -> LossContext:
    student = FeatureShapes(maps=[], preact_maps=[], pooled=(S_DIM,), logits=(NUM_CLASSES,))
    teacher = FeatureShapes(maps=[], preact_maps=[], pooled=(T_DIM,), logits=(NUM_CLASSES,))
    labels = torch.arange(N) % NUM_CLASSES
    return LossContext(student=student, teacher=teacher, num_classes=NUM_CLASSES, dataset_size=N, labels=labels, batch_size=batch_size)


def records(batch: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student_pooled = torch.randn(batch, S_DIM, generator=generator, requires_grad=True)
    teacher_pooled = torch.randn(batch, T_DIM, generator=generator)
    make = lambda pooled: FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(batch, NUM_CLASSES))  # noqa: E731
    indices = torch.randperm(N, generator=generator)[:batch]
    return make(student_pooled), make(teacher_pooled), Batch(torch.zeros(batch), indices % NUM_CLASSES, indices)


def build(loss_type: str = "crd", **params):
    torch.manual_seed(0)
    return build_loss(loss_type, context(), {"num_negatives": 10, "feat_dim": 8, **params})


# --- memory bank and queue -----------------------------------------------------------------


def test_bank_initialisation_matches_the_reference():
    torch.manual_seed(0)
    bank = MomentumMemoryBank(5000, 128)
    bound = 1 / math.sqrt(128 / 3)
    assert bank.memory.abs().max() <= bound and bank.memory.abs().max() > 0.99 * bound
    assert bank.memory.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.01)
    assert not any(True for _ in bank.parameters())


def test_bank_update_by_hand():
    bank = MomentumMemoryBank(4, 2, momentum=0.5)
    bank.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0]]))
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s, s], [0.0, 1.0], [0.6, 0.8], [1.0, 1.0]])  # 0.5·(3,4)+0.5·(.6,.8) = (1.8,2.4) → (.6,.8)
    assert torch.allclose(bank.memory, expected, atol=1e-6)


def test_duplicate_indices_keep_the_last_write():
    assert last_occurrence(torch.tensor([3, 1, 3, 2]), 5).tolist() == [2, 1, 2, 3]
    bank = MomentumMemoryBank(4, 2, momentum=0.0)
    bank.update(torch.tensor([1, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert bank.memory[1].tolist() == [0.0, 1.0]
    blended = MomentumMemoryBank(4, 2, momentum=0.5)
    blended.memory.copy_(torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0], [1.0, 1.0]]))
    blended.update(torch.tensor([1, 0, 1]), torch.tensor([[9.0, 9.0], [0.0, 1.0], [0.6, 0.8]]))
    # row 1: 0.5·(3, 4) + 0.5·(0.6, 0.8) = (1.8, 2.4) → (0.6, 0.8): the last write, blended with the old row once
    assert torch.allclose(blended.memory, torch.tensor([[0.7071068, 0.7071068], [0.6, 0.8], [0.0, 1.0], [1.0, 1.0]]))


def test_queue_is_a_fifo_with_labels():
    queue = EmbeddingQueue(4, 2)
    assert (queue.labels == -1).all() and torch.allclose(queue.memory.norm(dim=1), torch.ones(4))
    queue.update(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    queue.update(2 * torch.ones(2, 2), torch.tensor([3, 4]))
    assert queue.labels.tolist() == [4, 1, 2, 3] and int(queue.pointer) == 1
    assert queue.memory[0].tolist() == [2.0, 2.0] and queue.memory[1].tolist() == [1.0, 1.0]


# --- negatives ------------------------------------------------------------------------------


def test_exact_negatives_avoid_the_anchor_class_without_replacement():
    labels = torch.arange(N) % NUM_CLASSES
    anchors = torch.tensor([0, 7, 13])
    generator = torch.Generator().manual_seed(0)
    candidates = draw_candidates(anchors, labels[anchors], 40, "exact", labels, N, generator)
    assert candidates.shape == (3, 41) and candidates[:, 0].tolist() == anchors.tolist()
    for row, anchor in zip(candidates, anchors):
        assert (labels[row[1:]] != labels[anchor]).all()
        assert row[1:].unique().numel() == 40  # 40 ≤ 50 eligible: without replacement


def test_negatives_are_uniform_over_the_eligible_pool():
    labels = torch.arange(N) % NUM_CLASSES
    generator = torch.Generator().manual_seed(1)
    anchors = torch.zeros(2000, dtype=torch.long)
    counts = torch.bincount(draw_candidates(anchors, labels[anchors], 5, "exact", labels, N, generator)[:, 1:].flatten(), minlength=N)
    eligible = counts[labels != 0].float()
    assert counts[labels == 0].sum() == 0
    expected = 2000 * 5 / 50
    chi2 = ((eligible - expected) ** 2 / expected).sum().item()
    assert chi2 < 100  # 49 degrees of freedom: p ≈ 1e-5 at 100


def test_relax_uniform_and_replacement_modes():
    labels = torch.arange(N) % NUM_CLASSES
    generator = torch.Generator().manual_seed(0)
    anchors = torch.arange(12)
    relaxed = draw_candidates(anchors, labels[anchors], 5, "relax", labels, N, generator)
    assert (labels[relaxed[:, 0]] == labels[anchors]).all()
    uniform = draw_candidates(anchors, labels[anchors], 59, "uniform", None, N, generator)
    assert all(anchor not in row[1:] for anchor, row in zip(anchors.tolist(), uniform.tolist()))
    many = draw_candidates(anchors, labels[anchors], 80, "exact", labels, N, generator)  # 80 > 50 eligible
    assert many.shape == (12, 81) and all((labels[row[1:]] != labels[a]).all() for a, row in zip(anchors, many))


# --- scoring, estimators inside the loss, gradients -------------------------------------------


def test_bank_product_equals_gather_then_bmm():
    generator = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(N, 8, generator=generator), dim=1)
    anchors = torch.randn(5, 8, generator=generator, requires_grad=True)
    candidates = torch.randint(0, N, (5, 11), generator=generator)
    fast = score_candidates(anchors, memory, candidates, 0.07, "bank_product")
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), anchors)
    slow = score_candidates(anchors, memory, candidates, 0.07, "gather")
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), anchors)
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(grad_fast, grad_slow, atol=1e-4)


@pytest.mark.parametrize("loss_type", ["crd", "cpc", "ml_cpc"])
def test_fast_and_straightforward_paths_agree_in_loss_gradients_and_banks(loss_type):
    results = []
    for scoring in ("bank_product", "gather"):
        loss = build(loss_type, scoring=scoring)
        student, teacher, batch = records()
        value = loss(student, teacher, batch)
        value.backward()
        grads = [student.pooled.grad.clone(), *(p.grad.clone() for p in loss.parameters())]
        results.append((value.detach(), grads, {k: v.clone() for k, v in loss.state_dict().items()}))
    (value_a, grads_a, state_a), (value_b, grads_b, state_b) = results
    assert torch.allclose(value_a, value_b, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_a, grads_b))
    for key in state_a:
        if key != "log_z":
            assert torch.equal(state_a[key], state_b[key]), key
    assert torch.allclose(state_a["log_z"], state_b["log_z"], equal_nan=True, rtol=1e-6)


def test_gradients_reach_student_and_heads_never_teacher_or_banks():
    loss = build("ml_cpc")
    student, teacher, batch = records()
    teacher.pooled.requires_grad_(True)
    loss(student, teacher, batch).backward()
    assert student.pooled.grad.abs().sum() > 0
    assert loss.student_head.linear.weight.grad.abs().sum() > 0
    assert loss.teacher_head.linear.weight.grad.abs().sum() > 0
    assert teacher.pooled.grad is None
    assert all(not b.requires_grad for b in loss.buffers())


def test_z_is_set_once_then_constant_unless_tracked():
    loss = build("crd")
    assert torch.isnan(loss.log_z).all()
    student, teacher, batch = records(seed=0)
    loss(student, teacher, batch)
    first = loss.log_z.clone()
    assert torch.isfinite(first).all()
    loss(*records(seed=1))
    assert torch.equal(loss.log_z, first)
    tracked = build("crd", z_momentum=0.99)
    tracked(*records(seed=0))
    start = tracked.log_z.clone()
    tracked(*records(seed=1))
    assert not torch.equal(tracked.log_z, start)


def test_memory_is_updated_after_scoring_and_only_in_training():
    loss = build("crd")
    before = loss.student_memory.memory.clone()
    student, teacher, batch = records()
    loss.eval()
    loss(student, teacher, batch)
    assert torch.equal(loss.student_memory.memory, before)
    loss.train()
    loss(student, teacher, batch)
    changed = (loss.student_memory.memory != before).any(dim=1).nonzero().squeeze(1)
    assert sorted(changed.tolist()) == sorted(batch.indices.tolist())
    assert torch.allclose(loss.student_memory.memory[batch.indices].norm(dim=1), torch.ones(8))


def test_queue_bank_trains():
    loss = build("cpc", bank="queue", queue_size=24)
    for seed in range(4):
        student, teacher, batch = records(seed=seed)
        value = loss(student, teacher, batch)
        value.backward()
        assert torch.isfinite(value)
    assert (loss.student_memory.labels >= 0).all()


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="alpha belongs"):
        build("crd", alpha=0.5)
    with pytest.raises(ValueError, match="z_momentum"):
        build("ml_cpc", z_momentum=0.9)
    with pytest.raises(ValueError, match="relax"):
        build("cpc", bank="queue", mode="relax")
    with pytest.raises(ValueError, match="alpha must be"):
        build("ml_cpc", alpha=50.0)
    with pytest.warns(UserWarning, match="below"):
        build_loss("ml_cpc", context(batch_size=64), {"alpha": 0.001})
    assert "log(m/α)" in build("ml_cpc", alpha=0.5).summary()


def test_state_dict_round_trips_banks_and_z():
    loss = build("crd")
    loss(*records())
    state = loss.state_dict()
    assert {"student_memory.memory", "teacher_memory.memory", "log_z"} <= set(state)
    assert "dataset_labels" not in state
    fresh = build("crd")
    fresh.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert set(loss.self_synchronised_buffers()) == {"log_z", "student_memory.memory", "teacher_memory.memory"}
