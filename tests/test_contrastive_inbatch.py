"""In-batch negatives (``bank: batch``): estimator inputs, no dataset-sized state, one process = two, the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.cli.main import EXIT_USER_ERROR, main
from distill.engine.metrics import read_metrics
from distill.losses import Batch, LossContext, build_loss
from distill.losses.contrastive.in_batch import EXCLUDED_LOG_SCORE, diagonal_first, excluded_negatives
from distill.models.features import FeatureRecord, FeatureShapes

REPO = Path(__file__).resolve().parent.parent
T = 0.07
DIM, CLASSES = 4, 3


def context(dataset_size: int = 40, labels: torch.Tensor | None = None, batch_size: int = 6) -> LossContext:
    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(DIM,), logits=(CLASSES,))
    labels = torch.arange(dataset_size) % CLASSES if labels is None else labels
    return LossContext(student=shapes, teacher=shapes, num_classes=CLASSES, dataset_size=dataset_size, labels=labels, batch_size=batch_size)


def record(pooled: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(len(pooled), CLASSES))


def identity_heads(loss) -> None:
    """Heads that only normalise (W = I, b = 0): the embeddings are the hand-built unit vectors."""
    with torch.no_grad():
        for head in (loss.student_head, loss.teacher_head):
            head.linear.weight.copy_(torch.eye(DIM))
            head.linear.bias.zero_()


# Six samples, classes with repeats (0, 1, 0, 2, 1, 0): hand-built student and teacher vectors.
LABELS = torch.tensor([0, 1, 0, 2, 1, 0])
INDICES = torch.tensor([11, 4, 7, 30, 2, 19])
STUDENT = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1], [1, 0, 0, 1]]), dim=1)
TEACHER = F.normalize(torch.tensor([[1.0, 0.2, 0, 0], [0, 1, 0.3, 0], [1, 0, 1, 0], [0, 0, 1, 0.5], [0, 1, 0, 1], [1, 1, 1, 1]]), dim=1)


def by_hand(anchors: torch.Tensor, others: torch.Tensor, labels: list[int], exact: bool):
    """Per anchor: its positive score and the list of its eligible negative scores, in float64 loops."""
    rows = []
    for i in range(len(anchors)):
        positive = float(anchors[i].double() @ others[i].double()) / T
        negatives = [
            float(anchors[i].double() @ others[j].double()) / T
            for j in range(len(anchors))
            if j != i and not (exact and labels[j] == labels[i])
        ]
        rows.append((positive, negatives))
    return rows


def cpc_by_hand(rows, m: int) -> float:
    return -sum(p - math.log((math.exp(p) + sum(math.exp(n) for n in negs)) / m) for p, negs in rows) / len(rows)


def ml_cpc_by_hand(rows, m: int) -> float:
    total = sum(math.exp(p) + sum(math.exp(n) for n in negs) for p, negs in rows)
    return -(sum(p for p, _ in rows) / len(rows) - math.log(total / (len(rows) * m)))


def nce_by_hand(rows, all_scores: list[float], m: int) -> float:
    """CRD's NCE with P_n = 1/m and Z = m·mean over every pair's exp(score) (excluded pairs included)."""
    z = m * sum(math.exp(s) for s in all_scores) / len(all_scores)
    c = (m - 1) / m
    total = 0.0
    for p, negs in rows:
        x0 = math.exp(p) / z
        total += -math.log(x0 / (x0 + c)) - sum(math.log(c / (math.exp(n) / z + c)) for n in negs)
    return total / len(rows)


def captured_logits(loss, student, teacher, batch):
    """The [B, M] logits each side hands to the estimator, and the loss value."""
    seen = []
    original = loss.criterion
    loss.criterion = lambda logits, side, z_logits=None: seen.append(logits.detach()) or original(logits, side, z_logits)
    value = loss(record(student), record(teacher), batch)
    return seen, value


@pytest.mark.parametrize("mode", ["exact", "uniform"])
def test_estimator_inputs_match_an_independent_computation(mode):
    loss = build_loss("cpc", context(), {"bank": "batch", "mode": mode, "feat_dim": DIM})
    identity_heads(loss)
    batch = Batch(torch.zeros(6), LABELS, INDICES)
    (student_side, teacher_side), _ = captured_logits(loss, STUDENT, TEACHER, batch)
    for logits, anchors, others in ((student_side, STUDENT, TEACHER), (teacher_side, TEACHER, STUDENT)):
        assert logits.shape == (6, 6)  # K = B − 1 columns of negatives, masked not dropped
        for row, (positive, negatives) in zip(logits, by_hand(anchors, others, LABELS.tolist(), mode == "exact")):
            assert row[0].item() == pytest.approx(positive, abs=1e-5)
            kept = sorted(v for v in row[1:].tolist() if v != EXCLUDED_LOG_SCORE)
            assert kept == pytest.approx(sorted(negatives), abs=1e-5)
            assert (row[1:] == EXCLUDED_LOG_SCORE).sum().item() == 5 - len(negatives)
    if mode == "exact":  # sample 0 (class 0) has two same-class others (2 and 5): masked; 3 eligible
        assert (student_side[0, 1:] == EXCLUDED_LOG_SCORE).sum().item() == 2


def test_exclusion_mask_by_hand_with_repeated_classes_and_a_padded_repeat():
    labels = torch.tensor([0, 1, 0, 1])
    indices = torch.tensor([5, 6, 7, 5])  # sample 5 repeated (Accelerate's padding of the last batch)
    # Layout: row i's columns are samples i, i+1, ... (mod 4).
    exact = excluded_negatives(labels, indices, "exact")
    # Row 0 (sample 5, class 0): sample 2 shares its class, sample 3 is its repeat; row 3 (the repeat): sample 0, and class-mate 1.
    assert exact.tolist() == [[False, False, True, True], [False, False, True, False], [False, False, True, False], [False, True, True, False]]
    uniform = excluded_negatives(labels, indices, "uniform")
    assert uniform.tolist() == [[False, False, False, True], [False, False, False, False], [False, False, False, False], [False, True, False, False]]
    assert diagonal_first(torch.arange(9.0).reshape(3, 3)).tolist() == [[0, 1, 2], [4, 5, 3], [8, 6, 7]]


@pytest.mark.parametrize("loss_type", ["crd", "cpc", "ml_cpc"])
def test_loss_values_match_the_estimators_by_hand(loss_type):
    loss = build_loss(loss_type, context(), {"bank": "batch", "feat_dim": DIM})
    identity_heads(loss)
    value = loss(record(STUDENT), record(TEACHER), Batch(torch.zeros(6), LABELS, INDICES))
    expected = 0.0
    for anchors, others in ((STUDENT, TEACHER), (TEACHER, STUDENT)):
        rows = by_hand(anchors, others, LABELS.tolist(), exact=True)
        if loss_type == "cpc":
            expected += cpc_by_hand(rows, 6)
        elif loss_type == "ml_cpc":
            expected += ml_cpc_by_hand(rows, 6)
        else:
            all_scores = [float(a.double() @ o.double()) / T for a in anchors for o in others]
            expected += nce_by_hand(rows, all_scores, 6)
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["crd", "cpc", "ml_cpc"])
def test_a_batch_of_one_class_has_no_negative_yet_stays_finite(loss_type):
    loss = build_loss(loss_type, context(), {"bank": "batch", "feat_dim": DIM})
    student = torch.randn(4, DIM, requires_grad=True)
    value = loss(record(student), record(torch.randn(4, DIM)), Batch(torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/self/status")


@pytest.mark.parametrize("loss_type", ["crd", "ml_cpc"])
def test_ten_million_samples_leave_no_per_sample_state(loss_type):
    n = 10_000_000
    labels = torch.zeros((), dtype=torch.long).expand(n)  # shaped like the dataset's labels, one element of storage
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    before = rss_bytes("VmRSS")
    loss = build_loss(loss_type, context(dataset_size=n, labels=labels, batch_size=64), {"bank": "batch"})
    grown = rss_bytes("VmHWM") - before
    tensors = [*loss.parameters(), *loss.buffers(), *loss.state_dict().values()]
    held = sum(t.numel() for t in tensors)
    assert held < 100_000, held  # the two 4→128 heads and log Z; a bank would be 1.28e9 floats, the labels 1e7
    assert max(t.numel() for t in tensors) < n // 1000
    assert "dataset_labels" not in dict(loss.named_buffers())
    assert grown < 32 * 2**20, grown  # a copy of the labels alone would be 80 MB
    assert "K = B_global − 1 = 63" in loss.summary()


def test_relax_and_num_negatives_are_refused():
    with pytest.raises(ValueError, match="relax.*bank: batch"):
        build_loss("crd", context(), {"bank": "batch", "mode": "relax"})
    with pytest.raises(ValueError, match="num_negatives does not apply to bank: batch"):
        build_loss("cpc", context(), {"bank": "batch", "num_negatives": 100})
    assert "ceiling log B_global = 1.79" in build_loss("ml_cpc", context(), {"bank": "batch"}).summary()


WORKER = r"""
import sys, torch, torch.distributed as dist
from distill.losses import Batch, LossContext, build_loss
from distill.models.features import FeatureRecord, FeatureShapes
dist.init_process_group("gloo")
rank = dist.get_rank()
out, cases = sys.argv[1], sys.argv[2:]
shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(5,), logits=(3,))
context = LossContext(student=shapes, teacher=shapes, num_classes=3, dataset_size=50, labels=torch.arange(50) % 3, batch_size=4)
results = {}
for case in cases:
    loss_type, mode = case.split(":")
    torch.manual_seed(0)
    loss = build_loss(loss_type, context, {"bank": "batch", "mode": mode, "feat_dim": 6})
    for step, split in enumerate((4, 3)):  # even halves, then 3 + 5 rows
        g = torch.Generator().manual_seed(10 + step)
        student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
        indices = torch.randperm(50, generator=g)[:8]
        mine = slice(0, split) if rank == 0 else slice(split, 8)
        pooled = student[mine].clone().requires_grad_(True)
        record = lambda p: FeatureRecord(maps=[], preact_maps=[], pooled=p, logits=torch.zeros(len(p), 3))
        loss.zero_grad()
        value = loss(record(pooled), record(teacher[mine]), Batch(torch.zeros(1), indices[mine] % 3, indices[mine]))
        value.backward()
        results[f"{case}/{step}/loss"] = value.detach()
        results[f"{case}/{step}/input_grad"] = pooled.grad
        for name, p in loss.named_parameters():
            results[f"{case}/{step}/{name}"] = p.grad.clone()
torch.save(results, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""

CASES = ("crd:exact", "cpc:uniform", "ml_cpc:exact")


@pytest.mark.slow
@pytest.mark.e2e
def test_two_gloo_processes_fed_halves_equal_one_process_fed_the_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path), *CASES]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(5,), logits=(3,))
    single_context = LossContext(student=shapes, teacher=shapes, num_classes=3, dataset_size=50, labels=torch.arange(50) % 3, batch_size=8)
    for case in CASES:
        loss_type, mode = case.split(":")
        torch.manual_seed(0)
        loss = build_loss(loss_type, single_context, {"bank": "batch", "mode": mode, "feat_dim": 6})
        for step, split in enumerate((4, 3)):
            g = torch.Generator().manual_seed(10 + step)
            student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
            indices = torch.randperm(50, generator=g)[:8]
            pooled = student.clone().requires_grad_(True)
            loss.zero_grad()
            value = loss(record_of(pooled), record_of(teacher), Batch(torch.zeros(1), indices % 3, indices))
            value.backward()
            key = f"{case}/{step}"
            for rank in ranks:  # every process reports the single-process loss
                assert rank[f"{key}/loss"].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-6), key
            for name, p in loss.named_parameters():  # DDP's average of the two processes' gradients
                averaged = (ranks[0][f"{key}/{name}"] + ranks[1][f"{key}/{name}"]) / 2
                assert torch.allclose(averaged, p.grad, rtol=1e-5, atol=1e-6), (key, name)
            # Each process's own rows get the world size times their share, which DDP's average undoes.
            inputs = torch.cat([ranks[0][f"{key}/input_grad"], ranks[1][f"{key}/input_grad"]]) / 2
            assert inputs.shape[0] == 8 and ranks[0][f"{key}/input_grad"].shape[0] == split
            assert torch.allclose(inputs, pooled.grad, rtol=1e-5, atol=1e-6), key


def record_of(pooled: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(len(pooled), 3))


def cli_overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "schedule.epochs=1", "log_every=2", "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={teacher}", "losses.crd.bank=batch",
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_crd_with_in_batch_negatives_trains_an_epoch_through_the_cli(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "crd_batch"
    recipe = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"
    assert main(["train", str(recipe), *cli_overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "in-batch negatives: K = B_global − 1" in out
    row = read_metrics(run_dir)[-1]
    assert math.isfinite(row["train/loss/crd"]) and math.isfinite(row["test/top1"])
    checkpoint = torch.load(run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    crd_state = {k: v for k, v in checkpoint["losses"].items() if k.startswith("crd.")}
    assert not any("memory" in k for k in crd_state)
    assert torch.isfinite(crd_state["crd.log_z"]).all()
    assert sum(v.numel() for v in crd_state.values()) < 100_000  # heads and Z: nothing of the 256 samples

    refused = main(["train", str(recipe), *cli_overrides(fake_cifar100, tiny_teacher), "losses.crd.num_negatives=200",
                    "--run-dir", str(tmp_path / "refused")])
    assert refused == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "losses.crd" in err and "num_negatives does not apply to bank: batch" in err and "Traceback" not in err


def test_the_mi_bench_says_its_negatives_are_in_batch_and_what_the_ceilings_become(tmp_path, capsys):
    from distill.mi_bench.estimators import pairwise_logits

    scores = torch.arange(16.0).reshape(4, 4)
    assert torch.equal(pairwise_logits(scores), diagonal_first(scores))  # the bench's layout is bank: batch's
    args = ["mi-bench", "--output", str(tmp_path), "--steps", "2", "--levels", "1", "--batch-size", "8", "--estimators", "cpc", "--no-figure"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "negatives: the other n − 1 = 7 pairs of the batch (as the losses' bank: batch with B_global = n)" in out
    assert "the ceiling is log n for CPC/InfoNCE, log(n/α) for α-CPC and α-ML-CPC" in out
