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
# # Evaluate one trained configuration across resolutions
#
# Test accuracy at the training resolution and at every `eval_resolutions` entry of the dataset,
# patch size fixed (so the token grid shrinks or grows), with 95% Wilson intervals.

# %% tags=["parameters"]
dataset = "mnist"
variant = "rope_mixed"
params_file = "params.yaml"
weights = "results/runs/mnist-rope_mixed/model.pt"
out_dir = "results/eval/mnist-rope_mixed"

# %%
import json
from pathlib import Path

from matplotlib import pyplot as plt

from lib.config import load_params
from lib.evaluate import accuracy_vs_resolution, load_trained_model
from lib.plots import plot_accuracy_vs_resolution, save_figure, set_style

params = load_params(params_file)
out = Path(out_dir)
model = load_trained_model(params, dataset, variant, Path(weights))
table = accuracy_vs_resolution(model, params, dataset, variant)
table.to_csv(out / "resolution.csv", index=False)
table

# %%
train_res = params.datasets[dataset].train_resolution
metrics = {
    "test_acc": float(table.loc[table["resolution"] == train_res, "accuracy"].iloc[0]),
    "test_acc_by_resolution": {str(r): float(a) for r, a in zip(table["resolution"], table["accuracy"])},
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
metrics

# %%
set_style()
fig = plot_accuracy_vs_resolution(table)
save_figure(fig, out / "accuracy_vs_resolution")
plt.show()
