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
# # RQ1: one cell of the resolution study, every training seed
#
# Trains `cell` = `<dataset>-<augmentation>-<variant>[-g<grid>]` (params.yaml `rq1.cells`) once per seed of
# `rq1.seeds`, with the cell's augmentation (`rq1.augmentations`) and everything else as the study trains that
# dataset; then tests every seed on the same first `rq1.test_images` test images at every scale of
# `rq1.scales` (test grid / training grid) under every protocol of `rq1.protocols` (zoom: the same picture at
# more pixels; field_of_view: a larger canvas, objects keep their pixel size), and a RoPE-Mixed model also with
# every test-time rescaling of `rq1.rescalings` (position interpolation, NTK-aware, YaRN ramp). The comparison
# across cells is `notebooks/rq1_summary.py`. Weights: `weights_dir/seed<k>.pt`.

# %% tags=["parameters"]
cell = "shapes-rrc-rope_mixed"
params_file = "params.yaml"
out_dir = "results/rq1/runs/shapes-rrc-rope_mixed"
weights_dir = "results/rq1/weights/shapes-rrc-rope_mixed"
checkpoint_dir = "checkpoints/rq1"

# %%
import time
from pathlib import Path

from lib.config import load_params
from lib.extrapolation.study import run_cell
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import available_cpus

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
dataset, augmentation, variant, train_grid = params.rq1.parse(cell)
print(f"{cell}: {params.variants[variant]}; augmentation {params.rq1.augmentations[augmentation]}; "
      f"training grid {train_grid or 'of datasets.' + dataset}; seeds {params.rq1.seeds}, "
      f"{min(params.rq1.workers, available_cpus())} at a time")

# %%
started = time.perf_counter()
tables = run_cell(params, cell, Path(weights_dir), Path(checkpoint_dir))
out = output_dir(out_dir)
for name, table in tables.items():
    if not table.empty:  # ramp.csv: RoPE-Mixed cells only
        table.to_csv(out / f"{name}.csv", index=False)
print(f"{cell}: {len(params.rq1.seeds)} seeds trained and tested in {time.perf_counter() - started:.0f} s")

# %%
summary = tables["accuracy"].pivot_table(index=["method", "protocol", "scale"], columns="seed", values="accuracy", sort=False)
summary.mul(100).round(1)
