# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (attention-rope-study)
#     language: python
#     name: attention-rope-study
# ---

# %% [markdown]
# # Reliability under shift: one trained model
#
# Research question 4. One model (dataset, variant) is tested on its clean test images and under shift:
# the 15 ImageNet-C corruptions at severities 1-5 (Hendrycks & Dietterich 2019, lengths scaled to the model's
# patch or to the image, `safety.corruption_lengths`, see `lib/safety/corruptions.py`), square occluders, and
# other test resolutions. Per condition:
#
# - **robustness**: accuracy with 95% Wilson intervals; corruption error (CE), relative CE and mCE against a
#   baseline model's table when one is given;
# - **calibration**: ECE (15 bins), NLL and Brier score, before and after temperature scaling fitted on the
#   clean validation split (Guo et al. 2017);
# - **selective prediction**: AURC, E-AURC and AUGRC of the maximum softmax probability, and the abstention
#   thresholds chosen on validation for the target risk (plain, and with a Clopper-Pearson upper bound) with
#   the coverage, risk and the risk's Clopper-Pearson upper bound they give on the test condition;
# - **attention reliability**: similarity of the corrupted image's explanation maps (last-block CLS
#   attention, rollout) to the clean ones (top-k IoU, Spearman, Jensen-Shannon), and localisation on the
#   object masks (relevance mass, pointing game) where the data set has masks;
# - **attention as a predictor**: per-image attention signals (map entropies, top mass) scored as detectors
#   of errors and of shift against confidence baselines (MSP, entropy, energy), alone and combined with MSP.
#
# Settings come from the `safety` section of `params.yaml`. The default (the first 200 test images, all 16
# corruptions at severities 1-5, i.e. 80 corrupted copies, and the dataset's other evaluation resolutions)
# keeps one model to about a minute on 2 CPU cores.

# %% tags=["parameters"]
params_file = "params.yaml"  # settings: the `safety` section (plus `seed`, `evaluate.batch_size`)
dataset = "signs"
variant = "rope_mixed"
weights = "results/runs/signs-rope_mixed/model.pt"
out_dir = "results/safety/signs-rope_mixed"
baseline_table = ""  # shift_metrics.csv of the baseline model for CE / mCE ("" -> raw errors; the summary has mCE)

# %%
import json
import time
from pathlib import Path

import pandas as pd
import torch

from lib.config import load_params
from lib.data import dataset_info, load_split
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads, load_trained_model
from lib.safety.calibration import fit_temperature
from lib.safety.maps import STABILITY_NOISE, run_model
from lib.safety.plots import (
    plot_accuracy_vs_severity,
    plot_example_maps,
    plot_map_similarity,
    plot_reliability,
    plot_risk_coverage,
)
from lib.safety.predictors import (detection_table, fit_combined, labelled_signals, orientations,
                                   predictor_comparisons, scored_splits)
from lib.safety.robustness import corruption_errors, mean_corruption_error
from lib.safety.selective import threshold_for_risk
from lib.safety.shift import confidence_and_correct, evaluate_shifts, prediction_row

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
started = time.perf_counter()
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs such stages side by side (params.yaml `parallel_stages`)
settings, batch_size, seed = params.safety, params.evaluate.batch_size, params.seed
torch.manual_seed(seed)
out = output_dir(out_dir)
root = Path(params.data_root)
train_resolution = params.datasets[dataset].train_resolution
resolutions = [r for r in params.datasets[dataset].eval_resolutions if r != train_resolution]
resolutions = resolutions if settings.resolution_shift else []
model = load_trained_model(params, dataset, variant, Path(weights))
has_masks = dataset_info(dataset, root)["has_masks"]
val = load_split(root, dataset, "val", train_resolution, limit=settings.num_val_images, workers=params.data_workers)
test = load_split(root, dataset, "test", train_resolution, limit=settings.num_test_images, workers=params.data_workers)
print(f"{dataset}-{variant}: {len(val)} validation, {len(test)} test images at {train_resolution} px; "
      f"{len(settings.corruptions)} corruptions x {len(settings.severities)} severities, resolutions {resolutions}")

# %% [markdown]
# ## Temperature and abstention thresholds, from the clean validation split
#
# The temperature T minimizes the validation NLL. The thresholds act on the temperature-scaled maximum
# softmax probability: `target` is the lowest threshold whose validation selective risk is at most the
# target risk; `target_bound` the lowest whose 95% Clopper-Pearson upper bound is.

# %%
# maps too: the attention signals' validation values
val_outputs = run_model(model, val.images, batch_size, stability_noise=STABILITY_NOISE, seed=seed)
val_logits = val_outputs.logits
temperature = fit_temperature(val_logits, val.labels)
val_confidence, val_correct = confidence_and_correct(val_logits, val.labels, temperature)
thresholds = {
    "target": threshold_for_risk(val_confidence, val_correct, settings.target_risk),
    "target_bound": threshold_for_risk(val_confidence, val_correct, settings.target_risk, upper_bound=True),
}
val_row = prediction_row(val_logits, val.labels, temperature, thresholds)
print(f"T = {temperature:.3f}; thresholds {thresholds}; validation coverage at them: "
      f"{val_row['coverage_target']:.3f}, {val_row['coverage_target_bound']:.3f}")

# %% [markdown]
# ## Every condition
#
# Clean, each corruption at each severity, each other resolution (scenes re-rendered for procedural data
# sets, antialiased resize for MNIST). Maps of a shifted condition are compared with the clean maps of the
# same images (at another resolution both are resampled to the coarser grid). Stability of the maps across
# training seeds is measured by the `evaluate` stage (`seed_map_stability.csv`).

# %%
resolution_sets = {resolution: load_split(root, dataset, "test", resolution, limit=len(test), workers=params.data_workers)
                   for resolution in resolutions}
results = evaluate_shifts(
    model, test, {"dataset": dataset, "variant": variant, "resolution": train_resolution}, temperature, thresholds,
    settings.corruptions, settings.severities, seed, settings.top_fraction, settings.moderate_severity, resolution_sets,
    settings.example_corruptions, settings.example_severity, settings.num_examples, batch_size,
    settings.corruption_lengths)
shifts, maps_long = results.shifts, results.maps
bins = results.bins.assign(dataset=dataset, variant=variant)
curves = results.curves.assign(dataset=dataset, variant=variant)
shifts.to_csv(out / "shift_metrics.csv", index=False)
maps_long.to_csv(out / "map_metrics.csv", index=False)
bins.to_csv(out / "reliability_bins.csv", index=False)
curves.to_csv(out / "risk_coverage.csv", index=False)
columns = ["shift", "severity", "resolution", "accuracy", "ece", "ece_ts", "nll", "nll_ts", "aurc", "coverage_target",
           "risk_target"]
print(shifts[columns].round(3).to_string(index=False))

# %% [markdown]
# ## Does attention predict errors?
#
# Every signal comes from the image's own forward pass (a deployed model has no clean reference):
# `lib/safety/predictors.py`. Each signal's direction and the combined score (logistic regression on MSP and
# the attention signals) are fixed on the clean validation split; the test images only evaluate them:
# error-detection AUROC and AUGRC on the clean test images and on the moderate shifts pooled (severity <=
# `safety.moderate_severity`), clean-vs-shifted AUROC, and AUGRC differences against MSP paired on the same
# images (bootstrap over test images with their corrupted copies: one training seed, so no claim about
# encodings).

# %%
signals = results.signals
signals.round(6).to_csv(out / "signals.csv.gz", index=False)  # per image and condition: ~9 MB as plain text
val_signals = labelled_signals(val_outputs, val.labels, temperature, settings.top_fraction)
orient = orientations(val_signals)
combined = fit_combined(val_signals)
clean_signals, moderate_signals = scored_splits(signals, train_resolution, settings.moderate_severity)
detection = detection_table(clean_signals, moderate_signals, orient, combined).assign(dataset=dataset, variant=variant)
detection.to_csv(out / "attention_predictors.csv", index=False)
paired = predictor_comparisons(clean_signals, moderate_signals, orient, combined, seed=seed)
paired.to_csv(out / "attention_predictors_paired.csv", index=False)
print("orientation on validation:", orient)
print(detection.drop(columns=["dataset", "variant"]).round(3).to_string(index=False))
print(paired.round(4).to_string(index=False))

# %% [markdown]
# ## Corruption errors
#
# CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}, relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean),
# mCE and relative mCE their means over the ImageNet-C corruptions (occlusion excluded). Without a baseline
# table only the mean errors are reported.

# %%
corruption_rows = shifts[shifts["family"].isin(["noise", "blur", "weather", "digital", "occlusion", "clean"])]
baseline = None
if baseline_table:
    baseline = pd.read_csv(baseline_table)
    baseline = baseline[baseline["family"] != "resolution"]
per_corruption = corruption_errors(corruption_rows, baseline).assign(dataset=dataset, variant=variant)
per_corruption.to_csv(out / "corruption_errors.csv", index=False)
mce = mean_corruption_error(per_corruption)
print(per_corruption.round(3).to_string(index=False))
print(mce)

# %% [markdown]
# ## Figures

# %%
set_style()
name = f"{dataset} · {variant}"
corrupted = shifts[shifts["family"] != "resolution"]
fig = plot_accuracy_vs_severity(corrupted, name)
publish(fig, out / "accuracy_vs_severity")

# %%
fig = plot_reliability(bins[bins["condition"].isin(["clean", "severity 1", "severity 3", "severity 5"])],
                       f"{name}: reliability, clean and all corruptions pooled per severity")
publish(fig, out / "reliability")

# %%
fig = plot_risk_coverage(curves, settings.target_risk, f"{name}: risk-coverage")
publish(fig, out / "risk_coverage")

# %%
corrupted_maps = maps_long[maps_long["family"].isin(["noise", "blur", "weather", "digital", "occlusion"])]
for metric in ("spearman", "topk_iou"):
    fig = plot_map_similarity(corrupted_maps, metric, f"{name}: map similarity to the clean map")
    publish(fig, out / f"map_{metric}")
if has_masks:
    fig = plot_map_similarity(corrupted_maps, "relevance_mass", f"{name}: relevance mass inside the objects")
    publish(fig, out / "map_relevance_mass")

# %%
fig = plot_example_maps(results.example_images, results.example_maps, f"{name}: rollout, clean and severity {settings.example_severity}")
publish(fig, out / "example_maps")

# %% [markdown]
# ## Summary

# %%
clean_row = shifts[shifts["shift"] == "clean"].iloc[0]
summary = {
    "dataset": dataset,
    "variant": variant,
    "weights": str(weights),
    "test_images": len(test),
    "temperature": temperature,
    "target_risk": settings.target_risk,
    "thresholds": thresholds,
    "validation": {k: val_row[k] for k in ("accuracy", "ece", "ece_ts", "coverage_target", "risk_target",
                                           "coverage_target_bound", "risk_target_bound")},
    "clean": {k: float(clean_row[k]) for k in ("accuracy", "ece", "ece_ts", "nll", "nll_ts", "brier", "aurc",
                                               "coverage_target", "risk_target")},
    "corruption": mce,
    "baseline_table": baseline_table,
    "seconds": time.perf_counter() - started,
}
(out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
print(json.dumps(summary, indent=2, sort_keys=True, default=float))
