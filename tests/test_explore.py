"""The exploration helpers behind notebooks/explore.ipynb (lib/analysis/explore.py), on a run trained here."""
from pathlib import Path

import pytest

from lib.analysis.explore import attention_view, find_run, load_curves, load_metrics, load_model, plot_attention_view, trained_runs
from lib.config import Params
from lib.data import load_split
from lib.run.checkpoint import save_atomic
from lib.run.train import train
from tests.conftest import tiny_params_dict


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, data_root) -> Path:
    params = Params.model_validate(tiny_params_dict(data_root))
    root = tmp_path_factory.mktemp("runs")
    result = train(params, "shapes", "rope_mixed", root / "shapes-rope_mixed" / "live", root / "ckpt.pt", progress=False)
    save_atomic({"model": result.model.state_dict()}, root / "shapes-rope_mixed" / "model.pt")
    return root


def test_runs_are_found_by_name_and_the_curves_read_back(tiny_params, runs_dir):
    # smoke's test_time run shapes-rope_adaptive_res runs on shapes-rope_mixed's weights, from its folder
    assert [run.name for run in trained_runs(tiny_params, runs_dir)] == ["shapes-rope_mixed", "shapes-rope_adaptive_res"]
    adaptive = find_run(tiny_params, "shapes-rope_adaptive_res", runs_dir)
    assert adaptive.variant == "rope_adaptive_res" and adaptive.folder == runs_dir / "shapes-rope_mixed"
    assert type(load_model(tiny_params, adaptive).rope).__name__ == "RopeResolutionAdaptive"
    run = find_run(tiny_params, "shapes-rope_mixed", runs_dir)
    assert (run.dataset, run.variant, run.seed) == ("shapes", "rope_mixed", None)
    with pytest.raises(ValueError, match=r"'shapes-ape' is not a trained run.*trained: shapes-rope_mixed, shapes-rope_adaptive_res"):
        find_run(tiny_params, "shapes-ape", runs_dir)
    curves = load_curves(run)
    assert list(curves["epoch"]) == [1, 2]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr"} <= set(curves.columns)
    assert curves["val/acc"].iloc[-1] == pytest.approx(load_metrics(run)["val"]["acc"])


@pytest.mark.parametrize("resolution", [32, 48])  # the training resolution and a larger grid
def test_attention_view_at_any_resolution(tiny_params, runs_dir, data_root, resolution):
    run = find_run(tiny_params, "shapes-rope_mixed", runs_dir)
    model = load_model(tiny_params, run)
    data = load_split(data_root, "shapes", "test", resolution, limit=2)
    view = attention_view(model, data.images[1])
    grid = resolution // 4
    assert view["cls"].shape == (2, 2, grid, grid) and view["rollout"].shape == (grid, grid)
    patch_mass = view["cls"].sum((-1, -2))  # softmax rows: the rest of each row's mass is on the CLS token itself
    assert ((0 < patch_mass) & (patch_mass < 1)).all() and view["probabilities"].sum().item() == pytest.approx(1, abs=1e-5)
    fig = plot_attention_view(data.images[1], view, layer=1, head=None, classes=data.classes, label=int(data.labels[1]))
    assert len(fig.axes) == 3 and "predicted" in fig._suptitle.get_text()
