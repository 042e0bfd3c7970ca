"""Teacher and student views (``data.views``): where configured they differ, where not they coincide.

Both data paths (the device loader for CIFAR, the worker loader for CIFAR and image
folders) are checked against a hand-made draw of the same view of the same stored
image, which also pins that the indices (the memory bank's keys) are the image's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from view_recipes import CRD_RECIPE, assert_each_refused, teacher_overrides

from distill.cli.main import main
from distill.data.placement import Placement
from distill.data.transforms import normalize_batch
from distill.data.views import (
    ROLES,
    STANDARD,
    SharedViews,
    TwoViews,
    build_views,
    view_options,
    view_pairs,
    view_seed,
    views_per_step,
)
from distill.engine.loaders import build_datasets, build_loaders
from distill.engine.metrics import read_metrics
from distill.errors import DataError, DistillError
from distill.recipe.load import load_recipe
from distill.recipe.schema import DataSpec, ViewSpec, ViewsSpec

REPO = Path(__file__).resolve().parent.parent
STUDENT_INFOMIN = ViewsSpec(student=ViewSpec("infomin"))


def cifar_spec(root: Path, loader: str, views: ViewsSpec | None = None) -> DataSpec:
    return DataSpec(dataset="cifar100", root=str(root), verify=False, num_workers=0, batch_size=32, loader=loader, views=views)


def first_batch(spec: DataSpec, epoch: int = 2, seed: int = 0):
    train, test = build_datasets(spec)
    views = build_views(spec.views, train.input_shape[-1], seed)
    loader = build_loaders(spec, train, test, Placement(seed=seed), views=views).train_loader
    loader.set_epoch(epoch)
    return next(iter(loader)), train, views


def expected_view(dataset, views, role: str | int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """A role's (or a shared view's) view of each image, drawn by hand from the stored image and normalised."""
    position = ROLES.index(role) if isinstance(role, str) else role
    drawn = torch.stack([views.draw(position, dataset.raw_image(int(i)), epoch, int(i)) for i in indices])
    return normalize_batch(drawn, dataset.mean, dataset.std)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["device", "workers"])
def test_a_student_view_differs_and_the_standard_teacher_view_is_the_plain_batch(fake_cifar100, loader):
    (plain, plain_labels, plain_indices), _, _ = first_batch(cifar_spec(fake_cifar100, loader))
    (inputs, labels, indices), dataset, views = first_batch(cifar_spec(fake_cifar100, loader, STUDENT_INFOMIN))
    assert isinstance(inputs, TwoViews) and inputs.teacher.shape == inputs.student.shape == plain.shape
    assert torch.equal(indices, plain_indices) and torch.equal(labels, plain_labels)  # the same images, same keys
    assert torch.equal(inputs.teacher, plain)  # not configured: exactly what a run without views sees
    assert not torch.equal(inputs.student, inputs.teacher)
    assert torch.equal(inputs.student, expected_view(dataset, views, "student", 2, indices))


def test_both_paths_draw_the_same_student_view_of_the_same_image(fake_cifar100):
    (device, _, device_indices), _, _ = first_batch(cifar_spec(fake_cifar100, "device", STUDENT_INFOMIN))
    (workers, _, worker_indices), _, _ = first_batch(cifar_spec(fake_cifar100, "workers", STUDENT_INFOMIN))
    assert torch.equal(device_indices, worker_indices)
    assert torch.equal(device.student, workers.student)


def test_two_configured_views_differ_from_each_other_and_between_epochs(fake_cifar100):
    both = ViewsSpec(teacher=ViewSpec("infomin"), student=ViewSpec("infomin"))
    (inputs, _, indices), dataset, views = first_batch(cifar_spec(fake_cifar100, "device", both))
    assert not torch.equal(inputs.teacher, inputs.student)  # each role has its own seed
    assert torch.equal(inputs.teacher, expected_view(dataset, views, "teacher", 2, indices))
    assert not torch.equal(expected_view(dataset, views, "student", 3, indices), inputs.student)


def test_plain_views_coincide_and_standard_everywhere_means_no_views(fake_cifar100):
    assert build_views(ViewsSpec(), 32, 0) is None and build_views(None, 32, 0) is None
    plain = ViewsSpec(teacher=ViewSpec("plain"), student=ViewSpec("plain"))
    (inputs, _, indices), dataset, _ = first_batch(cifar_spec(fake_cifar100, "device", plain))
    assert torch.equal(inputs.teacher, inputs.student)
    stored = torch.stack([dataset.raw_image(int(i)) for i in indices])
    assert torch.equal(inputs.student, normalize_batch(stored, dataset.mean, dataset.std))


def test_views_on_an_image_folder(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
                pixels[..., 0] = colour[0]
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    spec = DataSpec(dataset="folder", root=str(tmp_path), num_workers=2, batch_size=6, views=STUDENT_INFOMIN,
                    options={"image_size": 16})
    (inputs, labels, indices), dataset, views = first_batch(spec, epoch=1)
    assert isinstance(inputs, TwoViews) and inputs.student.shape == (6, 3, 16, 16)
    assert dataset.raw_image(0).shape == (3, 16, 16) and dataset.raw_image(0).dtype == torch.uint8
    assert torch.equal(inputs.student, expected_view(dataset, views, "student", 1, indices))
    assert torch.equal(labels, dataset.labels[indices])


def test_a_dataset_without_stored_images_refuses_views():
    spec = DataSpec(dataset="synthetic", root="unused", batch_size=4, views=STUDENT_INFOMIN,
                    options={"train_size": 8, "test_size": 4})
    with pytest.raises(DataError, match="cannot hand out its stored images.*remove data.views"):
        first_batch(spec)


def test_view_names_and_options_are_checked_with_the_key_named(fake_cifar100, tiny_teacher, tmp_path):
    base = teacher_overrides(fake_cifar100, tiny_teacher)
    cases = {
        "data.views={student: {name: infomn}}": "data.views.student.name: unknown view 'infomn'",
        "data.views={student: {name: infomin, options: {magnitud: 3}}}": "data.views.student.options.magnitud",
        "data.views={student: {name: infomin, options: {magnitude: high}}}": "expected int",
        "data.views={student: {name: infomin, options: {crop_scale: [0.9, 0.2]}}}": "crop_scale must be",
        "data.views={teacher: {name: standard, options: {a: 1}}}": "the standard view takes no options",
    }
    assert_each_refused(base, cases)
    with pytest.raises(DistillError, match="no teacher"):
        load_recipe(REPO / "recipes/cifar100/vanilla/resnet32x4-resnet8x4.yaml",
                    [f"data.root={fake_cifar100}", "data.views={student: {name: infomin}}"])
    assert set(view_options("infomin")) == {"crop_scale", "jitter", "hue", "jitter_p", "ops", "magnitude", "grayscale_p"}
    assert STANDARD == "standard"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_with_views_end_to_end(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    code = main([
        "train", str(CRD_RECIPE), f"data.root={fake_cifar100}", "data.verify=false", "data.num_workers=0",
        "schedule.epochs=1", "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={tiny_teacher}", "losses.crd.num_negatives=64",
        "data.views={student: {name: infomin}}", "--run-dir", str(run_dir), "--no-tensorboard",
    ])
    assert code == 0
    row = read_metrics(run_dir)[-1]
    assert np.isfinite(row["train/loss/crd"]) and np.isfinite(row["train/loss/ce"])
    assert "infomin" in (run_dir / "recipe.yaml").read_text()


@pytest.mark.parametrize("method,base", [("crd_infomin", "crd"), ("ml_cpc_infomin", "ml_cpc")])
def test_the_infomin_view_recipes_cover_the_13_tasks(method, base):
    from distill.benchmark.tasks import TASKS

    for task in TASKS:
        recipe = load_recipe(REPO / "recipes" / "cifar100" / method / f"{task.name}.yaml")
        plain = load_recipe(REPO / "recipes" / "cifar100" / base / f"{task.name}.yaml")
        assert recipe.description.startswith("EXPERIMENTAL")
        assert recipe.data.views == ViewsSpec(teacher=ViewSpec("standard"), student=ViewSpec("infomin"))
        assert recipe.losses == plain.losses and recipe.teacher == plain.teacher and recipe.student == plain.student
    assert len(list((REPO / "recipes" / "cifar100" / method).glob("*.yaml"))) == len(TASKS) == 13


@pytest.mark.slow
@pytest.mark.parametrize("views", ["per_network", "shared"])
@pytest.mark.parametrize("loader", ["device", "workers"])
def test_a_resumed_epoch_with_views_continues_with_the_same_views(fake_cifar100, loader, views):
    """skip(k) (how a resumed run re-enters its epoch) yields exactly the remaining batches, every view included."""
    spec = cifar_spec(fake_cifar100, loader, STUDENT_INFOMIN if views == "per_network" else WEAK_AND_INFOMIN)
    train, test = build_datasets(spec)
    built = build_views(spec.views, 32, 0)
    full = build_loaders(spec, train, test, Placement(seed=0), views=built).train_loader
    resumed = build_loaders(spec, train, test, Placement(seed=0), views=built).train_loader
    full.set_epoch(4)
    resumed.set_epoch(4)
    resumed.skip(3)
    expected, actual = list(full)[3:], list(resumed)
    assert len(actual) == len(expected) == len(full) - 3
    for (a_inputs, a_labels, a_indices), (b_inputs, b_labels, b_indices) in zip(expected, actual):
        assert torch.equal(a_indices, b_indices) and torch.equal(a_labels, b_labels)
        assert len(a_inputs.tensors()) == 2 and all(torch.equal(x, y) for x, y in zip(a_inputs.tensors(), b_inputs.tensors()))


# --- shared views: every network sees every view (MLKD's weak and strong) -----------------------------

WEAK_AND_INFOMIN = ViewsSpec(shared=[ViewSpec("standard"), ViewSpec("infomin")])


@pytest.mark.parametrize("loader", ["device", "workers"])
def test_shared_views_give_the_standard_batch_and_the_drawn_view(fake_cifar100, loader):
    (plain, plain_labels, plain_indices), _, _ = first_batch(cifar_spec(fake_cifar100, loader))
    (inputs, labels, indices), dataset, views = first_batch(cifar_spec(fake_cifar100, loader, WEAK_AND_INFOMIN))
    assert isinstance(inputs, SharedViews) and len(inputs.views) == 2
    assert torch.equal(indices, plain_indices) and torch.equal(labels, plain_labels)
    assert torch.equal(inputs.views[0], plain)  # the weak view is exactly a run's standard batch
    assert torch.equal(inputs.views[1], expected_view(dataset, views, 1, 2, indices))
    assert not torch.equal(inputs.views[1], inputs.views[0])


def test_both_paths_draw_the_same_shared_view(fake_cifar100):
    """The drawn view is the same on both paths; the standard one is each path's own crop and flip, as without views."""
    (device, _, device_indices), _, _ = first_batch(cifar_spec(fake_cifar100, "device", WEAK_AND_INFOMIN))
    (workers, _, worker_indices), _, _ = first_batch(cifar_spec(fake_cifar100, "workers", WEAK_AND_INFOMIN))
    assert torch.equal(device_indices, worker_indices)
    assert torch.equal(device.views[1], workers.views[1])


def test_a_shared_view_has_its_own_seed_slot(fake_cifar100):
    """The same view named twice in the list, or once shared and once per network, draws different images."""
    twice = ViewsSpec(shared=[ViewSpec("infomin"), ViewSpec("infomin")])
    (inputs, _, indices), dataset, views = first_batch(cifar_spec(fake_cifar100, "device", twice))
    assert not torch.equal(inputs.views[0], inputs.views[1])
    (per_network, _, _), _, _ = first_batch(cifar_spec(fake_cifar100, "device", ViewsSpec(student=ViewSpec("infomin"))))
    assert not torch.equal(per_network.student, inputs.views[1])
    assert view_seed(0, 1, 2, 5) != view_seed(0, 3, 2, 5)
    assert build_views(ViewsSpec(shared=[ViewSpec("standard")]), 32, 0) is None  # one standard view: a plain run


def test_view_pairs_run_each_network_on_each_view():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert view_pairs(a) == [(a, a)]
    assert view_pairs(TwoViews(teacher=a, student=b)) == [(b, a)]
    assert view_pairs(SharedViews((a, c))) == [(a, a), (c, c)]
    assert views_per_step(None) == views_per_step(STUDENT_INFOMIN) == 1
    assert views_per_step(WEAK_AND_INFOMIN) == 2


def test_shared_views_are_checked_with_the_key_named(fake_cifar100, tiny_teacher):
    base = teacher_overrides(fake_cifar100, tiny_teacher)
    cases = {
        "data.views={shared: [{name: standard}, {name: infomn}]}": "data.views.shared.1.name: unknown view 'infomn'",
        "data.views={shared: [{name: infomin, options: {magnitud: 3}}]}": "data.views.shared.0.options.magnitud",
        "data.views={shared: [{name: infomin, options: {crop_scale: [0.9, 0.2]}}]}": "data.views.shared.0.options: crop_scale",
        "data.views={shared: [{name: standard}, {name: standard}]}": "'standard' is listed twice",
        "data.views={shared: []}": "the list is empty",
        "data.views={shared: [{name: standard}], student: {name: infomin}}": "cannot be combined",
    }
    assert_each_refused(base, cases)
    # A student alone may see several views (a two-view baseline without a teacher).
    alone = load_recipe(REPO / "recipes/cifar100/vanilla/resnet32x4-resnet8x4.yaml",
                        [f"data.root={fake_cifar100}", "data.views={shared: [{name: standard}, {name: infomin}]}"])
    assert alone.data.views == WEAK_AND_INFOMIN
