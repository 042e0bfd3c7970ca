"""Evaluating a saved network: a run's checkpoint as the run built it, or a bare one given its architecture.

Library code used by ``distill eval`` and ``distill teachers verify``: a checkpoint
written by a run is rebuilt from that run's recipe (``student.arch`` and
``student.options``, the ``data`` section), so a timm ViT trained with
``img_size: 32`` is evaluated at 32 pixels without the user repeating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch.utils.data import DataLoader

from distill.data import build_dataset
from distill.engine.accelerator import has_accelerator_device
from distill.engine.checkpoint import is_run_checkpoint
from distill.engine.evaluate import evaluate
from distill.errors import CheckpointError, RecipeError
from distill.files.rundir import CHECKPOINT_DIR, RECIPE_FILE
from distill.models import create_model
from distill.models.checkpoint import extract_state_dict, load_state_dict_strict, read_checkpoint
from distill.models.options import ModelOptionError, check_reserved_options
from distill.models.probe import probe_model
from distill.recipe.schema import DataSpec, ModelSpec
from distill.recipe.yaml_io import read_yaml_file
from distill.schema import ValidationIssue, build_dataclass


def resolve_checkpoint(path: str | Path, which: str) -> Path:
    """A run directory means its ``checkpoints/<which>.pt``; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / f"{which}.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} has no checkpoints/{which}.pt: is it a distill run directory, and did an epoch finish?")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run directory or a checkpoint file")
    return path


@dataclass(frozen=True)
class RunRecipe:
    """What the recipe of the run that wrote a checkpoint says about evaluating it.

    ``student`` is the network (architecture and options: a timm ViT trained with
    ``img_size: 32`` must be rebuilt so), ``data`` the test data; ``source`` names
    where they were read, for messages.
    """

    student: ModelSpec
    data: DataSpec
    source: str


def run_dir_of(checkpoint_path: Path) -> Path | None:
    """The run directory a checkpoint file sits in (``RUN/checkpoints/<file>`` beside ``RUN/recipe.yaml``)."""
    parent = checkpoint_path.parent
    if parent.name == CHECKPOINT_DIR and (parent.parent / RECIPE_FILE).is_file():
        return parent.parent
    return None


def parse_run_recipe(recipe: Any, source: str) -> RunRecipe:
    """The ``student`` and ``data`` sections of a resolved recipe, checked like a recipe's (other sections are ignored).

    Raises:
        RecipeError: the recipe is not a mapping, or either section is malformed (names the key).
    """
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: expected a recipe (a mapping), got {type(recipe).__name__}")
    try:
        student = build_dataclass(ModelSpec, recipe.get("student"), ("student",))
        data = build_dataclass(DataSpec, recipe.get("data") or {}, ("data",))
    except ValidationIssue as issue:
        raise RecipeError(f"{source}: stored recipe is invalid at {'.'.join(issue.path)}: {issue.message}") from None
    return RunRecipe(student=student, data=data, source=source)


def find_run_recipe(checkpoint_path: Path, checkpoint: Any) -> RunRecipe | None:
    """The recipe that trained ``checkpoint``: the one a run checkpoint embeds, else its run directory's.

    ``None`` for a file outside any run directory that embeds no recipe (a bare or
    reference checkpoint): its architecture must then be given.
    """
    if is_run_checkpoint(checkpoint) and checkpoint.get("recipe") is not None:
        return parse_run_recipe(checkpoint["recipe"], f"{checkpoint_path} (its stored recipe)")
    run_dir = run_dir_of(checkpoint_path)
    if run_dir is not None:
        path = run_dir / RECIPE_FILE
        return parse_run_recipe(read_yaml_file(path), str(path))
    return None


def describe_arch(arch: str, options: dict[str, Any]) -> str:
    """``timm/vit_tiny_patch16_224 with options {img_size: 32}``, or the bare name without options."""
    if not options:
        return arch
    return f"{arch} with options {{{', '.join(f'{key}: {value!r}' for key, value in options.items())}}}"


def evaluate_checkpoint(
    path: str | Path,
    *,
    which: str = "last",
    arch: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    verify: bool | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a distill checkpoint (or, with ``arch``, a bare/reference one) on its test set.

    A checkpoint of a run is evaluated as the run built it: the network from the
    recipe's ``student.arch`` and ``student.options``, the test set from its ``data``
    section (the recipe embedded in the checkpoint, else the run directory's
    ``recipe.yaml``). ``dataset``, ``data_root``, ``verify`` and ``batch_size`` override
    the recipe's; an ``arch`` other than the recipe's is built without its options.
    """
    checkpoint_path = resolve_checkpoint(path, which)
    checkpoint = read_checkpoint(checkpoint_path)
    run = find_run_recipe(checkpoint_path, checkpoint)
    data = run.data if run is not None else DataSpec()
    if run is not None:
        recipe_arch = run.student.arch
    else:
        recipe_arch = checkpoint.get("arch") if is_run_checkpoint(checkpoint) else None
    arch = arch or recipe_arch
    if arch is None:
        raise CheckpointError(
            f"{checkpoint_path} is not a distill run checkpoint, so its architecture is unknown; "
            f"name it with --arch (e.g. --arch resnet32x4)"
        )
    from_recipe = run is not None and arch == run.student.arch
    options = dict(run.student.options) if from_recipe else {}
    test_set = build_dataset(
        dataset or data.dataset,
        data_root or data.root,
        train=False,
        download=data.download,
        verify=data.verify if verify is None else verify,
        **data.options,
    )
    try:
        check_reserved_options(options)
        model = create_model(arch, num_classes=test_set.num_classes, **options)
        probe_model(model, test_set.input_shape, arch=arch, role="student" if from_recipe else None, warn=False)
    except ModelOptionError as error:
        if not from_recipe:
            raise
        raise RecipeError(f"{run.source}: {error.under('student')}") from error
    source = f"checkpoint {checkpoint_path}"
    load_state_dict_strict(model, extract_state_dict(checkpoint, source), source, arch=describe_arch(arch, options))
    accelerator = Accelerator(cpu=not has_accelerator_device())
    loader = DataLoader(test_set, batch_size=batch_size or data.test_batch_size, shuffle=False)
    model, loader = accelerator.prepare(model, loader)
    accuracy = evaluate(model, loader, accelerator)
    return {
        "checkpoint": str(checkpoint_path),
        "arch": arch,
        "options": options,
        "epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None,
        "top1": accuracy.top1,
        "top5": accuracy.top5,
        "test_size": accuracy.count,
        "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
    }
