"""The notebook runner: parameters reach the notebook, outputs land only when it succeeds, and the kernel starts
where JupyterLab starts it (the notebook's folder), which every study notebook handles."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from lib.run.notebook import KERNEL_NAME, NotebookFailed, run_notebook
from tests.conftest import REPO, tiny_params_dict

NOTEBOOK = """# %% tags=["parameters"]
value = 1
out_dir = "unset"
params_file = "unset"

# %%
import json
from pathlib import Path
if value < 0:
    raise ValueError("negative value")
Path(out_dir, "result.json").write_text(json.dumps({"value": value}))
"""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "nb.py").write_text(NOTEBOOK)
    return tmp_path


def test_parameters_reach_the_notebook_and_outputs_land(workspace):
    executed = run_notebook(Path("nb.py"), Path("results/a"), {"value": 7}, log_output=False)
    assert executed == Path("results/a/nb.ipynb") and executed.exists()  # papermill's missing folder is created
    assert json.loads(Path("results/a/result.json").read_text()) == {"value": 7}
    assert not Path("results/a.partial").exists()
    notebook = json.loads(executed.read_text())
    injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "value = 7" in "".join(injected[0]["source"])


def test_failed_notebook_leaves_previous_results(workspace):
    run_notebook(Path("nb.py"), Path("results/a"), {"value": 7}, log_output=False)
    before = Path("results/a/result.json").read_bytes()
    with pytest.raises(NotebookFailed, match="negative value") as info:
        run_notebook(Path("nb.py"), Path("results/a"), {"value": -1}, log_output=False)
    assert "results/a.partial/nb.ipynb" in str(info.value)  # the traceback is kept for reading
    assert Path("results/a/result.json").read_bytes() == before


def test_bad_params_file_stops_the_notebook_in_its_first_cell(workspace):
    """As every study notebook does, the first cell validates params.yaml: the step stops naming the key."""
    Path("validating.py").write_text(NOTEBOOK.replace("# %%\nimport json", "# %%\nfrom lib.config import load_params\n"
                                                      "load_params(params_file)\n\n# %%\nimport json"))
    run_notebook(Path("validating.py"), Path("results/a"), {"value": 7}, log_output=False)
    before = Path("results/a/result.json").read_bytes()
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["trian"] = params.pop("train")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(NotebookFailed, match="ParamsError: .*trian: unknown key"):
        run_notebook(Path("validating.py"), Path("results/a"), {"value": 8}, log_output=False)
    assert Path("results/a/result.json").read_bytes() == before
    assert not Path("results/a.partial/result.json").exists()  # stopped before the work


def test_every_study_notebook_validates_params_before_any_work():
    import jupytext

    for source in sorted((REPO / "notebooks").glob("*.py")):
        code = [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]
        first_after_parameters = code[1]
        assert "load_params(params_file)" in first_after_parameters, f"{source}: first cell must validate params"


def test_every_study_notebook_moves_to_the_repo_root_before_using_a_path():
    import jupytext

    for source in sorted((REPO / "notebooks").glob("*.py")):
        code = [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]
        statements = [line for line in code[1].splitlines()
                      if line and not line.startswith(("import ", "from ", " ", ")")) and not line.startswith("#")]
        assert statements[0].startswith("chdir_repo_root()"), f"{source}: the first statement must be chdir_repo_root()"


def test_every_study_notebook_creates_its_out_dir():
    """In JupyterLab (or papermill) nothing creates a new `out_dir` for the notebook: it must, through
    lib.run.paths.output_dir, and use the folder only through what that returns."""
    import jupytext

    for source in sorted((REPO / "notebooks").glob("*.py")):
        code = "\n".join(c.source for c in jupytext.read(source).cells[1:] if c.cell_type == "code"
                         and "parameters" not in c.metadata.get("tags", []))
        uses = code.replace("output_dir(out_dir)", "")
        assert "out_dir" not in uses, f"{source}: use out_dir only as output_dir(out_dir)"


def test_kernel_starts_in_the_notebooks_folder(workspace):
    """As in JupyterLab; the staging folder reaches the kernel as a path that holds there (absolute here)."""
    (workspace / "notebooks").mkdir()
    (workspace / "notebooks" / "nb.py").write_text(NOTEBOOK.replace(
        '{"value": value}', '{"value": value, "cwd": str(Path.cwd()), "out_dir": out_dir}'))
    run_notebook(Path("notebooks/nb.py"), Path("results/a"), {"value": 3}, log_output=False)
    written = json.loads(Path("results/a/result.json").read_text())
    assert written["cwd"] == str(workspace.resolve() / "notebooks")
    assert written["out_dir"] == str(workspace.resolve() / "results" / "a.partial")


def test_runner_starts_without_importing_torch():
    """dvc.yaml runs the runner as a script: it must not pay for torch, which the kernel imports anyway."""
    probe = "import runpy, sys; runpy.run_path('lib/run/notebook.py', run_name='probe'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-P", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert "python -P lib/run/notebook.py" in (REPO / "dvc.yaml").read_text()
    assert "python -m lib.run.notebook" not in (REPO / "dvc.yaml").read_text()


def test_missing_notebook_source(workspace):
    with pytest.raises(FileNotFoundError, match="missing.py"):
        run_notebook(Path("missing.py"), Path("results/a"), {}, log_output=False)


def test_committed_notebooks_match_their_sources_and_have_no_outputs():
    """The .ipynb in git is the jupytext pair of the .py that DVC runs, kept without outputs."""
    import jupytext

    for source in sorted((REPO / "notebooks").glob("*.py")):
        paired = source.with_suffix(".ipynb")
        assert paired.exists(), f"{paired} missing: run `jupytext --sync {source}`"
        notebook = json.loads(paired.read_text())
        assert all(not cell.get("outputs") for cell in notebook["cells"] if cell["cell_type"] == "code"), paired
        code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
        assert code(jupytext.read(paired)) == code(jupytext.read(source)), f"{paired} and {source} differ"


# --- the study's notebooks with the kernel in notebooks/, as JupyterLab and the pipeline start it ---


@pytest.fixture(scope="module")
def lab_study(tmp_path_factory, data_root) -> Path:
    """A study root (the smoke profile's params.yaml, dvc.yaml, the notebooks) with shapes-rope_mixed trained by
    notebooks/train.py, run as a DVC stage runs it: from the root, the kernel starting in notebooks/."""
    root = tmp_path_factory.mktemp("lab")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(data_root)))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_notebook(Path("notebooks/train.py"), Path("results/runs/shapes-rope_mixed"),
                     {"dataset": "shapes", "variant": "rope_mixed", "progress": False}, log_output=False)
    return root


def test_train_notebook_writes_under_the_repo_root(lab_study):
    run = lab_study / "results" / "runs" / "shapes-rope_mixed"
    assert (run / "model.pt").is_file() and (run / "live" / "metrics.json").is_file() and (run / "curves.png").is_file()
    assert sorted(p.name for p in (lab_study / "notebooks").iterdir() if p.is_dir()) == []  # nothing written there
    assert list((lab_study / "checkpoints").iterdir()) == []  # the finished run's checkpoint is deleted
    # run from the root, the runner passes its paths relative: the executed notebook reads the same on any machine
    assert 'out_dir = "results/runs/shapes-rope_mixed.partial"' in (run / "train.ipynb").read_text().replace('\\"', '"')


def shown(executed: Path) -> tuple[str, int, bool]:
    """(printed text, number of PNG outputs, whether a widget is shown) of an executed notebook."""
    outputs = [o for cell in json.loads(executed.read_text())["cells"] for o in cell.get("outputs", [])]
    return ("".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream"),
            sum("image/png" in o.get("data", {}) for o in outputs),
            any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs))


def test_explore_runs_through_the_runner(lab_study, monkeypatch):
    monkeypatch.chdir(lab_study)
    executed = run_notebook(Path("notebooks/explore.py"), Path("explored"), {}, log_output=False)
    printed, images, widgets = shown(executed)
    assert "trained runs: shapes-rope_mixed" in printed
    assert images >= 2 and widgets  # the curves and the attention view, with its sliders


def test_explore_notebook_opened_as_jupyterlab_opens_it(lab_study, tmp_path, monkeypatch):
    """The reported bug: the paired .ipynb, its own defaults (no injected parameters), the kernel in notebooks/."""
    monkeypatch.chdir(tmp_path)  # wherever the user started `jupyter lab`: only the kernel's folder matters
    executed = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(lab_study / "notebooks" / "explore.ipynb"), str(executed),
                               cwd=str(lab_study / "notebooks"), kernel_name=KERNEL_NAME, progress_bar=False)
    printed, images, widgets = shown(executed)
    assert "trained runs: shapes-rope_mixed" in printed
    assert images >= 2 and widgets


def test_train_notebook_in_jupyterlab_writes_into_a_new_out_dir(lab_study, tmp_path):
    """The reported bug: run from JupyterLab with an out_dir that does not exist yet, the notebook creates it."""
    out = tmp_path / "new" / "run"
    executed = tmp_path / "train.ipynb"
    papermill.execute_notebook(str(lab_study / "notebooks" / "train.ipynb"), str(executed), cwd=str(lab_study / "notebooks"),
                               kernel_name=KERNEL_NAME, progress_bar=False,
                               parameters={"dataset": "shapes", "variant": "ape", "progress": False, "out_dir": str(out),
                                           "checkpoint_dir": str(tmp_path / "checkpoints")})
    assert (out / "model.pt").is_file() and (out / "curves.png").is_file() and (out / "timing.json").is_file()
