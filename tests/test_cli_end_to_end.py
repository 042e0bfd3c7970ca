"""``distill train`` and ``distill eval`` through the CLI, on a fake CIFAR-100."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli.main import main
from distill.cli.recipes import NOT_RECIPE_FOLDERS
from distill.engine.metrics import read_metrics

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"


def small_run_overrides(data_root: Path, epochs: int = 2) -> list[str]:
    return [
        f"data.root={data_root}",
        "data.verify=false",
        "data.download=false",
        "data.num_workers=0",
        "data.test_batch_size=32",
        f"schedule.epochs={epochs}",
        "log_every=2",
        "deterministic=true",
    ]


@pytest.fixture(scope="module")
def kd_run(fake_cifar100, tiny_teacher, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "kd"
    overrides = [
        *small_run_overrides(fake_cifar100),
        "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={tiny_teacher}",
    ]
    assert main(["train", str(KD_RECIPE), *overrides, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_kd_run_writes_a_complete_run_directory(kd_run):
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "summary.json", "log.txt", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (kd_run / name).is_file(), name
    assert any((kd_run / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_metrics(kd_run)
    teacher_row, epochs = rows[0], rows[1:]
    assert teacher_row["epoch"] == 0 and "teacher/top1" in teacher_row
    assert [r["epoch"] for r in epochs] == [1, 2]
    for row in epochs:
        for key in ("train/loss/ce", "train/loss/kd", "train/loss/total", "test/top1", "test/top5", "lr", "train/images_per_s"):
            assert math.isfinite(row[key]), key
        assert row["train/loss/total"] == pytest.approx(0.1 * row["train/loss/ce"] + 0.9 * row["train/loss/kd"], rel=1e-5)
        assert 0 <= row["test/top1"] <= row["test/top5"] <= 100
    assert epochs[-1]["step"] == 2 * math.ceil(256 / 64)
    summary = json.loads((kd_run / "summary.json").read_text())
    assert summary["final_top1"] == epochs[-1]["test/top1"]
    assert summary["best_top1"] == max(r["test/top1"] for r in epochs)
    info = json.loads((kd_run / "run.json").read_text())
    assert info["seed"] == 0 and info["num_processes"] == 1 and info["train_size"] == 256


@pytest.mark.slow
def test_checkpoint_holds_the_student_in_reference_format(kd_run):
    checkpoint = torch.load(kd_run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["arch"] == "resnet8"
    assert "fc.weight" in checkpoint["model"] and "layer1.0.conv1.weight" in checkpoint["model"]
    assert checkpoint["state"]["top1"] == read_metrics(kd_run)[-1]["test/top1"]
    from distill.models import create_model

    create_model("resnet8", checkpoint=kd_run / "checkpoints/last.pt")  # loads strictly, like a teacher file


@pytest.mark.slow
def test_eval_reproduces_the_last_epoch_accuracy(kd_run, capsys):
    assert main(["eval", str(kd_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last = read_metrics(kd_run)[-1]
    assert result["top1"] == pytest.approx(last["test/top1"]) and result["top5"] == pytest.approx(last["test/top5"])
    assert result["test_size"] == 100 and result["arch"] == "resnet8" and result["parameters"] > 0
    assert main(["eval", str(kd_run), "--which", "best"]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_resolved_recipe_reproduces_the_run(kd_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", str(kd_run / "recipe.yaml"), "--run-dir", str(again)]) == 0
    keys = ("train/loss/ce", "train/loss/kd", "test/top1")
    first, second = read_metrics(kd_run)[1:], read_metrics(again)[1:]
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]


@pytest.mark.slow
def test_a_teacher_trains_with_the_same_command(fake_cifar100, tmp_path):
    recipe = REPO / "recipes/cifar100/teachers/resnet56.yaml"
    run_dir = tmp_path / "teacher"
    assert main(["train", str(recipe), *small_run_overrides(fake_cifar100, epochs=1), "student.arch=resnet8", "--run-dir", str(run_dir)]) == 0
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1] and "train/loss/kd" not in rows[0]


@pytest.mark.slow
def test_a_finished_run_dir_is_refused(kd_run, fake_cifar100, tiny_teacher, capsys):
    code = main(["train", str(KD_RECIPE), *small_run_overrides(fake_cifar100), f"teacher.checkpoint={tiny_teacher}", "--run-dir", str(kd_run)])
    assert code == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "nothing to resume" in err and "choose another --run-dir" in err


def test_bad_input_is_reported_without_a_traceback(fake_cifar100, tmp_path, capsys):
    code = main(["train", str(KD_RECIPE), "losses.kd.temprature=3"])
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'temperature'" in err and "Traceback" not in err
    code = main(["train", str(KD_RECIPE), *small_run_overrides(fake_cifar100), "teacher.checkpoint=/nonexistent/t.pth"])
    err = capsys.readouterr().err
    assert code == 2 and "teacher.checkpoint" in err and "does not exist" in err
    code = main(["train", str(KD_RECIPE), f"data.root={tmp_path}", "data.download=false", f"teacher.checkpoint={KD_RECIPE}"])
    assert code == 2 and str(tmp_path) in capsys.readouterr().err


def test_recipes_lists_every_shipped_recipe(capsys):
    assert main(["recipes", str(REPO / "recipes")]) == 0
    out = capsys.readouterr().out
    assert "cifar100/kd/resnet32x4-resnet8x4.yaml" in out and "KD (Hinton)" in out
    recipes = REPO / "recipes"
    shipped = [p for p in recipes.rglob("*.yaml") if not NOT_RECIPE_FOLDERS.intersection(p.relative_to(recipes).parts)]
    assert "_base_" not in out and "cluster/" not in out and f"{len(shipped)} recipe(s)" in out and len(shipped) > 200


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_recipes_prints_paths_that_train_accepts_from_the_same_folder(where, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO if where == "repo" else tmp_path)
    assert main(["recipes", str(REPO / "recipes"), "--filter", "/kd/resnet32x4-resnet8x4"]) == 0
    first = capsys.readouterr().out.splitlines()[0].split()[0]
    assert Path(first).is_file()
    assert first == ("recipes/cifar100/kd/resnet32x4-resnet8x4.yaml" if where == "repo" else str(KD_RECIPE))


@pytest.mark.slow
def test_a_two_stage_method_runs_both_stages(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "ft"
    recipe = REPO / "recipes/cifar100/ft/resnet32x4-resnet8x4.yaml"
    overrides = [*small_run_overrides(fake_cifar100, epochs=1), "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
                 f"teacher.checkpoint={tiny_teacher}", "init.epochs=2"]
    assert main(["train", str(recipe), *overrides, "--run-dir", str(run_dir)]) == 0
    assert "init stage of ft: 2 epochs at lr 0.01" in capsys.readouterr().out  # FT's rule for resnet students
    rows = read_metrics(run_dir)
    init_rows = [r for r in rows if r.get("stage") == "init"]
    assert [r["init/epoch"] for r in init_rows] == [1, 2] and all(math.isfinite(r["init/loss/ft"]) for r in init_rows)
    assert rows[-1]["epoch"] == 1 and math.isfinite(rows[-1]["train/loss/ft"])


@pytest.mark.slow
def test_two_processes_train_as_one_job(fake_cifar100, tiny_teacher, tmp_path):
    """torchrun with 2 CPU processes (gloo), CRD+KD: one run directory, metrics over the whole test set."""
    run_dir = tmp_path / "ddp"
    recipe = REPO / "recipes/cifar100/crd_kd/resnet32x4-resnet8x4.yaml"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "distill", "train", str(recipe),
        *small_run_overrides(fake_cifar100, epochs=1), "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={tiny_teacher}", "losses.crd.num_negatives=200", "--run-dir", str(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 process(es)" in result.stdout
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1]  # written once, by the main process
    assert rows[1]["step"] == math.ceil(256 / (64 * 2))
    assert math.isfinite(rows[1]["train/loss/crd"])
    banks = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["losses"]
    assert torch.allclose(banks["crd.student_memory.memory"].norm(dim=1), torch.ones(256), atol=1e-5)  # all rows written
    eval_result = subprocess.run([sys.executable, "-m", "distill", "eval", str(run_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(eval_result.stdout.strip().splitlines()[-1])["top1"] == pytest.approx(rows[1]["test/top1"])
