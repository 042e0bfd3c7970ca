"""``cuda_graph: true`` on this CPU: the step graph's bookkeeping, refusals and exactness.

A real CUDA graph needs a GPU (``tests/test_cuda_paths.py`` runs one there). Here the
graph is :class:`tests.graph_emulation.EmulatedGraph`, which replays the recorded step
with the memory and the Python values of its capture, as a GPU would: so a step graph
that forgot to copy a batch in, to put a replaced bank back, or to capture again when
an epoch changed the learning rate or a warm-up factor trains differently here too.
The last two are shown by breaking the step graph on purpose.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from graph_emulation import EmulatedGraph
from resume_checks import assert_same_run, assert_same_tensors, final_state
from torch import nn

from distill.data.views import SharedViews, TwoViews
from distill.engine import step_graph
from distill.engine.step_graph import (
    FIRST_WARMUP_STEPS,
    GRAPH_BACKENDS,
    RECAPTURE_WARMUP_STEPS,
    GraphCaptureError,
    StaticBatch,
    StepGraph,
    check_graphable,
    restore_buffers,
)
from distill.engine.trainer import Trainer
from distill.errors import RecipeError
from distill.losses.contrastive import negatives
from distill.recipe.load import load_recipe
from distill.recipe.resolve import resolve_recipe

REPO = Path(__file__).resolve().parent.parent
BATCH = 16  # the 100-image tiny CIFAR: 6 full batches and a last one of 4 per epoch


# --- static inputs -----------------------------------------------------------------


def batch_of(size: int, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = torch.randn(size, 3, 8, 8)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, torch.randint(0, 10, (size,)), torch.randperm(100)[:size]


@pytest.mark.parametrize("kind", ["plain", "two_views", "shared_views"])
def test_a_static_batch_takes_batches_of_its_signature_and_holds_their_values(kind):
    def structured(inputs):
        if kind == "two_views":
            return TwoViews(teacher=inputs, student=inputs.flip(0))
        if kind == "shared_views":
            return SharedViews((inputs, inputs * 2, inputs + 1))
        return inputs

    inputs, labels, indices = batch_of(BATCH)
    static = StaticBatch(structured(inputs), labels, indices)
    assert type(static.inputs) is type(structured(inputs))
    new_inputs, new_labels, new_indices = batch_of(BATCH)
    assert static.fits(structured(new_inputs), new_labels, new_indices)
    kept = [t.data_ptr() for t in static.tensors]
    static.load(structured(new_inputs), new_labels, new_indices)
    assert [t.data_ptr() for t in static.tensors] == kept  # copied in place: a graph reads these addresses
    expected = structured(new_inputs)
    for ours, theirs in zip(step_graph.flat_inputs(static.inputs), step_graph.flat_inputs(expected)):
        assert torch.equal(ours, theirs)
    assert torch.equal(static.labels, new_labels) and torch.equal(static.indices, new_indices)
    partial = batch_of(4)
    assert not static.fits(structured(partial[0]), *partial[1:])  # the last, partial batch of an epoch


def test_a_static_batch_refuses_another_dtype_memory_format_or_structure():
    inputs, labels, indices = batch_of(BATCH)
    static = StaticBatch(inputs, labels, indices)
    assert not static.fits(inputs.double(), labels, indices)
    assert not static.fits(inputs.contiguous(memory_format=torch.channels_last), labels, indices)
    assert not static.fits(inputs, labels.int(), indices)
    assert not static.fits(TwoViews(teacher=inputs, student=inputs), labels, indices)
    assert StaticBatch(*batch_of(BATCH, channels_last=True)).tensors[0].is_contiguous(memory_format=torch.channels_last)


class OutOfPlace(nn.Module):
    """A module that replaces its buffer at every update, as the memory banks do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(4))
        self.inner = nn.Module()
        self.inner.register_buffer("count", torch.zeros(()))

    def update(self, value: float) -> None:
        self.memory = self.memory + value
        self.inner.count += 1  # in place: nothing to restore


def test_restore_buffers_puts_the_replaced_tensor_back_with_the_new_values():
    module = OutOfPlace()
    slots = step_graph.buffer_slots(module)
    original = module.memory
    module.update(2.0)
    assert module.memory is not original
    assert restore_buffers(slots) == 1
    assert module.memory is original and module.memory.tolist() == [2.0] * 4
    assert module.inner.count.item() == 1.0
    assert restore_buffers(slots) == 0


# --- the step graph's schedule, on a toy step -------------------------------------------


class ToyStep:
    """A linear model trained by SGD, its step returning (terms, total, flags) as the trainer's does."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = nn.Linear(3 * 8 * 8, 10)
        self.module.register_buffer("seen", torch.zeros(100))
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1, momentum=0.9)

    def __call__(self, inputs, labels, indices):
        logits = self.module(inputs.flatten(1))
        loss = nn.functional.cross_entropy(logits, labels) + 0.01 * self.module.seen[indices].sum()  # reads the buffer
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.module.seen = self.module.seen.index_add(0, indices, torch.ones(indices.shape[0]))  # out of place
        return {"ce": loss.detach()}, loss.detach() * 2, torch.zeros(3)


def run_epochs(step, batches_per_epoch: list[list[tuple]], graphed: StepGraph | None):
    outputs = []
    for epoch, batches in enumerate(batches_per_epoch, start=1):
        for group in step.optimizer.param_groups:
            group["lr"] = 0.1 / epoch  # changes between epochs, as the schedule does
        if graphed is not None:
            graphed.new_epoch()
        for batch in batches:
            terms, total, flags = (graphed or step)(*batch)
            outputs.append((terms["ce"].item(), total.item(), flags.tolist()))
    return outputs


def epochs_of_batches(epochs: int = 2, full: int = 6, last: int = 4):
    torch.manual_seed(1)
    return [[batch_of(BATCH) for _ in range(full)] + [batch_of(last)] for _ in range(epochs)]


def test_the_step_graph_captures_once_per_epoch_replays_full_batches_and_runs_the_partial_one_plainly():
    batches = epochs_of_batches()
    plain = ToyStep()
    expected = run_epochs(plain, batches, None)
    toy = ToyStep()
    graphed = StepGraph(toy, toy.module, lambda: [], lambda: EmulatedGraph(torch.device("cpu")))
    graphed.graph.watch(toy.module, toy.optimizer)
    assert run_epochs(toy, batches, graphed) == expected
    for ours, theirs in zip(toy.module.state_dict().values(), plain.module.state_dict().values()):
        assert torch.equal(ours, theirs)
    # epoch 1: 3 warm-up steps, capture on the 4th, replays 4-6, the partial 7th plain;
    # epoch 2: 1 warm-up step, capture on the 2nd, replays 2-6, the partial 7th plain
    assert graphed.captures == 2
    assert graphed.replays == (6 - FIRST_WARMUP_STEPS) + (6 - RECAPTURE_WARMUP_STEPS)
    assert graphed.plain_steps == (FIRST_WARMUP_STEPS + 1) + (RECAPTURE_WARMUP_STEPS + 1)
    assert graphed.graph.resets == 1


def test_each_replay_returns_its_own_values_not_a_view_of_the_graph_output():
    toy = ToyStep()
    graphed = StepGraph(toy, toy.module, lambda: [], lambda: EmulatedGraph(torch.device("cpu")))
    graphed.graph.watch(toy.module, toy.optimizer)
    graphed.new_epoch()
    results = [graphed(*batch) for batch in epochs_of_batches(1, full=6)[0][:6]]
    first_replay, second_replay = results[FIRST_WARMUP_STEPS], results[FIRST_WARMUP_STEPS + 1]
    assert first_replay[1].item() != second_replay[1].item()
    assert first_replay[0]["ce"].item() * 2 == pytest.approx(first_replay[1].item())


def test_breaking_the_bookkeeping_changes_the_results_so_the_emulation_can_catch_it(monkeypatch):
    batches = epochs_of_batches()
    expected = run_epochs(ToyStep(), batches, None)

    def broken_run() -> list:
        toy = ToyStep()
        graphed = StepGraph(toy, toy.module, lambda: [], lambda: EmulatedGraph(torch.device("cpu")))
        graphed.graph.watch(toy.module, toy.optimizer)
        return run_epochs(toy, batches, graphed)

    with monkeypatch.context() as patch:  # no recapture: epoch 2 would train at epoch 1's learning rate
        patch.setattr(StepGraph, "new_epoch", lambda self: None)
        assert broken_run() != expected
    with monkeypatch.context() as patch:  # no copy of the batch: every replay would train on the captured one
        patch.setattr(StaticBatch, "load", lambda self, *batch: None)
        assert broken_run() != expected
    with monkeypatch.context() as patch:  # a replaced buffer not put back: the graph would read the stale one
        patch.setattr(step_graph, "restore_buffers", lambda slots: 0)
        assert broken_run() != expected
    assert broken_run() == expected  # and unbroken, the same run matches


def test_a_step_that_reads_the_device_on_the_host_cannot_be_captured():
    class Reading(ToyStep):
        def __call__(self, inputs, labels, indices):
            terms, total, flags = super().__call__(inputs, labels, indices)
            if total.item() > 1e9:  # a host read: a real capture fails on it
                raise AssertionError("unreachable")
            return terms, total, flags

    toy = Reading()
    graphed = StepGraph(toy, toy.module, lambda: [], lambda: EmulatedGraph(torch.device("cpu")))
    graphed.graph.watch(toy.module, toy.optimizer)
    graphed.new_epoch()
    batches = epochs_of_batches(1)[0]
    for batch in batches[:FIRST_WARMUP_STEPS]:
        graphed(*batch)  # plain steps may read the host
    with pytest.raises(GraphCaptureError, match=r"could not be captured.*item reads the device on the host"):
        graphed(*batches[FIRST_WARMUP_STEPS])


def test_a_step_that_cannot_be_captured_names_the_option():
    class Refusing(EmulatedGraph):
        def capture(self, body, generators):
            raise RuntimeError("operation not permitted when stream is capturing")

    toy = ToyStep()
    graphed = StepGraph(toy, toy.module, lambda: [], lambda: Refusing(torch.device("cpu")))
    graphed.new_epoch()
    batches = epochs_of_batches(1)[0]
    for batch in batches[:FIRST_WARMUP_STEPS]:
        graphed(*batch)
    with pytest.raises(GraphCaptureError, match=r"cuda_graph: true.*operation not permitted.*set cuda_graph: false"):
        graphed(*batches[FIRST_WARMUP_STEPS])


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": torch.device("cpu")}, "needs a CUDA device, and this run is on cpu"),
        ({"num_processes": 2}, "runs on one process, and this run has 2"),
        ({"precision": "fp16"}, "fp16's grad scaler.*use precision: bf16"),
        ({"skip_nonfinite": 3}, "skip_nonfinite: 3 .*set it to 0"),
    ],
)
def test_check_graphable_refuses_what_a_graph_cannot_hold(settings, message):
    arguments = {"device": torch.device("cuda"), "num_processes": 1, "precision": "bf16", "skip_nonfinite": 0, **settings}
    with pytest.raises(RecipeError, match=message):
        check_graphable(**arguments)
    check_graphable(device=torch.device("cuda"), num_processes=1, precision="fp32", skip_nonfinite=0)


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_cuda_graph_on_a_cpu_is_refused_with_exit_2_and_no_run_directory(tiny_cifar, tiny_teacher, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "distill", "train", "--run-dir", str(tmp_path / "run"),
         str(REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"), *overrides(tiny_cifar, tiny_teacher), "cuda_graph=true", "precision=fp16"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cuda_graph: true cannot be used here: it needs a CUDA device" in result.stderr
    assert "fp16's grad scaler" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# --- whole runs on the emulated graph --------------------------------------------------


def small_run(data_root: Path, teacher: Path | None) -> list[str]:
    """The tiny data, resnet8 as the student and (unless ``teacher`` is None) resnet14 from ``teacher``."""
    overrides = [f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
                 f"data.batch_size={BATCH}", "student.arch=resnet8"]  # fmt: skip
    if teacher is not None:
        overrides += ["teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}"]
    return overrides


def overrides(data_root: Path, teacher: Path) -> list[str]:
    """:func:`small_run` for 3 epochs, the lr dropping after the first."""
    return [*small_run(data_root, teacher), "schedule.epochs=3", "schedule.milestones=[1]", "schedule.gamma=0.1", "log_every=2"]


RUNS = {
    "kd+crd": ("kd", ["losses.crd={weight: 0.8, num_negatives: 32}"]),
    "dkd-warmup": ("dkd", ["losses.dkd.warmup=2"]),
    "crd+fused": ("crd", ["losses.crd.num_negatives=16", "optimizer.fused=true"]),
}  # fmt: skip


def train_run(method: str, extra: list[str], data_root: Path, teacher: Path, run_dir: Path, graphed: bool) -> Trainer:
    recipe = load_recipe(
        REPO / f"recipes/cifar100/{method}/resnet32x4-resnet8x4.yaml",
        [*overrides(data_root, teacher), *extra, f"cuda_graph={str(graphed).lower()}"],
    )
    trainer = Trainer(resolve_recipe(recipe), run_dir, tensorboard=False, echo=lambda line: None)
    if graphed:
        trainer.step_graph.graph.watch(trainer.unwrapped, trainer.optimizer)
    trainer.fit()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_on_the_emulated_graph_ends_bit_identical_to_the_plain_step(name, tiny_cifar, tiny_teacher, tmp_path, monkeypatch):
    """Three epochs of 7 steps (the 7th partial): the lr drops after epoch 1, DKD's warm-up factor changes at each
    epoch, CRD's banks are replaced at each step and its negatives drawn from a private generator."""
    method, extra = RUNS[name]
    monkeypatch.setattr(negatives, "CPU_METHOD", "topk")  # the negatives' GPU draw, which reads nothing on the host
    plain = train_run(method, extra, tiny_cifar, tiny_teacher, tmp_path / "plain", graphed=False)
    monkeypatch.setitem(GRAPH_BACKENDS, "cpu", EmulatedGraph)
    graphed = train_run(method, extra, tiny_cifar, tiny_teacher, tmp_path / "graph", graphed=True)
    counts = graphed.step_graph
    assert (counts.captures, counts.graph.resets) == (3, 2)
    assert counts.replays == (6 - FIRST_WARMUP_STEPS) + 2 * (6 - RECAPTURE_WARMUP_STEPS)
    if "crd" in name:
        assert counts.graph.captured_generators  # the negatives' generator was handed to the graph
    assert plain.state.step == graphed.state.step == 21
    assert_same_run(tmp_path / "plain", tmp_path / "graph")  # weights, banks, optimiser, schedule, metrics: bit for bit
    generators = [final_state(tmp_path / run)["processes"][0]["losses"] for run in ("plain", "graph")]
    assert_same_tensors(*generators, "the losses' generators")


# --- which steps can be captured --------------------------------------------------------------

SHIPPED_METHODS = sorted(path.parent.name for path in (REPO / "recipes/cifar100").glob("*/resnet32x4-resnet8x4.yaml"))
NOT_CAPTURABLE = {
    "bank=queue": (["losses.crd.bank=queue", "losses.crd.queue_size=48"], "__int__"),
}
"""Settings whose step reads the device on the host (README "Speed" lists them): the queue's negatives count
the eligible entries of each row to choose between drawing with and without replacement."""


def captured_steps(method: str, data_root: Path, teacher: Path, *extra: str) -> StepGraph:
    """Six steps of the method's shipped recipe (resnet14 → resnet8, batch 16) on the emulated graph."""
    overrides = [*small_run(data_root, None if method == "vanilla" else teacher), "cuda_graph=true", *extra]
    recipe = load_recipe(REPO / f"recipes/cifar100/{method}/resnet32x4-resnet8x4.yaml", overrides)
    trainer = Trainer(resolve_recipe(recipe), tensorboard=False, echo=lambda line: None, dry_run=True)
    trainer.step_graph.graph.watch(trainer.unwrapped, trainer.optimizer)
    trainer.distiller.train()
    trainer.train_loader.set_epoch(1)
    for _, batch in zip(range(6), trainer.train_loader):
        trainer.train_step(*batch)
    return trainer.step_graph


@pytest.mark.slow
@pytest.mark.parametrize("method", SHIPPED_METHODS)
def test_every_shipped_method_can_be_captured(method, tiny_cifar, tiny_teacher, monkeypatch):
    """The emulated capture runs the step's Python once and fails on any host read: every shipped recipe's step
    (its losses, views, heads and banks) is captured and replayed."""
    monkeypatch.setitem(GRAPH_BACKENDS, "cpu", EmulatedGraph)
    monkeypatch.setattr(negatives, "CPU_METHOD", "topk")
    graphed = captured_steps(method, tiny_cifar, tiny_teacher)
    assert (graphed.captures, graphed.replays) == (1, 6 - FIRST_WARMUP_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(NOT_CAPTURABLE))
def test_a_setting_whose_step_reads_the_host_fails_the_capture_by_name(setting, tiny_cifar, tiny_teacher, monkeypatch):
    monkeypatch.setitem(GRAPH_BACKENDS, "cpu", EmulatedGraph)
    monkeypatch.setattr(negatives, "CPU_METHOD", "topk")
    extra, read = NOT_CAPTURABLE[setting]
    with pytest.raises(GraphCaptureError, match=rf"could not be captured.*losses\.crd.*{read} reads the device on the host"):
        captured_steps("crd", tiny_cifar, tiny_teacher, *extra)
