"""Cluster profiles for ``distill sweep --launcher slurm`` and what submitit sends to Slurm for them.

The profile is checked like a recipe (every key, every bad value with the file and key
in its message, no executable YAML). The submission is checked without a cluster: a
fake ``sbatch`` on PATH keeps the batch file submitit hands it and answers with a job
id, and every other Slurm command on PATH is a tripwire that records any call.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import stat
import textwrap
from pathlib import Path

import pytest
import yaml
from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from distill.benchmark.launchers.profile import (
    CLUSTER_EXECUTORS,
    ClusterProfile,
    describe,
    executor_parameters,
    load_profile,
    make_executor,
    parse_slurm_option,
    with_flags,
)
from distill.errors import DistillError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "recipes" / "cluster" / "example-slurm.yaml"
FIELDS = [f.name for f in dataclasses.fields(ClusterProfile)]


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- loading and validation -------------------------------------------------------------


EVERY_KEY = """\
    executor: local
    partition: gpu-long
    account: lab-a
    qos: high
    constraint: a100
    gpus_per_cell: 4
    cpus_per_gpu: 6
    mem_gb: 48.5
    time_limit_min: 90
    max_running: 3
    signal_delay_s: 300
    max_requeues: 7
    job_name: kd-grid
    setup: ["module load cuda/12.1", "source /opt/venv/bin/activate"]
    slurm_options: {exclude: node7, mail_type: END, nice: 10, exclusive: true}
"""


def test_every_key_round_trips(tmp_path):
    profile = load_profile(write(tmp_path, EVERY_KEY))
    assert profile == ClusterProfile(
        executor="local",
        partition="gpu-long",
        account="lab-a",
        qos="high",
        constraint="a100",
        gpus_per_cell=4,
        cpus_per_gpu=6,
        mem_gb=48.5,
        time_limit_min=90,
        max_running=3,
        signal_delay_s=300,
        max_requeues=7,
        job_name="kd-grid",
        setup=("module load cuda/12.1", "source /opt/venv/bin/activate"),
        # names as sbatch spells them, values as sbatch text ("" = an option without a value)
        slurm_options={"exclude": "node7", "mail-type": "END", "nice": "10", "exclusive": ""},
    )
    assert set(yaml.safe_load(textwrap.dedent(EVERY_KEY))) == set(FIELDS)  # the test sets every key
    assert CLUSTER_EXECUTORS == ("slurm", "local")


def test_the_example_profile_shows_every_key_and_loads():
    assert set(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))) == set(FIELDS)
    profile = load_profile(EXAMPLE)
    assert profile.executor == "slurm" and profile.partition == "gpu" and profile.slurm_options == {"exclude": "node7", "mail-type": "END"}


def test_an_empty_profile_is_all_defaults(tmp_path):
    assert load_profile(write(tmp_path, "# nothing set\n")) == ClusterProfile()
    assert ClusterProfile().time_limit_min == 240 and ClusterProfile().max_running == 64 and ClusterProfile().gpus_per_cell == 1


def test_an_unknown_key_names_the_closest_key_and_lists_them_all(tmp_path):
    path = write(tmp_path, "partiton: gpu\n")
    with pytest.raises(DistillError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: partiton: unknown key.")
    assert "Did you mean 'partition'?" in message and ", ".join(FIELDS) in message


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("executor: slrum", "executor", "expected one of 'slurm', 'local', got 'slrum' (str). Did you mean 'slurm'?"),
        ("gpus_per_cell: -1", "gpus_per_cell", "must be 0 or more, got -1"),
        ("gpus_per_cell: two", "gpus_per_cell", "expected int, got 'two' (str)"),
        ("gpus_per_cell: true", "gpus_per_cell", "expected int, got True (bool)"),
        ("cpus_per_gpu: 0", "cpus_per_gpu", "must be positive, got 0"),
        ("mem_gb: -4", "mem_gb", "must be positive, got -4.0"),
        ("mem_gb: lots", "mem_gb", "expected float or null, got 'lots' (str)"),
        ("time_limit_min: 0", "time_limit_min", "must be positive, got 0"),
        ("time_limit_min: 1.5", "time_limit_min", "expected int, got 1.5 (float)"),
        ("time_limit_min: 10\nsignal_delay_s: 600", "time_limit_min", "10 min leaves no time before Slurm's warning"),
        ("max_running: 0", "max_running", "must be positive, got 0"),
        ("signal_delay_s: 0", "signal_delay_s", "must be positive, got 0"),
        ("max_requeues: -1", "max_requeues", "must be 0 or more, got -1"),
        ("partition: ''", "partition", "must not be empty"),
        ('partition: "gpu\\nrm -rf ~"', "partition", "must be one line of printable text"),
        ("account: [a, b]", "account", "expected str or null, got ['a', 'b'] (list)"),
        ("job_name: ''", "job_name", "must not be empty"),
        ("setup: module load cuda", "setup", "expected list of str, got 'module load cuda' (str)"),
        ('setup: ["module load cuda\\nrm -rf ~"]', "setup", "line 1 holds a line break"),
        ("slurm_options: [exclude]", "slurm_options", "expected a mapping, got ['exclude'] (list)"),
        ("slurm_options: {time: '60'}", "slurm_options", "sbatch's --time comes from the profile key time_limit_min"),
        ("slurm_options: {gpus_per_node: 2}", "slurm_options", "sbatch's --gpus-per-node comes from the profile key gpus_per_cell"),
        ("slurm_options: {array: 0-3}", "slurm_options", "submitit writes --array for every job"),
        ("slurm_options: {--exclude: node7}", "slurm_options", "'--exclude' is not an sbatch option name"),
        ("slurm_options: {Exclude: node7}", "slurm_options", "'Exclude' is not an sbatch option name"),
        ("slurm_options: {exclusive: false}", "slurm_options", "'exclusive': false is not an sbatch value"),
        ("slurm_options: {exclude: null}", "slurm_options.exclude", "expected str or int or float or bool, got null"),
        ("slurm_options: {mail_type: END, mail-type: ALL}", "slurm_options", "the option --mail-type is given twice"),
        ("slurm_options: {comment: \"a\\nb\"}", "slurm_options", "'comment': the value must be one line of printable text"),
        ("- partition: gpu", "(top level)", "expected a mapping for ClusterProfile"),
    ],
)
def test_a_bad_value_names_the_file_the_key_and_what_was_expected(tmp_path, text, key, says):
    path = write(tmp_path, text + "\n")
    with pytest.raises(DistillError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and says in message, message


def test_a_missing_file_and_broken_yaml_name_the_file(tmp_path):
    with pytest.raises(DistillError, match="cluster profile .*nowhere.yaml does not exist"):
        load_profile(tmp_path / "nowhere.yaml")
    path = write(tmp_path, "partition: [gpu\n")
    with pytest.raises(DistillError, match=f"{path}:2:1: invalid YAML"):
        load_profile(path)


@pytest.mark.parametrize(
    "text",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "partition: !!python/object/apply:os.system ['touch {marker}']",
        "!!python/object:distill.benchmark.launchers.profile.ClusterProfile {{partition: x}}",
    ],
)
def test_executable_yaml_tags_are_refused(tmp_path, text):
    marker = tmp_path / "ran"
    path = write(tmp_path, text.format(marker=marker) + "\n")
    with pytest.raises(DistillError, match="invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/"):
        load_profile(path)
    assert not marker.exists()


# --- flags over a profile -------------------------------------------------------------------


def test_flags_override_fields_and_merge_slurm_options_key_by_key(tmp_path):
    profile = load_profile(write(tmp_path, EVERY_KEY.replace("executor: local", "executor: slurm")))
    flagged = with_flags(
        profile,
        partition="debug",
        account=None,  # not given: the profile's stays
        gpus_per_cell=0,
        mem_gb=8,
        time_limit_min=30,
        slurm_options={"mail-type": "ALL", "nodelist": "node3"},
    )
    assert flagged == dataclasses.replace(
        profile,
        partition="debug",
        gpus_per_cell=0,
        mem_gb=8.0,
        time_limit_min=30,
        slurm_options={"exclude": "node7", "mail-type": "ALL", "nice": "10", "exclusive": "", "nodelist": "node3"},
    )
    assert profile.partition == "gpu-long" and profile.slurm_options["mail-type"] == "END"  # the profile is unchanged
    assert with_flags(profile, slurm_options={"mail_type": "FAIL"}).slurm_options["mail-type"] == "FAIL"  # same option
    assert with_flags(profile) == profile


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"gpus_per_cell": -1}, "command line: --gpus-per-cell: must be 0 or more, got -1"),
        ({"time_limit_min": 0}, "command line: --time-limit: must be positive, got 0"),
        ({"time_limit_min": 2}, "command line: --time-limit: 2 min leaves no time before Slurm's warning"),
        ({"max_running": 0}, "command line: --max-running: must be positive, got 0"),
        ({"partition": ""}, "command line: --partition: must not be empty"),
        ({"slurm_options": {"partition": "gpu"}}, "command line: --slurm-option: 'partition': sbatch's --partition comes from"),
        ({"slurm_options": {"exclusive": False}}, "command line: --slurm-option: 'exclusive': false is not an sbatch value"),
    ],
)
def test_bad_flags_name_the_flag(flags, says):
    with pytest.raises(DistillError) as caught:
        with_flags(ClusterProfile(), **flags)
    assert str(caught.value).startswith(says), str(caught.value)


def test_parse_slurm_option():
    assert parse_slurm_option("exclude=node7") == ("exclude", "node7")
    assert parse_slurm_option("mail_type=END") == ("mail-type", "END")
    assert parse_slurm_option("comment=a=b") == ("comment", "a=b")
    assert parse_slurm_option("exclusive=") == ("exclusive", "")
    with pytest.raises(DistillError, match=r"--slurm-option 'exclude': expected KEY=VALUE, e.g. --slurm-option exclude=node7"):
        parse_slurm_option("exclude")
    with pytest.raises(DistillError, match=r"--slurm-option 'time=60': 'time': sbatch's --time comes from the profile key"):
        parse_slurm_option("time=60")
    with pytest.raises(DistillError, match=r"--slurm-option '--exclude=n1': '--exclude' is not an sbatch option name"):
        parse_slurm_option("--exclude=n1")


def test_describe():
    gpu = ClusterProfile(partition="gpu", account="lab-a", mem_gb=32, slurm_options={"exclude": "node7", "exclusive": ""})
    assert describe(gpu) == (
        "partition gpu, 1 GPU × 8 CPUs per cell, 32 GB per job, 240 min per job, at most 64 running, account lab-a, "
        "--exclude=node7 --exclusive"
    )
    cpu = ClusterProfile(gpus_per_cell=0, cpus_per_gpu=1, time_limit_min=30, max_running=2, qos="low")
    assert describe(cpu) == "the default partition, CPU cells of 1 CPU, 30 min per job, at most 2 running, qos low"
    local = ClusterProfile(executor="local", gpus_per_cell=2, time_limit_min=5, signal_delay_s=30)
    assert describe(local) == "local processes on this machine (no Slurm), 2 processes and 2 GPUs per cell, 5 min per job"


# --- what submitit sends to sbatch --------------------------------------------------------

TRIPWIRES = ("srun", "sacct", "squeue", "scancel", "scontrol", "sinfo")


def executable(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A PATH whose ``sbatch`` keeps its last argument (the batch file) as ``submitted.sh`` and its arguments in
    ``sbatch.args``; every other Slurm command there records its call in ``tripped`` and fails."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    executable(
        bin_dir / "sbatch",
        f"""#!/bin/sh
for last; do :; done
cp "$last" {shlex.quote(str(tmp_path / "submitted.sh"))}
echo "$@" >> {shlex.quote(str(tmp_path / "sbatch.args"))}
echo "Submitted batch job 4242"
""",
    )
    for command in TRIPWIRES:  # submitit requires srun on PATH to build a Slurm executor; nothing may run it here
        executable(bin_dir / command, f'#!/bin/sh\necho "$0 $@" >> {shlex.quote(str(tmp_path / "tripped"))}\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    monkeypatch.setattr(SlurmJob, "watcher", SlurmInfoWatcher(delay_s=600))  # the fake job ids stay out of the real one
    return tmp_path


def sbatch_flags(script: str) -> dict[str, str | None]:
    """The ``#SBATCH --key=value`` lines of a batch file as {key: value} (None for a flag without a value)."""
    flags: dict[str, str | None] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, equals, value = line.removeprefix("#SBATCH --").partition("=")
            assert key not in flags, f"--{key} written twice"
            flags[key] = shlex.split(value)[0] if equals else None
    return flags


def submitted(tmp_path: Path) -> tuple[str, dict[str, str | None]]:
    script = (tmp_path / "submitted.sh").read_text(encoding="utf-8")
    assert (tmp_path / "sbatch.args").read_text(encoding="utf-8").count("\n") == 1, "sbatch runs once"
    assert not (tmp_path / "tripped").exists(), (tmp_path / "tripped").read_text(encoding="utf-8")
    return script, sbatch_flags(script)


def test_a_gpu_profile_is_sent_as_a_throttled_job_array_of_multi_process_jobs(fake_slurm):
    profile = ClusterProfile(
        partition="gpu-long",
        account="lab-a",
        qos="high",
        constraint="a100",
        gpus_per_cell=2,
        cpus_per_gpu=6,
        mem_gb=48,
        time_limit_min=90,
        max_running=3,
        max_requeues=7,
        job_name="kd-grid",
        setup=("module load cuda/12.1", "source /opt/venv/bin/activate"),
        slurm_options={"exclude": "node7", "exclusive": ""},
    )
    folder = fake_slurm / "jobs"
    executor = make_executor(profile, folder)
    jobs = executor.map_array(abs, [-1, -2, -3, -4, -5])  # five trivial cells: one array

    assert [job.job_id for job in jobs] == [f"4242_{i}" for i in range(5)]
    assert all(job.num_tasks == 2 for job in jobs)  # one process per GPU
    script, flags = submitted(fake_slurm)
    assert {k: v for k, v in flags.items() if k not in ("output", "error")} == {
        "account": "lab-a",
        "array": "0-4%3",
        "constraint": "a100",
        "cpus-per-task": "6",
        "exclude": "node7",
        "exclusive": None,
        "gpus-per-node": "2",
        "job-name": "kd-grid",
        "mem": "48GB",
        "nodes": "1",
        "ntasks-per-node": "2",
        "open-mode": "append",
        "partition": "gpu-long",
        "qos": "high",
        "signal": "USR2@120",
        "time": "90",
        "wckey": "submitit",  # submitit's default
    }
    assert flags["output"] == f"{folder}/%A_%a_0_log.out" and flags["error"] == f"{folder}/%A_%a_0_log.err"
    lines = script.splitlines()
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines[lines.index("# setup") + 1 : lines.index("# setup") + 3] == list(profile.setup)
    assert lines.index("# setup") < srun and lines[srun].endswith(f"-u -m submitit.core._submit {folder}")
    for index, job in enumerate(jobs):  # each cell's pickle is in place, with the profile's time limit and requeues
        cell = DelayedSubmission.load(job.paths.submitted_pickle)
        assert cell.args == (-(index + 1),)
        assert (cell._timeout_min, cell._timeout_countdown) == (90, 7)


def test_a_cpu_profile_asks_for_no_gpu_and_one_process(fake_slurm):
    profile = ClusterProfile(gpus_per_cell=0, cpus_per_gpu=4, time_limit_min=30)
    executor = make_executor(profile, fake_slurm / "jobs")
    job = executor.submit(abs, -1)  # a one-cell grid is a plain job, not an array

    assert job.job_id == "4242" and job.num_tasks == 1
    script, flags = submitted(fake_slurm)
    assert {k: v for k, v in flags.items() if k not in ("output", "error")} == {
        "cpus-per-task": "4",
        "job-name": "distill",
        "nodes": "1",
        "ntasks-per-node": "1",
        "open-mode": "append",
        "signal": "USR2@120",
        "time": "30",
        "wckey": "submitit",
    }
    assert "# setup" not in script


def test_slurm_without_sbatch_says_what_to_do(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "srun", "#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(DistillError) as caught:
        make_executor(ClusterProfile(), tmp_path / "jobs")
    message = str(caught.value)
    assert message.startswith("--launcher slurm needs Slurm's sbatch on PATH") and "executor: local in the profile" in message


def test_executor_parameters_for_local_are_what_the_local_executor_uses():
    local = ClusterProfile(executor="local", partition="gpu", gpus_per_cell=2, setup=("module load cuda",))
    assert executor_parameters(local) == {"timeout_min": 240, "nodes": 1, "tasks_per_node": 2, "gpus_per_node": 2}
    assert executor_parameters(dataclasses.replace(local, gpus_per_cell=0)) == {"timeout_min": 240, "nodes": 1, "tasks_per_node": 1}


# --- the local executor: real processes on this machine ---------------------------------


@pytest.mark.e2e  # a real submitit process (about a second)
def test_the_local_executor_runs_a_cell_with_the_profiles_time_limit(tmp_path):
    profile = ClusterProfile(executor="local", gpus_per_cell=0, time_limit_min=3, signal_delay_s=45, setup=("exit 1",))
    executor = make_executor(profile, tmp_path / "jobs")
    keys = ("SUBMITIT_LOCAL_TIMEOUT_S", "SUBMITIT_LOCAL_SIGNAL_DELAY_S", "SUBMITIT_LOCAL_NTASKS", "CUDA_VISIBLE_DEVICES")
    job = executor.submit(lambda: ({key: os.environ.get(key) for key in keys}, os.getpid()))
    environment, pid = job.result()
    assert pid != os.getpid()  # it ran in a process of its own
    # the profile's limit in seconds, its warning, one process, no GPU for a CPU cell; the setup line did not run
    assert environment == {
        "SUBMITIT_LOCAL_TIMEOUT_S": "180",
        "SUBMITIT_LOCAL_SIGNAL_DELAY_S": "45",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
