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
# # Resolution extrapolation: every trained model at many test resolutions
#
# Each run of the study (both DVC matrices) is tested at its training resolution and at every
# `eval_resolutions` entry of its dataset, patch size fixed, so the token grid shrinks or grows.
# Accuracies come with 95% Wilson intervals. The figures follow Heo et al. 2024, Fig. 4
# (ImageNet ViT-S: APE, RoPE-Axial, RoPE-Mixed equal at the training resolution, RoPE-Mixed's lead
# growing with resolution). A run whose weights did not change since the last evaluation is not
# evaluated again. Runs trained with extra seeds (`seeds` in params.yaml, DVC matrix `train-seeds`) are
# evaluated too and summarized over seeds: mean and 95% Student-t interval (`seeds_summary.csv`), and
# their attention maps are compared with the maps of the study's seed (`seed_map_stability.csv`).

# %% tags=["parameters"]
params_file = "params.yaml"
runs_dir = "results/runs"
previous_table = "results/resolution/resolution.csv"
previous_seeds_table = "results/resolution/resolution_seeds.csv"
out_dir = "results/resolution"

# %%
from pathlib import Path

from lib.config import load_params
from lib.plots import plot_accuracy_vs_resolution, publish, set_style
from lib.resolution.accuracy import evaluate_runs, evaluate_seeds, load_previous
from lib.resolution.report import resolution_markdown, seed_summary
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads
from lib.safety.shift import seed_map_stability

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs such stages side by side (params.yaml `parallel_stages`)
out = output_dir(out_dir)
table = evaluate_runs(params, Path(runs_dir), load_previous(previous_table))
table.to_csv(out / "resolution.csv", index=False)
markdown = resolution_markdown(table)
(out / "resolution.md").write_text(markdown)
print(markdown)

# %% [markdown]
# ## Accuracy over training seeds

# %%
per_seed = evaluate_seeds(params, Path(runs_dir), table, load_previous(previous_seeds_table))
per_seed.to_csv(out / "resolution_seeds.csv", index=False)
seeds = seed_summary(per_seed)
seeds.to_csv(out / "seeds_summary.csv", index=False)
if params.seeds.seeds:
    print(seeds.round(4).to_markdown(index=False))
else:
    print("no extra seeds (seeds.seeds is empty): seeds_summary.csv holds the study's single seed, CIs undefined")

# %% [markdown]
# ## Attention maps across training seeds
# Do two models trained alike but from different seeds look at the same patches? Rollout and raw CLS
# attention of each extra seed against the study's seed on the same clean test images: top-k IoU,
# Spearman rank correlation and Jensen-Shannon divergence (definitions: `lib/safety/reliability.py`),
# mean and standard error over images, with the share of images on which both predict the same class.

# %%
seed_maps = seed_map_stability(params, Path(runs_dir), params.evaluate.batch_size)
seed_maps.to_csv(out / "seed_map_stability.csv", index=False)
if len(seed_maps):
    print(seed_maps.pivot_table(index=["dataset", "variant", "other_seed", "method"], columns="metric", values="mean")
          .round(3).to_markdown())
else:
    print("no extra seeds (seeds.seeds is empty): no maps to compare across seeds")

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
