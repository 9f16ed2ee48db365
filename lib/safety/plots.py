"""Figures of the safety evaluation, in the study's style (call `lib.plots.set_style()` first).

Tables are those written by notebooks/safety.py: shift_metrics (one row per condition), map_metrics (long:
condition x method x metric), reliability bins and risk-coverage curves (one row per bin / point).
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from lib.plots import ci_error_lengths, palette_for
from lib.safety.corruptions import FAMILIES
from lib.stats import t_interval


def _families(table: pd.DataFrame) -> list[str]:
    return [family for family in FAMILIES if family in set(table["family"])]


def _with_clean(table: pd.DataFrame, shift: str, column: str) -> pd.DataFrame:
    """The rows of one corruption sorted by severity, with the clean row prepended as severity 0."""
    clean = table[table["shift"] == "clean"].assign(shift=shift)
    return pd.concat([clean, table[table["shift"] == shift]]).sort_values("severity")[["severity", column]]


def plot_accuracy_vs_severity(shifts: pd.DataFrame, title: str) -> plt.Figure:
    """Top-1 accuracy against severity (0 = clean), one panel per corruption family, one line per corruption."""
    families = _families(shifts)
    fig, axes = plt.subplots(1, len(families), figsize=(3.3 * len(families), 3.2), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        names = [n for n in FAMILIES[family] if n in set(shifts["shift"])]
        colours = palette_for(names)
        for name in names:
            rows = _with_clean(shifts, name, "accuracy")
            ax.plot(rows["severity"], 100 * rows["accuracy"], marker="o", ms=3, label=name.replace("_", " "),
                    color=colours[name])
        ax.set(title=family, xlabel="severity", xticks=range(6))
        ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(bins: pd.DataFrame, title: str) -> plt.Figure:
    """Reliability diagrams: per condition (columns) and before / after temperature scaling (rows), the
    accuracy of each confidence bin as bars and the diagonal of perfect calibration; bar shading shows the
    bin's share of the samples."""
    conditions = list(dict.fromkeys(bins["condition"]))
    fig, axes = plt.subplots(2, len(conditions), figsize=(2.6 * len(conditions), 5.2), sharex=True, sharey=True,
                             squeeze=False)
    for col, condition in enumerate(conditions):
        for row, scaled in enumerate((False, True)):
            ax = axes[row][col]
            part = bins[(bins["condition"] == condition) & (bins["scaled"] == scaled)]
            share = part["count"] / part["count"].sum()
            ax.bar(part["lower"], part["accuracy"].fillna(0), width=part["upper"] - part["lower"], align="edge",
                   color=plt.cm.Blues(0.3 + 0.7 * share.to_numpy() / max(share.max(), 1e-12)), edgecolor="0.3", lw=0.4)
            ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1)
            ax.plot((part["lower"] + part["upper"]) / 2, part["confidence"], "o", ms=2, color="C3")
            ax.set(xlim=(0, 1), ylim=(0, 1))
            if row == 0:
                ax.set_title(condition, fontsize=9)
            if row == 1:
                ax.set_xlabel("confidence")
        axes[0][0].set_ylabel("accuracy (raw)")
        axes[1][0].set_ylabel("accuracy (temp. scaled)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_risk_coverage(curves: pd.DataFrame, target_risk: float, title: str) -> plt.Figure:
    """Selective risk against coverage (MSP ranking), one line per condition, the target risk dashed."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    conditions = list(dict.fromkeys(curves["condition"]))
    colours = palette_for(conditions)
    for condition in conditions:
        part = curves[curves["condition"] == condition]
        ax.plot(part["coverage"], 100 * part["risk"], label=condition, color=colours[condition])
    ax.axhline(100 * target_risk, color="0.4", ls="--", lw=1)
    ax.set(xlabel="coverage", ylabel="selective risk (%)", title=title, xlim=(0, 1))
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def plot_map_similarity(maps: pd.DataFrame, metric: str, title: str) -> plt.Figure:
    """Mean map similarity to the clean map (`metric`) against severity: rows = explanation methods,
    columns = corruption families, one line per corruption, +-1 standard error band."""
    part = maps[(maps["metric"] == metric) & (maps["family"].isin(FAMILIES))]
    families, methods = _families(part), list(dict.fromkeys(part["method"]))
    fig, axes = plt.subplots(len(methods), len(families), figsize=(3.2 * len(families), 2.8 * len(methods)),
                             sharey=True, squeeze=False)
    for row, method in enumerate(methods):
        for col, family in enumerate(families):
            ax = axes[row][col]
            names = [n for n in FAMILIES[family] if n in set(part["shift"])]
            colours = palette_for(names)
            for name in names:
                rows = part[(part["method"] == method) & (part["shift"] == name)].sort_values("severity")
                ax.plot(rows["severity"], rows["mean"], marker="o", ms=3, color=colours[name], label=name.replace("_", " "))
                ax.fill_between(rows["severity"], rows["mean"] - rows["sem"], rows["mean"] + rows["sem"], alpha=0.15,
                                color=colours[name])
            ax.set(title=f"{family} · {method.replace('_', ' ')}", xlabel="severity", xticks=range(1, 6))
            if row == 0:
                ax.legend(frameon=False, fontsize=7)
        axes[row][0].set_ylabel(metric.replace("_", " "))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_example_maps(images: dict[str, torch.Tensor], maps: dict[str, torch.Tensor], title: str) -> plt.Figure:
    """Rows = example images; for every condition (clean first) the image and its map overlaid.

    images: condition -> (n, C, H, W) in [0, 1]; maps: condition -> (n, h, w), same conditions and order."""
    conditions = list(images)
    n = len(images[conditions[0]])
    fig, axes = plt.subplots(n, 2 * len(conditions), figsize=(1.5 * 2 * len(conditions), 1.6 * n), squeeze=False)
    for col, condition in enumerate(conditions):
        for row in range(n):
            image = images[condition][row]
            picture = image.permute(1, 2, 0).numpy()
            axes[row][2 * col].imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            height, width = image.shape[-2:]
            axes[row][2 * col + 1].imshow(image.mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row][2 * col + 1].imshow(maps[condition][row].numpy(), cmap="inferno", alpha=0.65,
                                          extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        axes[0][2 * col].set_title(condition.replace("_", " "), fontsize=8)
        axes[0][2 * col + 1].set_title("map", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_variant_comparison(summary: pd.DataFrame, columns: dict[str, str]) -> plt.Figure:
    """One bar panel per summary column (name -> axis label), one bar per variant."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 3.4), squeeze=False)
    colours = palette_for(list(summary["variant"]))
    for ax, (column, label) in zip(axes[0], columns.items()):
        ax.bar(np.arange(len(summary)), summary[column], color=[colours[v] for v in summary["variant"]])
        ax.set_xticks(np.arange(len(summary)), summary["variant"], rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return fig


SEED_MARKERS, SEED_LINESTYLES = ("o", "s", "^", "D"), ("-", "--", ":", "-.")


def plot_seed_robustness(conditions: pd.DataFrame, comparison: pd.DataFrame) -> plt.Figure:
    """The case study over training seeds (lib/safety/seeds.py), per dataset: (left) accuracy against severity (0 =
    clean), mean over corruptions, seed mean with its 95% t-interval, one line per variant (colour, marker and line
    style); (right) each variant minus the baseline, paired over seeds, per compared number, with its interval."""
    datasets = list(dict.fromkeys(conditions["dataset"]))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.4 * len(datasets)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.3]})
    for (left, right), dataset in zip(axes, datasets):
        table = conditions[conditions["dataset"] == dataset]
        table = table[(table["shift"] != "clean") | (table["resolution"] == table["resolution"].iloc[0])]  # 1x only
        variants = list(dict.fromkeys(table["variant"]))
        colours = palette_for(variants)
        for index, variant in enumerate(variants):
            per_seed = table[table["variant"] == variant].groupby(["severity", "seed"])["accuracy"].mean().reset_index()
            rows = [(severity, *t_interval(100 * group["accuracy"])) for severity, group in per_seed.groupby("severity")]
            severity, mean, low, high = (np.array(column) for column in zip(*rows))
            left.errorbar(severity + 0.06 * (index - (len(variants) - 1) / 2), mean, yerr=ci_error_lengths(mean, low, high),
                          marker=SEED_MARKERS[index % 4], ls=SEED_LINESTYLES[index % 4], ms=4, capsize=2,
                          color=colours[variant], label=variant)
        left.set(title=f"{dataset}: mean over corruptions", xlabel="severity (0 = clean)", ylabel="test accuracy (%)",
                 xticks=range(6))
        left.legend(frameon=False, fontsize=8)
        differences = comparison[(comparison["dataset"] == dataset) & comparison["difference"].notna()]
        labels = list(dict.fromkeys(differences["metric"]))
        pairs = []
        for index, (variant, rows) in enumerate(differences.groupby("variant", sort=False)):
            y = np.array([labels.index(m) for m in rows["metric"]]) + 0.15 * index
            right.errorbar(rows["difference"], y, xerr=ci_error_lengths(rows["difference"], rows["ci_low"], rows["ci_high"]),
                           fmt=SEED_MARKERS[(variants.index(variant) if variant in variants else index) % 4], ms=4,
                           capsize=2, color=colours.get(variant, "0.3"))
            pairs.append(f"{variant} − {rows['baseline'].iloc[0]}")
        right.axvline(0, color="0.4", lw=1, ls="--")
        right.set(yticks=range(len(labels)), yticklabels=labels, title=f"{', '.join(pairs)}, paired over seeds",
                  xlabel="difference, 95% t-CI over seeds (accuracy, ECE, AUGRC as fractions; mCE as a ratio)")
        right.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_predictors_over_seeds(intervals: pd.DataFrame, metric: str = "error-detection AUROC") -> plt.Figure:
    """Attention reliability as a predictor over training seeds (lib.safety.seeds.predictor_intervals): per split
    (clean, moderate shift) a panel of every score's `metric`, seed mean with its 95% t-interval, one marker and
    colour per model; the chance line at 0.5 and MSP's mean as a dotted reference per model."""
    table = intervals[intervals["metric"] == metric]
    splits = list(dict.fromkeys(table["split"]))
    models = list(dict.fromkeys(zip(table["dataset"], table["variant"])))
    names = [f"{d}-{v}" for d, v in models]
    colours = palette_for(names)
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.4), squeeze=False, sharex=True)
    for ax, split in zip(axes[0], splits):
        part = table[table["split"] == split]
        scores = list(dict.fromkeys(part["score"]))
        for index, ((dataset, variant), name) in enumerate(zip(models, names)):
            rows = part[(part["dataset"] == dataset) & (part["variant"] == variant)].set_index("score").reindex(scores)
            y = np.arange(len(scores)) + 0.18 * (index - (len(models) - 1) / 2)
            ax.errorbar(rows["mean"], y, xerr=ci_error_lengths(rows["mean"], rows["ci_low"], rows["ci_high"]),
                        fmt=SEED_MARKERS[index % 4], ms=4, capsize=2, color=colours[name], label=name)
            if "msp" in rows.index:
                ax.axvline(rows.loc["msp", "mean"], color=colours[name], lw=0.8, ls=SEED_LINESTYLES[(index + 2) % 4])
        ax.axvline(0.5, color="0.4", lw=1, ls="--")
        ax.set(yticks=range(len(scores)), yticklabels=[s.replace("_", " ") for s in scores], title=split,
               xlabel=f"{metric}, 95% t-CI over seeds (0.5: chance)")
        ax.invert_yaxis()
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
