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
# # Paper-ready figures, tables and the results README
#
# Builds everything a paper needs from the study's result tables under `results_dir` (the CSVs the
# `evaluate`, `efficiency`, `analysis-summary`, `safety` and `convex` stages write); no model is trained or
# evaluated here. Code and documentation: `lib/paper`. Written under `out_dir`:
#
# - `figures/*.png` and `figures/*.pdf`: every key figure in one style (`lib.plots.set_style`, seaborn
#   "colorblind" palette): accuracy vs resolution per dataset, cost vs tokens, mean attention distance per
#   layer, faithfulness and localisation with 95% CIs, accuracy vs corruption severity and risk-coverage per
#   variant, convex heads' accuracy;
# - `tables/*.md` and `tables/*.tex`: every table in Markdown and LaTeX, numbers as `value [95% CI]`;
# - `README.md`: each research question (RQ1-RQ5), the numbers that answer it (with CIs, all read from the
#   tables) and links to the figure and tables to look at; the same README goes to `results_readme`
#   (`results/README.md`, the page a reader opens first), its links pointing into `results/paper/`.
#
# A missing table stops the notebook with a FileNotFoundError that names it and the stage that writes it.

# %% tags=["parameters"]
params_file = "params.yaml"
results_dir = "results"
out_dir = "results/paper"
results_readme = "results/README.md"

# %%

from IPython.display import Image, Markdown, display

from lib.config import load_params
from lib.paper import build_all
from lib.run.paths import chdir_repo_root, output_dir

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
load_params(params_file)  # validated, as in every stage (the paper reads only result tables)
out = output_dir(out_dir)
built = build_all(results_dir, out, results_readme=results_readme)
print(f"{len(built['written'])} files written under {out}")

# %% [markdown]
# ## Figures

# %%
for name, png in built["figures"].items():
    print(name)
    display(Image(filename=str(out / png)))

# %% [markdown]
# ## The results README

# %%
display(Markdown(built["readme"].read_text()))
