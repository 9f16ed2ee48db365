"""End to end: the DVC pipeline (papermill notebooks) on tiny parameters, in a temporary copy of the repo.

Checks what a user relies on: `dvc repro` writes metrics, tables and figures; a second `dvc repro`
re-runs nothing and `dvc status` is clean; rerunning gives identical metrics; a bad params file or an
altered data file stops the run with a clear error and leaves existing results untouched.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from jupyter_client.kernelspec import KernelSpecManager

from lib.run.checkpoint import load_checkpoint
from lib.run.notebook import KERNEL_NAME
from tests.conftest import REPO, tiny_params_dict, write_cifar100, write_image_folder

pytestmark = pytest.mark.slow

COPIED = ["lib", "notebooks", "profiles", "dvc.yaml", "data.dvc", ".dvc/config", ".dvcignore", ".gitignore", "jupytext.toml", "pyproject.toml",
          "results/rq1/float_check", "results/safety_seeds/float_check"]  # the default study's float checks: dependencies


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every result file's bytes; a failed run's `<out>.partial/` (its traceback) is not a result."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.endswith(".partial") for part in p.relative_to(folder).parts)}


def make_study(root: Path, profile: str, edit=None) -> Path:
    """A git + DVC copy of the repo at `root` with params.yaml switched to `profile` (as `make profile` does),
    then `edit(root)` (params ablations, user data), data materialized and the study reproduced once as `make repro`
    does: the per-run stages side by side (lib/run/lanes.py), then `dvc repro`."""
    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"Jupyter kernel {KERNEL_NAME!r} is not installed; run `make setup`")
    for name in COPIED:
        source = REPO / name
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        else:
            shutil.copy2(source, target)
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"], root)  # the default study
    switched = run([sys.executable, "-m", "lib.config.profiles", profile], root)  # what `make profile PROFILE=...` runs
    assert f"profile {profile!r}" in switched.stdout and "keys rewritten" in switched.stdout
    if edit is not None:
        edit(root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", profile], root)
    data = run([sys.executable, "-m", "lib.data.pin", "--dvc-file", "data.dvc", "--params", "params.yaml"], root)
    assert "materializing" in data.stdout and "matches data.dvc" in data.stdout
    dvc("commit", "--force", "--quiet", "data.dvc", cwd=root)
    lanes = run([sys.executable, "-P", "lib/run/lanes.py"], root)  # then `dvc repro`: what `make repro` runs
    assert "2 at a time" in lanes.stdout or yaml.safe_load((root / "params.yaml").read_text())["parallel_stages"] == 1
    dvc("repro", cwd=root)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The smoke profile, whole: `dvc repro` run once."""
    root = make_study(tmp_path_factory.mktemp("study"), "smoke")
    assert yaml.safe_load((root / "params.yaml").read_text()) == tiny_params_dict("data")
    return root


RUNS = ["mnist-ape", "mnist-rope_mixed", "shapes-ape", "shapes-rope_mixed", "shapes-linear", "signs-ape"]  # study, zoo, case study


def test_repro_writes_metrics_tables_and_figures(study):
    for run_name in RUNS:
        metrics = json.loads((study / "results" / "runs" / run_name / "live" / "metrics.json").read_text())
        assert {"train", "val", "step"} <= set(metrics) and 0 <= metrics["val"]["acc"] <= 1
        assert (study / "results" / "runs" / run_name / "model.pt").stat().st_size > 10_000
        assert (study / "results" / "runs" / run_name / "train.ipynb").exists()
        assert (study / "results" / "runs" / run_name / "live" / "plots" / "metrics" / "val" / "acc.tsv").exists()
    table = pd.read_csv(study / "results" / "resolution" / "resolution.csv")
    assert list(dict.fromkeys(table["run"])) == RUNS + ["shapes-rope_adaptive_res"]  # + the test_time run
    assert len(table) == (len(RUNS) + 1) * 3
    assert not (study / "results" / "runs" / "shapes-rope_adaptive_res").exists()  # never trained
    by_run = table.set_index(["run", "resolution"])
    adaptive, mixed = by_run.loc["shapes-rope_adaptive_res"], by_run.loc["shapes-rope_mixed"]
    assert set(adaptive["weights"]) == {"shapes-rope_mixed"} and (table["weights"] == table["run"]).sum() == len(RUNS) * 3
    assert (adaptive.loc[[24, 32], "loss"] == mixed.loc[[24, 32], "loss"]).all()  # RoPE-Mixed up to the training grid
    assert adaptive.loc[48, "loss"] != mixed.loc[48, "loss"]
    assert set(table.loc[table["dataset"] == "mnist", "resolution"]) == {20, 28, 36}
    assert set(table.loc[table["dataset"] == "shapes", "resolution"]) == {24, 32, 48}
    assert table["accuracy"].between(0, 1).all()
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    for figure in ("accuracy_vs_resolution", "attention_vs_resolution"):
        assert (study / "results" / "resolution" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (study / "results" / "resolution" / f"{figure}.pdf").read_bytes()[:5] == b"%PDF-"
    assert "| variant" in (study / "results" / "resolution" / "resolution.md").read_text()
    # the extra seed (train-seeds matrix) is evaluated apart and summarized over seeds with a t-interval
    per_seed = pd.read_csv(study / "results" / "resolution" / "resolution_seeds.csv")
    assert set(per_seed["run"]) == {"shapes-rope_mixed", "shapes-rope_mixed-seed1"} and set(per_seed["seed"]) == {0, 1}
    seeds = pd.read_csv(study / "results" / "resolution" / "seeds_summary.csv")
    assert (seeds["seeds"] == 2).all() and len(seeds) == 3
    assert (seeds["ci_low"] <= seeds["accuracy"]).all() and (seeds["accuracy"] <= seeds["ci_high"]).all()
    pair = per_seed[per_seed["resolution"] == 32].sort_values("seed")["accuracy"]
    assert seeds.loc[seeds["resolution"] == 32, "accuracy"].item() == pytest.approx(pair.mean())
    # its attention maps are compared with the study seed's, for each map method and similarity metric
    seed_maps = pd.read_csv(study / "results" / "resolution" / "seed_map_stability.csv")
    assert set(seed_maps["other_seed"]) == {1} and set(seed_maps["variant"]) == {"rope_mixed"}
    assert set(seed_maps["method"]) == {"rollout", "cls_attention"}
    assert set(seed_maps["metric"]) == {"topk_iou", "spearman", "js_divergence"}
    assert seed_maps["prediction_agreement"].between(0, 1).all() and (seed_maps["n"] > 0).all()


def test_rq1_cells_train_every_seed_and_the_summary_compares_them_paired(study):
    cells = ["shapes-rrc-ape", "shapes-rrc-rope_mixed", "shapes-light-rope_mixed", "shapes-rrc-rope_mixed-g4", "mnist-rrc-fire"]
    for cell in cells:
        accuracy = pd.read_csv(study / "results" / "rq1" / "runs" / cell / "accuracy.csv")
        assert set(accuracy["seed"]) == {0, 1} and accuracy["accuracy"].between(0, 1).all()
        assert sorted((study / "results" / "rq1" / "weights" / cell).glob("seed*.pt")) == \
            [study / "results" / "rq1" / "weights" / cell / f"seed{s}.pt" for s in (0, 1)]
        # zoom at every scale, field of view only from the training grid up; same images everywhere
        plan = accuracy[accuracy["method"] == "trained"].groupby("protocol")["scale"].apply(sorted).to_dict()
        assert plan == {"zoom": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0], "field_of_view": [1.0, 1.0, 2.0, 2.0]}
        assert (accuracy["n"] == 40).all()
        history = pd.read_csv(study / "results" / "rq1" / "runs" / cell / "history.csv")
        assert history.groupby("seed")["epoch"].max().to_dict() == {0: 2, 1: 2}
    mixed = pd.read_csv(study / "results" / "rq1" / "runs" / "shapes-rrc-rope_mixed" / "accuracy.csv")
    assert set(mixed["method"]) == {"trained", "pi", "ntk", "yarn"}
    at_train = mixed[(mixed["scale"] == 1.0) & (mixed["protocol"] == "zoom")].groupby("seed")["accuracy"]
    assert (at_train.nunique() == 1).all()  # every rescaling is the trained model at the training grid
    assert set(pd.read_csv(study / "results" / "rq1" / "runs" / "shapes-rrc-ape" / "accuracy.csv")["method"]) == {"trained"}
    assert (study / "results" / "rq1" / "runs" / "shapes-rrc-rope_mixed" / "ramp.csv").is_file()
    # seeds differ (a seed is a real replicate): different weights, different per-seed histories
    history = pd.read_csv(study / "results" / "rq1" / "runs" / "shapes-rrc-ape" / "history.csv")
    assert history[history["seed"] == 0]["train/loss"].tolist() != history[history["seed"] == 1]["train/loss"].tolist()
    summary = study / "results" / "rq1" / "summary"
    seeds = pd.read_csv(summary / "accuracy.csv")
    assert (seeds["seeds"] == 2).all() and (seeds["ci_low"] <= seeds["accuracy"]).all()
    paired = pd.read_csv(summary / "paired.csv")
    assert {"variant", "method", "augmentation", "protocol"} <= set(paired["factor"])
    one = paired[(paired["factor"] == "variant") & (paired["first"] == "rope_mixed") & (paired["protocol"] == "zoom")
                 & (paired["scale"] == 2.0) & (paired["augmentation"] == "rrc")].iloc[0]
    per_seed = {cell: pd.read_csv(study / "results" / "rq1" / "runs" / cell / "accuracy.csv").query(
        "method == 'trained' and protocol == 'zoom' and scale == 2.0").set_index("seed")["accuracy"]
        for cell in ("shapes-rrc-rope_mixed", "shapes-rrc-ape")}
    assert one["difference"] == pytest.approx((per_seed["shapes-rrc-rope_mixed"] - per_seed["shapes-rrc-ape"]).mean())
    findings = (summary / "findings.md").read_text()
    assert "shapes, rrc augmentation, 8x8 training grid, at the training resolution" in findings
    assert "no difference detected" in findings
    # the -g4 cell trains on a 4x4 grid (16 px) and is compared with the 8x8 one seed by seed at equal scales
    small = pd.read_csv(study / "results" / "rq1" / "runs" / "shapes-rrc-rope_mixed-g4" / "accuracy.csv")
    assert set(small["train_grid"]) == {4} and set(small.loc[small["scale"] == 1.0, "resolution"]) == {16}
    assert set(mixed["train_grid"]) == {8}
    grids = paired[paired["factor"] == "train_grid"]
    assert set(zip(grids["first"], grids["second"])) == {("8", "4")} and set(grids["variant"]) == {"rope_mixed"}
    assert "shapes, rrc augmentation, 4x4 training grid, at the training resolution (seed mean" in findings
    # the committed float check ran with the default study's settings, not the smoke profile's: never compared
    assert "Float check: stale" in findings or "Float check: not run" in findings
    for figure in ("accuracy_vs_scale_shapes", "accuracy_vs_scale_mnist", "entropy_vs_scale_shapes", "rescalings_shapes"):
        assert (summary / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_efficiency_stage_measures_every_variant_and_timm(study):
    cost = pd.read_csv(study / "results" / "efficiency" / "cost_vs_tokens.csv")
    assert set(cost["variant"]) == {"rope_mixed", "linear"} and sorted(set(cost["tokens"])) == [4, 16]
    assert (cost["train_images_per_s"] > 0).all() and (cost["forward_gflops"] > 0).all()
    timm = pd.read_csv(study / "results" / "efficiency" / "lib_vs_timm.csv")
    assert {"lib_rope_mixed", "timm_eva_rope_mixed", "lib_ape", "timm_vit_ape"} <= set(timm["model"])
    # the smoke profile compiles lib's RoPE-Mixed training step only (efficiency.compiled)
    compiled = timm[timm["mode"] == "compiled"]
    assert list(compiled["model"]) == ["lib_rope_mixed"] and (compiled["compile_seconds"] > 0).all()
    assert (timm["images_per_s_train_min"] <= timm["images_per_s_train_max"]).all()
    targets = pd.read_csv(study / "results" / "efficiency" / "targets.csv")
    assert len(targets) == 11 and set(targets["mode"]) == {"eager", "compiled"}
    assert targets.loc[targets["mode"] == "eager", "value"].notna().all()  # every eager goal measured
    peak = targets[targets["target"].str.startswith("lib RoPE-Mixed training FLOP/s")]
    assert peak["value"].between(0, 1).all() and len(peak) == 2  # compiled too: lib RoPE-Mixed was compiled
    machine = json.loads((study / "results" / "efficiency" / "machine.json").read_text())
    assert machine["fp32_matmul_peak_gflops"] > 0


def test_analysis_stages_write_tables_and_figures_per_run_and_summary(study):
    for run_name in ("shapes-rope_mixed", "shapes-linear"):
        folder = study / "results" / "analysis" / run_name
        layer_head = pd.read_csv(folder / "layer_head.csv")
        assert len(layer_head) == 2 * 2  # tiny model: depth 2 x 2 heads
        assert layer_head["mean_distance_pixels"].ge(0).all()
        faithfulness = pd.read_csv(folder / "faithfulness.csv")
        assert {"rollout", "random", "integrated_gradients"} <= set(faithfulness["method"])
        assert (folder / "explanations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(pd.read_csv(folder / "localisation.csv")) > 0  # shapes has object masks
        # the smoke profile's control variant (rope_mixed) gets every fill and the sanity check; linear the first fill
        controlled = run_name == "shapes-rope_mixed"
        fills = ["mean", "blur", "other_image"] if controlled else ["mean"]
        assert list(dict.fromkeys(pd.read_csv(folder / "fills.csv")["fill"])) == fills
        assert list(pd.read_csv(folder / "ig_baseline.csv")["fill"].unique()) == fills
        sanity = pd.read_csv(folder / "sanity.csv")
        assert (len(sanity) > 0) == controlled and (folder / "sanity.png").exists() == controlled
    summary = study / "results" / "analysis_summary"
    assert set(pd.read_csv(summary / "layer_head.csv")["variant"]) == {"rope_mixed", "linear"}
    assert set(pd.read_csv(summary / "sanity.csv")["variant"]) == {"rope_mixed"}
    assert list(summary.glob("*.pdf"))


def test_analysis_seeds_stage_compares_methods_over_the_rq1_seeds(study):
    out = study / "results" / "analysis_seeds"
    scores = pd.read_csv(out / "scores.csv")  # explained in worker processes, one model per seed
    assert set(zip(scores["cell"], scores["seed"])) == {(c, s) for c in ("shapes-rrc-ape", "shapes-rrc-rope_mixed")
                                                        for s in (0, 1)}
    assert set(scores["fill"]) == {"mean", "blur", "other_image", "none"}  # none: localisation (shapes has masks)
    comparison = pd.read_csv(out / "comparison.csv")
    assert (comparison["seeds"] == 2).all() and (comparison["status"] == "best").sum() == comparison.groupby(
        ["cell", "fill", "metric"]).ngroups  # one best method per cell, fill and metric
    assert set(pd.read_csv(out / "sanity.csv")["cell"]) == {"shapes-rrc-ape", "shapes-rrc-rope_mixed"}
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    findings = (out / "findings.md").read_text().splitlines()
    readme = (study / "results" / "README.md").read_text().split("## RQ3")[1].split("## RQ4")[0]
    assert findings and all(line in readme for line in findings)  # the results README quotes every line


def test_safety_stages_write_shift_metrics_and_a_recommendation(study):
    for variant in ("ape", "rope_mixed"):
        folder = study / "results" / "safety" / f"shapes-{variant}"
        shifts = pd.read_csv(folder / "shift_metrics.csv")
        corrupted = shifts[shifts["family"] != "resolution"]
        assert len(corrupted) == 1 + 16 * 2  # clean + 16 corruptions x 2 severities
        assert set(shifts.loc[shifts["family"] == "resolution", "resolution"]) == {24, 48}
        assert shifts["ece"].between(0, 1).all() and shifts["accuracy"].between(0, 1).all()
        assert (folder / "reliability.pdf").read_bytes()[:5] == b"%PDF-"
    summary = study / "results" / "safety_summary"
    assert list(summary.glob("*.csv")) and list(summary.glob("*.png"))


def test_safety_seeds_stage_compares_encodings_paired_over_seeds(study):
    out = study / "results" / "safety_seeds" / "summary"
    conditions = pd.read_csv(out / "conditions.csv")
    assert set(zip(conditions["variant"], conditions["seed"])) == {(v, s) for v in ("ape", "rope_mixed") for s in (0, 1)}
    assert (conditions.groupby(["variant", "seed"]).size() == 2 + 16 * 2).all()  # clean at 1x and 1.5x, 16 x 2
    assert set(conditions.loc[conditions["shift"] == "clean", "resolution"]) == {32, 48}
    assert (conditions["n"] == 40).all()
    per_seed = pd.read_csv(out / "per_seed.csv").set_index(["variant", "seed"])
    assert (per_seed.loc["ape", "mce"] == 1).all()  # the baseline's own errors
    comparison = pd.read_csv(out / "comparison.csv")
    differences = comparison[comparison["metric"] != "McNemar, clean images"].set_index("metric")
    assert set(differences["variant"]) == {"rope_mixed"} and (differences["seeds"] == 2).all()
    per_seed_difference = per_seed.loc["rope_mixed", "clean_accuracy"] - per_seed.loc["ape", "clean_accuracy"]
    assert differences.loc["clean accuracy", "difference"] == pytest.approx(per_seed_difference.mean())
    # seed 0 of a safety run is the model the train stage trained: same recipe, seed and thread count
    seed0 = load_checkpoint(study / "results" / "safety_seeds" / "weights" / "shapes-ape-seed0.pt")["model"]
    trained = load_checkpoint(study / "results" / "runs" / "shapes-ape" / "model.pt")["model"]
    assert seed0.keys() == trained.keys() and all(torch.equal(seed0[k], trained[k]) for k in trained)
    # attention signals against MSP per model: clean 40 images, moderate shift = 16 corruptions at severity 1 (<= 3)
    predictors = pd.read_csv(out / "predictors.csv")
    assert set(zip(predictors["variant"], predictors["seed"], predictors["split"])) == {
        (v, s, split) for v in ("ape", "rope_mixed") for s in (0, 1) for split in ("clean", "moderate shift")}
    assert set(predictors.groupby("split")["images"].unique().map(tuple)) == {(40,), (640,)}
    assert {"msp", "rollout_entropy", "cls_entropy", "rollout_top_mass", "seed_agreement",
            "seed_map_agreement"} <= set(predictors["score"])
    differences = pd.read_csv(out / "predictor_differences.csv")
    assert (differences["seeds"] == 2).all()
    references = differences.groupby("score")["reference"].unique().map(tuple).to_dict()
    assert references.pop("seed_map_agreement") == ("seed_agreement",) and set(references.values()) == {("msp",)}
    assert set(pd.read_csv(out / "family_effects.csv")["family"]) == {"noise", "blur", "weather", "digital", "occlusion"}
    findings = (out / "findings.md").read_text().splitlines()
    assert any(", moderate shift (2 seeds, 640 images): error-detection AUROC" in line for line in findings)
    readme = (study / "results" / "README.md").read_text().split("## RQ4")[1].split("## RQ5")[0]
    assert findings and all(line in readme for line in findings)  # the results README quotes every line
    assert "rq4_seeds.png" in readme and "rq4_predictors.png" in readme


def test_convex_stage_compares_every_head_paired_in_domain_and_in_transfer(study):
    convex = study / "results" / "convex"
    summary = pd.read_csv(convex / "summary.csv")
    settings = ["shapes-light-rope_mixed->shapes", "mnist-rrc-fire->shapes"]  # the smoke profile's: a grey backbone
    assert list(dict.fromkeys(summary["setting"])) == settings
    heads = ["convex linear attention", "L2 logistic, attention features", "MLP, flattened tokens", "MLP, pooled tokens"]
    assert all(set(heads) <= set(summary.loc[summary["setting"] == s, "head"]) for s in settings)
    assert summary["test_accuracy"].between(0, 1).all() and (summary["seeds"] == 2).all()
    runs = pd.read_csv(convex / "runs.csv")
    solves = runs[runs["family"] == "convex"]
    certified = solves["converged"].astype(bool)
    assert (solves.loc[certified, "relative_gap"] <= 1e-3).all()  # the tiny params' gap_tol
    # 60 images: a weak-beta FNO solve may stop at the smoke profile's 3,000 steps; it says so, and no other does
    assert certified.mean() >= 0.9 and (solves.loc[~certified, "iterations"] == 3000).all()
    assert (pd.read_csv(convex / "settings.csv")["leaked"] == 0).all()  # no head test image in a backbone's training
    paired = pd.read_csv(convex / "paired.csv")
    assert set(paired["setting"]) == set(settings) and (paired["seeds"] == 2).all()
    assert (convex / "paired_differences.pdf").read_bytes()[:5] == b"%PDF-"
    findings = (convex / "findings.md").read_text().splitlines()
    assert any("L2 logistic, attention features" in line for line in findings)
    readme = (study / "results" / "README.md").read_text().split("## RQ5")[1]
    assert all(line in readme for line in findings if line.strip())  # the results README quotes the stage's verdicts


def test_segmentation_stage_scores_every_seed_at_every_scale_and_compares_paired(study):
    out = study / "results" / "segmentation"
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert set(per_seed["cell"]) == {"shapes-rrc-ape", "shapes-rrc-rope_mixed", "raw_patches"}  # + the pixel control
    assert set(per_seed["seed"]) == {0, 1} and set(per_seed["task"]) == {"relation"}
    assert set(per_seed["head"]) == {"linear probe", "fine-tune"}
    assert sorted(set(per_seed["grid"])) == [4, 8, 16]  # 0.5x, 1x, 2x the 8x8 training grid
    assert per_seed["miou"].between(0, 1).all() and (per_seed["images"] == 20).all()
    paired = pd.read_csv(out / "paired.csv")
    assert set(zip(paired["first"], paired["second"])) == {("rope_mixed", "ape")} and (paired["seeds"] == 2).all()
    assert (out / "miou_vs_scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mIoU" in (out / "findings.md").read_text()
    assert "Dense prediction across resolutions" in (study / "results" / "README.md").read_text()


def test_paper_figures_stage_writes_figures_tables_and_the_results_readme(study):
    paper = study / "results" / "paper"
    for name in ("accuracy_vs_resolution", "cost_vs_tokens", "attention_distance", "safety", "convex_heads"):
        assert (paper / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (paper / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert (paper / "tables" / "resolution.tex").read_text().lstrip().startswith("\\begin{table}")
    readme = (study / "results" / "README.md").read_text()
    assert all(f"## RQ{i}." in readme for i in range(1, 6))
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((study / "results" / link).is_file() for link in links), links
    # the numbers come from the run's own tables: the RQ1 table holds its MNIST accuracies
    resolution = pd.read_csv(study / "results" / "resolution" / "resolution.csv")
    mnist_ape = resolution.query("run == 'mnist-ape' and resolution == 28")["accuracy"].item()
    assert f"{100 * mnist_ape:.1f}" in readme
    # RQ1's answer is the seed study's computed findings, every line of them
    findings = (study / "results" / "rq1" / "summary" / "findings.md").read_text().splitlines()
    rq1 = readme.split("## RQ1")[1].split("## RQ2")[0]
    assert findings and all(line in rq1 for line in findings)


def test_metrics_and_plots_show(study):
    shown = dvc("metrics", "show", "--json", cwd=study)
    assert "results/runs/shapes-linear/live/metrics.json" in shown.stdout
    plots = dvc("plots", "show", "--json", cwd=study)
    assert "accuracy_vs_resolution.png" in plots.stdout and "val/acc.tsv" in plots.stdout


def test_exploration_notebook_runs_on_any_trained_run(study):
    for run_name in ("shapes-rope_mixed-seed1", "mnist-ape"):
        out = study / "explored" / run_name
        run([sys.executable, "-P", "lib/run/notebook.py", "notebooks/explore.py", str(out), "-p", f"run={run_name}"], study)
        executed = json.loads((out / "explore.ipynb").read_text())
        outputs = [o for cell in executed["cells"] for o in cell.get("outputs", [])]
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the curves and the attention view
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # the sliders
    failed = run([sys.executable, "-P", "lib/run/notebook.py", "notebooks/explore.py", str(study / "explored" / "x"),
                  "-p", "run=shapes-rope_axial"], study, check=False)  # not trained by the smoke profile
    assert failed.returncode != 0 and "'shapes-rope_axial' is not a trained run" in failed.stdout + failed.stderr


def test_second_repro_runs_nothing_and_status_is_clean(study):
    again = dvc("repro", cwd=study)
    assert "Running stage" not in again.stdout
    assert json.loads(dvc("status", "--json", cwd=study).stdout) == {}


def test_rerun_gives_identical_metrics(study):
    metrics = study / "results" / "runs" / "shapes-rope_mixed" / "live" / "metrics.json"
    weights = study / "results" / "runs" / "shapes-rope_mixed" / "model.pt"
    evaluation = study / "results" / "resolution" / "resolution.csv"
    segmentation = study / "results" / "segmentation" / "per_seed.csv"  # probes and fine-tunes in worker processes
    # RQ1 trained its seeds in the cell's own process, in a lane of one CPU (lib/run/lanes.py); alone, in workers
    cell = study / "results" / "rq1" / "runs" / "shapes-rrc-ape" / "accuracy.csv"
    if len(os.sched_getaffinity(0)) <= 2:  # two lanes of one CPU each: no worker pool logged its seeds
        assert "seed 1: trained" not in (cell.parent / "rq1.ipynb").read_text()
    before = metrics.read_bytes(), weights.read_bytes(), evaluation.read_bytes(), segmentation.read_bytes(), cell.read_bytes()
    assert not list((study / "checkpoints").glob("*.pt"))  # finished runs keep no checkpoint to resume
    retrained = dvc("repro", "--force", "--single-item", "train@shapes-rope_mixed", cwd=study)
    assert "resuming" not in retrained.stdout + retrained.stderr  # --force trains from scratch
    rerun = dvc("repro", "--force", "--single-item", "evaluate", cwd=study)
    dvc("repro", "--force", "--single-item", "segmentation", cwd=study)
    dvc("repro", "--force", "--single-item", "rq1@shapes-rrc-ape", cwd=study)
    assert "seed 1: trained" in (cell.parent / "rq1.ipynb").read_text()  # logged by the pool as each seed arrives
    dvc("repro", "--single-item", "rq1-summary", cwd=study)  # it reads the cell's folder: the executed notebook differs
    dvc("repro", "--single-item", "paper-figures", cwd=study)  # it charts every run's curve: the rerun rewrote them
    assert (metrics.read_bytes(), weights.read_bytes(), evaluation.read_bytes(), segmentation.read_bytes(),
            cell.read_bytes()) == before
    # unchanged weights: the evaluation reuses every run's rows instead of evaluating again
    evaluated = len(RUNS) + 2  # and the test_time run shapes-rope_adaptive_res, the extra seed shapes-rope_mixed-seed1
    assert (rerun.stdout + rerun.stderr).count("unchanged, reusing its evaluation") == evaluated  # logged live
    executed = (study / "results" / "resolution" / "evaluate.ipynb").read_text()
    assert executed.count("unchanged, reusing its evaluation") == evaluated


def test_bad_params_stop_before_work_and_keep_results(study):
    results = snapshot(study / "results")
    params_file = study / "params.yaml"
    good = params_file.read_text()
    params = yaml.safe_load(good)
    params["train"]["epocs"] = params["train"].pop("epochs")
    params_file.write_text(yaml.safe_dump(params))
    try:
        failed = dvc("repro", cwd=study, check=False)
    finally:
        params_file.write_text(good)
    assert failed.returncode != 0
    assert "train.epocs: unknown key (did you mean 'epochs'?)" in failed.stdout + failed.stderr
    assert snapshot(study / "results") == results
    assert list((study / "results" / "runs").glob("*.partial"))  # the failed notebook, kept for its traceback,
    assert json.loads(dvc("status", "--json", cwd=study).stdout) == {}  # is no change to any stage's inputs


def test_altered_data_stops_training_and_names_the_file(study):
    results = snapshot(study / "results")
    target = study / "data" / "mnist" / "val_labels.npy"
    original = target.read_bytes()
    target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        check = run([sys.executable, "-m", "lib.data.pin"], study, check=False)  # what `make repro` runs first
        # plain `dvc repro` re-pins the altered data in data.dvc; the stage compares with the committed pin
        failed = dvc("repro", "train@mnist-ape", cwd=study, check=False)
    finally:
        target.write_bytes(original)
        run(["git", "checkout", "data.dvc"], study)
    assert check.returncode == 2 and "altered: data/mnist/val_labels.npy" in check.stderr
    assert failed.returncode != 0
    assert "the committed data.dvc pins" in failed.stdout + failed.stderr
    assert snapshot(study / "results") == results


# --- the paper profile's pipeline, on user data in the real on-disk formats (tiny fixtures, this CPU) ---


def shrink_paper_profile(root: Path) -> None:
    """The paper profile as `make profile PROFILE=paper` leaves it, scaled down to seconds by ablations (as
    `dvc exp run -S` would make them), with tiny CIFAR-100 and ImageNet-style folders under data/."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    smoke = yaml.safe_load((root / "profiles" / "smoke.yaml").read_text())
    assert params["profile"] == "paper" and params["study"]["datasets"] == ["cifar100", "imagenet"]
    params.update(device="cpu", data_workers=2)  # two decoding processes: the streaming path for real
    for section in ("model", "evaluate", "efficiency", "convex"):
        params[section].update(smoke[section])
    params["convex"].update(layer=2, settings=["cifar100-rrc-rope_mixed->cifar100", "imagenet-rrc-ape->cifar100"])
    params["train"].update(epochs=2, warmup_epochs=1, batch_size=16)  # bf16 autocast, flips: the paper recipe
    params["variants"]["moh"]["attention_kwargs"]["top_k"] = 1
    params["datasets"]["cifar100"].update(eval_resolutions=[16, 32], train={})
    params["datasets"]["imagenet"].update(train_resolution=32, eval_resolutions=[32, 48], train={})
    params["datasets"]["signs"]["train"] = {"epochs": 2}
    params["study"]["variants"] = ["rope_mixed"]
    params["zoo"]["variants"] = ["ape"]
    params["case_study"]["variants"] = ["ape"]
    params["seeds"].update(runs={"datasets": ["cifar100"], "variants": ["rope_mixed"]}, seeds=[])  # the smoke run has seeds
    params["analysis"].update(runs={"datasets": ["cifar100"], "variants": ["rope_mixed"]}, **{
        k: v for k, v in smoke["analysis"].items() if k not in ("runs", "seed_cells")})
    params["analysis"]["seed_cells"] = ["cifar100-rrc-rope_mixed"]  # the seed study on user data (no masks)
    params["safety"].update(runs={"datasets": ["cifar100"], "variants": ["ape", "rope_mixed"]}, num_val_images=10,
                            **{k: v for k, v in smoke["safety"].items() if k != "runs"})
    params["safety"]["corruptions"] = ["gaussian_noise", "fog"]
    params["safety"]["example_corruptions"] = ["fog"]
    params["rq1"].update(cells=["cifar100-rrc-rope_mixed", "imagenet-rrc-ape"], seeds=[0, 1], scales=[0.5, 1.0, 1.5],
                         test_images=20, entropy_images=4)
    tiny = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "num_classes": 3}  # no weights file here
    params["pretrained"]["models"]["vit_s_rope_mixed"].update(checkpoint=None, timm_kwargs=tiny)
    params["pretrained"].update(run=["vit_s_rope_mixed"],
                                resolutions=[32, 48], test_images=10, batch_size=4)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    write_cifar100(root / "data", train=200, test=40)
    write_image_folder(root / "data", classes=3, train=12, val=4)


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("paper"), "paper", shrink_paper_profile)


PAPER_RUNS = ["cifar100-rope_mixed", "imagenet-rope_mixed", "cifar100-ape", "signs-ape"]  # study, zoo, case study


def test_paper_profile_runs_every_stage_on_user_data(paper_study):
    table = pd.read_csv(paper_study / "results" / "resolution" / "resolution.csv")
    assert list(dict.fromkeys(table["run"])) == PAPER_RUNS + ["cifar100-rope_adaptive_res", "imagenet-rope_adaptive_res"]
    assert set(table.loc[table["dataset"] == "imagenet", "resolution"]) == {32, 48}
    assert (table.loc[table["dataset"] == "imagenet", "n"] == 12).all()  # the labelled val/ folder: 3 classes x 4
    assert (table.loc[table["dataset"] == "cifar100", "n"] == 40).all()
    assert set(table.loc[table["run"] == "imagenet-rope_mixed", "grid"]) == {2, 3}  # imagenet's patch 16
    assert set(table.loc[table["run"] == "cifar100-rope_mixed", "grid"]) == {4, 8}  # CIFAR's patch 4
    layer_head = pd.read_csv(paper_study / "results" / "analysis" / "cifar100-rope_mixed" / "layer_head.csv")
    assert len(layer_head) == 2 * 2 and layer_head["mean_distance_pixels"].ge(0).all()
    assert pd.read_csv(paper_study / "results" / "analysis" / "cifar100-rope_mixed" / "localisation.csv").empty  # no masks
    shifts = pd.read_csv(paper_study / "results" / "safety" / "cifar100-rope_mixed" / "shift_metrics.csv")
    assert len(shifts[shifts["family"] != "resolution"]) == 1 + 2 * 2
    convex = pd.read_csv(paper_study / "results" / "convex" / "summary.csv")
    assert convex["test_accuracy"].between(0, 1).all()
    # RQ1 on user data: zoom only (field of view needs a scene or a canvas), the rescalings on RoPE-Mixed
    rq1 = {cell: pd.read_csv(paper_study / "results" / "rq1" / "runs" / cell / "accuracy.csv")
           for cell in ("cifar100-rrc-rope_mixed", "imagenet-rrc-ape")}
    assert set(rq1["cifar100-rrc-rope_mixed"]["method"]) == {"trained", "pi", "ntk", "yarn"}
    assert (rq1["cifar100-rrc-rope_mixed"]["n"] == 20).all() and (rq1["imagenet-rrc-ape"]["n"] == 12).all()
    assert set(rq1["imagenet-rrc-ape"]["resolution"]) == {16, 32, 48}  # grids 1, 2, 3 at patch 16
    assert set(pd.concat(rq1.values())["protocol"]) == {"zoom"}
    pretrained = pd.read_csv(paper_study / "results" / "pretrained" / "vit_s_rope_mixed" / "accuracy.csv")
    assert list(pretrained["method"]) == ["trained", "pi", "ntk", "yarn"] * 2 and (pretrained["n"] == 10).all()
    assert set(pretrained["weights"]) == {"random"} and set(pretrained["resolution"]) == {32, 48}
    readme = (paper_study / "results" / "README.md").read_text()
    assert all(f"## RQ{i}." in readme for i in range(1, 6))
    # no segmentation cells in the paper profile: a header-only summary, the no-cells sentence, no figure
    assert pd.read_csv(paper_study / "results" / "segmentation" / "summary.csv").empty
    assert "No segmentation cells in this profile" in readme and "segmentation_miou_vs_scale" not in readme
    seed_scores = pd.read_csv(paper_study / "results" / "analysis_seeds" / "scores.csv")
    assert set(seed_scores["seed"]) == {0, 1} and "none" not in set(seed_scores["fill"])  # CIFAR-100: no localisation
    assert "Explanations over training seeds" in readme
    safety_seeds = pd.read_csv(paper_study / "results" / "safety_seeds" / "summary" / "conditions.csv")
    assert set(safety_seeds["dataset"]) == {"cifar100"} and set(safety_seeds["seed"]) == {0, 1}
    assert json.loads(dvc("status", "--json", cwd=paper_study).stdout) == {}
