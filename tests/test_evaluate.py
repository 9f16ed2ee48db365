"""Evaluation across resolutions, result tables, and the data pin."""
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from lib.data.pin import DataPinError, ensure_data
from lib.resolution.accuracy import accuracy_vs_resolution, evaluate_runs
from lib.resolution.report import resolution_markdown, seed_summary
from lib.run.checkpoint import save_atomic
from lib.run.study import build_model, load_trained_model, run_name
from lib.safety.shift import seed_map_stability
from lib.stats import wilson_interval


def test_wilson_interval_known_values():
    # 95% Wilson interval for 81/100 (Newcombe 1998, Table I, example (b)): 0.7222 to 0.8749
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)


def test_accuracy_vs_resolution_rows(tiny_params, tmp_path):
    model = build_model(tiny_params, "shapes", "rope_mixed")
    weights = tmp_path / "model.pt"
    save_atomic({"model": model.state_dict()}, weights)
    loaded = load_trained_model(tiny_params, "shapes", "rope_mixed", weights)
    table = accuracy_vs_resolution(loaded, tiny_params, "shapes", "rope_mixed")
    assert list(table["resolution"]) == [24, 32, 48]
    assert list(table["tokens"]) == [36, 64, 144]
    assert (table["n"] == 1000).all() and table["accuracy"].between(0, 1).all()
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    # evaluation is deterministic: the same weights give the same table
    pd.testing.assert_frame_equal(table, accuracy_vs_resolution(loaded, tiny_params, "shapes", "rope_mixed"))


def test_test_time_runs_are_evaluated_with_the_weights_they_name(tiny_params, tmp_path):
    """smoke's test_time run shapes-rope_adaptive_res has no weights of its own: it is evaluated with
    shapes-rope_mixed's, equals it at and below the training resolution and differs above it."""
    assert tiny_params.test_time_runs() == [("shapes", "rope_adaptive_res")]
    torch.manual_seed(0)
    model = build_model(tiny_params, "shapes", "rope_mixed")
    with torch.no_grad():  # off the initialisation, so that rescaled frequencies change the logits
        model.rope.freqs.mul_(3.0)
    (tmp_path / "shapes-rope_mixed").mkdir()
    save_atomic({"model": model.state_dict()}, tmp_path / "shapes-rope_mixed" / "model.pt")
    runs = [("shapes", "rope_mixed", None), ("shapes", "rope_adaptive_res", None)]
    table = evaluate_runs(tiny_params, tmp_path, runs=runs, log=lambda _: None).set_index(["run", "resolution"])
    mixed, adaptive = table.loc["shapes-rope_mixed"], table.loc["shapes-rope_adaptive_res"]
    train = tiny_params.datasets["shapes"].train_resolution
    assert (adaptive.loc[:train, "loss"] == mixed.loc[:train, "loss"]).all()
    assert (adaptive.loc[train + 1:, "loss"] != mixed.loc[train + 1:, "loss"]).all()
    assert set(adaptive["pos_embed"]) == {"rope_adaptive_res"}
    shutil.rmtree(tmp_path / "shapes-rope_mixed")
    with pytest.raises(FileNotFoundError, match="shapes-rope_mixed/model.pt: missing weights of run shapes-rope_mixed"):
        evaluate_runs(tiny_params, tmp_path, runs=runs[1:])


def test_weights_file_without_model_is_rejected(tiny_params, tmp_path):
    weights = tmp_path / "model.pt"
    save_atomic({"something": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="'model' state dict"):
        load_trained_model(tiny_params, "mnist", "ape", weights)


def test_seed_summary_is_the_mean_and_student_t_interval_over_seeds():
    rows = [{"dataset": "shapes", "variant": "ape", "resolution": r, "train_resolution": 24, "seed": seed, "accuracy": acc}
            for r, accs in [(24, [0.90, 0.92, 0.94]), (48, [0.5, 0.5, 0.5])] for seed, acc in enumerate(accs)]
    summary = seed_summary(pd.DataFrame(rows)).set_index("resolution")
    assert list(summary["seeds"]) == [3, 3]
    assert summary.loc[24, "accuracy"] == pytest.approx(0.92)
    half = 4.302653 * 0.02 / 3 ** 0.5  # t(0.975, df=2) * sd / sqrt(n)
    assert (summary.loc[24, "ci_low"], summary.loc[24, "ci_high"]) == pytest.approx((0.92 - half, 0.92 + half))
    assert summary.loc[48, "ci_low"] == summary.loc[48, "ci_high"] == pytest.approx(0.5)  # no spread, no width
    assert (summary.loc[24, "min"], summary.loc[24, "max"]) == pytest.approx((0.90, 0.94))
    spread = seed_summary(pd.DataFrame([{**rows[0], "seed": 0, "accuracy": 0.95}, {**rows[0], "seed": 1, "accuracy": 0.63}]))
    assert (spread["ci_low"].item(), spread["ci_high"].item()) == (0.0, 1.0)  # t-interval (-1.24, 2.82) clipped
    single = seed_summary(pd.DataFrame(rows[:1]))
    assert single["seeds"].item() == 1 and single["ci_low"].isna().all()  # one seed: no interval


def test_run_names_of_extra_seeds():
    assert run_name("shapes", "ape") == "shapes-ape"
    assert run_name("shapes", "ape", 2) == "shapes-ape-seed2"


def test_resolution_markdown_marks_the_training_resolution():
    table = pd.DataFrame({
        "dataset": ["mnist"] * 4, "variant": ["ape", "ape", "rope", "rope"], "resolution": [28, 56] * 2,
        "train_resolution": [28] * 4, "accuracy": [0.9, 0.5, 0.91, 0.7], "n": [1000] * 4,
    })
    markdown = resolution_markdown(table)
    assert "| variant   |   28* |   56 |" in markdown
    assert "| rope      |    91 |   70 |" in markdown


@pytest.fixture
def pinned_repo(tmp_path, data_root):
    """A DVC repo (no git) whose data.dvc pins a copy of the materialized data."""
    shutil.copytree(data_root, tmp_path / "data")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "data", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_pin_accepts_matching_data_and_names_altered_files(pinned_repo):
    assert ensure_data(pinned_repo / "data.dvc") == pinned_repo / "data"
    target = pinned_repo / "data" / "shapes" / "test_labels.npy"
    target.write_bytes(target.read_bytes()[:-1] + b"\x07")
    (pinned_repo / "data" / "mnist" / "val_images.npy").unlink()
    with pytest.raises(DataPinError) as info:
        ensure_data(pinned_repo / "data.dvc")
    message = str(info.value)
    assert "altered: " in message and "shapes/test_labels.npy" in message
    assert "missing: " in message and "mnist/val_images.npy" in message


def test_pin_materializes_missing_data_and_rejects_a_stale_pin(pinned_repo):
    shutil.rmtree(pinned_repo / "data")
    assert ensure_data(pinned_repo / "data.dvc").joinpath("mnist", "train_images.npy").exists()
    dvc_file = pinned_repo / "data.dvc"
    dvc_file.write_text(dvc_file.read_text().replace("md5: ", "md5: 0", 1))  # a pin no generator matches
    shutil.rmtree(pinned_repo / "data")
    with pytest.raises(DataPinError, match="no longer reproduces the pinned bytes"):
        ensure_data(dvc_file)
    with pytest.raises(DataPinError, match="missing"):
        ensure_data(dvc_file, create_missing=False)


def test_seed_map_stability_of_identical_and_different_weights(tiny_params, tmp_path):
    """A seed whose weights equal the study seed's has identical maps (IoU 1, Spearman 1, JS 0, same
    predictions); a differently initialised model does not."""
    params = tiny_params.model_copy(update={"seeds": tiny_params.seeds.model_copy(update={"seeds": [1, 2], "map_images": 12})})
    torch.manual_seed(0)
    reference = build_model(params, "shapes", "rope_mixed")
    torch.manual_seed(5)
    other = build_model(params, "shapes", "rope_mixed")
    for seed, model in ((None, reference), (1, reference), (2, other)):
        save_atomic({"model": model.state_dict()}, tmp_path / run_name("shapes", "rope_mixed", seed) / "model.pt")
    table = seed_map_stability(params, tmp_path, log=lambda *_: None)
    assert set(table["other_seed"]) == {1, 2} and (table["n"] == 12).all()
    same = table[table["other_seed"] == 1].set_index(["method", "metric"])["mean"]
    for method in ("rollout", "cls_attention"):
        assert same[(method, "topk_iou")] == pytest.approx(1.0) and same[(method, "spearman")] == pytest.approx(1.0)
        assert same[(method, "js_divergence")] == pytest.approx(0.0, abs=1e-6)
    assert (table.loc[table["other_seed"] == 1, "prediction_agreement"] == 1.0).all()
    different = table[table["other_seed"] == 2].set_index(["method", "metric"])["mean"]
    assert different[("rollout", "topk_iou")] < 0.99
