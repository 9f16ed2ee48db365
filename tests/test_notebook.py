"""The notebook runner: parameters reach the notebook, outputs land only when it succeeds."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.notebook import NotebookFailed, run_notebook
from tests.conftest import REPO

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


def test_runner_starts_without_importing_torch():
    """dvc.yaml runs the runner as a script: it must not pay for torch, which the kernel imports anyway."""
    probe = "import runpy, sys; runpy.run_path('lib/notebook.py', run_name='probe'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-P", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert "python -P lib/notebook.py" in (REPO / "dvc.yaml").read_text()
    assert "python -m lib.notebook" not in (REPO / "dvc.yaml").read_text()


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
