# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (attention-rope-study)
#     language: python
#     name: attention-rope-study
# ---

# %% [markdown]
# # Resolution extrapolation: every trained model at many test resolutions
#
# Each run of the study (both DVC matrices) is tested at its training resolution and at every
# `eval_resolutions` entry of its dataset, patch size fixed, so the token grid shrinks or grows.
# Accuracies come with 95% Wilson intervals. The figures follow Heo et al. 2024, Fig. 4
# (ImageNet ViT-S: APE, RoPE-Axial, RoPE-Mixed equal at the training resolution, RoPE-Mixed's lead
# growing with resolution). A run whose weights did not change since the last evaluation is not
# evaluated again.

# %% tags=["parameters"]
params_file = "params.yaml"
runs_dir = "results/runs"
previous_table = "results/resolution/resolution.csv"
out_dir = "results/resolution"

# %%
from pathlib import Path

import pandas as pd

from lib.config import load_params
from lib.evaluate import evaluate_runs
from lib.plots import plot_accuracy_vs_resolution, publish, set_style
from lib.report import resolution_markdown

params = load_params(params_file)
out = Path(out_dir)
previous = pd.read_csv(previous_table) if Path(previous_table).is_file() else None
table = evaluate_runs(params, Path(runs_dir), previous)
table.to_csv(out / "resolution.csv", index=False)
markdown = resolution_markdown(table)
(out / "resolution.md").write_text(markdown)
print(markdown)

# %% [markdown]
# ## Position encodings (softmax attention)

# %%
set_style()
fig = plot_accuracy_vs_resolution(table[table["attention"] == "softmax"], hue="pos_embed")
publish(fig, out / "accuracy_vs_resolution")

# %% [markdown]
# ## Attention variants (RoPE-Mixed)

# %%
attention = table[(table["pos_embed"] == "rope_mixed")]
fig = plot_accuracy_vs_resolution(attention[attention["dataset"].isin(params.zoo.datasets)], hue="attention")
publish(fig, out / "attention_vs_resolution")
