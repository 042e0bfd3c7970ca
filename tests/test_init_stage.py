"""The init stage that a loss declares: trained before the main epochs, configured by the recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.engine.metrics import read_metrics
from distill.engine.trainer import Trainer
from distill.losses import DistillLoss, InitStage, LossContext, register_loss
from distill.recipe.load import recipe_from_dict
from distill.recipe.resolve import resolve_recipe

pytestmark = pytest.mark.slow


@register_loss("test-staged")
class StagedLoss(DistillLoss):
    """Fits a linear map from student to teacher embeddings in its init stage; zero afterwards."""

    def __init__(self, context: LossContext, *, stage_lr: float = 0.0) -> None:
        super().__init__(context)
        self.regressor = nn.Linear(context.student.pooled_dim, context.teacher.pooled_dim)
        self.stage_lr = stage_lr

    def stage_loss(self, student, teacher, batch):
        return (self.regressor(student.pooled) - teacher.pooled).pow(2).mean()

    def init_stage(self) -> InitStage:
        return InitStage(
            loss=self.stage_loss, modules=[self.regressor], train_student_features=True, epochs=3,
            lr=self.stage_lr or None, freeze_after=True,
        )

    def trainable_parameters(self):
        return iter(())

    def forward(self, student, teacher, batch):
        return student.pooled.new_zeros(())


def recipe(data_root, teacher, **init):
    return recipe_from_dict(
        {
            "student": {"arch": "resnet8"},
            "teacher": {"arch": "resnet14", "checkpoint": str(teacher)},
            "data": {"root": str(data_root), "verify": False, "num_workers": 0},
            "losses": {"ce": {"weight": 1.0}, "staged": {"type": "test-staged", "weight": 1.0}},
            "schedule": {"epochs": 1},
            "init": init,
        }
    )


def test_the_init_stage_trains_its_modules_and_the_student_features_first(fake_cifar100, tiny_teacher, tmp_path):
    trainer = Trainer(resolve_recipe(recipe(fake_cifar100, tiny_teacher)), tmp_path / "run", tensorboard=False)
    loss = trainer.unwrapped.losses["staged"]
    regressor_before = loss.regressor.weight.clone()
    conv_before = trainer.unwrapped.student.conv1.weight.clone()
    fc_before = trainer.unwrapped.student.fc.weight.clone()
    teacher_before = {k: v.clone() for k, v in trainer.built.teacher.module.state_dict().items()}
    trainer.run_init_stages()
    assert not torch.equal(loss.regressor.weight, regressor_before)
    assert not torch.equal(trainer.unwrapped.student.conv1.weight, conv_before)  # a feature layer trained
    assert torch.equal(trainer.unwrapped.student.fc.weight, fc_before)  # the classifier did not
    assert all(torch.equal(v, teacher_before[k]) for k, v in trainer.built.teacher.module.state_dict().items())
    assert not loss.regressor.weight.requires_grad and not loss.regressor.training  # frozen after
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("stage") == "init"]
    assert [r["init/epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["init/loss/staged"] < rows[0]["init/loss/staged"]


def test_the_recipe_overrides_the_declared_epochs_and_lr(fake_cifar100, tiny_teacher, tmp_path, capsys):
    result = Trainer(resolve_recipe(recipe(fake_cifar100, tiny_teacher, epochs=1, lr=0.123)), tmp_path / "run", tensorboard=False).fit()
    out = capsys.readouterr().out
    assert "init stage of staged: 1 epochs at lr 0.123" in out
    rows = read_metrics(result.run_dir)
    assert [r.get("stage") for r in rows if "stage" in r] == ["init"] and rows[-1]["epoch"] == 1


@register_loss("test-staged-format")
class FormatRecordingStage(StagedLoss):
    """A staged loss whose init-stage objective records the memory format of the inputs it was given."""

    formats: list[bool] = []

    def stage_loss(self, student, teacher, batch):
        FormatRecordingStage.formats.append(batch.inputs.is_contiguous(memory_format=torch.channels_last))
        return super().stage_loss(student, teacher, batch)


class PlainBatches:
    """A training loader whose batches are plain NCHW tensors (the loaders of the package already convert)."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_the_init_stage_takes_the_same_forward_path_as_a_step(fake_cifar100, tiny_teacher, tmp_path):
    spec = recipe(fake_cifar100, tiny_teacher, epochs=1)
    spec.channels_last = True
    spec.losses["staged"].type = "test-staged-format"
    trainer = Trainer(resolve_recipe(spec), tmp_path / "run", tensorboard=False, echo=lambda line: None)
    images = torch.randn(8, 3, 32, 32)
    assert not images.is_contiguous(memory_format=torch.channels_last)
    trainer.built.train_loader = PlainBatches([(images, torch.zeros(8, dtype=torch.long), torch.arange(8))])
    FormatRecordingStage.formats.clear()
    trainer.run_init_stages()
    assert FormatRecordingStage.formats == [True]  # channels_last, as Distiller.forward gives a main step
