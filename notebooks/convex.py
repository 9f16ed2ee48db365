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
from lib.convex.compare import (HEADS, excess_at_choice, findings, head_specs, paired_comparisons, run_comparison,
                                select_on_validation, summarize, training_subset)
from lib.convex.features import backbone_leaks, load_backbone, project_splits, token_features
from lib.convex.figures import (plot_accuracy_vs_regularization, plot_paired_differences, plot_rank_vs_beta,
                                plot_templates, plot_token_maps)
from lib.convex.heads import attention_network_from_convex
from lib.convex.interpret import grouping_agreement, mixer_templates, patch_labels, rank_trend
from lib.data import load_split, to_image_set
from lib.paths import chdir_repo_root
from lib.plots import publish, set_style

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
started = time.perf_counter()
# one intra-op thread: every step below is a chain of small tensor operations, and on a small machine
# shared with other work extra threads wait on each other (see lib.convex.solver.single_threaded)
torch.set_num_threads(1)
params = load_params(params_file)
config = params.convex
out = Path(out_dir)
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
# over seeds), `at edge` the seeds whose choice sits at an end of the grid.

# %%
def accuracy_table(part: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "head": part["head"],
        "features / fit": part["family"],
        "test accuracy (%)": [f"{100 * m:.1f} ± {100 * h:.1f}" for m, h in zip(part["test_accuracy"], part["ci95"])],
        "chosen": [f"{r} = {v:.2g} ({lo:.2g}-{hi:.2g})" for r, v, lo, hi in
                   zip(part["regularizer"], part["chosen_value"], part["chosen_min"], part["chosen_max"])],
        "at edge": part["at_edge"],
        "parameters": part["parameters"].round().astype(int),
        "grid time (s)": part["grid_seconds"].round(1),
        "rank": part["rank"].round(1) if "rank" in part else float("nan"),
    })


solves = runs[runs["family"] == "convex"]
certified = (f"Convex solves: {int(solves['converged'].sum())} of {len(solves)} reached the relative duality gap "
             f"tolerance {config.gap_tol:.0e}; largest relative gap {solves['relative_gap'].max():.1e}, median "
             f"{solves['relative_gap'].median():.1e}; at most {int(solves['iterations'].max())} FISTA steps "
             f"(limit {config.max_iter}).")
sections = [f"Seeds {config.seeds} (seed k: the backbone's k-th training seed, the training subset, gates and "
            f"initial weights); {config.train_size} training images per seed; tokens after block {config.layer}, "
            f"d = {config.dim} (+1); grids of {config.grid_size} values per head.", "", certified]
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
attention = runs[runs["head"].isin(["convex linear attention", "linear attention (Adam)"])]
objectives = attention.pivot_table(index=["setting", "seed", "value"], columns="head", values="objective")
if {"convex linear attention", "linear attention (Adam)"} <= set(objectives.columns):
    objectives["relative excess of Adam"] = (objectives["linear attention (Adam)"] / objectives["convex linear attention"]
                                             - 1)
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
def clustering_lines() -> list[str]:
    if not len(groupings):
        return []
    return [f"- Token groups vs object masks (NMI, {row['setting']}): {row['first']} − {row['second']} = "
            f"{row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] ({row['verdict']})."
            for _, row in nmi_paired.iterrows()]


def gate_lines() -> list[str]:
    if not len(gates_used):
        return []
    return [f"- The sampled gates of the gated attention head carry at most "
            f"{100 * gates_used['gated share of the penalty'].max():.1f}% of its nuclear norm at the chosen beta, and it "
            f"predicts the same class as the convex linear attention head on "
            f"{100 * gates_used['same test predictions'].min():.1f}-{100 * gates_used['same test predictions'].max():.1f}% "
            f"of test images: the all-open pattern (the linear head) fits the training subset alone, and a random "
            f"gate pattern's features are a noisier, lower-norm copy of it, so the group penalty leaves them unused."]


def objective_lines() -> list[str]:
    if "relative excess of Adam" not in objectives:
        return []
    excess = objectives["relative excess of Adam"]
    by_beta = excess.groupby("value").median()
    chosen = excess_at_choice(runs, selected)
    return [f"- Same objective, Adam vs the certified optimum: the Adam-trained linear attention ({config.steps} "
            f"full-batch steps) ends {100 * chosen.median():.1f}% above the convex optimum at the beta it chose on "
            f"validation (median over seeds; range {100 * chosen.min():.1f}-{100 * chosen.max():.1f}%), "
            f"{100 * by_beta.iloc[-1]:.1f}% at the strongest beta/beta_max {by_beta.index[-1]:.2g} and "
            f"{100 * by_beta.iloc[0]:.1f}% at the weakest {by_beta.index[0]:.2g} (medians): its accuracy gap to the "
            f"convex head measures a finite step budget as much as non-convexity. Below the optimum in "
            f"{int((excess < -1e-6).sum())} of {len(excess)} fits (the certificate allows none)."]


def rank_lines() -> list[str]:
    return [f"- Rank of Z, {row['head']} ({row['setting']}): {row['rank_weakest_beta']:.1f} at beta/beta_max = "
            f"{row['weakest_beta']:.2g} → {row['rank_strongest_beta']:.1f} at {row['strongest_beta']:.2g}; never "
            f"grows with beta in {row['non_increasing']} of {row['seeds']} seeds." for _, row in ranks.iterrows()]


findings_md = "\n".join(lines + objective_lines() + clustering_lines() + gate_lines() + rank_lines()) + "\n"
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
