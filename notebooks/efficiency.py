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
# # Efficiency: what each attention variant costs as the token count grows
#
# Forward and training throughput, achieved FLOP/s and peak memory of the study's ViT with each
# attention variant, on grids from 7x7 to 64x64 patches (49 to 4,096 tokens); where linear and
# sparse attention overtake softmax; and lib's ViT against timm's at the identical configuration, eager and compiled.
# All numbers are measured in this run on this machine (see the `machine` table). Methods: `lib/efficiency/benchmark.py`.

# %% tags=["parameters"]
params_file = "params.yaml"
out_dir = "results/efficiency"

# %%
import json
import platform

import pandas as pd
import torch

from lib.config import load_params
from lib.efficiency.benchmark import (compare_with_timm, crossover_tokens, efficiency_targets, loglog_slope, matmul_peak_gflops,
                           measure_in_subprocess, throughput_summary)
from lib.plots import plot_cost_vs_tokens, publish, set_style
from lib.run.paths import chdir_repo_root, output_dir

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
cfg = params.efficiency
out = output_dir(out_dir)
peak = matmul_peak_gflops()
machine = {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "fp32_matmul_peak_gflops": round(peak, 1)}
machine

# %%
rows = []
for name in cfg.variants:
    variant = params.variants[name]
    print(f"{name}: {variant.attention} + {variant.pos_embed}", flush=True)
    rows += [dict(row, variant=name) for row in measure_in_subprocess(
        variant.attention, variant.pos_embed, cfg.grids, cfg.tokens_per_batch, cfg.repeats, variant.attention_kwargs)]
table = pd.DataFrame(rows)
table["forward_fraction_of_peak"] = table["forward_gflops_per_s"] / peak
table.to_csv(out / "cost_vs_tokens.csv", index=False)
table.round(3)

# %% [markdown]
# ## Cost against token count (log-log)

# %%
set_style()
fig = plot_cost_vs_tokens(table)
publish(fig, out / "cost_vs_tokens")

# %% [markdown]
# ## Scaling exponents and crossovers with softmax
# The slope of log(time per image) against log(tokens) over the largest grids: 2 for quadratic
# attention once it dominates, 1 for linear cost. The crossover is the token count from which a
# variant stays at least `crossover_margin` cheaper than softmax attention (a tie within timing noise never decides).

# %%
baseline = table[table["variant"] == cfg.baseline]
summary = pd.DataFrame([{
    "variant": name,
    "forward_slope": loglog_slope(part, y="forward_ms_per_image", min_x=cfg.slope_min_tokens),
    "train_slope": loglog_slope(part, y="train_ms_per_image", min_x=cfg.slope_min_tokens),
    "forward_crossover_tokens": crossover_tokens(part, baseline, "forward_ms_per_image", cfg.crossover_margin),
    "train_crossover_tokens": crossover_tokens(part, baseline, "train_ms_per_image", cfg.crossover_margin),
    "crossover_margin": cfg.crossover_margin,
    "peak_mb_at_max_grid": float(part["peak_mb"].iloc[-1]),
} for name, part in table.groupby("variant", sort=False)])
summary.to_csv(out / "scaling.csv", index=False)
summary.round(3)

# %% [markdown]
# ## lib against timm at the identical configuration, eager and compiled
# Every model is timed once per round (median of `repeats` training steps), the rounds interleaved; the models in
# `efficiency.compiled` also as a `torch.compile`d training step (compile time apart). Ratios are taken round by
# round, so each goal shows its median, slowest and fastest round; the lib/timm goal must hold in every round.

# %%
per_round = compare_with_timm(cfg.timm_grid, cfg.timm_batch, cfg.repeats, cfg.timm_rounds, tuple(cfg.compiled))
per_round.to_csv(out / "lib_vs_timm_rounds.csv", index=False)
timm_table = throughput_summary(per_round, peak)
timm_table.to_csv(out / "lib_vs_timm.csv", index=False)
linear_variants = list(dict.fromkeys(table.loc[table["attention"] == "linear", "variant"]))
linear_slope = summary.set_index("variant").loc[linear_variants[0], "forward_slope"] if linear_variants else None
targets = efficiency_targets(per_round, peak, linear_slope)
targets.to_csv(out / "targets.csv", index=False)
(out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
timm_table.round(2)

# %%
targets.round(3)
