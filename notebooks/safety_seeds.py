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
# # Reliability over training seeds (RQ4)
#
# `notebooks/safety.py` studies one trained model per encoding in depth. Here every run of `safety.runs` is trained
# with each seed of `safety.seeds` and tested on the same test images (`safety.seed_test_images`; null: the whole
# split): clean at the training resolution and at `safety.seed_scales` times it, and under every corruption at every
# severity. Encodings are compared with `safety.baseline_variant` by paired differences over seeds with 95%
# t-intervals, mCE relative to the baseline model of the same seed, and an exact McNemar test per seed
# (`lib/safety/seeds.py`). Tables: `conditions.csv` (per model and condition), `per_seed.csv`, `intervals.csv`,
# `comparison.csv`, `severity_effects.csv`, `family_effects.csv`, `history.csv`; the sentences results/README.md quotes:
# `findings.md`.
#
# Attention reliability as a predictor, over the same models: every model's per-image signals (`lib/safety/predictors.py`)
# scored as detectors of its errors on the clean test images and on the moderate shifts pooled, each signal's direction
# and the MSP + attention combination fixed on the model's clean validation split; each score minus MSP paired over
# seeds. Across the seeds of one encoding, the other seeds' agreement with a model's rollout map is compared with their
# agreement with its prediction (the baseline that sees the same models). Tables: `predictors.csv` (per model),
# `predictor_intervals.csv`, `predictor_differences.csv`.

# %% tags=["parameters"]
params_file = "params.yaml"
weights_dir = "results/safety_seeds/weights"
checkpoint_dir = "checkpoints"
out_dir = "results/safety_seeds"
float_check_dir = "results/safety_seeds/float_check"  # the seeds rerun with other floats (lib/safety/stability.py)

# %%
from pathlib import Path

from IPython.display import Markdown, display

from lib.config import load_params
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads
from lib.safety.plots import plot_predictors_over_seeds, plot_seed_robustness
from lib.safety.stability import float_check
from lib.safety.seeds import (
    compare_to_baseline, evaluate_seeds, family_effects, findings, per_seed_metrics, predictor_differences,
    predictor_findings, predictor_intervals, seed_intervals, severity_effects, train_seeds,
)

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs such stages side by side (params.yaml `parallel_stages`)
cfg = params.safety
out = output_dir(out_dir)
print(f"runs {cfg.runs.pairs()}, seeds {cfg.seeds}, test images {cfg.seed_test_images or 'all'}, "
      f"scales {cfg.seed_scales}, {len(cfg.corruptions)} corruptions x severities {cfg.severities}")

# %%
history = train_seeds(params, Path(weights_dir), Path(checkpoint_dir))
history.to_csv(out / "history.csv", index=False)
conditions, clean_correct, predictors = evaluate_seeds(params, Path(weights_dir))
conditions.to_csv(out / "conditions.csv", index=False)
predictors.to_csv(out / "predictors.csv", index=False)

# %%
metrics = per_seed_metrics(conditions, cfg.baseline_variant, cfg.moderate_severity)
metrics.to_csv(out / "per_seed.csv", index=False)
intervals = seed_intervals(metrics)
intervals.to_csv(out / "intervals.csv", index=False)
comparison = compare_to_baseline(metrics, clean_correct, cfg.baseline_variant)
comparison.to_csv(out / "comparison.csv", index=False)
effects = severity_effects(conditions)
effects.to_csv(out / "severity_effects.csv", index=False)
families = family_effects(conditions)
families.to_csv(out / "family_effects.csv", index=False)
reliability = predictor_intervals(predictors)
reliability.to_csv(out / "predictor_intervals.csv", index=False)
reliability_differences = predictor_differences(predictors)
reliability_differences.to_csv(out / "predictor_differences.csv", index=False)
# every verdict again from the seeds retrained with other floats (threads), where that check is current
compared, float_lines = float_check(params, {"comparison": comparison, "predictor_differences": reliability_differences},
                                    Path(float_check_dir))
if compared is not None:
    compared.to_csv(out / "verdict_stability.csv", index=False)
lines = (findings(intervals, comparison, effects, families) + predictor_findings(reliability, reliability_differences)
         + float_lines)
(out / "findings.md").write_text("".join(f"- {line}\n" for line in lines))
display(Markdown("\n".join(f"- {line}" for line in lines)))

# %%
set_style()
publish(plot_seed_robustness(conditions, comparison), out / "robustness_over_seeds")
publish(plot_predictors_over_seeds(reliability), out / "predictors_over_seeds")
