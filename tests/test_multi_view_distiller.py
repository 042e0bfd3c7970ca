"""The Distiller with shared views: each network runs on each view; losses see one view at a time or all at once.

Pinned against independent computations: a one-view loss's term in a two-view step is
the sum of its terms on each view computed by hand from the networks' own forwards; a
:class:`MultiViewLoss` receives exactly those records, once; the accuracy's logits are
the first view's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from distill.data.views import SharedViews
from distill.engine.build import build_run
from distill.engine.distiller import Distiller
from distill.engine.teacher import FrozenTeacher
from distill.errors import RecipeError
from distill.losses import LOSSES, LossContext, MultiViewLoss, build_loss, register_loss
from distill.losses.kd import kd_divergence
from distill.models import create_model, probe_feature_shapes
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent


class RecordingMultiViewLoss(MultiViewLoss):
    """Squared gap between student and teacher logits on view 1 minus view 0; keeps what it was given."""

    calls: list = []

    def forward(self, student, teacher, batch):
        RecordingMultiViewLoss.calls.append((student, teacher, batch))
        return ((student[1].logits - teacher[1].logits) - (student[0].logits - teacher[0].logits)).pow(2).mean()


@pytest.fixture
def recording_loss():
    register_loss("test-two-view")(RecordingMultiViewLoss)
    RecordingMultiViewLoss.calls = []
    yield
    LOSSES.unregister("test-two-view")


def networks():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet14", num_classes=10)
    context = LossContext(
        student=probe_feature_shapes(student, (3, 32, 32)), teacher=probe_feature_shapes(teacher, (3, 32, 32)),
        num_classes=10, dataset_size=8, labels=torch.arange(8) % 10, views=2,
    )
    return student, teacher, context


def test_a_one_view_loss_is_summed_over_the_views_and_a_multi_view_loss_sees_all(recording_loss):
    student, teacher_net, context = networks()
    losses = {"kd": build_loss("kd", context, {}), "ce": build_loss("ce", context, {}),
              "pair": build_loss("test-two-view", context, {})}
    distiller = Distiller(student, losses, {"kd": 0.9, "ce": 0.1, "pair": 2.0}, FrozenTeacher(teacher_net)).train()
    weak, strong = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    labels, indices = torch.arange(8) % 10, torch.arange(8)
    terms, total, logits = distiller(SharedViews((weak, strong)), labels, indices)

    # The same forwards by hand (train-mode BatchNorm sees each view on its own, as in MLKD's code).
    torch.manual_seed(0)
    reference = create_model("resnet8", num_classes=10).train()
    reference.load_state_dict(student.state_dict())
    s_weak, s_strong = reference(weak), reference(strong)
    with torch.no_grad():
        t_weak, t_strong = teacher_net(weak), teacher_net(strong)
    expected_kd = kd_divergence(s_weak, t_weak, 4.0) + kd_divergence(s_strong, t_strong, 4.0)
    expected_ce = F.cross_entropy(s_weak, labels) + F.cross_entropy(s_strong, labels)
    expected_pair = ((s_strong - t_strong) - (s_weak - t_weak)).pow(2).mean()
    torch.testing.assert_close(terms["kd"], expected_kd)
    torch.testing.assert_close(terms["ce"], expected_ce)
    torch.testing.assert_close(terms["pair"], expected_pair)
    torch.testing.assert_close(total, 0.9 * expected_kd + 0.1 * expected_ce + 2.0 * expected_pair)
    torch.testing.assert_close(logits, s_weak)  # the training accuracy reads the first view

    (records_s, records_t, batch), = RecordingMultiViewLoss.calls  # called once per step, with every view
    assert len(records_s) == len(records_t) == 2
    torch.testing.assert_close(records_t[1].logits, t_strong)
    assert torch.equal(batch.inputs, weak) and torch.equal(batch.labels, labels)

    total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher_net.parameters())


def test_a_multi_view_loss_refuses_a_run_with_another_number_of_views(recording_loss):
    _, _, context = networks()
    one_view = LossContext(**{**context.__dict__, "views": 1})
    with pytest.raises(ValueError, match=r"needs 2 views of each image per step, but the run has 1; list them in data.views.shared"):
        build_loss("test-two-view", one_view, {})


def test_a_recipe_that_gives_a_multi_view_loss_one_view_is_refused_by_name(recording_loss, fake_cifar100, tiny_teacher):
    recipe = load_recipe(
        REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml",
        [f"data.root={fake_cifar100}", "data.verify=false", "data.num_workers=0", "student.arch=resnet8",
         "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={tiny_teacher}",
         "losses.pair={type: test-two-view, weight: 1.0}"],
    )
    with pytest.raises(RecipeError, match=r"losses\.pair: cannot build loss 'test-two-view'.*needs 2 views"):
        build_run(recipe, Accelerator(cpu=True))
