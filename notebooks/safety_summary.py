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
# # Reliability across variants: which model would you trust, and at which abstention threshold?
#
# Combines the per-model outputs of `notebooks/safety.py` (one folder per run under `safety_dir`) into one
# comparison per dataset. Every number below is read from those tables; nothing is typed by hand.
#
# **Decision rule (fixed before looking at the numbers).** A deployment answers only when the
# temperature-scaled maximum softmax probability reaches the threshold chosen on clean validation data so
# that the 95% Clopper-Pearson upper bound of the validation risk is at most the target risk
# (`target_bound`). A variant is *trusted* when, at that threshold, the Clopper-Pearson upper bound of the
# realized selective risk on the clean test images, and the mean of those bounds over the moderate shifts
# (every corruption at severities <= `moderate_severity`), both stay at or below the target risk. Among
# trusted variants the recommendation is the one answering most often under those shifts (highest mean
# coverage); ties go to the lower E-AURC under shift. When no variant qualifies, the notebook says so and
# names the variant with the lowest bound under shift (`lib/safety/summary.py`).

# %% tags=["parameters"]
params_file = "params.yaml"
safety_dir = "results/safety"
out_dir = "results/safety_summary"

# %%
import json
from pathlib import Path

import pandas as pd

from lib.config import load_params
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads, run_folders
from lib.safety.plots import plot_variant_comparison
from lib.safety.predictors import predictor_lines
from lib.safety.summary import add_mce, model_summary, recommendation

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
out = output_dir(out_dir)
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs the summaries side by side (params.yaml `parallel_stages`)
baseline_variant, moderate_severity = params.safety.baseline_variant, params.safety.moderate_severity
runs = run_folders(Path(safety_dir), params.safety.runs, "shift_metrics.csv", "safety")
tables = {run.name: pd.read_csv(run / "shift_metrics.csv") for run in runs}
maps = {run.name: pd.read_csv(run / "map_metrics.csv") for run in runs}
meta = {run.name: json.loads((run / "summary.json").read_text()) for run in runs}
print(f"{len(runs)} evaluated models: {', '.join(tables)}")

# %%
summary = pd.DataFrame([model_summary(run, tables[run], maps[run], meta[run], moderate_severity) for run in tables])
summary = add_mce(summary, tables, baseline_variant)  # mCE against the baseline variant of the same dataset
summary = summary.sort_values(["dataset", "variant"]).reset_index(drop=True)
summary.to_csv(out / "variant_summary.csv", index=False)
print(summary.drop(columns=["run"]).round(3).to_string(index=False))

# %% [markdown]
# ## The answer, per dataset

# %%
answers = "\n\n".join(recommendation(rows, moderate_severity) for _, rows in summary.groupby("dataset"))
(out / "recommendation.md").write_text(answers + "\n")
print(answers)

# %% [markdown]
# ## Does attention predict errors? (per model, from `attention_predictors*.csv`)

# %%
predictors = [line for run in runs for line in predictor_lines(
    pd.read_csv(run / "attention_predictors.csv"), pd.read_csv(run / "attention_predictors_paired.csv"), run.name)]
(out / "attention_predictors.md").write_text("\n".join(predictors) + "\n")
print("\n".join(predictors))

# %% [markdown]
# ## Figures

# %%
set_style()
for dataset, rows in summary.groupby("dataset"):
    fig = plot_variant_comparison(rows, {
        "clean_accuracy": "clean accuracy",
        "corrupted_accuracy": "mean corrupted accuracy",
        "shift_ece_ts": f"ECE after T, severity <= {moderate_severity}",
        "shift_coverage": "coverage at target risk (shift)",
        "shift_risk": "realized risk (shift)",
        "map_spearman": "rollout Spearman to clean",
    })
    fig.suptitle(dataset)
    publish(fig, out / f"variants_{dataset}")
