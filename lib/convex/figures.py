"""Figures of the convex-head study: accuracy and rank against regularization, token groups on images."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from einops import rearrange

from lib.plots import palette_for


def plot_accuracy_vs_regularization(runs: pd.DataFrame) -> plt.Figure:
    """Test (solid) and validation (dashed) accuracy against each head's regularization, mean +- std over
    seeds; one panel per kind of regularization (beta / beta_max, weight decay)."""
    kinds = list(dict.fromkeys(runs["regularizer"]))
    colours = palette_for(runs["head"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, rows in runs[runs["regularizer"] == kind].groupby("head", sort=False):
            stats = rows.groupby("value")[["test_accuracy", "val_accuracy"]].agg(["mean", "std"])
            x = stats.index.to_numpy()
            mean, std = 100 * stats[("test_accuracy", "mean")], 100 * stats[("test_accuracy", "std")].fillna(0)
            ax.plot(x, mean, marker="o", ms=4, color=colours[name], label=name)
            ax.fill_between(x, mean - std, mean + std, color=colours[name], alpha=0.15)
            ax.plot(x, 100 * stats[("val_accuracy", "mean")], ls="--", lw=1, color=colours[name])
        ax.set(xscale="log", xlabel=kind, ylabel="accuracy (%)", title=f"regularized by {kind}")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_rank_vs_beta(runs: pd.DataFrame) -> plt.Figure:
    """Total rank of the learned blocks (sum over blocks) against beta / beta_max, convex heads."""
    convex = runs[runs["family"] == "convex"]
    colours = palette_for(convex["head"])
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for name, rows in convex.groupby("head", sort=False):
        stats = rows.groupby("value")["rank"].agg(["mean", "min", "max"])
        ax.errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                    marker="o", ms=4, capsize=2, color=colours[name], label=name)
    ax.set(xscale="log", yscale="symlog", xlabel="beta / beta_max", ylabel="rank of Z (sum over blocks)",
           title="block nuclear norms promote low rank")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _image(image: torch.Tensor) -> np.ndarray:
    return rearrange(image, "c h w -> h w c").squeeze(-1).numpy()


def plot_token_maps(images: torch.Tensor, grid_hw: tuple[int, int], maps: dict[str, np.ndarray],
                    categorical: set[str]) -> plt.Figure:
    """Rows: images; columns: the image, then one map per entry of `maps` (n, s) over the patch grid,
    laid over the image (categorical maps with a qualitative palette, others diverging around 0)."""
    n, columns = len(images), ["image", *maps]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.9 * len(columns), 1.9 * n), squeeze=False)
    h, w = images.shape[-2:]
    for i in range(n):
        for ax, name in zip(axes[i], columns):
            ax.imshow(_image(images[i]), cmap="gray", extent=(0, w, h, 0))
            if name != "image":
                grid = maps[name][i].reshape(grid_hw)
                if name in categorical:
                    ax.imshow(grid, cmap="tab10", vmin=0, vmax=9, alpha=0.55, extent=(0, w, h, 0),
                              interpolation="nearest")
                else:
                    bound = np.abs(grid).max() + 1e-12
                    ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, alpha=0.6, extent=(0, w, h, 0),
                              interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


def plot_templates(templates: torch.Tensor, sigma: torch.Tensor) -> plt.Figure:
    """The mixer's strongest token-mixing templates over the patch grid, titled by singular value."""
    fig, axes = plt.subplots(1, len(templates), figsize=(1.9 * len(templates), 2.1), squeeze=False)
    for ax, template, value in zip(axes[0], templates, sigma):
        bound = template.abs().max().item() + 1e-12
        ax.imshow(template.numpy(), cmap="coolwarm", vmin=-bound, vmax=bound)
        ax.set_title(f"σ = {value:.3g}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_paired_differences(paired: pd.DataFrame) -> plt.Figure:
    """Forest plot: one row per comparison (first − second), one colour and marker per setting, the paired mean
    difference in test accuracy over seeds with its 95% t-interval; the dashed line is no difference."""
    comparisons = list(dict.fromkeys(zip(paired["first"], paired["second"])))
    settings = list(dict.fromkeys(paired["setting"]))
    colours, markers = palette_for(settings), ["o", "s", "^", "D", "v", "P"]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(comparisons) + 1.2))
    step = 0.7 / max(len(settings), 1)
    for k, setting in enumerate(settings):
        part = paired[paired["setting"] == setting].set_index(["first", "second"])
        for row, pair in enumerate(comparisons):
            if pair not in part.index:
                continue
            item = part.loc[pair]
            y = len(comparisons) - 1 - row + (k - (len(settings) - 1) / 2) * step
            ax.errorbar(100 * item["difference"], y, xerr=[[100 * (item["difference"] - item["ci_low"])],
                                                         [100 * (item["ci_high"] - item["difference"])]],
                        fmt=markers[k % len(markers)], color=colours[setting], ms=5, capsize=2,
                        label=setting if row == 0 or pair == comparisons[0] else None)
    ax.axvline(0, color="0.4", ls="--", lw=1)
    ax.set_yticks(range(len(comparisons))[::-1], [f"{a} − {b}" for a, b in comparisons], fontsize=8)
    ax.set(xlabel="test accuracy difference (points), paired over seeds [95% t-CI]")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), frameon=False, fontsize=8, loc="best")
    fig.tight_layout()
    return fig
