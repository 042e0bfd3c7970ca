"""``run.json``'s git fields: the commit of the checkout a package comes from, and whether its tree was dirty.

Each case builds its own git repository in a temporary folder and runs the real ``git``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import distill
from distill.files.provenance import git_provenance

pytestmark = pytest.mark.e2e

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]


@pytest.fixture(autouse=True)
def no_outer_repository(tmp_path, monkeypatch):
    """git must not find a repository above tmp_path (a test machine's home in a checkout, say)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert shutil.which("git"), "these tests run the real git"


def git(repo: Path, *arguments: str) -> None:
    subprocess.run([*GIT, *arguments], cwd=repo, check=True, capture_output=True)


def head_commit(repo: Path) -> str:
    """HEAD's commit read from the files in .git (not through git rev-parse, which the code under test uses)."""
    head = (repo / ".git" / "HEAD").read_text().strip()
    assert head.startswith("ref: ")
    return (repo / ".git" / head.removeprefix("ref: ")).read_text().strip()


def make_project(root: Path) -> Path:
    """A checkout with a committed package ``pkg/``; returns the package folder."""
    root.mkdir()
    git(root, "init", "-q")
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text("venv/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return package


def test_clean_then_dirty_checkout(tmp_path):
    package = make_project(tmp_path / "project")
    commit = head_commit(tmp_path / "project")
    assert len(commit) == 40
    assert git_provenance(package) == {"git_commit": commit, "git_dirty": False}

    (package / "__init__.py").write_text("VALUE = 2\n")  # a changed tracked file
    assert git_provenance(package) == {"git_commit": commit, "git_dirty": True}

    git(tmp_path / "project", "commit", "-q", "-am", "second")
    second = head_commit(tmp_path / "project")
    assert second != commit
    assert git_provenance(package) == {"git_commit": second, "git_dirty": False}

    (package / "new_loss.py").write_text("")  # an untracked file is code the commit does not hold either
    assert git_provenance(package) == {"git_commit": second, "git_dirty": True}


def test_ignored_files_do_not_make_it_dirty(tmp_path):
    package = make_project(tmp_path / "project")
    (tmp_path / "project" / "venv").mkdir()
    (tmp_path / "project" / "venv" / "x").write_text("")
    assert git_provenance(package)["git_dirty"] is False


def test_outside_any_checkout(tmp_path):
    folder = tmp_path / "installed" / "pkg"
    folder.mkdir(parents=True)
    info = git_provenance(folder)
    assert info["git_commit"] is None and info["git_dirty"] is None
    assert "not a git repository" in info["git_reason"]


def test_an_untracked_copy_inside_another_checkout_does_not_take_its_commit(tmp_path):
    """A package installed into a virtualenv that lives inside some project's checkout is not that project's code."""
    make_project(tmp_path / "project")
    installed = tmp_path / "project" / "venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    info = git_provenance(installed)
    assert info["git_commit"] is None and info["git_dirty"] is None
    assert "not tracked" in info["git_reason"]


def test_a_checkout_without_commits(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    git(root, "init", "-q")
    info = git_provenance(root)
    assert info["git_commit"] is None and "rev-parse" in info["git_reason"]


def test_git_missing(tmp_path, monkeypatch):
    package = make_project(tmp_path / "project")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    info = git_provenance(package)
    assert info == {"git_commit": None, "git_dirty": None, "git_reason": "git is not installed (no 'git' on PATH)"}


def test_git_that_does_not_answer(tmp_path, monkeypatch):
    package = make_project(tmp_path / "project")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text("#!/bin/sh\nsleep 30\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    info = git_provenance(package, timeout=0.2)
    assert info["git_commit"] is None and "did not answer within 0.2 s" in info["git_reason"]


def test_a_folder_that_does_not_exist(tmp_path):
    info = git_provenance(tmp_path / "gone")
    assert info["git_commit"] is None and "is not a folder" in info["git_reason"]


def test_this_package_reads_the_checkout_it_runs_from(monkeypatch):
    """The distill under test: its own checkout's commit (what run.json records), or a reason when it is not one."""
    monkeypatch.delenv("GIT_CEILING_DIRECTORIES")
    folder = Path(distill.__file__).resolve().parent
    info = git_provenance(folder)
    if (folder.parent / ".git").exists():
        assert info["git_commit"] is not None and len(info["git_commit"]) == 40, info
        assert isinstance(info["git_dirty"], bool)
    else:
        assert info["git_commit"] is None and info["git_reason"], info
