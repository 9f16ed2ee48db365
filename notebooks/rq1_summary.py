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
# # RQ1: when does RoPE extrapolate across resolution? Every cell, compared over seeds
#
# Reads the per-seed accuracies of every cell of `rq1.cells` and reports, per dataset, augmentation, protocol and
# scale, the seed mean with its 95% Student-t interval over seeds (`accuracy.csv`; a Wilson interval over test
# images as a secondary column) and the paired differences that the study's questions need (`paired.csv`: same
# seed index, same test images): Heo et al.'s ordering RoPE-Mixed > RoPE-Axial > APE, each fix (normalised
# coordinates, FIRE, test-time rescalings) against RoPE-Mixed, the augmentation and the protocol. A difference is
# named only where its interval excludes 0 (`findings.md`, which results/README.md quotes). Where the same cells were
# rerun with other floats (`rq1.threads` changed: results/rq1/float_check/), every verdict is compared with the
# rerun's (`verdict_stability.csv`, and `paired.csv`'s `replicated` column), and `findings.md` marks every verdict
# the rerun overturned with †. `crops.csv`: how often a training crop cuts an object out of view.

# %% tags=["parameters"]
params_file = "params.yaml"
runs_dir = "results/rq1/runs"
out_dir = "results/rq1/summary"
float_check_dir = "results/rq1/float_check"  # the same cells rerun with other floats (lib/extrapolation/stability.py)

# %%
from pathlib import Path

from IPython.display import Markdown, display

from lib.config import load_params
from lib.extrapolation.crops import cell_crops, crop_label_noise, crop_lines
from lib.extrapolation.figures import plot_accuracy_vs_scale, plot_entropy_vs_scale, plot_rescalings
from lib.extrapolation.stability import float_check, with_replication
from lib.extrapolation.summary import (accuracy_markdown, check_complete, difference_grid, entropy_summary, findings,
                                       heo_ordering, onset_line, paired_table, ramp_summary, read_cells, seed_table)
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir
from lib.run.study import limit_threads

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
limit_threads(params.threads)  # `make repro` runs the summaries side by side (params.yaml `parallel_stages`)
out = output_dir(out_dir)
cells = params.rq1.cells
accuracy, entropy, ramp, history = (read_cells(runs_dir, cells, name) for name in ("accuracy", "entropy", "ramp", "history"))
check_complete(accuracy, cells, params.rq1.seeds)

# %%
seeds = seed_table(accuracy)
compared, float_lines = float_check(params, accuracy, Path(float_check_dir))
if compared is not None:
    compared.to_csv(out / "verdict_stability.csv", index=False)
paired = with_replication(paired_table(accuracy), compared)  # `replicated`: the float check's verdict agrees
ordering = heo_ordering(paired)
seeds.to_csv(out / "accuracy.csv", index=False)
paired.to_csv(out / "paired.csv", index=False)
ordering.to_csv(out / "heo_ordering.csv", index=False)
entropy_summary(entropy).to_csv(out / "entropy.csv", index=False)
ramp_summary(ramp).to_csv(out / "ramp.csv", index=False)
(out / "accuracy.md").write_text(accuracy_markdown(seeds))
(out / "paired.md").write_text(difference_grid(paired).to_markdown(index=False) + "\n")
crops = crop_label_noise(Path(params.data_root), cell_crops(params), params.rq1.augmentations)
crops.to_csv(out / "crops.csv", index=False)
lines = findings(seeds, paired, ramp) + [onset_line(history, "Learning onset")] + crop_lines(crops) + float_lines
(out / "findings.md").write_text("".join(f"- {line}\n" for line in lines))
display(Markdown("".join(f"- {line}\n" for line in lines)))
ordering

# %%
set_style()
for dataset in dict.fromkeys(seeds["dataset"]):
    publish(plot_accuracy_vs_scale(seeds, dataset), out / f"accuracy_vs_scale_{dataset}")
    publish(plot_entropy_vs_scale(entropy_summary(entropy), dataset), out / f"entropy_vs_scale_{dataset}")
    if ((seeds["dataset"] == dataset) & (seeds["method"] != "trained")).any():
        publish(plot_rescalings(seeds, dataset), out / f"rescalings_{dataset}")
