"""``distill sweep --launcher slurm`` through submitit, with its local executor standing in for the cluster.

submitit's local executor runs each job as real processes on this machine, with
submitit's own job pickles, signal handlers and requeue (exit 144, then the
controller starts the job again): the same code path a Slurm job takes, short of
``sbatch``. What Slurm itself would receive is pinned by a fake ``sbatch`` on PATH.

Checks: a grid run as jobs reports exactly like the same grid run by the local
launcher (bit-identical weights); a job warned the way Slurm warns it (SIGUSR2, the
signal submitit asks Slurm for) checkpoints at that step, is requeued and ends
bit-identical to an uninterrupted run; a failing cell is reported with its error and
``--retry-failed`` runs only it; ``--status`` tells every state apart; a second
submission never submits a cell a job holds.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import stat
from pathlib import Path

import pytest
from resume_checks import assert_same_run
from tiny_runs import run_distill

from distill.benchmark.grid_status import (
    CELL_FAILED,
    CELL_FINISHED,
    CELL_NOT_STARTED,
    CELL_QUEUED,
    CELL_RUNNING,
    CELL_STOPPED,
    cell_state,
)
from distill.benchmark.launchers.records import (
    FAILED,
    REQUEUED,
    RUNNING,
    STOPPED,
    Submission,
    read_job_report,
    read_submission,
    records_dir,
    write_job_report,
    write_submission,
)
from distill.benchmark.sweep import SweepCell, read_grid
from distill.cli.main import main
from distill.recipe.manifest import MANIFEST_ENV, load_manifest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "cifar100"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"
TASK_NAMES = ["resnet56-resnet20", "resnet110-resnet20"]
LOCAL_PROFILE = "executor: local\ngpus_per_cell: 0\ncpus_per_gpu: 1\ntime_limit_min: 30\nmax_running: 4\n"


def overrides(data_root: Path, *extra: str) -> list[str]:
    options = [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "data.batch_size=50", "schedule.epochs=1", "log_every=1", *extra,
    ]  # fmt: skip
    return [part for option in options for part in ("-o", option)]


def grid_arguments(output: Path, data_root: Path, methods: str, tasks: str, *extra: str) -> list[str]:
    return [
        "sweep", "--tasks", tasks, "--methods", methods, "--seeds", "0", "--output", str(output),
        "--no-tensorboard", *overrides(data_root, *extra),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_profile(folder: Path) -> Path:
    path = folder / "local-cluster.yaml"
    path.write_text(LOCAL_PROFILE)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in every process (the sweep's and the jobs'), so two launchers compute bit for bit alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def two_grids(tiny_cifar, random_teachers, one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """The same 2 tasks × 2 methods × 1 seed grid, run by the local launcher (2 processes) and as submitit jobs."""
    folder = tmp_path_factory.mktemp("grids")
    tasks = ",".join(TASK_NAMES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MANIFEST_ENV, str(random_teachers))
        local = folder / "local"
        assert main([*grid_arguments(local, tiny_cifar, "vanilla,kd", tasks), "--jobs", "2"]) == 0
        jobs = folder / "jobs"
        arguments = grid_arguments(jobs, tiny_cifar, "vanilla,kd", tasks)
        assert main([*arguments, "--launcher", "slurm", "--cluster-profile", str(local_profile(folder)), "--wait"]) == 0
    return local, jobs


def report_rows(runs: Path, output: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The report's CSV rows without the cost columns (wall time differs from launcher to launcher)."""
    assert main(["report", str(runs), "--output", str(output), "--no-figures"]) == 0
    rows = {}
    for row in csv.DictReader((output / "report.csv").open()):
        rows[(row["method"], row["task"])] = {k: v for k, v in row.items() if not k.startswith(("gpu_", "cpu_"))}
    return rows


@pytest.mark.slow
@pytest.mark.e2e
def test_a_grid_run_as_submitit_jobs_reports_exactly_like_the_local_launcher(two_grids, tmp_path, capsys):
    local, jobs = two_grids
    for method in ("vanilla", "kd"):
        for task in TASK_NAMES:
            assert_same_run(local / method / task / "seed0", jobs / method / task / "seed0")
            folder = records_dir(jobs, method, task, 0)
            submission, report = read_submission(folder), read_job_report(folder)
            assert submission.executor == "local" and report.job_id == submission.job_id
            assert report.state == "finished" and report.attempt == 1 and report.message.startswith("final top-1")
    local_rows, job_rows = report_rows(local, tmp_path / "local"), report_rows(jobs, tmp_path / "jobs")
    assert set(local_rows) == {(m, t) for m in ("vanilla", "kd") for t in TASK_NAMES}
    assert local_rows == job_rows
    capsys.readouterr()
    assert main(["sweep", "--status", str(jobs)]) == 0
    status = capsys.readouterr().out
    assert "4 cells: 4 finished, 0 running, 0 queued, 0 failed, 0 stopped, 0 not started" in status


@pytest.mark.slow
@pytest.mark.e2e
def test_submitting_again_submits_nothing_that_finished(two_grids, tmp_path, capsys, random_teachers, monkeypatch):
    _, jobs = two_grids
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    grid = read_grid(jobs)
    assert grid.methods == ("vanilla", "kd") and grid.tasks == tuple(TASK_NAMES) and grid.seeds == (0,)
    capsys.readouterr()
    arguments = ["sweep", "--output", str(jobs), "--launcher", "slurm", "--cluster-profile", str(local_profile(tmp_path))]
    assert main(arguments) == 0  # the grid comes from jobs/sweep.json
    out = capsys.readouterr().out
    assert "submitted 0 cell(s); 4 already finished" in out


@pytest.mark.slow
@pytest.mark.e2e
def test_a_job_warned_by_the_scheduler_checkpoints_requeues_and_resumes_bit_identically(
    tiny_cifar, random_teachers, one_thread, tmp_path, monkeypatch
):
    """SIGUSR2 after step 1 of 10: the trainer checkpoints within epoch 1, submitit requeues, the new attempt resumes."""
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    task = TASK_NAMES[0]
    settings = ("schedule.epochs=2", "data.batch_size=20", f"plugins=[{FAULT_PLUGIN}]")
    reference = tmp_path / "reference"
    assert main([*grid_arguments(reference, tiny_cifar, "kd", task, *settings), "--jobs", "2"]) == 0  # its own process
    monkeypatch.setenv("DISTILL_FAULT", "signal_after_step=USR2:1")
    warned = tmp_path / "warned"
    arguments = grid_arguments(warned, tiny_cifar, "kd", task, *settings)
    assert main([*arguments, "--launcher", "slurm", "--cluster-profile", str(local_profile(tmp_path)), "--wait"]) == 0
    run_dir = warned / "kd" / task / "seed0"
    assert_same_run(reference / "kd" / task / "seed0", run_dir)
    report = read_job_report(records_dir(warned, "kd", task, 0))
    assert report.state == "finished" and report.attempt == 2  # one requeue, same job id
    log = (run_dir / "log.txt").read_text()
    assert "run ended: stopped: stopped by SIGUSR2 in epoch 1 after batch" in log  # mid-epoch, at the step it was warned
    assert "resuming from" in log and "run ended: finished" in log
    (resume,) = json.loads((run_dir / "run.json").read_text())["resumes"]  # one requeue, with the code it ran
    assert {"git_commit", "git_dirty"} <= set(resume) and resume["from_epoch"] == 0
    submission = read_submission(records_dir(warned, "kd", task, 0))
    job_output = Path(submission.stdout).read_text() + Path(submission.stderr).read_text()
    assert "Requeued job" in job_output  # submitit's own requeue, after the trainer's checkpoint


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failing_cell_is_reported_and_retry_failed_runs_only_it(tiny_cifar, random_teachers, tmp_path, capsys, monkeypatch):
    """kd's recipe names a teacher file that is missing: its job fails, vanilla's finishes; once the file exists,
    ``--retry-failed`` submits kd alone."""
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    task = TASK_NAMES[0]
    recipes = tmp_path / "recipes"
    (recipes / "vanilla").mkdir(parents=True)
    (recipes / "kd").mkdir()
    (recipes / "vanilla" / f"{task}.yaml").write_text(f"_base_: [{RECIPES / 'vanilla' / f'{task}.yaml'}]\n")
    missing = tmp_path / "teachers" / "resnet56.pth"
    (recipes / "kd" / f"{task}.yaml").write_text(
        f"_base_: [{RECIPES / 'kd' / f'{task}.yaml'}]\nteacher:\n  name: null\n  arch: resnet56\n  checkpoint: {missing}\n"
    )
    output = tmp_path / "runs"
    profile = local_profile(tmp_path)
    arguments = [*grid_arguments(output, tiny_cifar, "vanilla,kd", task), "--recipes", str(recipes)]
    assert main([*arguments, "--launcher", "slurm", "--cluster-profile", str(profile), "--wait"]) == 1
    out = capsys.readouterr().out
    assert "FAILED kd" in out and str(missing) in out
    assert main(["sweep", "--status", str(output)]) == 0
    status = capsys.readouterr().out
    assert "kd resnet56-resnet20 seed 0" in status and "failed" in status and str(missing) in status
    assert "1 finished, 0 running, 0 queued, 1 failed" in status
    vanilla_summary = output / "vanilla" / task / "seed0" / "summary.json"
    finished_at = vanilla_summary.stat().st_mtime_ns

    entry = load_manifest(random_teachers).teachers["resnet56"]
    missing.parent.mkdir()
    missing.write_bytes((Path(random_teachers).parent / entry.file).read_bytes())
    retry = ["sweep", "--output", str(output), "--retry-failed", "--launcher", "slurm", "--cluster-profile", str(profile), "--wait"]
    assert main(retry) == 0
    out = capsys.readouterr().out
    assert "--retry-failed: 1 failed cell(s): kd resnet56-resnet20 seed 0" in out and "submitted 1 cell(s)" in out
    assert (output / "kd" / task / "seed0" / "summary.json").is_file()
    assert vanilla_summary.stat().st_mtime_ns == finished_at  # untouched


def cell(tmp_path: Path) -> SweepCell:
    return SweepCell("kd", "resnet56-resnet20", 0, tmp_path / "kd.yaml", tmp_path / "runs" / "kd" / "resnet56-resnet20" / "seed0")


def alive_as(answer):
    return lambda executor, job_id, host: answer


def test_a_cell_state_comes_from_its_run_directory_then_its_job_records(tmp_path):
    output = tmp_path / "runs"
    one = cell(tmp_path)
    folder = records_dir(output, one.method, one.task, one.seed)
    assert cell_state(one, output).state == CELL_NOT_STARTED

    write_submission(folder, Submission("77_3", "slurm", "2026-11-30T10:00:00", "login1", "/logs/77_3.out"))
    assert cell_state(one, output, alive_as(True)).state == CELL_QUEUED
    assert cell_state(one, output, alive_as(None)).state == CELL_QUEUED  # squeue not here: the record stands
    gone = cell_state(one, output, alive_as(False))
    assert gone.state == CELL_FAILED and "ended before it started" in gone.detail and gone.log == "/logs/77_3.out"

    write_job_report(folder, "77_3", RUNNING)
    running = cell_state(one, output, alive_as(True))
    assert running.state == CELL_RUNNING and running.job_id == "77_3" and "attempt 1" in running.detail
    killed = cell_state(one, output, alive_as(False))
    assert killed.state == CELL_FAILED and "without recording an outcome" in killed.detail

    write_job_report(folder, "77_3", REQUEUED, "stopped by SIGUSR2 in epoch 3 after batch 10")
    assert cell_state(one, output, alive_as(True)).state == CELL_QUEUED
    write_job_report(folder, "77_3", RUNNING)
    assert read_job_report(folder).attempt == 2 and "attempt 2" in cell_state(one, output, alive_as(True)).detail

    write_job_report(folder, "77_3", FAILED, "RuntimeError: CUDA out of memory")
    failed = cell_state(one, output, alive_as(False))
    assert failed.state == CELL_FAILED and failed.detail == "RuntimeError: CUDA out of memory"

    write_submission(folder, Submission("80_0", "slurm", "2026-11-30T11:00:00", "login1"))  # resubmitted
    assert cell_state(one, output, alive_as(True)).state == CELL_QUEUED
    write_job_report(folder, "80_0", STOPPED, "stopped by SIGTERM in epoch 2 after batch 4; checkpoint ...")
    assert cell_state(one, output, alive_as(False)).state == CELL_STOPPED

    one.run_dir.mkdir(parents=True)
    (one.run_dir / "summary.json").write_text("{}")
    assert cell_state(one, output, alive_as(False)).state == CELL_FINISHED  # the run directory decides first


def test_unreadable_records_count_as_none(tmp_path):
    folder = records_dir(tmp_path, "kd", "resnet56-resnet20", 0)
    folder.mkdir(parents=True)
    (folder / "submitted.json").write_text("{not json")
    (folder / "job.json").write_text('{"job_id": "1", "state": "exploded"}')
    assert read_submission(folder) is None and read_job_report(folder) is None


def fake_slurm(bin_dir: Path, queue_state: str) -> Path:
    """``sbatch`` that keeps the submission file and answers with job 4242; ``squeue`` that lists every job as ``queue_state``."""
    bin_dir.mkdir()
    kept = bin_dir / "submitted.sh"
    scripts = {
        "sbatch": f'#!/bin/sh\nfor last; do :; done\ncp "$last" {kept}\necho "Submitted batch job 4242"\n',
        "squeue": f"#!/bin/sh\necho {queue_state}\n",
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    return kept


@pytest.mark.e2e
def test_slurm_submission_is_one_throttled_array_and_a_second_submission_leaves_queued_cells_alone(
    tiny_cifar, random_teachers, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    kept = fake_slurm(tmp_path / "bin", "PENDING")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    output = tmp_path / "runs"
    arguments = [
        *grid_arguments(output, tiny_cifar, "vanilla,kd", ",".join(TASK_NAMES)), "--launcher", "slurm",
        "--partition", "gpu", "--account", "lab", "--gpus-per-cell", "1", "--time-limit", "180", "--max-running", "2",
        "--slurm-option", "exclude=node7",
    ]  # fmt: skip
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "submitted 4 cell(s) (job 4242)" in out
    script = kept.read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=180",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --exclude=node7", "#SBATCH --signal=USR2@"):
        assert line in script, line
    ids = sorted(read_submission(records_dir(output, m, t, 0)).job_id for m in ("vanilla", "kd") for t in TASK_NAMES)
    assert ids == ["4242_0", "4242_1", "4242_2", "4242_3"]

    kept.unlink()
    assert main(["sweep", "--output", str(output), "--launcher", "slurm", "--partition", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "submitted 0 cell(s)" in out and "4 already queued or running" in out and not kept.exists()
    assert main(["sweep", "--status", str(output)]) == 0
    status = capsys.readouterr().out
    assert "0 finished, 0 running, 4 queued" in status and "job 4242_0" in status


@pytest.mark.slow
@pytest.mark.e2e
def test_a_cell_of_two_processes_is_one_job_of_two_tasks_equal_to_torchrun(
    tiny_cifar, random_teachers, one_thread, tmp_path, monkeypatch
):
    """``gpus_per_cell: 2``: one job, two tasks, each one process of the run (rendezvous from the job's environment);
    the result is bit-identical to ``torchrun --nproc_per_node 2`` of the same cell."""
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    task = TASK_NAMES[0]
    profile = tmp_path / "two.yaml"
    profile.write_text(LOCAL_PROFILE.replace("gpus_per_cell: 0", "gpus_per_cell: 2"))
    output = tmp_path / "jobs"
    arguments = grid_arguments(output, tiny_cifar, "kd", task)
    assert main([*arguments, "--launcher", "slurm", "--cluster-profile", str(profile), "--wait"]) == 0
    run_dir = output / "kd" / task / "seed0"
    assert json.loads((run_dir / "run.json").read_text())["num_processes"] == 2

    reference = tmp_path / "torchrun"
    options = overrides(tiny_cifar)[1::2]  # the values after each -o
    done = run_distill(
        "train", str(RECIPES / "kd" / f"{task}.yaml"), *options, "seed=0", "--run-dir", str(reference), "--no-tensorboard",
        processes=2, port=free_port(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(reference, run_dir)


@pytest.mark.e2e
def test_a_bad_profile_or_no_slurm_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    grid = ["sweep", "--methods", "kd", "--tasks", TASK_NAMES[0]]
    profile = tmp_path / "typo.yaml"
    profile.write_text("partion: gpu\n")
    assert main([*grid, "--output", str(tmp_path / "a"), "--launcher", "slurm", "--cluster-profile", str(profile)]) == 2
    assert "partion: unknown key. Did you mean 'partition'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch, no srun
    assert main([*grid, "--output", str(tmp_path / "b"), "--launcher", "slurm"]) == 2
    assert "needs Slurm's sbatch and srun on PATH" in capsys.readouterr().err
    assert main([*grid, "--output", str(tmp_path / "c"), "--launcher", "slurm", "--jobs", "4"]) == 2
    assert "--jobs and --devices are for --launcher local" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_cell_without_job_records_is_running_while_the_process_its_lock_names_lives(tmp_path):
    """A hand-started or local run: ``outcome.json`` says running; the lock file's process decides whether it is."""
    from distill.files.rundir import RunDirLock, read_lock_holder, write_outcome

    one = cell(tmp_path)
    one.run_dir.mkdir(parents=True)
    write_outcome(one.run_dir, "running")
    lock = RunDirLock(one.run_dir)
    lock.acquire()
    try:
        assert read_lock_holder(one.run_dir) == (os.getpid(), socket.gethostname())
        running = cell_state(one, tmp_path / "runs")
        assert running.state == CELL_RUNNING and running.detail == f"pid {os.getpid()} on host {socket.gethostname()}"
    finally:
        lock.release()
    (one.run_dir / "run.lock").write_text(f"pid {os.getpid()} on host another-machine\n")
    assert cell_state(one, tmp_path / "runs").state == CELL_FAILED  # another host's process: not known alive here
    (one.run_dir / "run.lock").write_text("garbled")
    assert read_lock_holder(one.run_dir) is None
    assert cell_state(one, tmp_path / "runs").state == CELL_FAILED
