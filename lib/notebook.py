"""Run a parameterized notebook as a pipeline step, without ever damaging existing results.

    python -P lib/notebook.py notebooks/train.py results/runs/mnist-ape -p dataset=mnist -p variant=ape

Run as a script (`-P`: the script's folder is not put on sys.path) so that the step starts in about 2 s:
`python -m lib.notebook` works too, but importing the `lib` package imports torch and timm (about 5 s
per step, 30 steps in the study) only for the kernel to import them again.

1. The notebook's stable source, a jupytext `py:percent` file (what DVC depends on; saving the
   .ipynb in JupyterLab does not touch it), is converted to a notebook and executed by papermill
   with the given parameters plus `params_file` and `out_dir`, the staging folder `<out>.partial/`
   that the notebook writes its results into.
   Every study notebook validates `params.yaml` in its first cell (`lib.config.load_params`), so a bad
   key stops the step before any work; `make repro` also checks the file once before the first step.
2. Only when the notebook succeeds does the staging folder replace `<out>`; on failure `<out>`
   is untouched and the executed notebook, with its traceback, stays in `<out>.partial/`.
The executed copy `<out>/<notebook name>.ipynb` is kept for reading in JupyterLab.
"""
import argparse
import logging
import shutil
import sys
from pathlib import Path

# jsonschema (under papermill's nbformat) imports its optional IRI format checker, which compiles a grammar for
# 1.4 s, once per pipeline step; notebook schemas use no IRI formats, so it is kept out (None: not importable).
sys.modules.setdefault("rfc3987_syntax", None)

import jupytext  # noqa: E402
import papermill  # noqa: E402
import yaml  # noqa: E402


KERNEL_NAME = "attention-rope-study"  # registered by `make setup` (ipykernel install --sys-prefix)


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
    try:
        papermill.execute_notebook(
            str(input_path), str(executed),
            parameters={**parameters, "out_dir": str(staging), "params_file": str(params_file)},
            kernel_name=kernel_name, progress_bar=False, log_output=log_output, cwd=str(Path.cwd()),
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
