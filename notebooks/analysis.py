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
# # Attention analysis of one trained model
#
# What does attention look at, and how faithful are attention-based explanations? (research question 3)
# For one run (`dataset`, `variant`, its `weights`) on its test split at the training resolution:
#
# 1. **Attention statistics** over all test images, per block and head: mean attention distance
#    (Dosovitskiy et al. 2021), entropy, concentration of the CLS attention, the mean attention per
#    relative offset (what the position encoding learned), and high-norm "sink" tokens (Darcet et al. 2023).
# 2. **Head importance** (Michel et al. 2019) and the accuracy as heads are pruned, against random orders.
# 3. **Explanations** of the predicted class on the first `analysis.num_images` test images: raw CLS attention,
#    rollout, gradient-weighted rollout (Chefer et al. 2021), Grad-CAM, Integrated Gradients (from
#    `analysis.ig_baseline`), random maps; their **faithfulness** (deletion / insertion, positive / negative
#    perturbation, 95% bootstrap CIs) under every fill of `analysis.fills` (the first: the headline tables; how
#    much IG gains by integrating from the fill image: `ig_baseline.csv`) and, on `shapes`, their
#    **localisation** of the two objects (pointing game, relevance mass).
#
# Settings come from the `analysis` section of `params.yaml`. Definitions are in the docstrings of
# `lib/analysis`. Tables are tidy CSVs, one row per observation.

# %% tags=["parameters"]
params_file = "params.yaml"  # settings: the `analysis` section (plus `seed`, `evaluate.batch_size`)
dataset = "shapes"
variant = "rope_mixed"
weights = "results/runs/shapes-rope_mixed/model.pt"
out_dir = "results/analysis/shapes-rope_mixed"

# %%
import json
import time
from pathlib import Path

import pandas as pd

from lib.analysis.compare import compare_methods
from lib.analysis.explained import explain_and_score, sanity_check
from lib.analysis.plots import (
    plot_explanation_grid, plot_faithfulness, plot_mean_distance, plot_offset_profiles, plot_perturbation_curves,
    plot_pruning, plot_sanity,
)
from lib.analysis.tables import (
    IG_FROM_FILL, accuracy_vs_chance, attention_tables, fill_sensitivity, head_importance_tables,
    localisation_per_image, localisation_table, without_method,
)
from lib.config import load_params
from lib.data import load_split
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads, load_trained_model, normalize, predict, run_name

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs such stages side by side (params.yaml `parallel_stages`)
settings, batch_size, seed = params.analysis, params.evaluate.batch_size, params.seed
out = output_dir(out_dir)
spec = params.variants[variant]
run = {"run": run_name(dataset, variant), "dataset": dataset, "variant": variant,
       "attention": spec.attention, "pos_embed": spec.pos_embed}
model = load_trained_model(params, dataset, variant, Path(weights))
data = load_split(Path(params.data_root), dataset, settings.split, params.datasets[dataset].train_resolution,
                  limit=settings.max_images, workers=params.data_workers)  # in memory: the first max_images
inputs = normalize(data.images)
mean_colour = data.images.mean(dim=(0, 2, 3), keepdim=True)  # the split's mean colour: the headline fill
timings = {}


def save_table(table: pd.DataFrame, name: str) -> pd.DataFrame:
    table = table.assign(**run)
    table.to_csv(out / f"{name}.csv", index=False)
    return table


print(f"{run['run']}: {len(data)} {settings.split} images {tuple(data.images.shape[1:])}, attention={spec.attention}, "
      f"pos_embed={spec.pos_embed}")
# the model's accuracy on the analysed images: explanations of a model at chance level explain nothing
correct = predict(model, inputs, batch_size).argmax(-1) == data.labels
accuracy = save_table(accuracy_vs_chance(correct, len(data.classes)), "accuracy")
accuracy.round(3)

# %% [markdown]
# ## Attention statistics (all analysed images)

# %%
start = time.perf_counter()
stats = attention_tables(model, inputs, batch_size, settings.top_fraction, settings.high_norm_threshold)
timings["attention_statistics"] = time.perf_counter() - start
layer_head = save_table(stats["layer_head"], "layer_head")
offsets = save_table(stats["offset_profile"], "offset_profile")
high_norm = save_table(stats["high_norm"], "high_norm")
print(layer_head.groupby("layer")[["mean_distance_pixels", "entropy_normalized", "cls_top_mass", "cls_gini"]].mean().round(3))
print(high_norm.round(3).to_string(index=False))

# %%
set_style()
fig = plot_mean_distance(layer_head)
publish(fig, out / "mean_distance")
fig = plot_offset_profiles(offsets)
publish(fig, out / "offset_profiles")

# %% [markdown]
# ## Head importance and pruning (all test images)

# %%
start = time.perf_counter()
heads = head_importance_tables(model, inputs, data.labels, batch_size, settings.random_orders, seed)
timings["head_importance_and_pruning"] = time.perf_counter() - start
save_table(heads["head_importance"], "head_importance")
pruning = save_table(heads["pruning"], "pruning")
fig = plot_pruning(pruning)
publish(fig, out / "pruning")

# %% [markdown]
# ## Explanations and their faithfulness (first `analysis.num_images` test images)

# %%
subset = slice(0, min(settings.num_images, len(data)))
controls = settings.control_variants is None or variant in settings.control_variants  # every fill, the sanity check
fills = settings.fills if controls else settings.fills[:1]
start = time.perf_counter()
predicted, ig_reference, explanations, by_fill = explain_and_score(
    model, data.images[subset], data.labels[subset], mean_colour, settings, fills, seed, batch_size,
    settings.bootstrap_resamples)
faith = without_method(by_fill[settings.fills[0]], IG_FROM_FILL)  # the headline tables: the first fill
sensitivity = fill_sensitivity(by_fill, resamples=settings.bootstrap_resamples, seed=seed)
timings["explanations_and_faithfulness"] = time.perf_counter() - start
faithfulness = save_table(faith["faithfulness"], "faithfulness")
curves = save_table(faith["curves"], "perturbation_curves")
save_table(faith["per_image"], "faithfulness_per_image")
save_table(sensitivity["fills"], "fills")
ig_baseline = save_table(sensitivity["ig_baseline"].assign(baseline=settings.ig_baseline), "ig_baseline")
print(faithfulness.pivot_table(index="method", columns="metric", values="value").round(3))
print(f"Integrated Gradients from each fill image instead of {settings.ig_baseline} (positive: looks more faithful):")
print(ig_baseline[["fill", "metric", "ig", "ig_from_fill", "gain", "gain_low", "gain_high"]].round(3).to_string(index=False))

# %%
shown = slice(0, settings.example_images)
titles = [f"{data.classes[label]}\npred. {data.classes[p]}".replace("_", " ")
          for label, p in zip(data.labels[shown].tolist(), predicted[shown].tolist())]
fig = plot_explanation_grid(data.images[shown], explanations.cls_layers[shown],
                            {name: maps[shown] for name, maps in explanations.maps.items()},
                            explanations.ig_pixels[shown], titles)
publish(fig, out / "explanations")
fig = plot_faithfulness(faithfulness)
publish(fig, out / "faithfulness")
fig = plot_perturbation_curves(curves)
publish(fig, out / "perturbation_curves")

# %% [markdown]
# ## Sanity check: do the maps change when the model's weights are re-drawn? (first `analysis.sanity_images`;
# runs of `analysis.control_variants`)
# Cascading randomisation (Adebayo et al. 2018), top down; a method fails where its maps, with every layer
# re-drawn, still rank the patches like the trained model's (`lib/analysis/sanity.py`).

# %%
start = time.perf_counter()
if settings.sanity_images and controls:
    sanity = sanity_check(model, data.images[subset], predicted, ig_reference, settings, seed,
                          settings.bootstrap_resamples)
    fig = plot_sanity(sanity)
    publish(fig, out / "sanity")
else:
    sanity = pd.DataFrame(columns=["step", "randomised", "method", "spearman", "ci_low", "ci_high", "n",
                                   "max_correlation", "fails"])
timings["sanity_check"] = time.perf_counter() - start
sanity = save_table(sanity, "sanity")
print(sanity[sanity["step"] == sanity["step"].max()][["method", "spearman", "ci_low", "ci_high", "fails"]].round(3)
      .to_string(index=False))

# %% [markdown]
# ## Localisation of the objects (`shapes` only: the circle and square masks)

# %%
start = time.perf_counter()
if data.masks is not None:
    local_per_image = localisation_per_image(explanations.maps, data.masks[subset], data.images[subset],
                                             data.labels[subset], model.patch_embed.patch_size)
    local = localisation_table(local_per_image, data.masks[subset], model.patch_embed.patch_size,
                               settings.bootstrap_resamples, seed)
else:  # no masks (mnist): empty tables with the same columns, so every run writes the same files
    local_per_image = pd.DataFrame(columns=["method", "metric", "image", "value", "better"])
    local = pd.DataFrame(columns=["method", "metric", "value", "ci_low", "ci_high", "n", "mask_area_share"])
timings["localisation"] = time.perf_counter() - start
local = save_table(local, "localisation")
print(local.pivot_table(index="method", columns="metric", values="value").round(3) if len(local) else "no masks")

# %% [markdown]
# ## Methods compared on the same images
# Paired bootstrap differences: each method against the random order, and the gap to the best method (a method
# whose gap interval reaches 0 is tied with the best).

# %%
per_image = pd.concat([faith["per_image"], local_per_image]) if len(local_per_image) else faith["per_image"]
comparison = save_table(compare_methods(per_image, settings.bootstrap_resamples, seed), "method_comparison")
comparison.pivot_table(index="method", columns="metric", values="gap_to_best").round(3)

# %%
timings["total"] = sum(timings.values())
(out / "timing.json").write_text(json.dumps({**run, "images": len(data), "explained_images": subset.stop,
                                             "seconds": {k: round(v, 2) for k, v in timings.items()}}, indent=2) + "\n")
print(json.dumps(timings, indent=2))
