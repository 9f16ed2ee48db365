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
# # Attention analysis across models
#
# Gathers the per-model tables written by `notebooks/analysis.py` (one folder per run under
# `analysis_dir`) and compares them: how far attention reaches per block by position encoding and by
# attention variant, what each position encoding learned as a function of the relative offset, and how
# faithful and well-localised each explanation method is for each variant. Confidence intervals are the
# per-model bootstrap intervals over test images.

# %% tags=["parameters"]
params_file = "params.yaml"
analysis_dir = "results/analysis"
out_dir = "results/analysis_summary"

# %%
from pathlib import Path

import pandas as pd

from lib.analysis.plots import (
    plot_distance_by_variant, plot_metric_by_variant, plot_offset_profiles_by_variant,
)
from lib.config import load_params
from lib.plots import publish, set_style
from lib.resolution.report import attention_variants, position_encodings
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads, run_folders

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs the summaries side by side (params.yaml `parallel_stages`)
out = output_dir(out_dir)
reference_pos_embed = params.analysis.reference_pos_embed  # the position encoding the attention variants share
runs = run_folders(Path(analysis_dir), params.analysis.runs, "layer_head.csv", "analysis")
print(f"{len(runs)} analysed runs: {', '.join(path.name for path in runs)}")


def gather(name: str) -> pd.DataFrame:
    """One table of every run's `name`.csv (runs without rows, e.g. localisation without masks, drop out)."""
    tables = [pd.read_csv(path / f"{name}.csv") for path in runs]
    table = pd.concat([t for t in tables if len(t)] or tables[:1], ignore_index=True)
    table.to_csv(out / f"{name}.csv", index=False)
    return table


layer_head, offsets, faithfulness = gather("layer_head"), gather("offset_profile"), gather("faithfulness")
localisation, high_norm, pruning = gather("localisation"), gather("high_norm"), gather("pruning")
accuracy, comparison = gather("accuracy"), gather("method_comparison")  # paired method comparisons per run
fills, ig_baseline = gather("fills"), gather("ig_baseline")  # deletion / insertion under every fill; IG from the fill
sanity = gather("sanity")  # cascading randomisation of the weights: how much each method's maps change
compare_dataset = layer_head["dataset"].value_counts().idxmax()  # the dataset with the most analysed variants
set_style()

# %% [markdown]
# ## Mean attention distance by position encoding (softmax attention) and by attention variant

# %%
fig = plot_distance_by_variant(position_encodings(layer_head), hue="pos_embed")
publish(fig, out / "distance_by_pos_embed")
variants = attention_variants(layer_head[layer_head["dataset"] == compare_dataset], reference_pos_embed)
fig = plot_distance_by_variant(variants, hue="attention")
publish(fig, out / "distance_by_attention")

# %% [markdown]
# ## What each position encoding learned: attention by relative offset (head mean, every block)

# %%
on_dataset = offsets[offsets["dataset"] == compare_dataset]
fig = plot_offset_profiles_by_variant(position_encodings(on_dataset), column="pos_embed")
publish(fig, out / "offset_profiles_by_pos_embed")
fig = plot_offset_profiles_by_variant(attention_variants(on_dataset, reference_pos_embed), column="attention")
publish(fig, out / "offset_profiles_by_attention")

# %% [markdown]
# ## Faithfulness of the explanations by attention variant and by position encoding

# %%
faith = faithfulness[faithfulness["dataset"] == compare_dataset]
fig = plot_metric_by_variant(attention_variants(faith, reference_pos_embed), hue="attention")
publish(fig, out / "faithfulness_by_attention")
fig = plot_metric_by_variant(position_encodings(faith), hue="pos_embed")
publish(fig, out / "faithfulness_by_pos_embed")
table = faithfulness.pivot_table(index=["dataset", "variant"], columns=["metric", "method"], values="value")
print(table.round(3).to_string())

# %% [markdown]
# ## Does the fill decide the verdict? The best method per fill, and what Integrated Gradients gains from the fill image

# %%
print(fills[fills["status"].isin(["best", "tied with best"])].pivot_table(
    index=["dataset", "variant"], columns=["metric", "fill"], values="method", aggfunc=lambda m: " = ".join(sorted(m))
).to_string())
print(ig_baseline.pivot_table(index=["dataset", "variant"], columns=["metric", "fill"], values="gain").round(3).to_string())

# %% [markdown]
# ## Sanity check: rank correlation with the trained model's maps as the weights are re-drawn, top down

# %%
if len(sanity):
    print(sanity.pivot_table(index=["variant", "method"], columns="step", values="spearman", sort=False).round(2).to_string())

# %% [markdown]
# ## Localisation of the objects (data sets with object masks: shapes) by attention variant and by position encoding

# %%
if len(localisation):
    fig = plot_metric_by_variant(attention_variants(localisation, reference_pos_embed), hue="attention")
    publish(fig, out / "localisation_by_attention")
    fig = plot_metric_by_variant(position_encodings(localisation), hue="pos_embed")
    publish(fig, out / "localisation_by_pos_embed")
    print(localisation.pivot_table(index="variant", columns=["metric", "method"], values="value").round(3).to_string())
else:
    print("no analysed data set has object masks: no localisation")

# %% [markdown]
# ## High-norm tokens and head pruning

# %%
print(high_norm.pivot_table(index=["dataset", "variant"], columns="layer", values="outliers_per_image").round(3).to_string())
importance_order = pruning[pruning["order"] == "importance"]
half = importance_order[importance_order["heads_removed"] == importance_order["heads_removed"].max() // 2]
print("accuracy with half the heads removed (least important first):")
print(half.set_index(["dataset", "variant"])["accuracy"].round(3).to_string())
