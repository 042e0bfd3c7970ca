"""Recipe composition, overrides, and every kind of validation error with its message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from distill.cli.recipes import NOT_RECIPE_FOLDERS
from distill.data.registry import register_dataset
from distill.data.views import register_view
from distill.errors import DistillError, RecipeError
from distill.models import register_model
from distill.models.registry import MODELS
from distill.recipe.compose import compose_file
from distill.recipe.load import load_recipe, recipe_from_dict
from distill.recipe.schema import DataSpec, OptimizerSpec, ScheduleSpec
from distill.recipe.serialize import recipe_to_yaml
from distill.schema import ValidationIssue, build_dataclass

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def recipe_tree(tmp_path: Path) -> Path:
    write(
        tmp_path / "bases" / "data.yaml",
        """
        data: {dataset: synthetic, root: /data, batch_size: 64, options: {train_size: 100}}
        optimizer: {lr: 0.05, weight_decay: 5e-4}
        """,
    )
    write(
        tmp_path / "bases" / "kd.yaml",
        """
        losses:
          ce: {weight: 0.1}
          kd: {weight: 0.9, temperature: 4}
        """,
    )
    write(
        tmp_path / "exp" / "run.yaml",
        """
        _base_: [../bases/data.yaml, ../bases/kd.yaml]
        student: {arch: resnet8x4}
        teacher: {arch: resnet32x4, checkpoint: t.pth}
        data: {batch_size: 32, options: {test_size: 50}}
        """,
    )
    return tmp_path / "exp" / "run.yaml"


def test_bases_merge_deeply_and_later_wins(recipe_tree):
    recipe = load_recipe(recipe_tree)
    assert recipe.data.batch_size == 32  # the including file wins
    assert recipe.data.root == "/data"  # kept from the base
    assert recipe.data.options == {"train_size": 100, "test_size": 50}  # mappings merge
    assert recipe.optimizer.weight_decay == pytest.approx(5e-4)  # exponent-only float read as float
    assert recipe.losses["kd"].params == {"temperature": 4.0}
    assert recipe.losses["kd"].type == "kd" and recipe.losses["kd"].weight == 0.9
    assert recipe.name == "run"


def test_overrides_are_typed_as_yaml(recipe_tree):
    recipe = load_recipe(
        recipe_tree,
        ["losses.kd.weight=0.5", "schedule.milestones=[1, 2]", "data.download=true", "teacher.checkpoint=other.pth"],
    )
    assert recipe.losses["kd"].weight == 0.5
    assert recipe.schedule.milestones == [1, 2]
    assert recipe.data.download is True
    assert recipe.teacher.checkpoint == "other.pth"


def test_two_terms_of_one_type_coexist(recipe_tree):
    recipe = load_recipe(recipe_tree, ["losses.kd_soft={type: kd, weight: 0.1, temperature: 8}"])
    assert recipe.losses["kd_soft"].type == "kd"
    assert recipe.losses["kd_soft"].params == {"temperature": 8.0}
    assert recipe.losses["kd"].params == {"temperature": 4.0}


def test_a_term_can_be_removed_and_the_teacher_dropped(recipe_tree):
    recipe = load_recipe(recipe_tree, ["losses.kd=null", "teacher=null", "losses.ce.weight=1"])
    assert list(recipe.losses) == ["ce"] and recipe.teacher is None


def test_relative_bases_resolve_against_the_including_file(recipe_tree, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path / "bases")  # somewhere else entirely
    assert load_recipe(recipe_tree).student.arch == "resnet8x4"


def test_resolved_recipe_round_trips(recipe_tree, tmp_path):
    recipe = load_recipe(recipe_tree, ["losses.kd_soft={type: kd, weight: 0.1}"])
    resolved = write(tmp_path / "resolved.yaml", recipe_to_yaml(recipe))
    again = load_recipe(resolved)
    assert again == recipe


def test_name_comes_from_the_path_under_recipes():
    recipe = load_recipe(REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml")
    assert recipe.name == "cifar100/kd/resnet32x4-resnet8x4"


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_unknown_key_names_file_key_and_suggestion(recipe_tree):
    message = error_of(recipe_tree, ["optimizer.weight_decy=1"])
    assert "command-line override" in message and "optimizer.weight_decy" in message
    assert "Did you mean 'weight_decay'" in message


def test_unknown_key_in_a_base_names_the_base_file(recipe_tree):
    base = recipe_tree.parent.parent / "bases" / "data.yaml"
    base.write_text(base.read_text() + "schedul: {epochs: 3}\n")
    message = error_of(recipe_tree)
    assert str(base) in message and "schedul" in message and "'schedule'" in message


def test_wrong_type_says_what_was_expected(recipe_tree):
    message = error_of(recipe_tree, ["data.batch_size=big"])
    assert "data.batch_size" in message and "expected int" in message and "'big'" in message


def test_bool_is_not_an_int(recipe_tree):
    assert "expected int" in error_of(recipe_tree, ["seed=true"])


def test_missing_required_field(recipe_tree):
    message = error_of(recipe_tree, ["student=null"])
    assert "student" in message and "required" in message


def test_unknown_model_suggests_names(recipe_tree):
    message = error_of(recipe_tree, ["student.arch=resnet8x5"])
    assert "student.arch" in message and "resnet8x4" in message


def test_unknown_loss_type_and_parameter(recipe_tree):
    assert "Did you mean 'kd'" in error_of(recipe_tree, ["losses.soft={type: kdd, weight: 1}"])
    message = error_of(recipe_tree, ["losses.kd.temprature=2"])
    assert "losses.kd.temprature" in message and "'temperature'" in message


def test_loss_weight_is_required(recipe_tree):
    assert "losses.x.weight" in error_of(recipe_tree, ["losses.x={type: ce}"])


def test_unknown_dataset(recipe_tree):
    assert "Did you mean" in error_of(recipe_tree, ["data.dataset=cifar101"])
    assert "'cifar100'" in error_of(recipe_tree, ["data.dataset=cifar101"])


def test_teacher_losses_need_a_teacher(recipe_tree):
    message = error_of(recipe_tree, ["teacher=null"])
    assert "losses.kd" in message and "needs a teacher" in message


def test_teacher_needs_a_checkpoint(recipe_tree):
    assert "teacher.checkpoint" in error_of(recipe_tree, ["teacher.checkpoint=null"])


def test_literal_choices(recipe_tree):
    assert "one of 'fp32', 'bf16', 'fp16'" in error_of(recipe_tree, ["precision=fp8"])


def test_values_must_be_sensible(recipe_tree):
    assert "must be positive" in error_of(recipe_tree, ["data.batch_size=0"])
    assert "increasing" in error_of(recipe_tree, ["schedule.milestones=[5, 2]"])


def test_invalid_yaml_names_line_and_column(tmp_path):
    bad = write(tmp_path / "bad.yaml", "student: {arch: resnet8\nlosses: [\n")
    message = error_of(bad)
    assert str(bad) in message and "invalid YAML" in message and ":2:7:" in message


def test_base_cycle_and_missing_base(tmp_path):
    a = write(tmp_path / "a.yaml", "_base_: [b.yaml]\n")
    write(tmp_path / "b.yaml", "_base_: [a.yaml]\n")
    assert "cycle" in error_of(a)
    missing = write(tmp_path / "m.yaml", "_base_: [nope.yaml]\n")
    assert "nope.yaml" in error_of(missing)


def test_missing_file_and_bad_override_syntax(tmp_path, recipe_tree):
    assert "does not exist" in error_of(tmp_path / "absent.yaml")
    assert "key.path=value" in error_of(recipe_tree, ["no_equals_sign"])


def test_sources_are_tracked(recipe_tree):
    composed = compose_file(recipe_tree)
    assert composed.source_of(("data", "root")).endswith("data.yaml")
    assert composed.source_of(("data", "batch_size")).endswith("run.yaml")
    assert composed.source_of(("losses", "kd", "temperature")).endswith("kd.yaml")


def test_recipe_from_dict():
    recipe = recipe_from_dict({"student": {"arch": "resnet8"}, "losses": {"ce": {"weight": 1}}})
    assert recipe.teacher is None and recipe.losses["ce"].weight == 1.0
    with pytest.raises(RecipeError, match="<recipe>: losses"):
        recipe_from_dict({"student": {"arch": "resnet8"}})


SHIPPED = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if not NOT_RECIPE_FOLDERS.intersection(p.relative_to(REPO / "recipes").parts))


def test_the_shipped_recipe_set_is_complete():
    names = {str(p.relative_to(REPO / "recipes")) for p in SHIPPED}
    assert len([n for n in names if n.startswith("cifar100/teachers/")]) == 6
    assert len([n for n in names if n.startswith("cifar100/vanilla/")]) == 13
    methods = (
        "vanilla", "kd", "crd", "crd_kd", "ml_cpc", "ml_cpc_kd", "segmental", "segmental_kd", "dkd", "hint", "at", "sp", "cc", "vid",
        "rkd", "pkt", "ab", "ft", "nst", "kd_ls", "dkd_ls", "dist", "wttm", "wttm_crd", "itrd", "wttm_itrd",
        "reviewkd", *TWO_VIEW_FAMILIES,
    )
    for method in methods:
        assert len([n for n in names if n.startswith(f"cifar100/{method}/")]) == 13, method
    assert len([n for n in names if n.startswith("cifar100/fsp/")]) == 6  # N/A where channel counts differ


def test_method_recipes_carry_the_reference_weights():
    def weights(method: str) -> dict:
        recipe = load_recipe(REPO / f"recipes/cifar100/{method}/resnet32x4-resnet8x4.yaml")
        return {name: (spec.type, spec.weight, spec.params.get("temperature")) for name, spec in recipe.losses.items()}

    assert weights("kd") == {"ce": ("ce", 0.1, None), "kd": ("kd", 0.9, 4.0)}
    assert weights("crd") == {"ce": ("ce", 1.0, None), "crd": ("crd", 0.8, 0.07)}
    assert weights("crd_kd") == {"ce": ("ce", 1.0, None), "crd": ("crd", 0.8, 0.07), "kd": ("kd", 1.0, 4.0)}
    assert weights("ml_cpc") == {"ce": ("ce", 1.0, None), "ml_cpc": ("ml_cpc", 0.8, 0.07)}
    assert weights("ml_cpc_kd") == {"ce": ("ce", 1.0, None), "ml_cpc": ("ml_cpc", 0.8, 0.07), "kd": ("kd", 1.0, 4.0)}
    assert weights("segmental") == {"ce": ("ce", 1.0, None), "segmental": ("segmental", 1.0, None)}
    assert weights("segmental_kd") == {"ce": ("ce", 1.0, None), "segmental": ("segmental", 1.0, None), "kd": ("kd", 1.0, 4.0)}
    for method in ("segmental", "segmental_kd"):  # a proposal, not a published method
        assert load_recipe(REPO / f"recipes/cifar100/{method}/resnet32x4-resnet8x4.yaml").description.startswith("EXPERIMENTAL")
    crd = load_recipe(REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml").losses["crd"].params
    assert crd["num_negatives"] == 16384 and crd["feat_dim"] == 128 and crd["momentum"] == 0.5 and crd["mode"] == "exact"


TWO_VIEW_FAMILIES = ("mlkd", "mlkd_ls", "kd_2view", "kd_ls_2view")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.description, "every shipped recipe describes itself in one line"
    assert recipe.schedule.milestones == [150, 180, 210] and recipe.data.batch_size == 64
    if path.parent.name in TWO_VIEW_FAMILIES:  # MLKD's own epochs and lr per task: tests/test_recipes_mlkd.py
        return
    assert recipe.schedule.epochs == 240
    small = recipe.student.arch in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
    assert recipe.optimizer.lr == (0.01 if small else 0.05)


@pytest.mark.parametrize(
    ("cls", "data", "where", "message"),
    [
        (DataSpec, {"batch_size": 0}, ("data", "batch_size"), "must be positive, got 0"),
        (DataSpec, {"test_batch_size": -1}, ("data", "test_batch_size"), "must be positive, got -1"),
        (DataSpec, {"num_workers": -1}, ("data", "num_workers"), "must be 0 or more, got -1"),
        (OptimizerSpec, {"lr": 0}, ("optimizer", "lr"), "must be positive, got 0.0"),
        (ScheduleSpec, {"epochs": 0}, ("schedule", "epochs"), "must be positive, got 0"),
        (ScheduleSpec, {"milestones": [5, 2]}, ("schedule", "milestones"), "must be increasing, got [5, 2]"),
    ],
)
def test_ranges_live_with_the_fields_they_constrain(cls, data, where, message):
    """The schema alone (no registry, no torch) refuses a value outside its field's range."""
    with pytest.raises(ValidationIssue) as error:
        build_dataclass(cls, data, where[:1])
    assert error.value.path == where and error.value.message == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed: must be an integer from 0 to 2**32 - 1 (NumPy's seed range), got -1"),
        (f"seed={2**32}", f"seed: must be an integer from 0 to 2**32 - 1 (NumPy's seed range), got {2**32}"),
        ("log_every=0", "log_every: must be positive, got 0"),
        ("checkpoint_every_steps=-1", "checkpoint_every_steps: must be 0 or more, got -1"),
        ("skip_nonfinite=-1", "skip_nonfinite: must be 0 or more, got -1"),
    ],
)
def test_top_level_ranges_through_a_recipe(recipe_tree, override, message):
    assert error_of(recipe_tree, [override]).endswith(message)


def test_range_boundaries_inside_are_accepted(recipe_tree):
    recipe = load_recipe(recipe_tree, [f"seed={2**32 - 1}", "data.num_workers=0", "checkpoint_every_steps=0", "log_every=1"])
    assert recipe.seed == 2**32 - 1 and recipe.data.num_workers == 0 and recipe.log_every == 1


# --- every option checked at load time, with one message ---------------------------------------


def _widthnet(num_classes: int = 100, width: int = 1) -> None:
    """A model with one option (never built: only its signature is read)."""


@pytest.fixture
def widthnet():
    """``test_schema_widthnet`` in the model registry for one test only (the zoo's list stays the reference's)."""
    register_model("test_schema_widthnet")(_widthnet)
    yield
    MODELS.unregister("test_schema_widthnet")


@pytest.mark.parametrize(
    ("overrides", "where", "owner", "key", "suggestion"),
    [
        (["student.arch=test_schema_widthnet", "student.options.widht=2"], "student.options.widht", "model 'test_schema_widthnet'", "widht", "'width'"),
        (["student.options.widht=2"], "student.options.widht", "model 'resnet8x4'", "widht", None),
        (["teacher.options.depht=2"], "teacher.options.depht", "model 'resnet32x4'", "depht", None),
        (["data.options.train_siz=5"], "data.options.train_siz", "dataset 'synthetic'", "train_siz", "'train_size'"),
        (["data.views={student: {name: infomin, options: {magnitud: 3}}}"], "data.views.student.options.magnitud", "view 'infomin'", "magnitud", "'magnitude'"),
        (["losses.kd.temprature=3"], "losses.kd.temprature", "loss 'kd'", "temprature", "'temperature'"),
    ],
)
def test_a_misspelt_option_fails_at_load_time_with_one_message(recipe_tree, widthnet, overrides, where, owner, key, suggestion):
    message = error_of(recipe_tree, overrides)
    assert message.startswith(f"command-line override: {where}: {owner} has no option {key!r}."), message
    assert message.endswith(" Remove it.")
    assert (f"Did you mean {suggestion}" in message) if suggestion else ("It takes no options." in message)


def test_option_values_are_type_checked_at_load_time(recipe_tree, widthnet):
    assert error_of(recipe_tree, ["data.options.train_size=many"]).endswith("data.options.train_size: expected int, got 'many' (str)")
    assert error_of(recipe_tree, ["student.arch=test_schema_widthnet", "student.options.width=wide"]).endswith(
        "student.options.width: expected int, got 'wide' (str)"
    )
    recipe = load_recipe(recipe_tree, ["student.arch=test_schema_widthnet", "student.options.width=2"])
    assert recipe.student.options == {"width": 2}


def test_timm_options_that_need_no_model_are_checked_at_load_time(recipe_tree):
    message = error_of(recipe_tree, ["student.arch=timm/resnet18", "student.options.cifar_stem=1"])
    assert "student.options.cifar_stem: timm/resnet18 expects true or false, got 1 (int)" in message
    assert "student.options.pretrained: timm/resnet18: pretrained hub weights are not fetched" in error_of(
        recipe_tree, ["student.arch=timm/resnet18", "student.options.pretrained=true"]
    )
    assert "teacher.options.num_classes: distill sets 'num_classes' itself" in error_of(recipe_tree, ["teacher.options.num_classes=3"])


def _unannotated_model(num_classes: int = 100, size=3) -> None: ...


def _unannotated_dataset(root, train, *, download, verify, augment, size=3) -> None: ...


def _unannotated_view(image_size: int, size=3) -> None: ...


@pytest.mark.parametrize(
    ("register", "builder"),
    [(register_model, _unannotated_model), (register_dataset, _unannotated_dataset), (register_view, _unannotated_view)],
)
def test_every_registry_refuses_an_unannotated_option_when_it_is_registered(register, builder):
    with pytest.raises(DistillError, match="parameter 'size' needs a type annotation"):
        register("test_schema_unannotated")(builder)
