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
# # Train one configuration
#
# Trains the ViT variant `variant` on `dataset` with every setting from `params.yaml`
# (AdamW, warmup + cosine schedule, label smoothing, light augmentation). A checkpoint is written
# after each epoch to `checkpoint_dir` and an interrupted run resumes from it; it is deleted once the run
# is done. Metrics go to dvclive (`out_dir/live`), the weights to `out_dir/model.pt`.
#
# Run by DVC through `lib/run/notebook.py` (see `dvc.yaml`); the parameters below are overridden. `seed`
# (None: params.yaml's `seed`) trains an extra seed of the configuration (the `train-seeds` matrix).

# %% tags=["parameters"]
dataset = "mnist"
variant = "rope_mixed"
params_file = "params.yaml"
out_dir = "results/runs/mnist-rope_mixed"
checkpoint_dir = "checkpoints"
progress = True
seed = None

# %%
from pathlib import Path

import pandas as pd

from lib.config import load_params
from lib.plots import plot_training_curves, publish
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads, run_name
from lib.run.train import save_run, train

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs such stages side by side (params.yaml `parallel_stages`)
if seed is not None:
    params = params.model_copy(update={"seed": seed})
out = output_dir(out_dir)
run = run_name(dataset, variant, seed)
print(f"{run}: {params.variants[variant]}")
print(params.model_for(variant, dataset))

# %%
result = train(params, dataset, variant, live_dir=out / "live",
               checkpoint_path=Path(checkpoint_dir) / f"{run}.pt", progress=progress)
save_run(result, out)  # model.pt, timing.json; the checkpoint goes, so a rerun of this configuration trains anew
history = pd.DataFrame(result.history)
history.round(4)

# %%
fig = plot_training_curves(history, run)
publish(fig, out / "curves")
