"""Speed settings change how a step is computed, not what it computes.

``precision`` (bf16/fp16 autocast for the networks, float32 for the losses and banks),
``channels_last`` and ``compile`` are each run for a few KD + CRD steps on fixed
batches and compared with the plain fp32 run of the same seed, within a tolerance
that fits the setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.engine.distiller import as_float32
from distill.engine.teacher import FrozenTeacher
from distill.engine.trainer import Trainer
from distill.models import create_model
from distill.recipe.load import load_recipe
from distill.recipe.resolve import resolve_recipe

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
BATCH, STEPS = 16, 3


def build(fake_cifar100: Path, teacher: Path, run_dir: Path, extra: list[str]) -> Trainer:
    recipe = load_recipe(
        KD_RECIPE,
        [
            f"data.root={fake_cifar100}", "data.verify=false", "data.download=false", "data.num_workers=0",
            f"data.batch_size={BATCH}", "deterministic=true", "student.arch=resnet8",
            "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
            "losses.crd={weight: 0.8, num_negatives: 64}", *extra,
        ],
    )  # fmt: skip
    return Trainer(resolve_recipe(recipe), run_dir, tensorboard=False, echo=lambda line: None)


def run_steps(trainer: Trainer) -> list[dict[str, float]]:
    """The loss terms of STEPS optimisation steps on the same random batches for every setting."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(STEPS):
        inputs = torch.randn(BATCH, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 100, (BATCH,), generator=generator)
        indices = torch.randperm(trainer.built.train_size, generator=generator)[:BATCH]
        terms, total = trainer.train_step(inputs, labels, indices)
        assert all(value.dtype == torch.float32 for value in terms.values())  # losses are float32 whatever the setting
        rows.append({**{name: value.item() for name, value in terms.items()}, "total": total.item()})
    return rows


@pytest.fixture(scope="module")
def baseline(fake_cifar100, tiny_teacher, tmp_path_factory) -> list[dict[str, float]]:
    return run_steps(build(fake_cifar100, tiny_teacher, tmp_path_factory.mktemp("fp32") / "run", []))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "tolerance", "steps_compared"),
    [
        (["channels_last=true"], 1e-4, STEPS),
        (["compile=true", "compile_backend=aot_eager"], 1e-4, STEPS),
        (["compile=true"], 1e-3, STEPS),  # inductor: fused kernels reorder float sums
        (["precision=bf16"], 5e-2, 1),  # 8 mantissa bits in the networks; later steps drift apart
    ],
    ids=["channels_last", "compile-aot_eager", "compile-inductor", "bf16"],
)
def test_setting_matches_the_fp32_steps(extra, tolerance, steps_compared, baseline, fake_cifar100, tiny_teacher, tmp_path):
    trainer = build(fake_cifar100, tiny_teacher, tmp_path / "run", extra)
    rows = run_steps(trainer)
    for ours, reference in zip(rows[:steps_compared], baseline[:steps_compared]):
        assert ours.keys() == reference.keys()
        for name in reference:
            assert ours[name] == pytest.approx(reference[name], rel=tolerance, abs=tolerance), name
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in rows)


@pytest.mark.slow
def test_bf16_keeps_banks_and_heads_in_float32(fake_cifar100, tiny_teacher, tmp_path):
    trainer = build(fake_cifar100, tiny_teacher, tmp_path / "run", ["precision=bf16"])
    run_steps(trainer)
    crd = trainer.unwrapped.losses["crd"]
    for name, buffer in crd.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, name
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())  # master weights stay fp32


def test_the_teacher_runs_in_inference_mode_but_hands_out_ordinary_tensors():
    teacher = FrozenTeacher(create_model("resnet8"))
    record = teacher(torch.randn(2, 3, 32, 32))
    tensors = [*record.maps, *record.preact_maps, record.pooled, record.logits]
    assert not any(t.is_inference() or t.requires_grad for t in tensors)
    student = torch.randn(2, 100, requires_grad=True)
    (student * record.logits).sum().backward()  # would fail on an inference tensor saved for backward
    assert student.grad is not None


def test_records_are_cast_up_once_and_float32_ones_are_shared():
    record = create_model("resnet8")(torch.randn(2, 3, 32, 32), features=True)
    assert as_float32(record).logits is record.logits  # already float32: no copy
    half = record.map_tensors(lambda t: t.to(torch.bfloat16))
    assert half.preact_maps[0] is half.maps[0] or record.preact_maps[0] is not record.maps[0]
    cast = as_float32(half)
    assert all(t.dtype == torch.float32 for t in [*cast.maps, cast.pooled, cast.logits])
