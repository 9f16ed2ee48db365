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
# # Explore one trained run
#
# Open in JupyterLab after `make repro`, set `run` below to any folder of `results/runs` (the list of
# trained runs is printed) and run all cells: the training curves, the final metrics, the accuracy at every
# test resolution, and the run's attention, with sliders for the test image, the block and the head and a
# menu for the test resolution (a larger image extends the patch grid). Not a pipeline stage: nothing is written.

# %% tags=["parameters"]
params_file = "params.yaml"
run = "shapes-rope_mixed"         # a folder of runs_dir: <dataset>-<variant>[-seed<S>]
runs_dir = "results/runs"
resolution_table = "results/resolution/resolution.csv"
num_images = 64                   # the first N test images to browse
out_dir = ""                      # set by lib/run/notebook.py when run as a script; unused

# %%
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
from IPython.display import display

from lib.analysis.explore import attention_view, find_run, load_curves, load_metrics, load_model, plot_attention_view, trained_runs
from lib.config import load_params
from lib.data import load_split
from lib.plots import plot_training_curves, set_style
from lib.run.paths import chdir_repo_root

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
print("trained runs:", ", ".join(r.name for r in trained_runs(params, runs_dir)))
chosen = find_run(params, run, runs_dir)
spec = params.datasets[chosen.dataset]
print(f"{chosen.name}: {params.variants[chosen.variant]}, {params.model_for(chosen.variant, chosen.dataset)}")
set_style()

# %% [markdown]
# ## Training curves and final metrics

# %%
curves = load_curves(chosen)
plot_training_curves(curves, chosen.name)
pd.json_normalize(load_metrics(chosen)).T.rename(columns={0: chosen.name})

# %%
if Path(resolution_table).is_file():
    table = pd.read_csv(resolution_table)
    display(table[table["run"] == chosen.name][["resolution", "grid", "tokens", "accuracy", "ci_low", "ci_high", "n"]])
else:
    print(f"{resolution_table}: not written yet (the `evaluate` stage)")

# %% [markdown]
# ## Attention: CLS attention per block and head, and rollout over all blocks

# %%
model = load_model(params, chosen)
test_sets = {}


def show(image_index: int, block: int, head: str, resolution: int) -> None:
    if resolution not in test_sets:  # the first images of the test split at this resolution
        test_sets[resolution] = load_split(Path(params.data_root), chosen.dataset, "test", resolution,
                                           limit=num_images, workers=params.data_workers)
    data = test_sets[resolution]
    image = data.images[min(image_index, len(data) - 1)]
    view = attention_view(model, image)
    plot_attention_view(image, view, block - 1, None if head == "mean" else int(head) - 1, data.classes,
                        int(data.labels[min(image_index, len(data) - 1)]))


depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
show(0, depth, "mean", spec.train_resolution)  # the first test image, last block, at the training resolution

# %% [markdown]
# Browse: any of the first `num_images` test images, any block and head, any test resolution.

# %%
resolutions = sorted({spec.train_resolution, *spec.eval_resolutions})
widgets.interact(show, image_index=widgets.IntSlider(0, 0, num_images - 1), block=widgets.IntSlider(depth, 1, depth),
                 head=widgets.Dropdown(options=["mean"] + [str(h + 1) for h in range(heads)]),
                 resolution=widgets.Dropdown(options=resolutions, value=spec.train_resolution));
