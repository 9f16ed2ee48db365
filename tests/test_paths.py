"""The repo root finder behind every notebook's first cell (lib/run/paths.py)."""
import os
from pathlib import Path

import pytest

from lib.run.paths import RepoRootNotFound, chdir_repo_root, output_dir, repo_root
import lib.run.paths
from tests.conftest import REPO


def make_repo(folder: Path) -> Path:
    """A folder that looks like the study's root: params.yaml and dvc.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text("seed: 0\n")
    (folder / "dvc.yaml").write_text("stages: {}\n")
    return folder


def test_found_from_a_subfolder(tmp_path):
    root = make_repo(tmp_path / "study")
    (root / "notebooks" / "deep").mkdir(parents=True)
    assert repo_root(root / "notebooks") == root.resolve()
    assert repo_root(root / "notebooks" / "deep") == root.resolve()
    assert repo_root(root) == root.resolve()


def test_the_nearest_root_wins(tmp_path):
    outer = make_repo(tmp_path / "outer")
    inner = make_repo(outer / "experiments" / "copy")  # e.g. a DVC experiment's temporary copy
    (inner / "notebooks").mkdir()
    assert repo_root(inner / "notebooks") == inner.resolve()


def test_a_folder_with_only_one_marker_is_not_the_root(tmp_path):
    root = make_repo(tmp_path / "study")
    (root / "notebooks").mkdir()
    (root / "notebooks" / "params.yaml").write_text("seed: 1\n")  # a stray copy, no dvc.yaml beside it
    assert repo_root(root / "notebooks") == root.resolve()


def test_chdir_moves_to_the_root(tmp_path, monkeypatch):
    root = make_repo(tmp_path / "study")
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")  # where JupyterLab starts the kernel
    assert chdir_repo_root() == root.resolve()
    assert Path.cwd() == root.resolve() and Path("params.yaml").is_file()


def test_outside_any_repo_falls_back_to_the_lib_packages_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_root() == REPO


def test_outside_any_repo_without_fallback_says_what_it_looked_for(tmp_path, monkeypatch):
    elsewhere = tmp_path / "no" / "study" / "here"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(lib.run.paths, "LIB_CHECKOUT", tmp_path / "site-packages")  # a non-editable install
    monkeypatch.chdir(elsewhere)
    with pytest.raises(RepoRootNotFound) as info:
        chdir_repo_root()
    message = str(info.value)
    assert "params.yaml and dvc.yaml" in message and f"at or above {elsewhere.resolve()}" in message
    assert str(tmp_path / "site-packages") in message  # the fallback it tried
    assert Path.cwd() == elsewhere.resolve() == Path(os.getcwd())  # not moved


def test_output_dir_creates_missing_parents_and_keeps_what_is_there(tmp_path):
    folder = output_dir(tmp_path / "results" / "new" / "run")
    assert folder == tmp_path / "results" / "new" / "run" and folder.is_dir()
    (folder / "kept.csv").write_text("a\n")
    assert output_dir(str(folder)) == folder and (folder / "kept.csv").read_text() == "a\n"
