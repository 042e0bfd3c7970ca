"""``distill report``: reading run directories, aggregating seeds, the CRD-layout tables, CSV, figures, published numbers."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from distill.benchmark import published as published_module
from distill.benchmark.published import load_published, parse_published
from distill.benchmark.report import aggregate, csv_rows, render_markdown, results_table, write_csv
from distill.benchmark.runs import classify, find_runs
from distill.benchmark.tasks import TASKS
from distill.cli.main import main
from distill.errors import DistillError

REPO = Path(__file__).resolve().parent.parent
R32_R8 = "resnet32x4-resnet8x4"
VGG = "vgg13-vgg8"
CROSS_ARCH = [task.name for task in TASKS if not task.same_family]
MINUS = "\u2212"

# Final and best top-1 of the finished runs, per (method, task): {seed: (final, best)}.
FINISHED = {
    ("kd", R32_R8): {0: (73.10, 73.40), 1: (73.50, 73.90), 2: (73.20, 73.30)},
    ("crd", R32_R8): {0: (75.40, 75.60), 1: (75.00, 75.50)},
    ("kd", VGG): {0: (72.50, 72.80), 1: (73.00, 73.10)},
    ("crd", VGG): {0: (74.00, 74.20), 1: (73.80, 74.00), 2: (74.30, 74.60)},
}
ARCHS = {R32_R8: ("resnet32x4", "resnet8x4"), VGG: ("vgg13", "vgg8")}


def write_run(
    directory: Path,
    name: str,
    student: str,
    teacher: str | None,
    seed: int,
    curve: list[float],
    final: float | None = None,
    best: float | None = None,
    epochs: int = 240,
    teacher_top1: float | None = None,
    seconds: float | None = None,
    epoch_seconds: float | None = None,
    device: str | None = None,
    processes: int = 1,
    views: int = 1,
) -> Path:
    """A run directory as ``distill train`` leaves it; ``final=None`` leaves it unfinished (no summary.json).

    ``seconds`` goes into summary.json, ``epoch_seconds`` into each epoch row (``time/epoch_s``), ``device`` and
    ``processes`` into run.json (none of them by default, as in runs from before they were recorded).
    """
    directory.mkdir(parents=True)
    recipe = {
        "name": name,
        "student": {"arch": student, "checkpoint": None},
        "teacher": None if teacher is None else {"arch": teacher, "checkpoint": "t.pth"},
        "schedule": {"epochs": epochs, "milestones": [150, 180, 210]},
        "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
        "seed": seed,
    }
    if views > 1:
        recipe["data"] = {"views": {"shared": [{"name": "standard"}] + [{"name": "fixmatch_strong"}] * (views - 1)}}
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    rows: list[dict] = []
    if teacher_top1 is not None:
        rows.append({"epoch": 0, "teacher/top1": teacher_top1, "teacher/top5": 95.0})
    rows.append({"stage": "init", "init/epoch": 1, "init/loss/ft": 0.5})
    rows += [{"epoch": e, "lr": 0.05, "train/loss/total": 1.0, "test/top1": v, "test/top5": 90.0} for e, v in enumerate(curve, 1)]
    if epoch_seconds is not None:
        rows = [{**row, "time/epoch_s": epoch_seconds} if row.get("epoch", 0) >= 1 else row for row in rows]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = {"seed": seed} if device is None else {"seed": seed, "device": device, "num_processes": processes}
    (directory / "run.json").write_text(json.dumps(info), encoding="utf-8")
    if final is not None:
        summary = {"final_top1": final, "final_top5": 90.0, "best_top1": best, "best_epoch": 3, "epochs": epochs}
        if seconds is not None:
            summary["seconds"] = seconds
        (directory / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return directory


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    """2 tasks × 2 methods × 2–3 finished seeds, plus one unfinished CRD run on resnet32x4→resnet8x4."""
    root = tmp_path / "runs"
    for (method, task), seeds in FINISHED.items():
        teacher, student = ARCHS[task]
        for seed, (final, best) in seeds.items():
            curve = [final - 20.0, final - 5.0, final]
            write_run(root / method / task / f"seed{seed}", f"cifar100/{method}/{task}", student, teacher, seed, curve, final, best)
    write_run(root / "crd" / R32_R8 / "seed2", f"cifar100/crd/{R32_R8}", "resnet8x4", "resnet32x4", 2, [10.0, 20.0, 30.0])
    return root


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std written out, independently of the code under test."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def signed(delta: float) -> str:
    return f"+{delta:.2f}" if delta > 0 else f"{MINUS}{-delta:.2f}"


def expected_cell(method: str, task: str, paper: float, incomplete: int = 0) -> str:
    finals = [final for final, _ in FINISHED[method, task].values()]
    mean, std = mean_and_std(finals)
    text = f"{mean:.2f} \u00b1 {std:.2f} (n={len(finals)})"
    if incomplete:
        text += f"<br>+{incomplete} incomplete"
    return text + f"<br>paper {paper:.2f} [a] ({signed(round(round(mean, 2) - paper, 2))})"


# --- published numbers ----------------------------------------------------------------------------


def test_published_data_covers_all_tasks_with_the_core_rows():
    published = load_published()
    for method in ("teacher", "vanilla", "kd", "crd"):
        row = published.rows[method]
        assert list(row.results) == [task.name for task in TASKS]
        assert all(isinstance(value, float) for value in row.results.values()), method


def test_published_spot_values():
    assert published_module.published_top1("crd", R32_R8) == 75.51
    assert published_module.published_top1("kd", R32_R8) == 73.33
    assert published_module.published_top1("dkd", R32_R8) == 76.32
    assert published_module.published_top1("at", "vgg13-MobileNetV2") == 59.40
    assert published_module.published_top1("crd_kd", "wrn_40_2-ShuffleV1") == 76.27
    assert published_module.published_top1("dkd", "resnet32x4-ShuffleV2") == 77.07
    assert published_module.teacher_top1("ResNet50-vgg8") == 79.34
    assert published_module.vanilla_top1("vgg13-MobileNetV2") == 64.60


def test_published_nulls_where_no_number_exists():
    published = load_published()
    for task in [*CROSS_ARCH, "wrn_40_2-wrn_40_1"]:
        assert published.top1("fsp", task) is None, task
    assert published.top1("fsp", R32_R8) == 72.62
    assert published.top1("dkd", "resnet110-resnet20") is None
    assert published.top1("dkd", "ResNet50-vgg8") is None
    for method in ("ml_cpc", "ml_cpc_kd"):
        assert all(value is None for value in published.rows[method].results.values())


def test_published_labels_and_sources():
    published = load_published()
    assert published_module.method_label("hint") == "FitNet"
    assert published_module.method_label("my_method") == "my_method"
    assert published_module.source("crd").commit == "b84f547c5db6a35318d4671d7d5c4de74c822403"
    second_hand = published_module.source("crd_kd")
    assert "SECOND-HAND" in second_hand.note and "alldbi/SuperMix" in second_hand.copied_from
    assert "megvii-research/mdistiller" in published_module.source("dkd").url
    assert "ShuffleNet-V2" in published.rows["dkd"].note
    assert published_module.source("unknown") is None
    assert "top-1" in published.metric.lower()


def test_every_published_row_states_its_protocol():
    published = load_published()
    crd = published.protocol("crd", R32_R8)
    assert (crd.views, crd.epochs, crd.epoch, crd.runs) == (1, 240, "last", None)
    assert "issue #16" in crd.note and "UNVERIFIED" in crd.note
    assert published.protocol("teacher", VGG) == crd  # the baselines share the CRD paper's protocol
    dkd = published.protocol("dkd", R32_R8)
    assert (dkd.epoch, dkd.runs) == ("not stated", None) and dkd.note
    assert crd.describe() == "last epoch, 240 epochs, 1 view, runs not stated"
    assert published.protocol("my_method", R32_R8) is None


def bad_protocol(change) -> dict:
    """The packaged data with ``change`` applied to KD's protocol (a mapping it may edit in place)."""
    data = yaml.safe_load((REPO / "distill/benchmark/published.yaml").read_text(encoding="utf-8"))
    data = json.loads(json.dumps(data))
    change(data["methods"]["kd"]["protocol"])
    return data


def test_protocol_errors_have_the_one_format_file_key_message():
    prefix = r"^distill/benchmark/published\.yaml: methods\.kd\.protocol\."
    cases = [
        (lambda p: p.update(epoch="final"), prefix + r"epoch: expected one of 'last', 'best', 'not stated', got 'final'"),
        (lambda p: p.update(views=0), prefix + r"views: expected 1 or 2 \(images per sample per training step\), got 0"),
        (lambda p: p.update(views=3), prefix + r"views: expected 1 or 2"),
        (lambda p: p.update(epochs=0), prefix + r"epochs: must be positive, got 0"),
        (lambda p: p.update(runs=0), prefix + r"runs: must be positive, got 0"),
        (lambda p: p.update(seeds=3), prefix + r"seeds: unknown key\. .*valid keys here or remove it: views, epochs, epoch, runs"),
        (lambda p: p.pop("runs"), prefix + r"runs: required key is missing \(expected int or null\)"),
        (lambda p: p.pop("note"), prefix + r"note: runs is not stated: write a note"),
        (lambda p: p.update(epochs_by_task={"resnet8-resnet9": 960}), prefix + r"epochs_by_task: unknown task\(s\) 'resnet8-resnet9'"),
        (lambda p: p.update(epochs_by_task={R32_R8: 0}), prefix + rf"epochs_by_task: epochs must be positive, got {R32_R8}: 0"),
    ]
    for change, message in cases:
        with pytest.raises(DistillError, match=message):
            parse_published(bad_protocol(change))
    no_protocol = bad_protocol(lambda p: None)
    del no_protocol["methods"]["kd"]["protocol"]
    with pytest.raises(DistillError, match=r"published\.yaml: methods\.kd\.protocol: required key is missing"):
        parse_published(no_protocol)


def test_published_method_keys_are_the_recipe_folders():
    """Every recipe folder has a published row (its label and protocol); one row has no recipes.

    ``ttm``: the loss ships, its per-task settings (the paper's Appendix A.4) are not known.
    """
    folders = {p.name for p in (REPO / "recipes/cifar100").iterdir() if p.is_dir()} - {"_base_", "teachers"}
    rows = set(load_published().rows) - {"teacher"}
    assert folders <= rows
    assert rows - folders == {"ttm"}


NEW_METHODS = ("kd_ls", "dkd_ls", "mlkd", "mlkd_ls", "dist", "ttm", "wttm", "wttm_crd", "itrd", "wttm_itrd", "reviewkd")


def test_the_new_methods_rows_load_with_their_sources_and_protocols():
    published = load_published()
    assert all(method in published.methods for method in NEW_METHODS)
    assert (published.top1("kd_ls", R32_R8), published.top1("dkd_ls", R32_R8)) == (76.62, 77.01)
    assert (published.top1("mlkd", R32_R8), published.top1("mlkd_ls", "resnet32x4-ShuffleV2")) == (77.08, 78.76)
    assert (published.top1("dist", "wrn_40_2-wrn_40_1"), published.top1("dist", VGG)) == (74.43, None)
    assert (published.top1("ttm", "wrn_40_2-ShuffleV1"), published.top1("wttm_crd", "ResNet50-vgg8")) == (75.39, 75.30)
    assert published.top1("wttm", R32_R8) == 76.06
    for method in ("kd_ls", "dkd_ls", "mlkd_ls"):
        assert published.source(method).url == "https://github.com/sunshangquan/logit-standardization-KD"
    assert "sunshangquan/logit-standardization-KD" in published.source("mlkd").copied_from
    assert published.source("dist").commit == "2418f18" and published.source("wttm_crd").commit == "fe457b3"

    ls = published.protocol("kd_ls", R32_R8)
    assert (ls.views, ls.epochs, ls.epoch, ls.runs) == (1, 240, "best", 4) and "INFERENCE" in ls.note
    mlkd = published.protocol("mlkd", R32_R8)
    assert (mlkd.views, mlkd.epochs, mlkd.epoch, mlkd.runs) == (2, 480, "best", None) and "UNVERIFIED" in mlkd.note
    assert published.protocol("mlkd", "resnet32x4-ShuffleV2").epochs == 960
    assert published.protocol("mlkd_ls", "resnet32x4-ShuffleV2").epochs == 960
    assert published.protocol("mlkd_ls", "resnet32x4-ShuffleV1").epochs == 480
    for method in ("dist", "ttm", "wttm", "wttm_crd"):
        assert (published.protocol(method, R32_R8).epoch, published.protocol(method, R32_R8).runs) == ("not stated", None)


def test_unverified_mlkd_shufflenet_numbers_are_left_out():
    published = load_published()
    assert published.top1("mlkd", "resnet32x4-ShuffleV1") is None and published.top1("mlkd", "wrn_40_2-ShuffleV1") is None
    assert "77.18" in published.rows["mlkd"].note and "UNVERIFIED" in published.rows["mlkd"].note


def test_published_validation_names_the_problem():
    good = yaml.safe_load((REPO / "distill/benchmark/published.yaml").read_text(encoding="utf-8"))
    bad_task = json.loads(json.dumps(good))
    bad_task["methods"]["kd"]["results"]["resnet32x4-resnet9"] = 1.0
    with pytest.raises(DistillError, match=r"methods\.kd\.results.*resnet32x4-resnet9"):
        parse_published(bad_task)
    bad_value = json.loads(json.dumps(good))
    bad_value["methods"]["kd"]["results"][R32_R8] = "73.33"
    with pytest.raises(DistillError, match=rf"methods\.kd\.results\.{R32_R8}: expected float or null"):
        parse_published(bad_value)
    missing = json.loads(json.dumps(good))
    del missing["baselines"]["vanilla"]["results"][VGG]
    with pytest.raises(DistillError, match=f"missing: {VGG}"):
        parse_published(missing)


def test_published_errors_have_the_one_format_file_key_message():
    good = yaml.safe_load((REPO / "distill/benchmark/published.yaml").read_text(encoding="utf-8"))
    unlisted = json.loads(json.dumps(good))
    unlisted["methods"]["kd"]["source"] = "nowhere"
    with pytest.raises(DistillError) as error:
        parse_published(unlisted)
    assert str(error.value).startswith(
        "distill/benchmark/published.yaml: methods.kd.source: 'nowhere' is not listed under 'sources'. The packaged data file is damaged"
    )
    typo = json.loads(json.dumps(good))
    typo["methods"]["kd"]["lable"] = "KD"
    with pytest.raises(DistillError, match=r"published\.yaml: methods\.kd\.lable: unknown key\. Did you mean 'label'\?"):
        parse_published(typo)
    blank = json.loads(json.dumps(good))
    blank["sources"]["repdistiller"]["title"] = "  "
    with pytest.raises(DistillError, match=r"published\.yaml: sources\.repdistiller\.title: expected a non-empty text"):
        parse_published(blank)
    swapped = json.loads(json.dumps(good))
    swapped["methods"]["vanilla"] = swapped["baselines"].pop("vanilla")
    with pytest.raises(DistillError, match=r"published\.yaml: baselines: expected exactly the rows teacher, vanilla, got teacher"):
        parse_published(swapped)


# --- reading runs ------------------------------------------------------------------------------------


def test_find_runs_reads_each_run(runs_dir):
    records = find_runs([runs_dir])
    assert len(records) == 2 + 3 + 2 + 3 + 1
    unfinished = [r for r in records if not r.complete]
    assert len(unfinished) == 1
    run = unfinished[0]
    assert (run.method, run.task, run.seed) == ("crd", R32_R8, 2)
    assert run.final_top1 is None and run.epochs_done == 3 and run.epochs_planned == 240
    assert run.curve == ((1, 10.0), (2, 20.0), (3, 30.0))
    done = next(r for r in records if r.method == "kd" and r.task == VGG and r.seed == 1)
    assert (done.final_top1, done.best_top1, done.epochs_done) == (73.00, 73.10, 240)


def test_teacher_accuracy_row_is_read_and_kept_out_of_the_curve(tmp_path):
    write_run(tmp_path / "r", f"cifar100/kd/{R32_R8}", "resnet8x4", "resnet32x4", 0, [40.0, 50.0], 50.0, 50.0, teacher_top1=79.42)
    (record,) = find_runs([tmp_path])
    assert record.teacher_top1_measured == 79.42
    assert record.curve == ((1, 40.0), (2, 50.0))


def test_classify_method_and_task():
    assert classify(f"cifar100/crd/{R32_R8}", "resnet32x4", "resnet8x4") == ("crd", R32_R8)
    assert classify("cifar100/vanilla/resnet56-resnet20", None, "resnet20") == ("vanilla", "resnet56-resnet20")
    assert classify("cifar100/teachers/resnet32x4", None, "resnet32x4") == ("teacher", "resnet32x4")
    assert classify("my_kd", "resnet32x4", "resnet8x4") == ("my_kd", R32_R8)
    assert classify("my_kd", "resnet14", "resnet8") == ("my_kd", "resnet14-resnet8")
    assert classify("scratch", None, "resnet8") == ("scratch", "resnet8")
    # A benchmark recipe trained with another student is not that benchmark task.
    assert classify(f"cifar100/kd/{R32_R8}", "resnet14", "resnet8") == ("kd", "resnet14-resnet8")


def test_damaged_runs_are_skipped_with_a_warning_naming_the_file(tmp_path):
    good = write_run(tmp_path / "good", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 0, [70.0], 70.0, 70.0)
    bad_metrics = write_run(tmp_path / "bad_metrics", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 1, [70.0], 71.0, 71.0)
    with (bad_metrics / "metrics.jsonl").open("a") as file:
        file.write('{"epoch": 2, "test/top1"\n')
    bad_summary = write_run(tmp_path / "bad_summary", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 2, [70.0], 72.0, 72.0)
    (bad_summary / "summary.json").write_text("{not json", encoding="utf-8")
    bad_recipe = tmp_path / "bad_recipe"
    bad_recipe.mkdir()
    (bad_recipe / "recipe.yaml").write_text("student: [unclosed\n", encoding="utf-8")
    base = tmp_path / "_base_"
    base.mkdir()
    (base / "recipe.yaml").write_text("not: a run\n", encoding="utf-8")

    warnings: list[str] = []
    records = find_runs([tmp_path], warn=warnings.append)
    assert [r.path for r in records] == [good]
    assert len(warnings) == 3
    assert any(str(bad_metrics / "metrics.jsonl") + ":3" in w for w in warnings)
    assert any(str(bad_summary / "summary.json") in w for w in warnings)
    assert any(str(bad_recipe / "recipe.yaml") in w for w in warnings)


def test_no_runs_is_an_error_naming_the_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match=f"no runs found under {tmp_path / 'empty'}"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(DistillError, match="does not exist"):
        find_runs([tmp_path / "missing"])


# --- aggregation and tables ----------------------------------------------------------------------


def test_aggregate_means_and_sample_std(runs_dir):
    cells = aggregate(find_runs([runs_dir]))
    for key, seeds in FINISHED.items():
        cell = cells[key]
        mean, std = mean_and_std([final for final, _ in seeds.values()])
        assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std)
        assert cell.n_complete == len(seeds) and cell.seeds == tuple(sorted(seeds))


def test_incomplete_runs_are_counted_but_never_averaged(runs_dir):
    cell = aggregate(find_runs([runs_dir]))["crd", R32_R8]
    assert (cell.n_complete, cell.n_incomplete, cell.incomplete_seeds) == (2, 1, (2,))
    assert cell.mean == pytest.approx((75.40 + 75.00) / 2)


def test_aggregate_best_metric(runs_dir):
    cell = aggregate(find_runs([runs_dir]), metric="best")["kd", R32_R8]
    assert cell.mean == pytest.approx(mean_and_std([73.40, 73.90, 73.30])[0])


def test_single_run_has_no_std(tmp_path):
    write_run(tmp_path / "r", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 0, [72.0], 72.0, 72.5)
    cells = aggregate(find_runs([tmp_path]))
    assert cells["kd", VGG].std is None
    table = results_table(cells, load_published())
    assert "72.00 \u00b1 \u2013 (n=1)<br>paper 72.98 [a] (\u22120.98)" in table


def test_markdown_cells_show_ours_the_paper_and_the_difference(runs_dir):
    markdown = render_markdown(find_runs([runs_dir]), load_published())
    assert "last-epoch top-1 (the CRD paper's protocol)" in markdown
    assert "resnet32x4 \u2192 resnet8x4<br>T 79.42 [a] \u00b7 S 72.50 [a]" in markdown
    assert "vgg13 \u2192 vgg8<br>T 74.64 [a] \u00b7 S 70.36 [a]" in markdown
    assert "- [a] last epoch, 240 epochs, 1 view, runs not stated: Teacher, Student (vanilla), KD, CRD." in markdown
    assert expected_cell("kd", R32_R8, 73.33) in markdown
    assert expected_cell("crd", R32_R8, 75.51, incomplete=1) in markdown
    assert expected_cell("kd", VGG, 72.98) in markdown
    assert expected_cell("crd", VGG, 73.94) in markdown
    assert "## Incomplete runs (not averaged)" in markdown
    assert f"crd / {R32_R8}, seed 2: epoch 3/240" in markdown
    assert "second-hand" in markdown and "b84f547c5db6" in markdown


def test_table_layout_orders_tasks_like_the_paper_and_methods_kd_before_crd(runs_dir):
    table = results_table(aggregate(find_runs([runs_dir])), load_published())
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]  # the protocol legend follows
    assert header.index("resnet32x4 \u2192 resnet8x4") < header.index("vgg13 \u2192 vgg8")
    assert [row.split("|")[1].strip() for row in rows] == ["KD", "CRD"]
    wide = results_table(aggregate(find_runs([runs_dir])), load_published(), all_tasks=True)
    assert wide.splitlines()[0].count("\u2192") == len(TASKS)
    assert "ResNet50 \u2192 vgg8" in wide.splitlines()[0]


def test_nothing_finished_shows_a_dash_and_the_count(tmp_path):
    write_run(tmp_path / "a", f"cifar100/dkd/{VGG}", "vgg8", "vgg13", 0, [30.0])
    write_run(tmp_path / "b", f"cifar100/dkd/{VGG}", "vgg8", "vgg13", 1, [31.0])
    table = results_table(aggregate(find_runs([tmp_path])), load_published())
    assert "\u2014 (2 incomplete)<br>paper 74.68 [b] |" in table


def test_best_metric_is_labelled_and_not_compared(runs_dir):
    markdown = render_markdown(find_runs([runs_dir]), load_published(), metric="best")
    assert "BEST-epoch top-1, selected on the test set \u2014 not comparable to last-epoch numbers" in markdown
    assert "last-epoch top-1 (the CRD paper's protocol)" not in markdown
    mean, std = mean_and_std([73.40, 73.90, 73.30])
    assert f"{mean:.2f} \u00b1 {std:.2f} (n=3)<br>paper 73.33 [a] (no \u0394; paper: last epoch) |" in markdown
    summary = markdown.split("## Difference to the paper")[1]
    assert "| KD | 0 | \u2013 | \u2013 | 2 task(s) not compared (paper: last epoch) |" in summary


def test_teacher_runs_fill_the_teacher_row_of_their_tasks(tmp_path):
    write_run(tmp_path / "t", "cifar100/teachers/resnet32x4", "resnet32x4", None, 0, [79.0], 79.0, 79.5)
    write_run(tmp_path / "v", "cifar100/vanilla/resnet32x4-resnet8x4", "resnet8x4", None, 0, [72.0], 72.0, 72.0)
    cells = aggregate(find_runs([tmp_path]))
    assert {task for method, task in cells if method == "teacher"} == {R32_R8, "resnet32x4-ShuffleV1", "resnet32x4-ShuffleV2"}
    table = results_table(cells, load_published())
    teacher_row = next(line for line in table.splitlines() if line.startswith("| Teacher |"))
    assert teacher_row.count("79.00 \u00b1 \u2013 (n=1)<br>paper 79.42 [a] (\u22120.42)") == 3
    assert cells["vanilla", R32_R8].teacher_arch == "resnet32x4"


def test_measured_teacher_row(tmp_path):
    write_run(tmp_path / "r", f"cifar100/kd/{R32_R8}", "resnet8x4", "resnet32x4", 0, [73.0], 73.0, 73.0, teacher_top1=79.40)
    markdown = render_markdown(find_runs([tmp_path]), load_published())
    assert "| Teacher checkpoint (measured) | 79.40<br>paper 79.42 [a] (\u22120.02) |" in markdown


def test_csv_rows_long_format(runs_dir, tmp_path):
    cells = aggregate(find_runs([runs_dir]))
    path = write_csv(tmp_path / "report.csv", cells, load_published())
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(r["method"], r["task"]) for r in rows] == [("kd", R32_R8), ("kd", VGG), ("crd", R32_R8), ("crd", VGG)]
    crd = rows[2]
    mean, std = mean_and_std([75.40, 75.00])
    assert (crd["teacher"], crd["student"], crd["metric"]) == ("resnet32x4", "resnet8x4", "final")
    assert (crd["n_complete"], crd["n_incomplete"], crd["seeds"]) == ("2", "1", "0 1")
    assert float(crd["mean"]) == pytest.approx(mean, abs=1e-4) and float(crd["std"]) == pytest.approx(std, abs=1e-4)
    assert (crd["published"], crd["delta"]) == ("75.51", f"{round(round(mean, 2) - 75.51, 2):.2f}")
    assert crd["published_source"].startswith("repdistiller: https://github.com/HobbitLong/RepDistiller")
    best = csv_rows(aggregate(find_runs([runs_dir]), metric="best"), load_published(), metric="best")
    assert all(r["metric"] == "best" and r["delta"] == "" and r["published"] for r in best)


# --- protocols: tags, and differences only between numbers measured the same way ----------------


def protocol_runs(root: Path, epochs: int = 240) -> list:
    """Two finished seeds on resnet32x4→resnet8x4 for KD (last epoch), DKD (unstated), KD+LS (best) and MLKD (2 views)."""
    for method, finals in [("kd", (73.1, 73.5)), ("dkd", (76.0, 76.4)), ("kd_ls", (76.1, 76.5)), ("mlkd", (77.0, 77.2))]:
        for seed, final in enumerate(finals):
            run = root / method / f"seed{seed}"
            write_run(run, f"cifar100/{method}/{R32_R8}", "resnet8x4", "resnet32x4", seed, [final - 1, final], final, final + 0.3, epochs)
    return find_runs([root])


def test_published_numbers_carry_their_protocol_and_a_legend(tmp_path):
    table = results_table(aggregate(protocol_runs(tmp_path)), load_published())
    assert "T 79.42 [a] \u00b7 S 72.50 [a]" in table
    assert "73.30 \u00b1 0.28 (n=2)<br>paper 73.33 [a] (\u22120.03) |" in table
    legend = table.split("Protocols of the published numbers")[1]
    assert "Ours: last epoch (`final_top1`); one view and 240 epochs unless a cell says otherwise" in legend
    assert "- [a] last epoch, 240 epochs, 1 view, runs not stated: Teacher, Student (vanilla), KD." in legend
    assert "- [b] last or best epoch not stated, 240 epochs, 1 view, runs not stated: DKD." in legend
    assert "- [c] best epoch, 240 epochs, 1 view, mean of 4 runs: KD+LS." in legend
    assert "- [d] best epoch, 480 epochs, 2 views, runs not stated: MLKD." in legend


def test_no_difference_to_a_best_epoch_or_two_view_number_and_the_reason_instead(tmp_path):
    markdown = render_markdown(protocol_runs(tmp_path), load_published())
    assert "76.30 \u00b1 0.28 (n=2)<br>paper 76.62 [c] (no \u0394; paper: best epoch) |" in markdown
    assert "<br>paper 77.08 [d] (no \u0394; paper: best epoch, 2 views, 480 epochs) |" in markdown
    summary = markdown.split("## Difference to the paper")[1]
    assert "| KD | 1 | \u22120.03 | \u22120.03 \u2026 \u22120.03 |  |" in summary
    assert "| KD+LS | 0 | \u2013 | \u2013 | 1 task(s) not compared (paper: best epoch) |" in summary


def test_a_difference_to_a_number_of_unstated_epoch_is_labelled(tmp_path):
    markdown = render_markdown(protocol_runs(tmp_path), load_published())
    assert "76.20 \u00b1 0.28 (n=2)<br>paper 76.32 [b] (\u22120.12; paper: last or best epoch not stated) |" in markdown
    assert "| DKD | 1 | \u22120.12 | \u22120.12 \u2026 \u22120.12 | paper: last or best epoch not stated |" in markdown


def test_best_metric_is_compared_with_best_epoch_numbers_only(tmp_path):
    markdown = render_markdown(protocol_runs(tmp_path), load_published(), metric="best")
    assert "76.60 \u00b1 0.28 (n=2)<br>paper 76.62 [c] (\u22120.02) |" in markdown
    assert "<br>paper 73.33 [a] (no \u0394; paper: last epoch) |" in markdown
    assert "<br>paper 77.08 [d] (no \u0394; paper: 2 views, 480 epochs) |" in markdown


def test_runs_of_another_length_are_not_compared(tmp_path):
    table = results_table(aggregate(protocol_runs(tmp_path, epochs=30)), load_published())
    assert "<br>30 epochs (paper: 240)<br>paper 73.33 [a] (no \u0394; paper: 240 epochs) |" in table


def test_our_two_view_runs_are_compared_with_a_two_view_number_of_the_same_protocol(tmp_path):
    """Views are read from each run's recipe (data.views.shared): MLKD's 2-view, 480-epoch best is comparable."""
    for seed, best in enumerate((77.0, 77.4)):
        write_run(tmp_path / "mlkd" / f"seed{seed}", f"cifar100/mlkd/{R32_R8}", "resnet8x4", "resnet32x4", seed,
                  [best - 1, best], best - 0.2, best, epochs=480, views=2)
    write_run(tmp_path / "one_view", f"cifar100/mlkd/{VGG}", "vgg8", "vgg13", 0, [74.0, 75.0], 74.8, 75.0, epochs=480)
    records = find_runs([tmp_path])
    assert sorted(r.views for r in records) == [1, 2, 2]
    markdown = render_markdown(records, load_published(), metric="best")
    assert re.search(r"77\.20 \u00b1 0\.28 \(n=2\)<br>480 epochs \(paper: 240\)<br>2 views per step<br>paper 77\.08 \[\w\] \(\+0\.12\) \|",
                     markdown)
    assert re.search(r"<br>paper 75\.18 \[\w\] \(no \u0394; paper: 2 views\) \|", markdown)  # a one-view run is not
    rows = {r["task"]: r for r in csv_rows(aggregate(records, metric="best"), load_published(), metric="best")}
    assert (rows[R32_R8]["views"], rows[R32_R8]["delta"], rows[R32_R8]["comparison"]) == ("2", "0.12", "same protocol")
    assert (rows[VGG]["views"], rows[VGG]["comparison_note"]) == ("1", "paper: 2 views")


def test_csv_has_both_protocols_and_the_comparison(tmp_path):
    rows = {r["method"]: r for r in csv_rows(aggregate(protocol_runs(tmp_path)), load_published())}
    kd, dkd, ls, mlkd = rows["kd"], rows["dkd"], rows["kd_ls"], rows["mlkd"]
    assert (kd["epoch"], kd["epochs"], kd["views"]) == ("last", "240", "1")
    assert (kd["delta"], kd["comparison"], kd["comparison_note"]) == ("-0.03", "same protocol", "")
    assert (kd["published_epoch"], kd["published_epochs"], kd["published_views"], kd["published_runs"]) == ("last", "240", "1", "")
    assert (dkd["delta"], dkd["comparison"], dkd["published_epoch"]) == ("-0.12", "labelled", "not stated")
    assert (ls["delta"], ls["comparison"], ls["comparison_note"]) == ("", "withheld", "paper: best epoch")
    assert (ls["published_runs"], ls["published_protocol"]) == ("4", "best epoch, 240 epochs, 1 view, mean of 4 runs")
    assert (mlkd["published_views"], mlkd["published_epochs"]) == ("2", "480")


# --- run cost -------------------------------------------------------------------------------------------


def test_wall_time_and_device_are_read_from_the_run_directory(tmp_path):
    done = write_run(tmp_path / "done", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 0, [70.0], 70.0, 70.0, seconds=7200.0,
                     epoch_seconds=1.0, device="cuda:0", processes=2)  # fmt: skip
    running = write_run(tmp_path / "running", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 1, [60.0, 61.0, 62.0],
                        epoch_seconds=30.0, device="cpu")  # fmt: skip
    old = write_run(tmp_path / "old", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 2, [70.0], 70.0, 70.0)
    with (running / "metrics.jsonl").open("a") as file:  # a resumed run logs its epoch 3 again: counted once
        file.write(json.dumps({"epoch": 3, "test/top1": 62.5, "time/epoch_s": 40.0}) + "\n")
    records = {r.path: r for r in find_runs([tmp_path])}
    assert (records[done].wall_seconds, records[done].device, records[done].num_processes) == (7200.0, "cuda:0", 2)
    assert records[done].cost.device_hours == 4.0 and records[done].cost.kind == "GPU"
    assert (records[running].wall_seconds, records[running].device, records[running].num_processes) == (100.0, "cpu", 1)
    assert records[running].cost.kind == "CPU"
    assert (records[old].wall_seconds, records[old].device, records[old].cost) == (None, None, None)


def test_cells_show_mean_wall_time_and_device_hours_labelled_by_kind(tmp_path):
    for seed, seconds in enumerate((7000.0, 7400.0)):
        write_run(tmp_path / f"g{seed}", f"cifar100/kd/{VGG}", "vgg8", "vgg13", seed, [70.0], 70.0, 70.0, seconds=seconds,
                  device="cuda:0", processes=2)  # fmt: skip
    write_run(tmp_path / "gpu_only", f"cifar100/crd/{VGG}", "vgg8", "vgg13", 0, [74.0], 74.0, 74.0, seconds=3600.0, device="cuda:1")
    write_run(tmp_path / "c0", f"cifar100/crd/{VGG}", "vgg8", "vgg13", 1, [74.0], 74.0, 74.0, seconds=36000.0, device="cpu", processes=4)
    write_run(tmp_path / "r", f"cifar100/crd/{VGG}", "vgg8", "vgg13", 2, [30.0], epoch_seconds=90.0, device="cpu")
    records = find_runs([tmp_path])
    cells = aggregate(records)
    table = results_table(cells, load_published())
    assert "70.00 \u00b1 0.00 (n=2)<br>cost 2.00 h, 4 GPU-h per run<br>paper" in table
    assert "cost 1.00 h, 1 GPU-h per run (n=1); 10.00 h, 40 CPU-h per run (n=1)<br>paper" in table  # never added up
    assert "crd / vgg13-vgg8, seed 2: epoch 1/240, 1.5 min so far" in render_markdown(records, load_published())
    rows = {r["method"]: r for r in csv_rows(cells, load_published())}
    kd, crd = rows["kd"], rows["crd"]
    assert (kd["gpu_runs"], kd["gpu_wall_s_mean"], kd["gpu_hours_per_run"]) == ("2", "7200.0", "4.0000")
    assert (kd["cpu_runs"], kd["cpu_wall_s_mean"], kd["cpu_hours_per_run"]) == ("", "", "")
    assert (crd["gpu_runs"], crd["gpu_hours_per_run"], crd["cpu_runs"], crd["cpu_hours_per_run"]) == ("1", "1.0000", "1", "40.0000")


def test_runs_without_a_device_show_their_wall_time_only(tmp_path):
    write_run(tmp_path / "a", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 0, [70.0], 70.0, 70.0, seconds=42.0)
    table = results_table(aggregate(find_runs([tmp_path])), load_published())
    assert "<br>cost 42 s per run (unknown device)<br>paper" in table


# --- figures and the CLI -------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_writes_report_table_csv_and_figures(runs_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["report", str(runs_dir), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert expected_cell("kd", R32_R8, 73.33) in stdout
    for path in (out / "report.md", out / "report.csv", out / "figures" / f"{R32_R8}.png", out / "figures" / f"{VGG}.png"):
        assert path.is_file(), path
        assert f"wrote {path}" in stdout
    for png in (out / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert expected_cell("crd", VGG, 73.94) in markdown
    assert f"](figures/{R32_R8}.png)" in markdown


@pytest.mark.e2e
def test_cli_without_matplotlib_still_writes_the_table(runs_dir, tmp_path, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    out = tmp_path / "out"
    assert main(["report", str(runs_dir), "--output", str(out), "--metric", "best"]) == 0
    stdout = capsys.readouterr().out
    assert "figures skipped: install matplotlib (pip install 'distill[plots]')" in stdout
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    assert not list(out.glob("figures/*.png"))
    assert "BEST-epoch top-1" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.e2e
def test_cli_no_figures_and_all_tasks(runs_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["report", str(runs_dir), "-o", str(out), "--no-figures", "--all-tasks"]) == 0
    assert not (out / "figures").exists()
    header = next(line for line in (out / "report.md").read_text(encoding="utf-8").splitlines() if line.startswith("| Method"))
    assert header.count("\u2192") == len(TASKS)


@pytest.mark.e2e
def test_cli_without_runs_exits_2_with_a_hint(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert main(["report", str(empty), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no runs found under {empty}" in err and "distill train" in err
    assert not (tmp_path / "out").exists()


# --- failed runs (outcome.json) ---------------------------------------------------------------------


def failed_runs(root: Path) -> dict[str, Path]:
    """Beside ``runs_dir``: runs an error ended, one stopped on request, one killed without a word."""
    from distill.files.rundir import write_outcome

    nonfinite = write_run(root / "crd" / R32_R8 / "seed3", f"cifar100/crd/{R32_R8}", "resnet8x4", "resnet32x4", 3, [20.0, 25.0])
    write_outcome(nonfinite, "nonfinite", "non-finite loss in epoch 3, batch 7 (loss/crd = nan)")
    # Errored right after its directory was made: a recipe, no epoch, an empty checkpoints/.
    early = write_run(root / "kd" / VGG / "seed2", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 2, [])
    (early / "checkpoints").mkdir()
    write_outcome(early, "failed", "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: out of memory\n")
    stopped = write_run(root / "kd" / VGG / "seed3", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 3, [30.0])
    write_outcome(stopped, "stopped", "stopped by SIGTERM in epoch 2")
    killed = write_run(root / "kd" / VGG / "seed4", f"cifar100/kd/{VGG}", "vgg8", "vgg13", 4, [31.0])
    write_outcome(killed, "running")
    # An error before the run wrote its recipe: only outcome.json (and checkpoints/) exist.
    no_recipe = root / "crd" / VGG / "seed9"
    (no_recipe / "checkpoints").mkdir(parents=True)
    write_outcome(no_recipe, "failed", "DataError: CIFAR-100 not found")
    # Starting: outcome.json says running, the recipe is not written yet (nothing to report).
    starting = root / "crd" / VGG / "seed8"
    starting.mkdir(parents=True)
    write_outcome(starting, "running")
    return {"nonfinite": nonfinite, "early": early, "stopped": stopped, "killed": killed, "no_recipe": no_recipe}


def test_runs_an_error_ended_are_failed_not_incomplete(runs_dir):
    dirs = failed_runs(runs_dir)
    warnings: list[str] = []
    records = {r.path: r for r in find_runs([runs_dir], warn=warnings.append)}
    assert warnings == []
    assert {path for path, r in records.items() if r.failed} == {dirs["nonfinite"], dirs["early"], dirs["no_recipe"]}
    assert not records[dirs["stopped"]].failed and not records[dirs["killed"]].failed
    assert records[dirs["nonfinite"]].outcome.status == "nonfinite"
    assert records[dirs["no_recipe"]].recipe_missing
    assert runs_dir / "crd" / VGG / "seed8" not in records


def test_failed_runs_are_counted_apart_and_never_averaged(runs_dir):
    failed_runs(runs_dir)
    cells = aggregate(find_runs([runs_dir]))
    crd = cells["crd", R32_R8]
    assert (crd.values, crd.incomplete_seeds, crd.failed_seeds) == ((75.40, 75.00), (2,), (3,))
    kd = cells["kd", VGG]
    assert (kd.values, kd.incomplete_seeds, kd.failed_seeds) == ((72.50, 73.00), (3, 4), (2,))
    assert cells["crd", VGG].failed_seeds == ()  # the run without a recipe belongs to no cell
    rows = {(r["method"], r["task"]): r for r in csv_rows(cells, load_published())}
    assert (rows["crd", R32_R8]["n_incomplete"], rows["crd", R32_R8]["n_failed"]) == ("1", "1")
    assert (rows["kd", VGG]["n_incomplete"], rows["kd", VGG]["n_failed"]) == ("2", "1")


def test_report_lists_failed_runs_with_their_error_apart_from_incomplete_ones(runs_dir):
    dirs = failed_runs(runs_dir)
    markdown = render_markdown(find_runs([runs_dir]), load_published())
    incomplete = markdown.split("## Incomplete runs (not averaged)")[1].split("##")[0]
    failed = markdown.split("## Failed runs")[1].split("##")[0]
    assert f"`{dirs['stopped']}`" in incomplete and f"`{dirs['killed']}`" in incomplete
    assert f"crd / {R32_R8}, seed 2: epoch 3/240" in incomplete
    for name in ("nonfinite", "early", "no_recipe"):
        assert f"`{dirs[name]}`" not in incomplete and f"`{dirs[name]}`" in failed, name
    assert (
        f"- crd / {R32_R8}, seed 3: nonfinite after epoch 2/240 \u2014 `{dirs['nonfinite']}`: "
        "non-finite loss in epoch 3, batch 7 (loss/crd = nan)"
    ) in failed
    assert (
        f"- kd / {VGG}, seed 2: failed after epoch 0/240 \u2014 `{dirs['early']}`: "
        "Traceback (most recent call last): | ... | RuntimeError: CUDA error: out of memory"
    ) in failed
    assert f"- `{dirs['no_recipe']}` (failed, before it wrote its recipe): DataError: CIFAR-100 not found" in failed
    assert expected_cell("crd", R32_R8, 75.51, incomplete=1).replace("<br>paper", "<br>+1 failed<br>paper") in markdown


def test_a_cell_with_only_failed_runs_says_so(tmp_path):
    from distill.files.rundir import write_outcome

    write_outcome(write_run(tmp_path / "a", f"cifar100/dkd/{VGG}", "vgg8", "vgg13", 0, []), "failed", "boom")
    write_run(tmp_path / "b", f"cifar100/dkd/{VGG}", "vgg8", "vgg13", 1, [31.0])
    table = results_table(aggregate(find_runs([tmp_path])), load_published())
    assert "\u2014 (1 incomplete, 1 failed)<br>paper 74.68 [b]" in table


@pytest.mark.e2e
def test_cli_counts_failed_runs_apart(runs_dir, tmp_path, capsys):
    failed_runs(runs_dir)
    assert main(["report", str(runs_dir), "--output", str(tmp_path / "out"), "--no-figures"]) == 0
    assert "16 run(s), 10 complete, 3 incomplete, 3 failed" in capsys.readouterr().out
