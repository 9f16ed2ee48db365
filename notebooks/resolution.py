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
# # Resolution extrapolation across position encodings
#
# Gathers the per-run evaluations into one tidy table and draws accuracy against test resolution,
# in the style of Heo et al. 2024, Fig. 4 (ViT-S on ImageNet: APE, RoPE-Axial and RoPE-Mixed equal at
# the training resolution; RoPE-Mixed's lead grows with resolution). Here: the study's tiny ViT on
# MNIST and on the procedural `shapes` scenes.

# %% tags=["parameters"]
params_file = "params.yaml"
eval_dir = "results/eval"
out_dir = "results/resolution"

# %%
from pathlib import Path

from matplotlib import pyplot as plt

from lib.config import load_params
from lib.plots import plot_accuracy_vs_resolution, save_figure, set_style
from lib.report import collect_resolution_tables, resolution_markdown

params = load_params(params_file)
out = Path(out_dir)
table = collect_resolution_tables(params, Path(eval_dir))
table.to_csv(out / "resolution.csv", index=False)
markdown = resolution_markdown(table)
(out / "resolution.md").write_text(markdown)
print(markdown)

# %%
set_style()
fig = plot_accuracy_vs_resolution(table, hue="variant")
save_figure(fig, out / "accuracy_vs_resolution")
plt.show()
