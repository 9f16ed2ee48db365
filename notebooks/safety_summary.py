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
# # Reliability across variants: which model would you trust, and at which abstention threshold?
#
# Combines the per-model outputs of `notebooks/safety.py` (one folder per run under `safety_dir`) into one
# comparison per dataset. Every number below is read from those tables; nothing is typed by hand.
#
# **Decision rule (fixed before looking at the numbers).** A deployment answers only when the
# temperature-scaled maximum softmax probability reaches the threshold chosen on clean validation data so
# that the 95% Wilson upper bound of the validation risk is at most the target risk (`target_bound`). A
# variant is *trusted* when, at that threshold, the realized selective risk on the clean test images and its
# mean over the moderate shifts (every corruption at severities <= `moderate_severity`) both stay at or
# below the target risk. Among trusted variants the recommendation is the one answering most often under
# those shifts (highest mean coverage); ties go to the lower E-AURC under shift. When no variant qualifies,
# the notebook says so and names the variant with the lowest realized risk under shift.

# %% tags=["parameters"]
params_file = "params.yaml"
safety_dir = "results/safety"
out_dir = "results/safety_summary"

# %%
import json
from pathlib import Path

import pandas as pd
from matplotlib import pyplot as plt

from lib.config import load_params
from lib.plots import save_figure, set_style
from lib.safety.corruptions import IMAGENET_C
from lib.safety.plots import plot_variant_comparison
from lib.safety.robustness import corruption_errors, mean_corruption_error
from lib.study import run_name

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
params = load_params(params_file)
baseline_variant, moderate_severity = params.safety.baseline_variant, params.safety.moderate_severity
# the runs that `safety.runs` names, in params.yaml's order; a missing table is an error, not a silent gap
runs = [Path(safety_dir) / run_name(dataset, variant)
        for dataset in params.safety.runs.datasets for variant in params.safety.runs.variants]
missing = [str(run / "shift_metrics.csv") for run in runs if not (run / "shift_metrics.csv").is_file()]
if missing:
    raise FileNotFoundError(f"safety tables missing (run the `safety` stage first): {', '.join(missing)}")
tables = {run.name: pd.read_csv(run / "shift_metrics.csv") for run in runs}
maps = {run.name: pd.read_csv(run / "map_metrics.csv") for run in runs}
meta = {run.name: json.loads((run / "summary.json").read_text()) for run in runs}
print(f"{len(runs)} evaluated models: {', '.join(tables)}")

# %%
def corruption_only(table: pd.DataFrame) -> pd.DataFrame:
    return table[~table["family"].isin(["resolution"])]


def model_row(run: str) -> dict:
    """One model's summary: clean, corrupted (all and moderate), resolution and map-stability numbers."""
    table, info = tables[run], meta[run]
    clean = table[table["shift"] == "clean"].iloc[0]
    shifted = table[table["shift"].isin([*IMAGENET_C, "occlusion"])]
    moderate = shifted[shifted["severity"] <= moderate_severity]
    resolution = table[table["family"] == "resolution"]
    rollout = maps[run][(maps[run]["method"] == "rollout") & maps[run]["shift"].isin([*IMAGENET_C, "occlusion"])]
    rollout_moderate = rollout[rollout["severity"] <= moderate_severity]
    row = {
        "run": run, "dataset": clean["dataset"], "variant": clean["variant"], "test_images": int(clean["n"]),
        "target_risk": info["target_risk"], "temperature": info["temperature"],
        "threshold": info["thresholds"]["target_bound"],
        "clean_accuracy": clean["accuracy"], "corrupted_accuracy": shifted["accuracy"].mean(),
        "mean_corruption_error": mean_corruption_error(corruption_errors(corruption_only(table)))["mean_error"],
        "resolution_accuracy": resolution["accuracy"].mean() if len(resolution) else float("nan"),
        "clean_ece": clean["ece"], "clean_ece_ts": clean["ece_ts"],
        "shift_ece": moderate["ece"].mean(), "shift_ece_ts": moderate["ece_ts"].mean(),
        "clean_eaurc": clean["eaurc"], "shift_eaurc": moderate["eaurc"].mean(),
        "clean_coverage": clean["coverage_target_bound"], "clean_risk": clean["risk_target_bound"],
        "shift_coverage": moderate["coverage_target_bound"].mean(), "shift_risk": moderate["risk_target_bound"].mean(),
        "worst_shift_risk": moderate["risk_target_bound"].max(),
        "map_spearman": rollout_moderate.loc[rollout_moderate["metric"] == "spearman", "mean"].mean(),
        "map_topk_iou": rollout_moderate.loc[rollout_moderate["metric"] == "topk_iou", "mean"].mean(),
        "relevance_mass": rollout_moderate.loc[rollout_moderate["metric"] == "relevance_mass", "mean"].mean(),
    }
    return row


summary = pd.DataFrame([model_row(run) for run in tables])

# mCE against the baseline variant of the same dataset, from the same tables
for dataset, rows in summary.groupby("dataset"):
    base_run = rows.loc[rows["variant"] == baseline_variant, "run"]
    if not baseline_variant or base_run.empty:
        print(f"{dataset}: no baseline variant {baseline_variant!r} evaluated; mCE not reported")
        continue
    baseline = corruption_only(tables[base_run.iloc[0]])
    for index, run in rows["run"].items():
        errors = mean_corruption_error(corruption_errors(corruption_only(tables[run]), baseline))
        summary.loc[index, ["mce", "relative_mce"]] = errors["mce"], errors["relative_mce"]

summary = summary.sort_values(["dataset", "variant"]).reset_index(drop=True)
summary.to_csv(out / "variant_summary.csv", index=False)
print(summary.drop(columns=["run"]).round(3).to_string(index=False))

# %% [markdown]
# ## The answer, per dataset

# %%
def recommendation(rows: pd.DataFrame) -> str:
    """The decision rule of the introduction applied to one dataset's rows, as text with the numbers."""
    target = rows["target_risk"].iloc[0]
    trusted = rows[(rows["clean_risk"] <= target) & (rows["shift_risk"] <= target)]
    dataset = rows["dataset"].iloc[0]
    if trusted.empty:
        safest = rows.sort_values(["shift_risk", "shift_eaurc"]).iloc[0]
        return (f"**{dataset}**: no variant keeps its realized selective risk at or below {target:.1%} both clean and "
                f"under moderate shift (severity <= {moderate_severity}) at its validation threshold. The lowest "
                f"risk under shift is {safest['variant']}'s: {safest['shift_risk']:.2%} at coverage "
                f"{safest['shift_coverage']:.1%} (clean: risk {safest['clean_risk']:.2%}, coverage "
                f"{safest['clean_coverage']:.1%}; threshold {safest['threshold']:.4f} on the temperature-scaled MSP, "
                f"T = {safest['temperature']:.2f}).")
    best = trusted.sort_values(["shift_coverage", "shift_eaurc"], ascending=[False, True]).iloc[0]
    others = ", ".join(f"{r['variant']} ({r['shift_coverage']:.1%})" for _, r in trusted.iterrows()
                       if r["variant"] != best["variant"])
    return (f"**{dataset}**: trust **{best['variant']}** with threshold {best['threshold']:.4f} on the "
            f"temperature-scaled maximum softmax probability (T = {best['temperature']:.2f}). It answers "
            f"{best['clean_coverage']:.1%} of clean test images with {best['clean_risk']:.2%} errors and, under "
            f"moderate corruption, {best['shift_coverage']:.1%} with {best['shift_risk']:.2%} errors (worst single "
            f"condition {best['worst_shift_risk']:.2%}); clean accuracy {best['clean_accuracy']:.1%}, corrupted "
            f"accuracy {best['corrupted_accuracy']:.1%}, ECE after scaling {best['clean_ece_ts']:.3f} clean and "
            f"{best['shift_ece_ts']:.3f} under shift. {len(trusted)} of {len(rows)} variants meet the rule"
            + (f"; the others answer less often under shift: {others}." if others else "."))


answers = "\n\n".join(recommendation(rows) for _, rows in summary.groupby("dataset"))
(out / "recommendation.md").write_text(answers + "\n")
print(answers)

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
    save_figure(fig, out / f"variants_{dataset}")
    plt.show()
