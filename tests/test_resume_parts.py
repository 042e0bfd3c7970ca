"""The parts behind exact resume, one at a time: run-directory planning, recipe and teacher checks,
the data order and per-item seeds, both training loaders' ``skip``, the RNG capture, the contrastive
memories' non-finite handling, the step guard and the metric sinks' truncation on resume.

Every expected value is computed independently of the code under test (by hand, from the
documented contract, or from an uninterrupted run of the same component).
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Dataset

from distill.data.device_loader import DeviceLoader, InMemoryImages
from distill.data.epoch_order import (
    IGNORED_LABEL,
    ITEM_AUGMENT_STREAM,
    EpochBatchSampler,
    EpochSeededItems,
    epoch_order,
    stream_seed,
)
from distill.data.placement import Placement
from distill.data.worker_loader import WorkerLoader
from distill.engine.guard import GRADIENT_BAD, LOSS_BAD, STOP, StepGuard
from distill.engine.metrics import MetricsFileError, MetricsWriter, read_metrics
from distill.engine.resume import (
    RESULT_NEUTRAL_KEYS,
    ResumeError,
    check_same_recipe,
    check_same_teacher,
    clear_for_restart,
    plan_run_dir,
    recipe_differences,
    remove_stale_temporaries,
)
from distill.engine.rng import capture_rng_state, restore_rng_state
from distill.files.rundir import METRICS_FILE, RUN_ENTRIES
from distill.losses.contrastive.memory_bank import EmbeddingQueue, MomentumMemoryBank

# --------------------------------------------------------------------------------------------
# helpers


def nested(flat: dict[str, object]) -> dict:
    """``{"a.b": 1, "a.c": 2}`` → ``{"a": {"b": 1, "c": 2}}`` (an independent inverse of flattening)."""
    out: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def by_key(lines: list[str]) -> dict[str, str]:
    """Difference lines keyed by their dotted key (the text before the first ': ')."""
    keyed = {}
    for line in lines:
        key, sep, _ = line.partition(": ")
        assert sep, f"difference line without 'key: ': {line!r}"
        keyed[key] = line
    return keyed


def make_run(path: Path, *, recipe: dict | None = None, last: bool = False, summary: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe or {"seed": 0}), encoding="utf-8")
    (path / "log.txt").write_text("epoch 1\n", encoding="utf-8")
    (path / "metrics.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    (path / "checkpoints").mkdir(exist_ok=True)
    if last:
        (path / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    if summary:
        (path / "summary.json").write_text("{}", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# 1. distill/engine/resume.py: recipe differences


RECORDED = {
    "name": "cifar100/kd/a-b",
    "seed": 0,
    "only_old": 1,
    "student": {"arch": "resnet8", "name": "s"},
    "loss": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
    "data": {"root": "/old", "batch_size": 64, "num_workers": 2},
}


def test_recipe_differences_identical_is_empty():
    assert recipe_differences(RECORDED, json.loads(json.dumps(RECORDED))) == []


def test_recipe_differences_lists_changed_added_removed_and_nested_keys():
    current = json.loads(json.dumps(RECORDED))
    current["seed"] = 1
    del current["only_old"]
    current["only_new"] = "x"
    current["loss"]["params"]["temperature"] = 2.0
    current["loss"]["params"]["beta"] = 1.0
    current["loss"]["name"] = "dkd"  # "name" is neutral only at the top level
    current["student"]["name"] = "t"
    lines = recipe_differences(RECORDED, current)
    keyed = by_key(lines)
    assert set(keyed) == {
        "seed", "only_old", "only_new", "loss.params.temperature", "loss.params.beta", "loss.name", "student.name",
    }
    assert lines == [keyed[key] for key in sorted(keyed)], "differences are listed sorted by key"
    assert keyed["seed"] == "seed: run has 0, now 1"
    assert keyed["loss.params.temperature"] == "loss.params.temperature: run has 4.0, now 2.0"
    assert keyed["loss.name"] == "loss.name: run has 'kd', now 'dkd'"
    assert keyed["student.name"] == "student.name: run has 's', now 't'"
    # one side only: the present value is shown on its side, the other side says it is unset
    assert keyed["loss.params.beta"].startswith("loss.params.beta: run has ")
    assert keyed["loss.params.beta"].endswith(", now 1.0")
    assert "unset" in keyed["loss.params.beta"]
    assert keyed["only_old"].startswith("only_old: run has 1, now ")
    assert "unset" in keyed["only_old"]
    assert keyed["only_new"].endswith(", now 'x'")
    assert "unset" in keyed["only_new"]


def test_recipe_differences_dict_replaced_by_scalar():
    current = json.loads(json.dumps(RECORDED))
    current["loss"]["params"] = None
    keyed = by_key(recipe_differences(RECORDED, current))
    assert set(keyed) == {"loss.params", "loss.params.temperature", "loss.params.alpha"}
    assert keyed["loss.params"].endswith(", now None")


@pytest.mark.parametrize("neutral", RESULT_NEUTRAL_KEYS)
def test_recipe_differences_ignores_neutral_keys_and_their_subkeys(neutral):
    base = {"seed": 0, "data.batch_size": 64, "teacher.arch": "resnet32x4"}
    # a scalar change
    old = nested({**base, neutral: "old"})
    new = nested({**base, neutral: "new"})
    assert recipe_differences(old, new) == []
    # a change below the neutral key (e.g. a dict-valued setting)
    old = nested({**base, f"{neutral}.inner": 1, f"{neutral}.deeper.x": [1]})
    new = nested({**base, f"{neutral}.inner": 2, f"{neutral}.deeper.x": [2], f"{neutral}.added": 3})
    assert recipe_differences(old, new) == []
    # present on one side only
    assert recipe_differences(nested({**base, neutral: "old"}), nested(base)) == []
    assert recipe_differences(nested(base), nested({**base, neutral: "new"})) == []
    # a neutral change does not hide a real one next to it
    old = nested({**base, neutral: "old"})
    new = nested({**base, neutral: "new", "seed": 5})
    assert [line.split(":")[0] for line in recipe_differences(old, new)] == ["seed"]


@pytest.mark.parametrize("neutral", RESULT_NEUTRAL_KEYS)
def test_recipe_differences_lookalike_of_a_neutral_key_is_reported(neutral):
    base = {"seed": 0, "data.batch_size": 64, "teacher.arch": "resnet32x4"}
    lookalike = neutral + "_x"
    lines = recipe_differences(nested({**base, lookalike: 1}), nested({**base, lookalike: 2}))
    assert list(by_key(lines)) == [lookalike]


# --------------------------------------------------------------------------------------------
# 1. distill/engine/resume.py: planning a run directory


def test_plan_nonexistent_and_empty_dir_is_a_new_run(tmp_path):
    for path in (tmp_path / "missing", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        plan = plan_run_dir(path)
        assert plan.path == path
        assert plan.checkpoint is None and not plan.restart and not plan.resumes


def test_plan_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(ResumeError, match="file"):
        plan_run_dir(path)


def test_plan_a_dir_with_foreign_files_is_refused_naming_them(tmp_path):
    path = make_run(tmp_path / "run", last=True)
    (path / "notes.md").write_text("mine")
    (path / "data").mkdir()
    with pytest.raises(ResumeError) as caught:
        plan_run_dir(path)
    message = str(caught.value)
    assert "notes.md" in message and "data" in message
    assert "recipe.yaml" not in message and "log.txt" not in message


def test_plan_accepts_every_run_entry(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    for name in RUN_ENTRIES - {"summary.json"}:
        if name in ("tensorboard", "checkpoints"):
            (path / name).mkdir()
        else:
            (path / name).write_text("x")
    (path / "checkpoints" / "last.pt").write_bytes(b"c")
    plan = plan_run_dir(path)
    assert plan.resumes and plan.checkpoint == path / "checkpoints" / "last.pt" and not plan.restart


def test_plan_finished_run_is_refused(tmp_path):
    path = make_run(tmp_path / "run", last=True, summary=True)
    with pytest.raises(ResumeError, match="nothing to resume"):
        plan_run_dir(path)


def test_plan_resumes_from_last_checkpoint(tmp_path):
    path = make_run(tmp_path / "run", last=True)
    (path / "checkpoints" / "best.pt").write_bytes(b"b")
    plan = plan_run_dir(path)
    assert plan.checkpoint == path / "checkpoints" / "last.pt"
    assert plan.resumes and not plan.restart


@pytest.mark.parametrize("checkpoints", ["missing", "empty", "best only"])
def test_plan_without_last_checkpoint_restarts(tmp_path, checkpoints):
    path = make_run(tmp_path / "run")
    if checkpoints == "missing":
        (path / "checkpoints").rmdir()
    elif checkpoints == "best only":
        (path / "checkpoints" / "best.pt").write_bytes(b"b")
    plan = plan_run_dir(path)
    assert plan.restart and plan.checkpoint is None and not plan.resumes


def test_clear_for_restart_keeps_only_the_log_and_the_lock(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    for name in RUN_ENTRIES:
        if name in ("tensorboard", "checkpoints"):
            (path / name).mkdir()
            (path / name / "inside").write_text("x")
        else:
            (path / name).write_text(f"content of {name}")
    (path / "checkpoints" / ".last.pt.tmp-123").write_bytes(b"t")
    clear_for_restart(path)
    assert sorted(p.name for p in path.iterdir()) == ["log.txt", "run.lock"]  # the lock is held by the restarting run
    assert (path / "log.txt").read_text() == "content of log.txt"


def test_clear_for_restart_with_only_some_entries(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "log.txt").write_text("log")
    (path / "recipe.yaml").write_text("seed: 0")
    clear_for_restart(path)
    assert sorted(p.name for p in path.iterdir()) == ["log.txt"]


def test_remove_stale_temporaries_only_removes_checkpoint_temporaries(tmp_path):
    path = make_run(tmp_path / "run", last=True)
    checkpoints = path / "checkpoints"
    stale = [".last.pt.tmp-123", ".best.pt.tmp-9"]
    kept = ["last.pt", "best.pt", "last.pt.tmp-1", ".hidden", ".last.pt.tmpx"]
    for name in stale + kept[1:]:
        (checkpoints / name).write_bytes(b"x")
    (path / ".last.pt.tmp-5").write_bytes(b"top level: not a checkpoint temporary")
    remove_stale_temporaries(path)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(kept)
    assert (path / ".last.pt.tmp-5").exists()
    assert (checkpoints / "last.pt").read_bytes() == b"checkpoint"


def test_remove_stale_temporaries_without_checkpoint_dir(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    remove_stale_temporaries(path)  # nothing to do, no error
    assert list(path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 1. distill/engine/resume.py: same recipe, same teacher


def test_check_same_recipe_identical_and_neutral_only_pass(tmp_path):
    path = make_run(tmp_path / "run", recipe=RECORDED, last=True)
    assert check_same_recipe(path, json.loads(json.dumps(RECORDED)), force=False) == []
    neutral = json.loads(json.dumps(RECORDED))
    neutral["name"] = "renamed"
    neutral["data"]["root"] = "/moved"
    neutral["data"]["num_workers"] = 8
    neutral["log_every"] = 5
    assert check_same_recipe(path, neutral, force=False) == []


def test_check_same_recipe_refuses_a_different_recipe(tmp_path):
    path = make_run(tmp_path / "run", recipe=RECORDED, last=True)
    current = json.loads(json.dumps(RECORDED))
    current["seed"] = 3
    current["loss"]["params"]["temperature"] = 1.0
    expected = recipe_differences(RECORDED, current)
    assert len(expected) == 2
    with pytest.raises(ResumeError) as caught:
        check_same_recipe(path, current, force=False)
    message = str(caught.value)
    assert "--force" in message
    for line in expected:
        assert line in message
    assert check_same_recipe(path, current, force=True) == expected


def test_check_same_recipe_lists_many_differences(tmp_path):
    recorded = {f"k{i:02d}": i for i in range(15)}
    path = make_run(tmp_path / "run", recipe=recorded, last=True)
    current = {key: value + 100 for key, value in recorded.items()}
    with pytest.raises(ResumeError) as caught:
        check_same_recipe(path, current, force=False)
    message = str(caught.value)
    assert "k00: run has 0, now 100" in message and "3 more" in message
    assert len(check_same_recipe(path, current, force=True)) == 15


def test_check_same_recipe_without_recorded_recipe(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    assert check_same_recipe(path, {"seed": 1}, force=False) == []


@pytest.mark.parametrize("text", ["seed: [1, 2", "- a\n- b\n"])
def test_check_same_recipe_unreadable_recipe_is_refused(tmp_path, text):
    path = tmp_path / "run"
    path.mkdir()
    (path / "recipe.yaml").write_text(text)
    with pytest.raises(ResumeError, match="recipe.yaml"):
        check_same_recipe(path, {"seed": 1}, force=True)


def test_check_same_teacher(tmp_path):
    a, b = "a" * 64, "b" * 64
    assert check_same_teacher(tmp_path, a, a, force=False) is None
    assert check_same_teacher(tmp_path, a, a, force=True) is None
    assert check_same_teacher(tmp_path, None, None, force=False) is None
    with pytest.raises(ResumeError) as caught:
        check_same_teacher(tmp_path, a, b, force=False)
    assert a in str(caught.value) and b in str(caught.value) and "--force" in str(caught.value)
    note = check_same_teacher(tmp_path, a, b, force=True)
    assert isinstance(note, str) and a in note and b in note
    with pytest.raises(ResumeError, match=b):
        check_same_teacher(tmp_path, None, b, force=False)


# --------------------------------------------------------------------------------------------
# 2. distill/data/epoch_order.py


def test_epoch_order_shuffled_single_process_is_a_seeded_permutation():
    n = 37
    orders = {(seed, epoch): epoch_order(n, seed=seed, epoch=epoch, shuffle=True) for seed in (0, 1) for epoch in (0, 1, 2)}
    for (seed, epoch), order in orders.items():
        assert order.dtype == torch.int64 and order.device.type == "cpu"
        assert sorted(order.tolist()) == list(range(n))
        assert torch.equal(order, epoch_order(n, seed=seed, epoch=epoch, shuffle=True))
    assert len({tuple(order.tolist()) for order in orders.values()}) == len(orders)


def test_epoch_order_does_not_touch_the_global_generator():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    epoch_order(50, seed=1, epoch=2, shuffle=True)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n, p", [(37, 3), (36, 3), (10, 3), (2, 3), (1, 4)])
def test_epoch_order_shuffled_shards(n, p):
    full = epoch_order(n, seed=4, epoch=7, shuffle=True).tolist()  # one process: the permutation
    shard = math.ceil(n / p)
    padding = shard * p - n
    padded = (full * (padding // n + 2))[: shard * p]  # wrap around
    shards = [epoch_order(n, seed=4, epoch=7, shuffle=True, process_index=r, num_processes=p).tolist() for r in range(p)]
    assert all(len(s) == shard for s in shards)
    assert set().union(*map(set, shards)) == set(range(n))
    counts = Counter(index for s in shards for index in s)
    assert counts == Counter(padded)
    repeated = {index for index, count in counts.items() if count > 1}
    assert repeated <= set(padded[n:])
    for r in range(p):
        for q in range(r + 1, p):
            assert set(shards[r]) & set(shards[q]) <= repeated
    # every process is given the items of the same (padded) permutation, every p-th from r
    for r in range(p):
        assert shards[r] == padded[r::p]


def test_epoch_order_rejects_a_bad_process_index():
    with pytest.raises(ValueError):
        epoch_order(10, seed=0, epoch=0, shuffle=True, process_index=3, num_processes=3)
    with pytest.raises(ValueError):
        epoch_order(10, seed=0, epoch=0, shuffle=False, process_index=-1, num_processes=2)


def test_epoch_order_unshuffled_contiguous_shards():
    assert IGNORED_LABEL == -1
    shards = [epoch_order(10, seed=0, epoch=3, shuffle=False, process_index=r, num_processes=3).tolist() for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, IGNORED_LABEL, IGNORED_LABEL]]
    shards = [epoch_order(9, seed=0, epoch=0, shuffle=False, process_index=r, num_processes=3).tolist() for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert epoch_order(5, seed=9, epoch=9, shuffle=False).tolist() == [0, 1, 2, 3, 4]


def test_epoch_batch_sampler_follows_epoch_order():
    n, batch, seed = 23, 5, 3
    sampler = EpochBatchSampler(n, batch, seed=seed)
    assert len(sampler) == 5
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert [key for b in batches for key in b] == [(2, i) for i in epoch_order(n, seed=seed, epoch=2, shuffle=True).tolist()]
    sharded = EpochBatchSampler(n, batch, seed=seed, process_index=1, num_processes=2)
    sharded.set_epoch(4)
    keys = [key for b in sharded for key in b]
    assert len(sharded) == math.ceil(math.ceil(n / 2) / batch) == 3
    assert keys == [(4, i) for i in epoch_order(n, seed=seed, epoch=4, shuffle=True, process_index=1, num_processes=2).tolist()]
    with pytest.raises(ValueError):
        EpochBatchSampler(n, 0, seed=seed)


@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 9])
def test_epoch_batch_sampler_skip_applies_to_the_next_iteration_only(k):
    sampler = EpochBatchSampler(23, 5, seed=1)
    sampler.set_epoch(6)
    full = list(sampler)
    sampler.skip(k)
    assert list(sampler) == full[k:]
    assert list(sampler) == full
    # skip, then choose the epoch: the skip applies to that epoch's iteration
    sampler.skip(k)
    sampler.set_epoch(7)
    tail = list(sampler)
    sampler.set_epoch(7)
    assert tail == list(sampler)[k:]


class RandomDraws(Dataset):
    """Items made from torch's and Python's global generators (as random transforms are)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return torch.rand(3), random.random(), index


def test_epoch_seeded_items_depend_only_on_the_key():
    items = EpochSeededItems(RandomDraws(10), seed=5)
    keys = [(0, 0), (0, 1), (1, 0), (0, 9), (3, 4)]
    forward = {key: items[key] for key in keys}
    torch.rand(7)
    random.random()
    backward = {key: items[key] for key in reversed(keys)}
    for key in keys:
        assert torch.equal(forward[key][0], backward[key][0])
        assert forward[key][1] == backward[key][1]
        assert forward[key][2] == key[1]
    assert len({tuple(value[0].tolist()) for value in forward.values()}) == len(keys)
    assert len({value[1] for value in forward.values()}) == len(keys)
    other_seed = EpochSeededItems(RandomDraws(10), seed=6)
    assert not torch.equal(other_seed[(0, 0)][0], forward[(0, 0)][0])
    # the documented seeding: torch's generator seeded with stream_seed(seed, ITEM_AUGMENT_STREAM, epoch, index)
    generator = torch.Generator().manual_seed(stream_seed(5, ITEM_AUGMENT_STREAM, 3, 4))
    assert torch.equal(forward[(3, 4)][0], torch.rand(3, generator=generator))
    assert len(items) == 10


def test_epoch_seeded_items_leave_the_callers_generators_alone():
    items = EpochSeededItems(RandomDraws(10), seed=5)
    torch.manual_seed(123)
    random.seed(9)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    expected_torch, expected_python = torch.rand(4), random.random()
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    items[(0, 3)]
    items[(2, 7)]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert torch.equal(torch.rand(4), expected_torch) and random.random() == expected_python


class Exploding(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        torch.rand(5)
        random.random()
        raise RuntimeError("broken item")


def test_epoch_seeded_items_restore_the_generators_when_the_item_fails():
    items = EpochSeededItems(Exploding(), seed=0)
    torch.manual_seed(1)
    random.seed(2)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    with pytest.raises(RuntimeError, match="broken item"):
        items[(0, 1)]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


# --------------------------------------------------------------------------------------------
# 3. distill/data/worker_loader.py


class RandomImages(Dataset):
    """``(torch.rand(3, 4, 4), label, index)``: a random transform drawn from torch's global generator."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return torch.rand(3, 4, 4) + index, index % 5, index


def epoch_batches(loader, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    if skip:
        loader.skip(skip)
    return [tuple(t.clone() for t in batch) for batch in loader]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y)


def test_worker_loader_is_the_same_with_and_without_workers_and_skips_exactly():
    n, batch, seed = 22, 4, 7
    serial = WorkerLoader(RandomImages(n), batch, num_workers=0, placement=Placement(seed=seed))
    parallel = WorkerLoader(RandomImages(n), batch, num_workers=2, placement=Placement(seed=seed))
    try:
        assert len(serial) == len(parallel) == 6
        full = {epoch: epoch_batches(serial, epoch) for epoch in (1, 2)}
        for epoch in (1, 2):
            assert len(full[epoch]) == 6
            indices = torch.cat([b[2] for b in full[epoch]])
            assert indices.tolist() == epoch_order(n, seed=seed, epoch=epoch, shuffle=True).tolist()
            assert torch.cat([b[1] for b in full[epoch]]).tolist() == [i % 5 for i in indices.tolist()]
            assert_same_batches(epoch_batches(parallel, epoch), full[epoch])
        # the random transform depends on the epoch: the same item differs between epochs
        first = {int(i): x for b in full[1] for x, i in zip(b[0], b[2])}
        second = {int(i): x for b in full[2] for x, i in zip(b[0], b[2])}
        assert all(not torch.equal(first[i], second[i]) for i in range(n))
        for k in (1, 4, 6):
            assert_same_batches(epoch_batches(parallel, 2, skip=k), full[2][k:])
            assert_same_batches(epoch_batches(serial, 1, skip=k), full[1][k:])
        # the skip is spent: the next epoch is whole
        assert_same_batches(epoch_batches(parallel, 1), full[1])
        # a fresh loader (a resumed process) skipping into the epoch
        fresh = WorkerLoader(RandomImages(n), batch, num_workers=2, placement=Placement(seed=seed))
        try:
            assert_same_batches(epoch_batches(fresh, 2, skip=3), full[2][3:])
        finally:
            del fresh
    finally:
        del serial, parallel


# --------------------------------------------------------------------------------------------
# 4. distill/data/device_loader.py


def in_memory(n: int = 29, size: int = 8, padding: int = 2) -> InMemoryImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return InMemoryImages(images, labels, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), augment=True, padding=padding)


def crop_candidates(image_hwc: torch.Tensor, source: InMemoryImages) -> torch.Tensor:
    """Every padded crop of one image, flipped or not, normalised: ``K × C × H × W`` (computed by hand)."""
    image = image_hwc.permute(2, 0, 1)
    c, h, w = image.shape
    p = source.padding
    padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=torch.uint8)
    padded[:, p : p + h, p : p + w] = image
    mean = torch.tensor(source.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(source.std, dtype=torch.float32).view(-1, 1, 1)
    out = []
    for y in range(2 * p + 1):
        for x in range(2 * p + 1):
            crop = padded[:, y : y + h, x : x + w]
            for candidate in (crop, crop.flip(-1)):
                out.append(candidate.to(torch.float32).div(255).sub(mean).div(std))
    return torch.stack(out)


@pytest.mark.parametrize("k", [0, 1, 3, 7, 8])
def test_device_loader_skip_resumes_exactly(k):
    source = in_memory()
    reference = DeviceLoader(source, 4, shuffle=True, placement=Placement(seed=11))
    assert len(reference) == 8
    full = {epoch: epoch_batches(reference, epoch) for epoch in (2, 3)}
    for epoch in (2, 3):
        indices = torch.cat([b[2] for b in full[epoch]])
        assert indices.tolist() == epoch_order(29, seed=11, epoch=epoch, shuffle=True).tolist()
        assert torch.equal(torch.cat([b[1] for b in full[epoch]]), source.labels[indices])
    # the same loader, and a fresh one (a resumed process), skipping k batches of epoch 2
    for loader in (reference, DeviceLoader(source, 4, shuffle=True, placement=Placement(seed=11))):
        assert_same_batches(epoch_batches(loader, 2, skip=k), full[2][k:])
        assert_same_batches(epoch_batches(loader, 3), full[3])


def test_device_loader_batches_are_augmented_crops():
    source = in_memory()
    loader = DeviceLoader(source, 4, shuffle=True, placement=Placement(seed=11))
    batches = epoch_batches(loader, 5, skip=2)
    plain = 0
    for inputs, _, indices in batches:
        for x, index in zip(inputs, indices.tolist()):
            candidates = crop_candidates(source.images[index], source)
            matches = (candidates == x).flatten(1).all(dim=1)
            assert bool(matches.any()), f"item {index} is no padded crop (flipped or not) of its image"
            centre = (source.padding * (2 * source.padding + 1) + source.padding) * 2  # offset (p, p), no flip
            plain += bool(matches[centre])
    assert plain < sum(len(b[2]) for b in batches), "every item came out unaugmented"


# --------------------------------------------------------------------------------------------
# 5. distill/engine/rng.py


def draws() -> tuple:
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        float(np.random.standard_normal()),
        np.random.rand(3).tolist(),
        np.random.randint(0, 2**31, size=4).tolist(),
        torch.rand(4),
        torch.randn(2),
    )


@pytest.mark.parametrize("gaussians", [0, 1, 2])
def test_rng_state_round_trips_through_a_weights_only_checkpoint(gaussians):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.random()
    for _ in range(gaussians):
        random.gauss(0.0, 1.0)  # Python caches every second gaussian too
        np.random.standard_normal()
    torch.rand(9)
    numpy_before = np.random.get_state()
    python_before = random.getstate()
    assert numpy_before[3] == gaussians % 2  # has_gauss
    state = capture_rng_state()
    expected = draws()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)
    draws()
    restore_rng_state(loaded)
    assert random.getstate() == python_before
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0]
    assert np.array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    got = draws()
    assert got[:5] == expected[:5]
    assert torch.equal(got[5], expected[5]) and torch.equal(got[6], expected[6])


def test_rng_restore_serves_the_cached_gaussian_first():
    np.random.seed(8)
    np.random.standard_normal()
    cached = np.random.get_state()[4]
    state = capture_rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    np.random.seed(0)
    restore_rng_state(loaded)
    assert np.random.get_state()[3] == 1
    assert float(np.random.standard_normal()) == cached


# --------------------------------------------------------------------------------------------
# 6. distill/losses/contrastive/memory_bank.py


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_memory_bank_skips_non_finite_rows_and_blends_the_rest(bad):
    torch.manual_seed(0)
    momentum = 0.3
    bank = MomentumMemoryBank(size=6, dim=4, momentum=momentum)
    old = bank.memory.clone()
    before = bank.memory
    indices = torch.tensor([4, 1, 2])
    embeddings = torch.randn(3, 4)
    embeddings[1, 2] = bad
    embeddings[2, :] = bad
    bank.update(indices, embeddings)
    memory = bank.memory
    assert torch.isfinite(memory).all()
    # row 4 by hand, in float64: normalise(μ·row + (1−μ)·v)
    blended = momentum * old[4].double() + (1 - momentum) * embeddings[0].double()
    expected = blended / math.sqrt(float((blended**2).sum()))
    assert torch.allclose(memory[4].double(), expected, atol=1e-6, rtol=0)
    assert abs(float(memory[4].norm()) - 1.0) < 1e-5
    for row in (0, 1, 2, 3, 5):
        assert torch.equal(memory[row], old[row]), f"row {row} changed"
    assert torch.equal(before, old), "the update must not edit the old memory tensor in place"


def test_memory_bank_duplicate_index_keeps_the_last_write():
    torch.manual_seed(1)
    bank = MomentumMemoryBank(size=4, dim=3, momentum=0.5)
    old = bank.memory.clone()
    embeddings = torch.randn(2, 3)
    bank.update(torch.tensor([3, 3]), embeddings)
    blended = 0.5 * old[3].double() + 0.5 * embeddings[1].double()
    assert torch.allclose(bank.memory[3].double(), blended / blended.norm(), atol=1e-6, rtol=0)


def test_embedding_queue_keeps_old_slots_for_non_finite_embeddings():
    torch.manual_seed(2)
    queue = EmbeddingQueue(size=5, dim=3)
    initial = queue.memory.clone()
    first = torch.randn(3, 3)
    queue.update(first, torch.tensor([0, 1, 2]))
    assert int(queue.pointer) == 3
    second = torch.randn(4, 3)
    second[1, 0] = float("nan")
    second[3, 2] = float("inf")
    queue.update(second, torch.tensor([10, 11, 12, 13]))  # slots 3, 4, 0, 1
    assert int(queue.pointer) == (3 + 4) % 5
    expected_memory = torch.stack([second[2], first[1], first[2], second[0], initial[4]])
    assert torch.equal(queue.memory, expected_memory)
    assert queue.labels.tolist() == [12, 1, 2, 10, -1]
    assert torch.isfinite(queue.memory).all()


def test_embedding_queue_batch_larger_than_the_queue():
    torch.manual_seed(3)
    queue = EmbeddingQueue(size=5, dim=2)
    queue.update(torch.randn(2, 2), torch.tensor([0, 1]))  # pointer 2
    batch = torch.randn(7, 2)
    queue.update(batch, torch.arange(7))
    # the last 5 rows go to slots 2, 3, 4, 0, 1
    assert torch.equal(queue.memory, torch.stack([batch[5], batch[6], batch[2], batch[3], batch[4]]))
    assert queue.labels.tolist() == [5, 6, 2, 3, 4]
    assert int(queue.pointer) == 2


# --------------------------------------------------------------------------------------------
# 7. distill/engine/guard.py


def guard(skip_limit: int = 0, check_gradients: bool = True) -> StepGuard:
    return StepGuard(device=torch.device("cpu"), num_processes=1, skip_limit=skip_limit, check_gradients=check_gradients)


def parameter(grad: list[float] | None) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = None if grad is None else torch.tensor(grad)
    return p


def test_guard_flags():
    assert (LOSS_BAD, GRADIENT_BAD, STOP) == (0, 1, 2)
    healthy, inf_grad, nan_grad, no_grad = parameter([1.0, 2.0, 3.0]), parameter([1.0, math.inf, 0.0]), parameter([math.nan, 0.0, 0.0]), parameter(None)
    g = guard()
    assert g.flags(torch.tensor(1.5), [healthy, no_grad]).tolist() == [0.0, 0.0, 0.0]
    assert g.flags(torch.tensor(math.nan), [healthy]).tolist() == [1.0, 0.0, 0.0]
    assert g.flags(torch.tensor(math.inf), [healthy]).tolist() == [1.0, 0.0, 0.0]
    assert g.flags(torch.tensor(1.5), [healthy, inf_grad]).tolist() == [0.0, 1.0, 0.0]
    assert g.flags(torch.tensor(1.5), [no_grad, nan_grad]).tolist() == [0.0, 1.0, 0.0]
    assert g.flags(torch.tensor(1.5), [no_grad]).tolist() == [0.0, 0.0, 0.0]
    assert g.flags(torch.tensor(1.5), []).tolist() == [0.0, 0.0, 0.0]
    unchecked = guard(check_gradients=False)
    assert unchecked.flags(torch.tensor(1.5), [inf_grad]).tolist() == [0.0, 0.0, 0.0]
    assert unchecked.flags(torch.tensor(math.nan), [inf_grad]).tolist() == [1.0, 0.0, 0.0]
    stopping = guard()
    stopping.mark_stop(True)
    assert stopping.flags(torch.tensor(1.5), [healthy]).tolist() == [0.0, 0.0, 1.0]
    # a stop request is not forgotten at the next step
    stopping.mark_stop(False)
    assert stopping.flags(torch.tensor(1.5), [healthy]).tolist() == [0.0, 0.0, 1.0]


def test_guard_read_names_the_non_finite_terms():
    g = guard()
    terms = {"kd": torch.tensor(math.nan), "ce": torch.tensor(1.5), "crd": torch.tensor([1.0, math.inf])}
    verdict = g.read(7, torch.tensor([1.0, 0.0, 0.0]), terms, where="epoch 2, batch 3")
    assert verdict.step == 7 and verdict.where == "epoch 2, batch 3" and not verdict.stop
    assert "kd = nan" in verdict.problem and "crd = inf" in verdict.problem
    assert "ce" not in verdict.problem
    elsewhere = g.read(8, torch.tensor([1.0, 0.0, 0.0]), {"ce": torch.tensor(1.5)})
    assert elsewhere.problem is not None and "another process" in elsewhere.problem
    gradient = g.read(9, torch.tensor([0.0, 1.0, 0.0]), {"ce": torch.tensor(1.5)})
    assert gradient.problem is not None and "gradient" in gradient.problem
    healthy = g.read(10, torch.tensor([0.0, 0.0, 0.0]), {"ce": torch.tensor(1.5)})
    assert healthy.problem is None and not healthy.stop
    stop = g.read(11, torch.tensor([0.0, 0.0, 1.0]), {"ce": torch.tensor(1.5)})
    assert stop.problem is None and stop.stop


def test_guard_defer_and_flush():
    g = guard()
    bad_terms = {"kd": torch.tensor(math.inf)}
    assert g.flush() is None
    assert g.defer(1, torch.tensor([1.0, 0.0, 0.0]), bad_terms, "first") is None
    previous = g.defer(2, torch.tensor([0.0, 0.0, 1.0]), {"ce": torch.tensor(0.5)}, "second")
    assert previous is not None and previous.step == 1 and previous.where == "first"
    assert "kd = inf" in previous.problem and not previous.stop
    pending = g.flush()
    assert pending is not None and pending.step == 2 and pending.where == "second"
    assert pending.problem is None and pending.stop
    assert g.flush() is None
    assert g.defer(3, torch.tensor([0.0, 0.0, 0.0]), {}) is None


def test_guard_may_skip_counts_to_the_limit():
    g = guard(skip_limit=2)
    assert g.synchronous
    assert [g.may_skip() for _ in range(4)] == [True, True, False, False]
    assert g.skipped == 2
    none = guard(skip_limit=0)
    assert not none.synchronous
    assert not none.may_skip() and none.skipped == 0


# --------------------------------------------------------------------------------------------
# 8. distill/engine/metrics.py


def scalar_events(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in every event file below ``tensorboard_dir`` (no de-duplication, no purging)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events: dict[str, list[tuple[int, float]]] = {}
    files = sorted(tensorboard_dir.rglob("events.out.tfevents*"))
    assert files, f"no event files in {tensorboard_dir}"
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in events.items()}


def test_metrics_writer_keep_rows_truncates_jsonl_and_tensorboard(tmp_path):
    rows = [{"epoch": 1, "step": s, "train/loss": 1.0 / (s + 1), "train/acc": 10.0 * s} for s in range(1, 6)]
    writer = MetricsWriter(tmp_path, tensorboard=True)
    for row in rows:
        writer.write(row, row["step"])
    assert writer.rows == 5
    writer.close()
    assert read_metrics(tmp_path) == rows
    before = scalar_events(tmp_path / "tensorboard")
    assert set(before) == {"train/loss", "train/acc"}
    assert [step for step, _ in before["train/loss"]] == [1, 2, 3, 4, 5]

    resumed = MetricsWriter(tmp_path, tensorboard=True, keep_rows=3)
    try:
        assert resumed.rows == 3
        assert read_metrics(tmp_path) == rows[:3]
        kept = scalar_events(tmp_path / "tensorboard")
        assert set(kept) == {"train/loss", "train/acc"}
        for tag in kept:
            assert kept[tag] == [(r["step"], pytest.approx(r[tag])) for r in rows[:3]]
        new = {"epoch": 1, "step": 4, "train/loss": 9.0, "train/acc": 99.0}
        resumed.write(new, 4)
        assert resumed.rows == 4
        assert read_metrics(tmp_path) == rows[:3] + [new]
        after = scalar_events(tmp_path / "tensorboard")
        for tag in ("train/loss", "train/acc"):
            assert after[tag] == [(r["step"], pytest.approx(r[tag])) for r in rows[:3] + [new]]
    finally:
        resumed.close()
    reopened = MetricsWriter(tmp_path, tensorboard=False)
    try:
        assert reopened.rows == 4
    finally:
        reopened.close()


def test_a_line_cut_short_after_the_kept_rows_is_dropped_unread(tmp_path: Path) -> None:
    """A crash mid-write can leave half a JSON line after the last checkpoint: resuming drops it, unparsed."""
    rows = [{"epoch": 0, "step": 0, "teacher/top1": 1.0}, {"epoch": 1, "step": 4, "test/top1": 2.0}]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 2, "st', encoding="utf-8")
    writer = MetricsWriter(tmp_path, tensorboard=False, keep_rows=2)
    writer.write({"epoch": 2, "step": 8}, 8)
    writer.close()
    assert read_metrics(tmp_path) == [*rows, {"epoch": 2, "step": 8}]
    with pytest.raises(MetricsFileError, match="holds 3 records, but the checkpoint being resumed saw 5"):
        MetricsWriter(tmp_path, tensorboard=False, keep_rows=5)
