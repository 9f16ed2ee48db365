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
# # Dense prediction across resolutions: segmentation heads on RQ1's trained seeds
#
# Heo et al. 2024 report RoPE's gains on ADE20k segmentation across resolutions. The CPU-scale counterpart: per-patch
# heads (a linear probe on the frozen final tokens, and a light fine-tune of backbone + head starting from the probe)
# on every seed of the RQ1 cells in `segmentation.cells`, trained at the training resolution on the shapes scenes'
# object masks, then tested on zoomed test images at every scale of `segmentation.scales`. The pixel classes
# (`segmentation.task: relation`) are background, the object that comes first along the label's axis (left or upper)
# and the other one: a patch cannot tell which it shows without context and position (circle vs square it could, from
# colour alone). The control `raw_patches` is the same probe on each patch's own pixels. Pixel mIoU per seed
# (`per_seed.csv`), seed means with 95% t-intervals (`summary.csv`), paired differences over seeds (`paired.csv`), and
# the sentences results/README.md quotes (`findings.md`).

# %% tags=["parameters"]
params_file = "params.yaml"
weights_dir = "results/rq1/weights"
out_dir = "results/segmentation"

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from lib.config import load_params
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.segmentation.figures import plot_miou_vs_scale
from lib.segmentation.study import SUMMARY_COLUMNS, findings, paired_summary, seed_summary, segment_cells

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
cfg = params.segmentation
out = output_dir(out_dir)

# %%
if cfg is None or not cfg.cells:
    lines = ["No segmentation cells in this profile (segmentation.cells is empty): the probe needs RQ1 cells on a data "
             "set with object masks."]
    pd.DataFrame(columns=SUMMARY_COLUMNS).to_csv(out / "summary.csv", index=False)  # paper-figures reads it
else:
    per_seed = segment_cells(params, Path(weights_dir))
    per_seed.to_csv(out / "per_seed.csv", index=False)
    summary = seed_summary(per_seed)
    summary.to_csv(out / "summary.csv", index=False)
    paired = paired_summary(per_seed, cfg.pairs())
    paired.to_csv(out / "paired.csv", index=False)
    lines = findings(summary, paired)
    set_style()
    publish(plot_miou_vs_scale(summary), out / "miou_vs_scale")
(out / "findings.md").write_text("".join(f"- {line}\n" for line in lines))
display(Markdown("\n".join(f"- {line}" for line in lines)))
