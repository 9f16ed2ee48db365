"""The notebook runner: parameters reach the notebook, outputs land only when it succeeds."""
import json
from pathlib import Path

import pytest
import yaml

from lib.config import ParamsError
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


def test_bad_params_file_stops_before_running(workspace):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["trian"] = params.pop("train")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="trian: unknown key"):
        run_notebook(Path("nb.py"), Path("results/a"), {"value": 7}, log_output=False)
    assert not Path("results").exists()


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
