"""Figures of the attention analysis, in the study's style (call `lib.plots.set_style()` first).

Per model: explanation maps side by side, mean attention distance per layer and head, relative-offset
profiles, faithfulness AUCs with CIs, perturbation curves, the head-pruning curve. Across models: the same
quantities grouped by position encoding or attention variant. Tables are those of `lib.analysis.tables`.
"""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from lib.plots import PALETTE, ci_error_lengths, palette_for

METRIC_TITLES = {
    "deletion_auc": "deletion AUC (lower is better)",
    "insertion_auc": "insertion AUC (higher is better)",
    "positive_perturbation_auc": "positive perturbation AUC (lower is better)",
    "negative_perturbation_auc": "negative perturbation AUC (higher is better)",
    "pointing_game": "pointing game (higher is better)",
    "relevance_mass": "relevance mass (higher is better)",
}


def _show_image(ax, image: torch.Tensor) -> None:
    """(C, H, W) in [0, 1]; grey for one channel."""
    picture = image.permute(1, 2, 0).numpy()
    ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)


def _overlay(ax, image: torch.Tensor, values: torch.Tensor, cmap: str = "inferno", symmetric: bool = False) -> None:
    """Image in grey with `values` (h, w) stretched over it; per-panel colour scale."""
    height, width = image.shape[-2:]
    ax.imshow(image.mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
    values = values.numpy()
    limit = np.abs(values).max() or 1.0
    scale = dict(vmin=-limit, vmax=limit) if symmetric else dict(vmin=values.min(), vmax=values.max())
    ax.imshow(values, cmap=cmap, alpha=0.65, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
              **scale)


def plot_explanation_grid(images: torch.Tensor, cls_layers: torch.Tensor, maps: dict[str, torch.Tensor],
                          ig_pixels: torch.Tensor, titles: list[str]) -> plt.Figure:
    """One row per image: the image, CLS attention of every block (head mean), every method's patch map,
    and Integrated Gradients at pixel level (signed, red positive).

    images (n, C, height, width) in [0, 1]; cls_layers (n, L, h, H, W); maps name -> (n, H, W).
    """
    depth = cls_layers.shape[1]
    methods = [name for name in maps if name not in ("random", "cls_attention")]
    columns = 1 + depth + len(methods) + 1
    fig, axes = plt.subplots(len(images), columns, figsize=(1.45 * columns, 1.55 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        panels = [("input", None)] + [(f"CLS attn. L{layer + 1}", cls_layers[row, layer].mean(0)) for layer in range(depth)]
        panels += [(name.replace("_", " "), maps[name][row]) for name in methods]
        for ax, (title, values) in zip(axes[row], panels):
            if values is None:
                _show_image(ax, image)
            else:
                _overlay(ax, image, values)
            if row == 0:
                ax.set_title(title, fontsize=7)
        _overlay(axes[row, -1], image, ig_pixels[row], cmap="coolwarm", symmetric=True)
        if row == 0:
            axes[row, -1].set_title("IG (pixels)", fontsize=7)
        axes[row, 0].set_ylabel(titles[row], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout(pad=0.3)
    return fig


def plot_mean_distance(layer_head: pd.DataFrame) -> plt.Figure:
    """Mean attention distance (pixels) of every head against the block (Dosovitskiy et al. 2021, Fig. 7),
    with the distance of uniform attention dashed."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    heads = sorted(layer_head["head"].unique())
    colours = sns.color_palette(PALETTE, len(heads))
    for head, colour in zip(heads, colours):
        rows = layer_head[layer_head["head"] == head]
        offset = 0.08 * (head - (len(heads) - 1) / 2)
        ax.scatter(rows["layer"] + 1 + offset, rows["mean_distance_pixels"], color=colour, s=22, label=f"head {head}")
    ax.axhline(layer_head["uniform_distance_pixels"].iloc[0], color="0.4", ls="--", lw=1, label="uniform")
    ax.set(xlabel="block", ylabel="mean attention distance (pixels)", xticks=sorted(layer_head["layer"].unique() + 1))
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _profile_image(rows: pd.DataFrame) -> np.ndarray:
    return rows.groupby(["dy", "dx"])["mean_attention"].mean().unstack("dx").to_numpy()


def _draw_profile(ax, image: np.ndarray, title: str) -> None:
    radius_y, radius_x = (image.shape[0] - 1) // 2, (image.shape[1] - 1) // 2
    ax.imshow(image, cmap="viridis", extent=(-radius_x - 0.5, radius_x + 0.5, radius_y + 0.5, -radius_y - 0.5))
    ax.plot(0, 0, marker="+", color="white", ms=5)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def plot_offset_profiles(offsets: pd.DataFrame) -> plt.Figure:
    """Mean attention against the key-minus-query offset (dx right, dy down; + marks zero): one column
    per block, one row per head and a last row for the head mean."""
    layers, heads = sorted(offsets["layer"].unique()), sorted(offsets["head"].unique())
    fig, axes = plt.subplots(len(heads) + 1, len(layers), figsize=(1.6 * len(layers), 1.6 * (len(heads) + 1)),
                             squeeze=False)
    for column, layer in enumerate(layers):
        in_layer = offsets[offsets["layer"] == layer]
        for row, head in enumerate(heads):
            _draw_profile(axes[row, column], _profile_image(in_layer[in_layer["head"] == head]), f"L{layer + 1} head {head}")
        _draw_profile(axes[-1, column], _profile_image(in_layer), f"L{layer + 1} head mean")
    fig.tight_layout(pad=0.3)
    return fig


def _bars_with_ci(ax, rows: pd.DataFrame, label_column: str, colours: dict) -> None:
    positions = np.arange(len(rows))
    values = rows["value"].to_numpy()
    errors = ci_error_lengths(values, rows["ci_low"], rows["ci_high"])
    ax.barh(positions, values, xerr=errors, color=[colours[name] for name in rows[label_column]], capsize=2)
    ax.set_yticks(positions, [name.replace("_", " ") for name in rows[label_column]])
    ax.invert_yaxis()


def plot_faithfulness(table: pd.DataFrame) -> plt.Figure:
    """One panel per metric: each method's mean with its bootstrap 95% CI (random = chance reference)."""
    metrics = list(dict.fromkeys(table["metric"]))
    methods = list(dict.fromkeys(table["method"]))
    colours = palette_for(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 0.35 * len(methods) + 1.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _bars_with_ci(ax, table[table["metric"] == metric], "method", colours)
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=8)
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.tight_layout()
    return fig


def plot_perturbation_curves(curves: pd.DataFrame) -> plt.Figure:
    """Target-class probability and accuracy against the fraction of patches removed, both directions."""
    methods = list(dict.fromkeys(curves["method"]))
    colours = palette_for(methods)
    directions = list(dict.fromkeys(curves["direction"]))
    fig, axes = plt.subplots(len(directions), 2, figsize=(7.5, 2.8 * len(directions)), squeeze=False)
    for row, direction in enumerate(directions):
        for column, value in enumerate(("probability", "accuracy")):
            ax = axes[row, column]
            for method in methods:
                part = curves[(curves["direction"] == direction) & (curves["method"] == method)]
                ax.plot(part["fraction"], part[value], marker="o", ms=2.5, label=method.replace("_", " "),
                        color=colours[method])
            ax.set(xlabel="fraction of patches removed", ylabel=value, title=direction.replace("_", " "), ylim=(0, 1.02))
    axes[0, 1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def plot_pruning(pruning: pd.DataFrame) -> plt.Figure:
    """Accuracy as heads are removed, least important first (Michel et al. 2019) vs random orders
    (mean, band from min to max)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    importance = pruning[pruning["order"] == "importance"]
    ax.plot(importance["heads_removed"], importance["accuracy"], marker="o", ms=3, label="by importance")
    random = pruning[pruning["order"] == "random"].groupby("heads_removed")["accuracy"].agg(["mean", "min", "max"])
    ax.plot(random.index, random["mean"], color="0.4", ls="--", label="random order (mean)")
    ax.fill_between(random.index, random["min"], random["max"], color="0.4", alpha=0.15)
    ax.set(xlabel="heads removed", ylabel="accuracy", ylim=(0, 1.02))
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_distance_by_variant(layer_head: pd.DataFrame, hue: str = "pos_embed") -> plt.Figure:
    """Head-mean attention distance (pixels) against block, one line per `hue`, one panel per dataset; the
    band spans the heads' minimum to maximum."""
    datasets = list(dict.fromkeys(layer_head["dataset"]))
    names = list(dict.fromkeys(layer_head[hue]))
    colours = palette_for(names)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.3), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = layer_head[layer_head["dataset"] == dataset]
        for name, rows in part.groupby(hue, sort=False):
            stats = rows.groupby("layer")["mean_distance_pixels"].agg(["mean", "min", "max"])
            ax.plot(stats.index + 1, stats["mean"], marker="o", ms=3, label=name, color=colours[name])
            ax.fill_between(stats.index + 1, stats["min"], stats["max"], alpha=0.12, color=colours[name])
        ax.axhline(part["uniform_distance_pixels"].iloc[0], color="0.4", ls="--", lw=1)
        ax.set(title=dataset, xlabel="block", ylabel="mean attention distance (pixels)")
        ax.set_ylim(bottom=0)
    axes[0][-1].legend(title=hue.replace("_", " "), frameon=False, fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def plot_metric_by_variant(table: pd.DataFrame, hue: str = "variant") -> plt.Figure:
    """Faithfulness or localisation across runs: one panel per metric, methods on the y axis, one bar
    (with its 95% CI) per `hue` value."""
    metrics = list(dict.fromkeys(table["metric"]))
    methods = list(dict.fromkeys(table["method"]))
    names = list(dict.fromkeys(table[hue]))
    colours = palette_for(names)
    height = 0.8 / len(names)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 0.3 * len(methods) * len(names) ** 0.5 + 1.6),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = table[table["metric"] == metric]
        for index, name in enumerate(names):
            rows = part[part[hue] == name].set_index("method").reindex(methods)
            positions = np.arange(len(methods)) + (index - (len(names) - 1) / 2) * height
            values = rows["value"].to_numpy()
            errors = ci_error_lengths(values, rows["ci_low"], rows["ci_high"])
            ax.barh(positions, values, height=height, xerr=errors, color=colours[name], label=name, capsize=1.5)
        ax.set_yticks(np.arange(len(methods)), [m.replace("_", " ") for m in methods] if ax is axes[0][0] else [])
        ax.invert_yaxis()
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=8)
    axes[0][-1].legend(title=hue.replace("_", " "), frameon=False, fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def plot_offset_profiles_by_variant(offsets: pd.DataFrame, column: str = "pos_embed") -> plt.Figure:
    """Head-mean offset profile of every block (rows) for each value of `column` (columns)."""
    names = list(dict.fromkeys(offsets[column]))
    layers = sorted(offsets["layer"].unique())
    fig, axes = plt.subplots(len(layers), len(names), figsize=(1.7 * len(names), 1.7 * len(layers)), squeeze=False)
    for col, name in enumerate(names):
        part = offsets[offsets[column] == name]
        for row, layer in enumerate(layers):
            _draw_profile(axes[row, col], _profile_image(part[part["layer"] == layer]), f"{name} L{layer + 1}")
    fig.tight_layout(pad=0.3)
    return fig


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_sanity(sanity: pd.DataFrame) -> plt.Figure:
    """Cascading randomisation (Adebayo et al. 2018): each method's rank correlation with the trained model's maps
    as the layers are re-drawn from the top down (mean over images, 95% bootstrap band), the fail line dashed."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    methods = list(dict.fromkeys(sanity["method"]))
    colours = palette_for(methods)
    for index, (method, rows) in enumerate(sanity.groupby("method", sort=False)):
        ax.plot(rows["step"], rows["spearman"], marker=MARKERS[index % len(MARKERS)], ms=4, color=colours[method],
                ls="-" if method != "random" else ":", label=method.replace("_", " "))
        ax.fill_between(rows["step"], rows["ci_low"], rows["ci_high"], color=colours[method], alpha=0.12)
    ax.axhline(sanity["max_correlation"].iloc[0], color="0.3", ls="--", lw=1)
    steps = sanity.drop_duplicates("step")
    ax.set_xticks(steps["step"], steps["randomised"], rotation=45, ha="right")
    ax.set(xlabel="re-drawn down to", ylabel="rank correlation with trained maps", ylim=(-0.3, 1.05))
    ax.legend(frameon=False, fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def plot_seed_comparison(comparison: pd.DataFrame, fill: str) -> plt.Figure:
    """Explanations over training seeds (`lib.analysis.seeds.compare_over_seeds`): per metric, each method's paired
    difference from the random order (oriented: above 0 is better than random; seed mean, 95% t-interval), one
    colour and marker per cell; deletion / insertion under `fill`, localisation metrics (fill "none") beside them."""
    rows = comparison[comparison["fill"].isin([fill, "none"]) & (comparison["method"] != comparison["reference"])]
    metrics = list(dict.fromkeys(rows["metric"]))
    cells = list(dict.fromkeys(rows["cell"]))
    colours = palette_for(cells)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.4), squeeze=False, sharey=False)
    for ax, metric in zip(axes[0], metrics):
        part = rows[rows["metric"] == metric]
        methods = list(dict.fromkeys(part["method"]))
        for index, cell in enumerate(cells):
            line = part[part["cell"] == cell].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (index - (len(cells) - 1) / 2) * 0.18
            ax.errorbar(x, line["vs_reference"], yerr=ci_error_lengths(line["vs_reference"], line["vs_reference_low"],
                                                                       line["vs_reference_high"]),
                        fmt=MARKERS[index % len(MARKERS)], ms=4, capsize=2, color=colours[cell], label=cell)
        ax.axhline(0, color="0.3", ls="--", lw=1)
        ax.set_xticks(np.arange(len(methods)), [m.replace("_", " ") for m in methods], rotation=45, ha="right")
        ax.set_title(metric.replace("_", " "), fontsize=9)
    axes[0][0].set_ylabel("better than random (oriented)")
    handles, labels = axes[0][0].get_legend_handles_labels()  # one legend for all panels, beside none of the points
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.suptitle(f"over training seeds, {fill} fill", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
