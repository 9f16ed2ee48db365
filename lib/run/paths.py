"""The repository root, so that a notebook runs from any working directory.

Every path the study uses (params.yaml, data/, results/, checkpoints/) is relative to the repo root, but
JupyterLab, VS Code and `lib/run/notebook.py` start a notebook's kernel in the notebook's own folder,
notebooks/. Each study notebook therefore calls `chdir_repo_root()` in its first code cell.

Imports nothing from `lib` (and no third-party package): `lib/run/notebook.py` loads this file on its own,
without importing the `lib` package, which imports torch.
"""
import os
from pathlib import Path

MARKERS: tuple[str, ...] = ("params.yaml", "dvc.yaml")  # the files that only the repo root holds, both
LIB_CHECKOUT = Path(__file__).resolve().parents[2]  # the folder above the `lib` package in use (the fallback)


class RepoRootNotFound(FileNotFoundError):
    """No folder holding the study's params.yaml and dvc.yaml at or above the start, nor at the lib package."""


def is_repo_root(folder: Path) -> bool:
    """Whether `folder` holds every one of MARKERS."""
    return all((Path(folder) / name).is_file() for name in MARKERS)


def repo_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding params.yaml and dvc.yaml.

    Falls back to the folder above the `lib` package in use (an editable install's checkout), so that a
    notebook copied out of the repo still finds the study. Raises RepoRootNotFound naming both places tried.
    """
    start = Path.cwd() if start is None else Path(start)
    start = start.resolve()
    for folder in (start, *start.parents):
        if is_repo_root(folder):
            return folder
    if is_repo_root(LIB_CHECKOUT):
        return LIB_CHECKOUT
    raise RepoRootNotFound(
        f"no folder holding {' and '.join(MARKERS)} at or above {start}, nor at {LIB_CHECKOUT} "
        f"(the folder above the lib package in use); start from inside the study's repository"
    )


def output_dir(path: Path | str) -> Path:
    """The folder a notebook writes its results into, created with its parents if missing: run by papermill or
    in JupyterLab with a new `out_dir`, nothing else creates it (lib/run/notebook.py creates its staging folder)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chdir_repo_root(start: Path | str | None = None) -> Path:
    """Change the working directory to `repo_root(start)` and return it (relative paths then mean the repo's)."""
    root = repo_root(start)
    os.chdir(root)
    return root
