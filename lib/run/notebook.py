"""Run a parameterized notebook as a pipeline step, without ever damaging existing results.

    python -P lib/run/notebook.py notebooks/train.py results/runs/mnist-ape -p dataset=mnist -p variant=ape

Run as a script (`-P`: the script's folder is not put on sys.path) so that the step starts in about 2 s:
`python -m lib.run.notebook` works too, but importing the `lib` package imports torch and timm (about 5 s
per step, 30 steps in the study) only for the kernel to import them again.

1. The notebook's stable source, a jupytext `py:percent` file (what DVC depends on; saving the
   .ipynb in JupyterLab does not touch it), is converted to a notebook and executed by papermill
   with the given parameters plus `params_file` and `out_dir`, the staging folder `<out>.partial/`
   that the notebook writes its results into.
   The kernel starts in the source's folder, as JupyterLab starts it, so every pipeline run exercises what
   a user's Lab session does: each study notebook moves to the repo root in its first code cell
   (`lib.run.paths.chdir_repo_root`), and path parameters are relative to the repo root (run this from the
   root, as DVC does) or absolute. The kernel imports the `lib` beside this script (a DVC experiment's
   copy of the repo runs its own code, not the editable install's).
   Every study notebook validates `params.yaml` in its first cell (`lib.config.load_params`), so a bad
   key stops the step before any work; `make repro` also checks the file once before the first step.
2. Only when the notebook succeeds does the staging folder replace `<out>`; on failure `<out>`
   is untouched and the executed notebook, with its traceback, stays in `<out>.partial/`.
The executed copy `<out>/<notebook name>.ipynb` is kept for reading in JupyterLab.
"""
import argparse
import importlib.util
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

# jsonschema (under papermill's nbformat) imports its optional IRI format checker, which compiles a grammar for
# 1.4 s, once per pipeline step; notebook schemas use no IRI formats, so it is kept out (None: not importable).
sys.modules.setdefault("rfc3987_syntax", None)

import jupytext  # noqa: E402
import papermill  # noqa: E402
import yaml  # noqa: E402


KERNEL_NAME = "attention-rope-study"  # registered by `make setup` (ipykernel install --sys-prefix)
STUDY_ROOT = Path(__file__).resolve().parents[2]  # the checkout this runner belongs to


def _load_paths():
    """lib/run/paths.py, loaded from its file: `import lib.run.paths` would import the `lib` package, hence torch."""
    spec = importlib.util.spec_from_file_location("_study_paths", Path(__file__).with_name("paths.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_paths = _load_paths()


class NotebookFailed(RuntimeError):
    """The notebook raised; the message names the executed copy that holds the traceback."""


def run_notebook(source: Path, out_dir: Path, parameters: dict, params_file: Path = Path("params.yaml"),
                 kernel_name: str = KERNEL_NAME, log_output: bool = True) -> Path:
    """Execute `source` (py:percent) with `parameters`; return the executed notebook's path in `out_dir`."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook source not found (expected a jupytext py:percent file)")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)  # papermill does not create output folders

    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": kernel_name, "display_name": f"Python ({kernel_name})", "language": "python"}
    input_path = staging / f".{source.stem}.input.ipynb"
    jupytext.write(notebook, input_path, fmt="ipynb")
    executed = staging / f"{source.stem}.ipynb"
    root = _notebook_root(source)
    try:
        with _kernel_imports(STUDY_ROOT):
            papermill.execute_notebook(
                str(input_path), str(executed),
                parameters={**parameters, "out_dir": _kernel_path(staging, root),
                            "params_file": _kernel_path(params_file, root)},
                # the kernel starts where JupyterLab starts it: in the notebook's folder
                kernel_name=kernel_name, progress_bar=False, log_output=log_output, cwd=str(source.resolve().parent),
                # kill the kernel once the last cell is done: a graceful shutdown waits ~3 s per step for the
                # interpreter with torch loaded to finalize, and every cell has closed the files it wrote by then
                shutdown_kernel="immediate",
            )
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(f"{source} failed ({err.ename}: {err.evalue}); executed copy with the traceback: {executed}") from None
    finally:
        input_path.unlink(missing_ok=True)

    previous = out_dir.with_name(out_dir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir / executed.name


def _notebook_root(source: Path) -> Path | None:
    """The repo root that a study notebook at `source` moves to (`chdir_repo_root`), or None if there is none."""
    try:
        return _paths.repo_root(source.resolve().parent)
    except _paths.RepoRootNotFound:
        return None


def _kernel_path(path: Path, root: Path | None) -> str:
    """`path` (relative to this process's working directory) as the kernel must see it.

    Kept relative when the notebook's repo root is this working directory (a pipeline step, run from the root):
    the executed notebook, committed with the results, then reads the same on every machine. Else absolute,
    which holds wherever the kernel's working directory is.
    """
    path = Path(path)
    if not path.is_absolute() and root is not None and root == Path.cwd().resolve():
        return str(path)
    return str(path.resolve())


@contextmanager
def _kernel_imports(folder: Path):
    """Put `folder` first on the kernel's PYTHONPATH (inherited from this process) while it runs.

    The kernel starts in notebooks/, so its `import lib` would otherwise find the editable install, which may
    be another checkout than the one running (e.g. a DVC experiment's temporary copy).
    """
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder)] + ([previous] if previous else []))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def _parse_parameter(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a Python identifier as NAME, got {text!r}")
    return name, yaml.safe_load(value)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="notebook source, a jupytext py:percent file")
    parser.add_argument("out_dir", type=Path, help="folder the notebook writes into (replaced only on success)")
    parser.add_argument("-p", "--parameter", type=_parse_parameter, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--params-file", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    # papermill reports progress and the notebook's output through logging: show them, undecorated
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        executed = run_notebook(args.source, args.out_dir, dict(args.parameter), args.params_file)
    except (NotebookFailed, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {executed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
