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
# # Explanations over training seeds (RQ3)
#
# `notebooks/analysis.py` compares explanation methods on one trained model, with intervals over its test images. Here
# the same comparisons run on every seed in `analysis.seeds` of the RQ1 cells in `analysis.seed_cells` (the weights RQ1
# tests), on the same test images, and methods are compared by paired differences over seeds with 95% t-intervals
# (`lib/analysis/seeds.py`): deletion / insertion under every fill of `analysis.fills`, Integrated Gradients' gain from
# integrating from the fill image, localisation, and the cascading-randomisation sanity check. Tables: `scores.csv`
# (per seed), `comparison.csv`, `ig_gain.csv`, `sanity.csv`, `accuracy.csv`; the sentences results/README.md quotes:
# `findings.md`.

# %% tags=["parameters"]
params_file = "params.yaml"
weights_dir = "results/rq1/weights"
out_dir = "results/analysis_seeds"

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from lib.analysis.plots import plot_seed_comparison
from lib.analysis.seeds import (
    COMPARISON_COLUMNS, compare_over_seeds, explain_cells, findings, ig_gain_over_seeds, sanity_over_seeds,
)
from lib.config import load_params
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
cfg = params.analysis
out = output_dir(out_dir)

# %%
if not cfg.seed_cells:
    lines = ["No cells in analysis.seed_cells: the explanations were not repeated over training seeds."]
    pd.DataFrame(columns=COMPARISON_COLUMNS).to_csv(out / "comparison.csv", index=False)  # paper-figures reads it
else:
    tables = explain_cells(params, Path(weights_dir))
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    comparison = compare_over_seeds(tables["scores"])
    comparison.to_csv(out / "comparison.csv", index=False)
    gains = ig_gain_over_seeds(tables["scores"])
    gains.to_csv(out / "ig_gain.csv", index=False)
    sanity = sanity_over_seeds(tables["sanity"], cfg.sanity_max_correlation) if len(tables["sanity"]) else tables["sanity"]
    sanity.to_csv(out / "sanity.csv", index=False)
    lines = findings(comparison, gains, sanity, tables["accuracy"])
    set_style()
    publish(plot_seed_comparison(comparison, cfg.fills[0]), out / "comparison")
(out / "findings.md").write_text("".join(f"- {line}\n" for line in lines))
display(Markdown("\n".join(f"- {line}" for line in lines)))
