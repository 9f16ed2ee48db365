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
# # Convex attention heads on frozen ViT features (research question 5)
#
# Sahiner et al. (ICML 2022, "Unraveling Attention via Convex Duality") show that one block of
# m-head linear self-attention trained with weight decay on fixed token features is a convex program
# in disguise: a nuclear-norm regularized linear model over the cubic token features G[k, l] xbar[a],
# whose SVD gives back the heads. Here RQ1's trained ViTs are frozen (seed k of a cell is seed k's
# backbone), their tokens at one layer are projected to d dimensions (PCA fitted on the seed's training
# subset), and every head is fitted on the same features:
#
# - convex heads, solved to global optimality (FISTA + singular-value thresholding, with a duality
#   gap certificate): linear attention, gated-ReLU attention, MLP-Mixer, FNO;
# - heads on the same features with an L2 penalty instead of the nuclear norm (logistic regression on
#   the attention head's cubic features; a linear head on the flattened tokens the mixer sees);
# - the same linear-attention network trained by Adam (the convex program's primal, same beta grid),
#   a softmax attention block (not in the default `convex.heads`: the costliest head), and linear / MLP
#   heads on pooled or flattened tokens.
#
# Every head gets a regularization grid of the same length, chosen on validation accuracy. Settings:
# in domain (the backbone's own data set) and transfer (a backbone trained on another data set, the
# paper's setting). Heads are compared by paired differences over seeds with 95% t-intervals.
# Everything is configured under `convex` in params.yaml; methods and derivations: `lib/convex/`.
#
# Runtime: about 2.5 minutes on 2 CPU cores for the defaults (one in-domain setting, 5 seeds, 10 heads,
# grids of 6); each head, setting and seed is logged with its fit time. Solves and trainings run on one
# thread. A transfer setting costs far more here: shapes -> MNIST (10 classes, features the backbone never
# learned for) needed up to ~10x the FISTA steps per solve.

# %% tags=["parameters"]
params_file = "params.yaml"
out_dir = "results/convex"

# %%
import time
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from lib.config import load_params
from lib.convex.compare import (HEADS, findings, head_specs, paired_comparisons, run_comparison,
                                select_on_validation, summarize, training_subset)
from lib.convex.features import backbone_leaks, load_backbone, project_splits, token_features
from lib.convex.figures import (plot_accuracy_vs_regularization, plot_paired_differences, plot_rank_vs_beta,
                                plot_templates, plot_token_maps)
from lib.convex.heads import attention_network_from_convex
from lib.convex.interpret import grouping_agreement, mixer_templates, patch_labels, rank_trend
from lib.convex.report import (accuracy_table, adam_objectives, certificate_line, clustering_lines, gate_lines,
                               objective_lines, rank_lines)
from lib.data import load_split, to_image_set
from lib.plots import publish, set_style
from lib.run.paths import chdir_repo_root, output_dir

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
started = time.perf_counter()
# one intra-op thread: every step below is a chain of small tensor operations, and on a small machine
# shared with other work extra threads wait on each other (see lib.convex.solver.single_threaded)
torch.set_num_threads(1)
params = load_params(params_file)
config = params.convex
out = output_dir(out_dir)
order = config.heads or list(HEADS)
pd.DataFrame([{"setting": setting.name, **setting._asdict()} for setting in config.pairings()])

# %% [markdown]
# ## Every setting, every seed, every head, one grid each
# Images of the heads' data set are loaded at the backbone's training resolution. The heads train on a
# seeded subset of `train_size` training images and are chosen on the whole validation split; the test
# split is used whole, the same images for every head and seed. `leaked` counts test images that occur
# in the backbone's training split (it must be 0).

# %%
def load_data(dataset: str, resolution: int) -> dict:
    return {split: to_image_set(load_split(Path(params.data_root), dataset, split, resolution),
                                workers=params.data_workers) for split in ("train", "val", "test")}


def seed_features(model, data: dict, seed: int) -> tuple[dict, tuple[int, int]]:
    """(tokens, labels) per split for this seed's backbone and training subset, projected as fitted on it."""
    subsets = {"train": data["train"].subset(training_subset(len(data["train"]), config.train_size, seed)),
               "val": data["val"], "test": data["test"]}
    tokens = {}
    for split, images in subsets.items():
        tokens[split], grid_hw = token_features(model, images.images, config.layer)
    projected, _ = project_splits(tokens, config.dim, seed=seed)
    return {split: (projected[split], subsets[split].labels) for split in subsets}, grid_hw


runs, groupings, gates_used, checks, examples = [], [], [], [], {}
for setting in config.pairings():
    name = setting.name
    backbone_dataset = params.rq1.parse(setting.backbone).dataset
    resolution = params.rq1_train_resolution(setting.backbone)
    data = load_data(setting.dataset, resolution)
    leaked = backbone_leaks(params, backbone_dataset, data["test"].images, resolution)
    checks.append({"setting": name, "backbone": setting.backbone, "dataset": setting.dataset,
                   "resolution": resolution, "test images": len(data["test"]), "leaked": leaked})
    for seed in config.seeds:
        splits, grid_hw = seed_features(load_backbone(params, setting.backbone, seed), data, seed)
        fitted = {}
        seed_runs = run_comparison(head_specs(config, grid_hw), splits, seed, keep=fitted)
        seed_runs.insert(0, "setting", name)
        runs.append(seed_runs)
        chosen = select_on_validation(seed_runs).set_index("head")["value"]

        def head(label: str):
            return fitted[label, chosen[label]] if label in chosen else None

        linear, gated = head("convex linear attention"), head("convex gated attention")
        test_tokens = splits["test"][0]
        if linear is not None and gated is not None:  # why the gated head can equal the linear one
            same = (gated.predict(test_tokens) == linear.predict(test_tokens)).double().mean().item()
            gates_used.append({"setting": name, "seed": seed, "gated share of the penalty": gated.gated_share(),
                               "same test predictions": same})
        masks = data["test"].masks
        if linear is not None and masks is not None:  # the paper's clustering prediction
            shown = min(config.cluster_images, len(test_tokens))
            objects = patch_labels(masks[:shown], grid_hw)
            network = attention_network_from_convex(linear)
            agreement = grouping_agreement(network, test_tokens[:shown], objects, config.num_clusters, seed)
            groupings += [{"setting": name, "seed": seed, "grouping": k, "nmi": v} for k, v in agreement.items()]
            if not examples:
                examples = {"setting": name, "images": data["test"].images[:4], "tokens": test_tokens[:4],
                            "objects": objects[:4], "network": network, "grid_hw": grid_hw, "seed": seed,
                            "mixer": head("convex mixer")}
    print(f"{name}: done after {time.perf_counter() - started:.0f} s")

runs = pd.concat(runs, ignore_index=True)
runs.to_csv(out / "runs.csv", index=False)
checks = pd.DataFrame(checks)
checks.to_csv(out / "settings.csv", index=False)
if (checks["leaked"] > 0).any():
    raise RuntimeError(f"test images of the heads' data set occur in a backbone's training data:\n{checks}")
selected = select_on_validation(runs)
selected.to_csv(out / "selected.csv", index=False)
summary = summarize(selected, order)
summary.to_csv(out / "summary.csv", index=False)
paired = paired_comparisons(selected)
paired.to_csv(out / "paired.csv", index=False)
checks

# %% [markdown]
# ## Accuracy per head and setting
# Mean test accuracy over seeds ± the 95% t half-width; `chosen` is the median validation choice (range
# over seeds), `at edge` the seeds whose choice sits at an end of the grid (in brackets: of those, the ones whose next
# value inward scores within one binomial standard error on validation, a plateau rather than a grid cut short).

# %%
sections = [f"Seeds {config.seeds} (seed k: the backbone's k-th training seed, the training subset, gates and "
            f"initial weights); {config.train_size} training images per seed; tokens after block {config.layer}, "
            f"d = {config.dim} (+1); grids of {config.grid_size} values per head.", "",
            certificate_line(runs, config.gap_tol, config.max_iter)]
for name, part in summary.groupby("setting", sort=False):
    check = checks.set_index("setting").loc[name]
    sections += ["", f"### {name}: backbone `{check['backbone']}` → heads on `{check['dataset']}` "
                     f"({check['resolution']} px, {check['test images']} test images)", "",
                 accuracy_table(part).to_markdown(index=False)]
report = "\n".join(sections)
display(Markdown(report))

# %% [markdown]
# ## Paired differences
# Each row answers one question, per setting: first minus second head, over the same seeds and test
# images. A difference is stated only where its 95% interval excludes 0.

# %%
lines = findings(paired, summary)
display(Markdown("\n".join(lines)))
set_style()
fig = plot_paired_differences(paired)
publish(fig, out / "paired_differences")

# %% [markdown]
# ## The convex optimum versus Adam on the same objective
# The Adam-trained m-head linear attention minimizes exactly the primal whose convex form is solved (same
# beta): its objective can only be at or above the certified optimum. Excess = (Adam - convex) / convex.

# %%
objectives = adam_objectives(runs)
if len(objectives):
    objectives.to_csv(out / "objectives.csv")
    excess = objectives.groupby(["setting", "value"])["relative excess of Adam"].agg(["min", "median", "max"])
    display(excess)

# %% [markdown]
# ## The paper's other predictions
# Rank of the learned blocks against beta (a nuclear norm should lower it as beta grows); how much of the
# gated head's penalty its sampled gates carry (0: it is the linear head); token groups against the
# object masks (NMI; the paper reads attention as clustering tokens by latent similarity).

# %%
ranks = rank_trend(runs)
ranks.to_csv(out / "rank_trend.csv", index=False)
gates_used = pd.DataFrame(gates_used)
gates_used.to_csv(out / "gates.csv", index=False)
groupings = pd.DataFrame(groupings)
groupings.to_csv(out / "clustering.csv", index=False)
display(ranks.round(2))
display(gates_used.groupby("setting")[["gated share of the penalty", "same test predictions"]].agg(["min", "max"])
        if len(gates_used) else gates_used)
nmi_paired = pd.DataFrame()
if len(groupings):
    nmi = groupings.pivot_table(index=["setting", "seed"], columns="grouping", values="nmi")
    nmi_paired = paired_comparisons(
        groupings.rename(columns={"grouping": "head", "nmi": "test_accuracy"}),
        [("convex attention kernels", "raw tokens", "NMI with the objects"),
         ("raw tokens", "random groups", "NMI with the objects")])
    nmi_paired.to_csv(out / "clustering_paired.csv", index=False)
    display(nmi.groupby("setting").mean().round(3), nmi_paired)

# %% [markdown]
# ## Report

# %%
report_lines = (lines + objective_lines(objectives, runs, selected, config.steps)
                + clustering_lines(nmi_paired) + gate_lines(gates_used)
                + rank_lines(ranks))
findings_md = "\n".join(report_lines) + "\n"
(out / "findings.md").write_text(findings_md)
(out / "convex.md").write_text(report + "\n\n## Findings (paired differences over seeds, 95% t-intervals)\n\n"
                               + findings_md)
display(Markdown(findings_md))

# %% [markdown]
# ## Figures: accuracy and rank against regularization, token groups, mixer templates

# %%
first_setting = config.pairings()[0].name
fig = plot_accuracy_vs_regularization(runs[runs["setting"] == first_setting])
publish(fig, out / "accuracy_vs_regularization")
fig = plot_rank_vs_beta(runs[runs["setting"] == first_setting])
publish(fig, out / "rank_vs_beta")
if examples:
    with torch.no_grad():
        net = examples["network"]
        weights = net.token_weights(examples["tokens"].to(net.W1.dtype)).numpy()
    maps = {"objects": examples["objects"]} | {f"head {j + 1} weight": weights[:, j] for j in range(min(3, weights.shape[1]))}
    fig = plot_token_maps(examples["images"], examples["grid_hw"], maps, categorical={"objects"})
    publish(fig, out / "token_groups")
    if examples["mixer"] is not None:
        templates, sigma = mixer_templates(examples["mixer"], examples["grid_hw"], 6)
        fig = plot_templates(templates, sigma)
        publish(fig, out / "mixer_templates")
print(f"total runtime {time.perf_counter() - started:.0f} s")
