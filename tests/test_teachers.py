"""The teacher manifest, ``distill teachers list|fetch|verify`` and ``distill eval TEACHER``.

Every test works on manifests written into a temporary folder (never the repository's
``teachers/``), with tiny random-weight checkpoints and the fake CIFAR-100.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from distill.benchmark.tasks import TEACHERS
from distill.cli.main import main
from distill.engine.eval_checkpoint import evaluate_checkpoint
from distill.errors import DistillError, UnknownNameError
from distill.files.hashing import sha256_file
from distill.models import create_model
from distill.recipe.manifest import MANIFEST_ENV, ManifestError, Source, default_manifest_path, load_manifest
from distill.teachers.fetch import FetchError, fetch, fetch_all
from distill.teachers.records import read_verified, record_sha256, status
from distill.teachers.verify import verify

REPO = Path(__file__).resolve().parent.parent
CLOSED_PORT = "http://127.0.0.1:9"
PUBLISHED_TOP1 = {
    "wrn_40_2": 75.61,
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "vgg13": 74.64,
    "ResNet50": 79.34,
}
FILE = "{name}_vanilla/ckpt_epoch_240.pth"


def manifest_text(teachers: dict[str, dict], sources: str | None = None) -> str:
    """A manifest with comments (to check they survive), the given teachers and sources."""
    if sources is None:
        sources = (
            "  - name: dead-server  # unreachable on purpose\n"
            "    kind: file\n"
            f'    url: "{CLOSED_PORT}/repo/{{file}}"\n'
            "  - name: dead-archive\n"
            "    kind: tar\n"
            f'    url: "{CLOSED_PORT}/cifar_teachers.tar"\n'
            '    member: "cifar_teachers/{file}"\n'
        )
    lines = ["# A test manifest.", "version: 1", "dataset: cifar100", "", "# Sources, in order.", "sources:", sources.rstrip("\n"), "", "teachers:"]
    for name, fields in teachers.items():
        lines.append(f"  {name}:  # the {name} teacher")
        entry = {
            "arch": "resnet8",
            "reference_top1": 50.0,
            "file": FILE.format(name=name),
            "sha256": '""',
            "recipe": f"recipes/{name}.yaml",
            "trained_runs": f"trained/{name}",
            **fields,
        }
        lines += [f"    {key}: {value}" for key, value in entry.items() if value is not None]
    return "\n".join(lines) + "\n"


def write_manifest(folder: Path, teachers: dict[str, dict] | None = None, sources: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar100.yaml"
    path.write_text(manifest_text(teachers or {"small": {}}, sources), encoding="utf-8")
    return path


def save_teacher(path: Path, arch: str = "resnet8", seed: int = 0) -> Path:
    """A random-weight checkpoint in RepDistiller's ckpt_epoch_240.pth layout."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": create_model(arch).state_dict(), "accuracy": torch.tensor(1.0), "optimizer": {}}, path)
    return path


def make_run(folder: Path, mtime: float, seed: int = 0, finished: bool = True, epochs: int | None = None) -> Path:
    """A run folder as the trainer leaves it: checkpoints/last.pt, and summary.json once finished."""
    save_teacher(folder / "checkpoints" / "last.pt", seed=seed)
    if finished:
        summary = folder / "summary.json"
        summary.write_text(json.dumps({} if epochs is None else {"epochs": epochs}), encoding="utf-8")
        os.utime(summary, (mtime, mtime))
    return folder


def build_tar(path: Path, members: dict[str, Path]) -> Path:
    """A tar holding the given files under the given member names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for member, source in members.items():
            tar.add(source, arcname=member)
    return path


def fetch_quietly(manifest, name, **options):
    return fetch(manifest, name, progress=False, echo=lambda line: None, **options)


@pytest.fixture
def manifest_path(tmp_path) -> Path:
    return write_manifest(tmp_path / "teachers")


@pytest.fixture(scope="module")
def random_top1(fake_cifar100, tmp_path_factory) -> float:
    """What a random resnet8 (seed 0) scores on the fake test set, measured, not assumed."""
    path = save_teacher(tmp_path_factory.mktemp("measure") / "ckpt.pth")
    return evaluate_checkpoint(path, arch="resnet8", data_root=str(fake_cifar100), verify=False)["top1"]


# --- the shipped manifest ----------------------------------------------------------------


def test_the_shipped_manifest_lists_the_six_benchmark_teachers_with_the_published_accuracy():
    manifest = load_manifest(REPO / "teachers" / "cifar100.yaml")
    assert manifest.names() == list(TEACHERS) and manifest.dataset == "cifar100"
    assert {name: entry.reference_top1 for name, entry in manifest.teachers.items()} == PUBLISHED_TOP1
    for name, entry in manifest.teachers.items():
        assert entry.arch == name and entry.file == FILE.format(name=name) and entry.sha256 in ("", entry.sha256.lower())
        assert manifest.recipe_path(name).is_file()
        assert manifest.trained_runs_dir(name) == REPO / "teachers" / "trained" / name
    assert [(s.name, s.kind) for s in manifest.sources] == [("repdistiller", "file"), ("mdistiller", "tar")]


def test_the_default_manifest_is_the_env_var_then_the_local_one_then_the_checkouts(tmp_path, monkeypatch):
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_manifest_path() == REPO / "teachers" / "cifar100.yaml"
    local = write_manifest(tmp_path / "teachers")
    assert default_manifest_path().resolve() == local.resolve()
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "elsewhere.yaml"))
    assert default_manifest_path() == tmp_path / "elsewhere.yaml"


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where", "expected"),
    [
        ({"arch": None}, "teachers.small.arch", "required key is missing (expected str)"),
        ({"sha256": "abc123"}, "teachers.small.sha256", "64 hexadecimal"),
        ({"arch": "resnet9000"}, "teachers.small.arch", "unknown architecture 'resnet9000'"),
        ({"reference_top1": '"high"'}, "teachers.small.reference_top1", "expected float, got 'high' (str)"),
        ({"reference_top1": 180}, "teachers.small.reference_top1", "expected a top-1 accuracy in percent (0 to 100), got 180.0"),
        ({"reference_top1": -1}, "teachers.small.reference_top1", "(0 to 100), got -1.0"),
        ({"url": '"u"'}, "teachers.small.url", "unknown key"),
        ({"trained_runs": '""'}, "teachers.small.trained_runs", "expected a non-empty string"),
        ({"file": "../escape.pth"}, "teachers.small.file", "without '..'"),
        ({"sha265": '""'}, "teachers.small.sha265", "Did you mean 'sha256'"),
    ],
)
def test_schema_errors_name_the_file_and_the_key(tmp_path, fields, where, expected):
    path = write_manifest(tmp_path, {"small": fields})
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    message = str(error.value)
    assert str(path) in message and where in message and expected in message


def test_manifest_errors_have_the_one_format_file_key_message(tmp_path):
    """The manifest is read by the schema module: ``FILE: dotted.key: message``, as for recipes."""
    path = write_manifest(tmp_path, {"small": {"file": "../escape.pth"}})
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    assert str(error.value) == (
        f"{path}: teachers.small.file: expected a path relative to the manifest's folder without '..', got '../escape.pth'"
    )
    path.write_text(path.read_text().replace("version: 1", "version: 1\nextra: 2"))
    with pytest.raises(ManifestError, match=r": extra: unknown key\. .*version, dataset, sources, teachers$"):
        load_manifest(path)
    path.write_text("- a list\n")
    with pytest.raises(ManifestError, match=r": \(top level\): expected a mapping"):
        load_manifest(path)


def test_bad_sources_and_versions_are_refused(tmp_path):
    tar_without_member = f'  - name: x\n    kind: tar\n    url: "{CLOSED_PORT}/a.tar"\n'
    with pytest.raises(ManifestError, match=r"sources\.0\.member"):
        load_manifest(write_manifest(tmp_path / "a", sources=tar_without_member))
    with pytest.raises(ManifestError, match=r"sources\.0\.kind: expected one of file, tar"):
        load_manifest(write_manifest(tmp_path / "b", sources='  - name: x\n    kind: zip\n    url: "u/{file}"\n'))
    path = write_manifest(tmp_path / "c")
    path.write_text(path.read_text().replace("version: 1", "version: 2"))
    with pytest.raises(ManifestError, match="version: expected 1"):
        load_manifest(path)


def test_a_missing_manifest_names_the_path_and_the_env_var(tmp_path):
    with pytest.raises(ManifestError) as error:
        load_manifest(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml" in str(error.value) and MANIFEST_ENV in str(error.value)


def test_an_unknown_teacher_suggests_the_closest_names(manifest_path):
    with pytest.raises(UnknownNameError) as error:
        load_manifest(manifest_path).get("smal")
    assert "Did you mean 'small'" in str(error.value) and "Teachers: small" in str(error.value)


# --- locating checkpoints -----------------------------------------------------------------


def test_the_published_file_wins_over_trained_runs(manifest_path):
    manifest = load_manifest(manifest_path)
    make_run(manifest.trained_runs_dir("small") / "run-a", mtime=1_000)
    published = save_teacher(manifest.published_path("small"))
    assert manifest.locate("small") == published == manifest.require_checkpoint("small")


def test_the_newest_finished_run_is_used_without_a_published_file(manifest_path):
    manifest = load_manifest(manifest_path)
    runs = manifest.trained_runs_dir("small")
    make_run(runs / "old", mtime=1_000)
    newest = make_run(runs / "new", mtime=3_000)
    make_run(runs / "older-name-but-newer-time", mtime=2_000)
    make_run(runs / "unfinished", mtime=0, finished=False)
    assert manifest.locate("small") == newest / "checkpoints" / "last.pt"


def test_a_trial_run_shorter_than_the_teacher_recipe_is_not_a_teacher(manifest_path):
    recipe = manifest_path.parent.parent / "recipes" / "small.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text("student: {arch: resnet8}\nlosses: {ce: {weight: 1.0}}\nschedule: {epochs: 3, milestones: [2]}\n")
    manifest = load_manifest(manifest_path)
    runs = manifest.trained_runs_dir("small")
    trial = make_run(runs / "trial", mtime=2_000, epochs=1)
    assert manifest.recipe_epochs("small") == 3 and manifest.locate("small") is None
    with pytest.raises(DistillError) as error:
        manifest.require_checkpoint("small")
    message = str(error.value)
    assert "of the recipe's 3 epochs (1 shorter run(s) left out" in message and "a trial run is not a teacher" in message
    assert f"teacher.checkpoint={trial / 'checkpoints' / 'last.pt'}" in message
    full = make_run(runs / "full", mtime=1_000, epochs=3)
    assert manifest.locate("small") == full / "checkpoints" / "last.pt"  # older, but the only full-length run


def test_a_missing_checkpoint_says_where_it_looked_and_how_to_get_one(manifest_path):
    manifest = load_manifest(manifest_path)
    make_run(manifest.trained_runs_dir("small") / "unfinished", mtime=0, finished=False)
    assert manifest.locate("small") is None
    with pytest.raises(DistillError) as error:
        manifest.require_checkpoint("small")
    message = str(error.value)
    assert "'small'" in message and "small_vanilla/ckpt_epoch_240.pth" in message and "trained/small" in message
    assert "distill teachers fetch small" in message and "distill train" in message and "recipes/small.yaml" in message


# --- fetching -----------------------------------------------------------------------------


def test_offline_every_source_fails_and_the_error_says_what_to_download_and_where(manifest_path):
    manifest = load_manifest(manifest_path)
    with pytest.raises(FetchError) as error:
        fetch_quietly(manifest, "small", timeout=2)
    message = str(error.value)
    destination = str(manifest.published_path("small"))
    assert f"{CLOSED_PORT}/repo/small_vanilla/ckpt_epoch_240.pth" in message
    assert f"{CLOSED_PORT}/cifar_teachers.tar" in message and "dead-server" in message and "dead-archive" in message
    assert f"put it at {destination}" in message
    assert "tar xf cifar_teachers.tar cifar_teachers/small_vanilla/ckpt_epoch_240.pth" in message
    assert "distill teachers fetch small --archive" in message
    assert list(manifest.root.rglob("*.pth")) == [] and list(manifest.root.rglob("*.part")) == []


def test_fetch_from_a_file_url_installs_the_file_and_then_leaves_it_alone(tmp_path, manifest_path):
    served = save_teacher(tmp_path / "server" / "repo" / FILE.format(name="small"))
    sources = [Source("local", "file", f"{(tmp_path / 'server' / 'repo').as_uri()}/{{file}}")]
    manifest = load_manifest(manifest_path)
    installed = fetch_quietly(manifest, "small", sources=sources)
    assert installed == manifest.published_path("small") and installed.read_bytes() == served.read_bytes()
    lines: list[str] = []
    fetch(manifest, "small", sources=sources, echo=lines.append)
    assert any("already present" in line for line in lines)
    save_teacher(served, seed=1)
    fetch_quietly(manifest, "small", sources=sources, force=True)
    assert installed.read_bytes() == served.read_bytes()


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/www, on a free port; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_fetch_over_http_moves_on_from_a_404_to_the_next_source(http_server, manifest_path):
    base, www = http_server
    served = save_teacher(www / "mirror" / FILE.format(name="small"))
    sources = [Source("gone", "file", f"{base}/gone/{{file}}"), Source("mirror", "file", f"{base}/mirror/{{file}}")]
    manifest = load_manifest(manifest_path)
    lines: list[str] = []
    installed = fetch(manifest, "small", sources=sources, timeout=5, echo=lines.append)
    assert installed.read_bytes() == served.read_bytes()
    assert any("gone failed: HTTP 404" in line for line in lines)


def test_a_sha256_mismatch_is_not_installed(tmp_path):
    served = save_teacher(tmp_path / "server" / FILE.format(name="small"))
    url = f"{(tmp_path / 'server').as_uri()}/{{file}}"
    path = write_manifest(tmp_path / "teachers", {"small": {"sha256": '"' + "0" * 64 + '"'}}, f'  - name: local\n    kind: file\n    url: "{url}"\n')
    manifest = load_manifest(path)
    with pytest.raises(FetchError) as error:
        fetch_quietly(manifest, "small")
    assert sha256_file(served) in str(error.value) and "0" * 64 in str(error.value) and "not installed" in str(error.value)
    assert not manifest.published_path("small").exists()
    assert list(manifest.root.rglob("*.part")) == []


def test_fetch_all_from_a_tar_source_downloads_the_archive_once(tmp_path):
    members = {f"cifar_teachers/{FILE.format(name=n)}": save_teacher(tmp_path / "src" / n / "ckpt.pth", seed=i) for i, n in enumerate(("a", "b"))}
    archive = build_tar(tmp_path / "server" / "cifar_teachers.tar", members)
    sources = f'  - name: archive\n    kind: tar\n    url: "{archive.as_uri()}"\n    member: "cifar_teachers/{{file}}"\n'
    manifest = load_manifest(write_manifest(tmp_path / "teachers", {"a": {}, "b": {}}, sources))
    lines: list[str] = []
    installed = fetch_all(manifest, progress=False, echo=lines.append)
    assert set(installed) == {"a", "b"}
    assert sum("downloading" in line for line in lines) == 1
    assert sum("using the archive downloaded before" in line for line in lines) == 1
    assert (manifest.root / ".downloads" / "cifar_teachers.tar").is_file()
    for name in ("a", "b"):
        assert installed[name].read_bytes() == members[f"cifar_teachers/{FILE.format(name=name)}"].read_bytes()


@pytest.mark.e2e
def test_fetch_all_from_a_local_archive_through_the_cli(tmp_path, capsys):
    names = ("small", "other")
    manifest_path = write_manifest(tmp_path / "teachers2", {n: {} for n in names})
    files = {f"cifar_teachers/{FILE.format(name=n)}": save_teacher(tmp_path / "src" / n / "ckpt.pth", seed=i) for i, n in enumerate(names)}
    archive = build_tar(tmp_path / "downloads" / "cifar_teachers.tar", files)
    assert main(["teachers", "fetch", "all", "--archive", str(archive), "--manifest", str(manifest_path)]) == 0
    manifest = load_manifest(manifest_path)
    for name in names:
        assert manifest.published_path(name).read_bytes() == files[f"cifar_teachers/{FILE.format(name=name)}"].read_bytes()
    assert "installed" in capsys.readouterr().out
    assert main(["teachers", "fetch", "small", "--archive", str(tmp_path / "no.tar"), "--force", "--manifest", str(manifest_path)]) == 2
    assert "no.tar does not exist" in capsys.readouterr().err


def test_a_local_archive_packed_with_a_leading_folder_works_and_one_without_the_file_is_an_error(tmp_path, manifest_path):
    checkpoint = save_teacher(tmp_path / "src" / "ckpt.pth")
    manifest = load_manifest(manifest_path)
    packed = build_tar(tmp_path / "a.tar", {f"./download_ckpts/cifar_teachers/{FILE.format(name='small')}": checkpoint})
    assert fetch_quietly(manifest, "small", archive=packed).read_bytes() == checkpoint.read_bytes()
    unrelated = build_tar(tmp_path / "b.tar", {"cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth": checkpoint})
    with pytest.raises(FetchError, match="has no member 'cifar_teachers/small_vanilla/ckpt_epoch_240.pth'"):
        fetch_quietly(manifest, "small", archive=unrelated, force=True)


def test_an_archive_member_with_dotdot_is_refused(tmp_path):
    checkpoint = save_teacher(tmp_path / "src" / "ckpt.pth")
    archive = build_tar(tmp_path / "server" / "evil.tar", {"../small_vanilla/ckpt_epoch_240.pth": checkpoint})
    sources = f'  - name: evil\n    kind: tar\n    url: "{archive.as_uri()}"\n    member: "../{{file}}"\n'
    manifest = load_manifest(write_manifest(tmp_path / "root" / "teachers", {"small": {}}, sources))
    with pytest.raises(FetchError, match="refused archive member '../small_vanilla/ckpt_epoch_240.pth'"):
        fetch_quietly(manifest, "small")
    with pytest.raises(FetchError, match="refused"):
        fetch_quietly(manifest, "small", archive=archive)
    assert not list((tmp_path / "root").rglob("*.pth"))


# --- sha256 recording and status ----------------------------------------------------------


def test_record_sha256_edits_one_value_and_keeps_the_comments(manifest_path):
    manifest = load_manifest(manifest_path)
    before = manifest_path.read_text()
    digest = "ab" * 32
    assert record_sha256(manifest, "small", digest) is True
    after = manifest_path.read_text()
    assert after == before.replace('sha256: ""', f'sha256: "{digest}"', 1)
    assert "# the small teacher" in after and "# unreachable on purpose" in after
    assert load_manifest(manifest_path).get("small").sha256 == digest == manifest.get("small").sha256
    assert record_sha256(manifest, "small", digest) is False
    with pytest.raises(ManifestError, match="refusing to replace"):
        record_sha256(manifest, "small", "cd" * 32)
    assert manifest_path.read_text() == after


@pytest.mark.parametrize("empty", ["", "null", "~"])
def test_record_sha256_fills_an_empty_or_null_value(tmp_path, empty):
    path = write_manifest(tmp_path, {"small": {"sha256": empty}, "next": {}})
    record_sha256(load_manifest(path), "small", "ef" * 32)
    assert load_manifest(path).get("small").sha256 == "ef" * 32 and load_manifest(path).get("next").sha256 == ""


def test_status_goes_from_missing_to_present_to_verified_and_flags_a_mismatch(manifest_path):
    manifest = load_manifest(manifest_path)
    assert status(manifest, "small") == "missing"
    published = save_teacher(manifest.published_path("small"))
    assert status(manifest, "small") == "present"
    record_sha256(manifest, "small", sha256_file(published))
    assert status(manifest, "small") == "verified"
    save_teacher(published, seed=1)
    assert status(load_manifest(manifest_path), "small") == "mismatch"


# --- verification -------------------------------------------------------------------------


def test_verify_passes_records_the_sha256_once_and_keeps_the_comments(tmp_path, fake_cifar100, random_top1):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": round(random_top1 + 0.5, 2)}})
    manifest = load_manifest(path)
    published = save_teacher(manifest.published_path("small"))
    text_before = path.read_text()
    result = verify(manifest, "small", data_root=fake_cifar100, verify_data=False)
    assert result.passed and result.top1 == pytest.approx(random_top1) and result.difference == pytest.approx(-0.5)
    assert result.test_size == 100 and result.parameters > 0 and result.path == published and result.published
    assert result.recorded_sha256 and "recorded sha256" in result.message and "commit it" in result.message
    digest = sha256_file(published)
    assert path.read_text() == text_before.replace('sha256: ""', f'sha256: "{digest}"')
    record = read_verified(manifest)["small"]
    assert record["sha256"] == digest and record["top1"] == pytest.approx(random_top1) and record["path"] == FILE.format(name="small")
    assert status(load_manifest(path), "small") == "verified"
    again = verify(load_manifest(path), "small", data_root=fake_cifar100, verify_data=False)
    assert again.passed and not again.recorded_sha256 and "recorded sha256" not in again.message


def test_verify_fails_more_than_the_tolerance_under_the_reference(tmp_path, fake_cifar100, random_top1):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": round(random_top1 + 1.5, 2)}})
    manifest = load_manifest(path)
    save_teacher(manifest.published_path("small"))
    result = verify(manifest, "small", data_root=fake_cifar100, verify_data=False)
    assert not result.passed and "FAILED" in result.message and not result.recorded_sha256
    assert 'sha256: ""' in path.read_text() and read_verified(manifest) == {}
    assert verify(manifest, "small", data_root=fake_cifar100, verify_data=False, tolerance=2.0).passed


def test_a_trained_run_is_verified_locally_but_its_sha256_stays_out_of_the_manifest(tmp_path, fake_cifar100, random_top1):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": round(random_top1, 2)}})
    manifest = load_manifest(path)
    run = make_run(manifest.trained_runs_dir("small") / "run", mtime=1_000)
    result = verify(manifest, "small", data_root=fake_cifar100, verify_data=False)
    assert result.passed and not result.published and not result.recorded_sha256
    assert 'sha256: ""' in path.read_text()
    assert read_verified(manifest)["small"]["path"] == "trained/small/run/checkpoints/last.pt"
    assert status(manifest, "small") == "verified"
    make_run(manifest.trained_runs_dir("small") / "newer", mtime=2_000, seed=1)
    assert status(manifest, "small") == "present" and run.exists()


def test_verify_refuses_a_published_file_whose_sha256_differs(tmp_path, fake_cifar100):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": 0, "sha256": '"' + "0" * 64 + '"'}})
    manifest = load_manifest(path)
    save_teacher(manifest.published_path("small"))
    result = verify(manifest, "small", data_root=fake_cifar100, verify_data=False)
    assert not result.passed and "is not the published file" in result.message


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_teachers_list_shows_arch_reference_status_and_path(tmp_path, capsys):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": 61.5}, "other": {}})
    save_teacher(load_manifest(path).published_path("small"))
    assert main(["teachers", "list", "--manifest", str(path)]) == 0
    out = capsys.readouterr().out
    small = next(line for line in out.splitlines() if line.startswith("small "))
    other = next(line for line in out.splitlines() if line.startswith("other "))
    assert "resnet8" in small and "61.50" in small and "present" in small and "small_vanilla/ckpt_epoch_240.pth" in small
    assert "missing" in other and "expected" in other and "trained/other" in other
    assert "2 teacher(s)" in out and "1 missing, 1 present" in out


@pytest.mark.e2e
def test_teachers_cli_user_errors_exit_2(tmp_path, manifest_path, capsys):
    assert main(["teachers", "list", "--manifest", str(tmp_path / "nowhere.yaml")]) == 2
    assert MANIFEST_ENV in capsys.readouterr().err
    assert main(["teachers", "fetch", "smal", "--manifest", str(manifest_path)]) == 2
    assert "Did you mean 'small'" in capsys.readouterr().err
    assert main(["teachers", "fetch", "small", "--timeout", "2", "--manifest", str(manifest_path)]) == 2
    assert "put it at" in capsys.readouterr().err
    assert main(["teachers", "verify", "small", "--data-root", str(tmp_path), "--manifest", str(manifest_path)]) == 2
    assert "distill teachers fetch small" in capsys.readouterr().err


@pytest.mark.e2e
def test_teachers_verify_cli_exit_codes_and_json(tmp_path, fake_cifar100, random_top1, capsys):
    passing = round(random_top1 + 0.5, 2)
    path = write_manifest(tmp_path / "teachers", {"good": {"reference_top1": passing}, "bad": {"reference_top1": round(random_top1 + 5, 2)}, "absent": {}})
    manifest = load_manifest(path)
    for name in ("good", "bad"):
        save_teacher(manifest.published_path(name))
    common = ["--data-root", str(fake_cifar100), "--no-verify-data", "--manifest", str(path)]
    assert main(["teachers", "verify", "good", *common, "--json", str(tmp_path / "good.json")]) == 0
    out = capsys.readouterr().out
    assert f"{random_top1:.2f}" in out and f"{passing:.2f}" in out and "passed" in out and "recorded sha256" in out
    good = json.loads((tmp_path / "good.json").read_text())
    assert good["name"] == "good" and good["passed"] and good["reference_top1"] == passing and good["test_size"] == 100
    assert main(["teachers", "verify", "bad", *common]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and f"{random_top1 + 5:.2f}" in out and f"{random_top1:.2f}" in out
    assert main(["teachers", "verify", "all", *common, "--json", str(tmp_path / "all.json")]) == 1
    out = capsys.readouterr().out
    assert "absent" in out and "no checkpoint" in out
    assert set(json.loads((tmp_path / "all.json").read_text())) == {"good", "bad"}


@pytest.mark.e2e
def test_eval_takes_a_teacher_name_and_writes_json(tmp_path, fake_cifar100, random_top1, monkeypatch, capsys):
    path = write_manifest(tmp_path / "teachers", {"small": {"reference_top1": 12.5}})
    published = save_teacher(load_manifest(path).published_path("small"))
    monkeypatch.setenv(MANIFEST_ENV, str(path))
    out_json = tmp_path / "out" / "eval.json"
    assert main(["eval", "small", "--data-root", str(fake_cifar100), "--no-verify", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "teacher small" in text and "top-1" in text and "100 test images" in text and "reference top-1 12.50" in text
    result = json.loads(out_json.read_text())
    assert result["teacher"] == "small" and result["arch"] == "resnet8" and result["checkpoint"] == str(published)
    assert result["top1"] == pytest.approx(random_top1) and result["test_size"] == 100 and result["parameters"] > 0
    assert main(["eval", "small", "--data-root", str(fake_cifar100), "--no-verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == pytest.approx(random_top1)


@pytest.mark.e2e
def test_eval_of_an_unknown_name_lists_both_possibilities(tmp_path, manifest_path, capsys):
    assert main(["eval", "smal", "--manifest", str(manifest_path)]) == 2
    err = capsys.readouterr().err
    assert "neither an existing run directory or checkpoint file" in err and "nor a teacher" in err
    assert "Did you mean 'small'" in err
    assert main(["eval", "small", "--manifest", str(manifest_path)]) == 2
    assert "distill teachers fetch small" in capsys.readouterr().err


@pytest.mark.e2e
def test_eval_still_takes_a_reference_checkpoint_with_arch(tmp_path, fake_cifar100, random_top1, capsys):
    checkpoint = save_teacher(tmp_path / "ckpt_epoch_240.pth")
    assert main(["eval", str(checkpoint), "--arch", "resnet8", "--data-root", str(fake_cifar100), "--no-verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == pytest.approx(random_top1)
