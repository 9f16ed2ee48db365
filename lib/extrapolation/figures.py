"""RQ1's figures: accuracy and attention entropy against the test scale, seed means with 95% t-intervals."""
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.plots import ci_error_lengths, palette_for

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
CHANCE = {"shapes": 0.25, "mnist": 0.1, "signs": None}


def _styles(names) -> dict:
    """Colour *and* marker and line style per name, so the lines stay apart in grey print."""
    names = list(dict.fromkeys(names))
    colours = palette_for(names)
    return {name: {"color": colours[name], "marker": marker, "ls": ls}
            for name, marker, ls in zip(names, itertools.cycle(MARKERS), itertools.cycle(LINESTYLES))}


def _arms(part: pd.DataFrame, name: str, several: bool):
    """(label, rows) per value of `name` and training grid; the grid is named where the figure has `several`."""
    for (value, grid), rows in part.groupby([name, "train_grid"], sort=False):
        yield (f"{value}, {grid}x{grid} training grid" if several else str(value)), rows


def _line(ax, rows: pd.DataFrame, style: dict, label: str, value: str = "accuracy", factor: float = 100.0) -> None:
    rows = rows.sort_values("grid_ratio")
    y = factor * rows[value].to_numpy()
    err = factor * ci_error_lengths(rows[value], rows["ci_low"].fillna(rows[value]), rows["ci_high"].fillna(rows[value]))
    ax.errorbar(rows["grid_ratio"], y, yerr=err, label=label, capsize=2, ms=4, lw=1.2, **style)


def plot_accuracy_vs_scale(seeds: pd.DataFrame, dataset: str) -> plt.Figure:
    """Accuracy against the test/train grid ratio (log scale), one panel per augmentation x protocol, one line per
    position encoding (tested as trained); the training resolution and chance marked."""
    part = seeds[(seeds["dataset"] == dataset) & (seeds["method"] == "trained")]
    augmentations, protocols = list(dict.fromkeys(part["augmentation"])), list(dict.fromkeys(part["protocol"]))
    fig, axes = plt.subplots(len(augmentations), len(protocols), figsize=(4.4 * len(protocols), 3.3 * len(augmentations)),
                             squeeze=False, sharey=True)
    several = part["train_grid"].nunique() > 1
    styles = _styles(label for label, _ in _arms(part, "variant", several))
    for (i, augmentation), (j, protocol) in itertools.product(enumerate(augmentations), enumerate(protocols)):
        ax = axes[i][j]
        panel = part[(part["augmentation"] == augmentation) & (part["protocol"] == protocol)]
        for label, rows in _arms(panel, "variant", several):
            _line(ax, rows, styles[label], label)
        _decorate(ax, dataset, f"{augmentation} augmentation, {protocol.replace('_', ' ')}")
        ax.set_ylabel("test accuracy (%)" if j == 0 else "")
    _legend(fig, axes, "position encoding")
    fig.text(0.5, -0.01, "seed means with 95% t-intervals over seeds; dashed: training grid, dotted: chance",
             ha="center", va="top", fontsize=9)
    return fig


def plot_rescalings(seeds: pd.DataFrame, dataset: str) -> plt.Figure:
    """A RoPE-Mixed model tested as trained and with each test-time rescaling (zoom), one panel per augmentation."""
    part = seeds[(seeds["dataset"] == dataset) & (seeds["variant"] == "rope_mixed") & (seeds["protocol"] == "zoom")]
    augmentations = list(dict.fromkeys(part["augmentation"]))
    fig, axes = plt.subplots(1, max(len(augmentations), 1), figsize=(4.4 * max(len(augmentations), 1), 3.3), squeeze=False, sharey=True)
    several = part["train_grid"].nunique() > 1
    styles = _styles(label for label, _ in _arms(part, "method", several))
    for ax, augmentation in zip(axes[0], augmentations):
        for label, rows in _arms(part[part["augmentation"] == augmentation], "method", several):
            _line(ax, rows, styles[label], label)
        _decorate(ax, dataset, f"RoPE-Mixed, {augmentation} augmentation, zoom")
    axes[0][0].set_ylabel("test accuracy (%)")
    _legend(fig, axes, "test-time rule")
    return fig


def plot_entropy_vs_scale(entropy: pd.DataFrame, dataset: str) -> plt.Figure:
    """Normalised patch-attention entropy (1 = uniform) against the test scale (zoom), all layers and the last."""
    part = entropy[entropy["dataset"] == dataset]
    augmentations = list(dict.fromkeys(part["augmentation"]))
    fig, axes = plt.subplots(len(augmentations), 2, figsize=(8.8, 3.3 * len(augmentations)), squeeze=False, sharey=True)
    several = part["train_grid"].nunique() > 1
    styles = _styles(label for label, _ in _arms(part, "variant", several))
    for i, augmentation in enumerate(augmentations):
        for j, layers in enumerate(("all_layers", "last_layer")):
            ax = axes[i][j]
            panel = part[(part["augmentation"] == augmentation) & (part["layers"] == layers)]
            for label, rows in _arms(panel, "variant", several):
                _line(ax, rows, styles[label], label, value="entropy", factor=1.0)
            ax.axvline(1.0, color="0.4", ls="--", lw=1)
            ax.set_xscale("log", base=2)
            ax.set(title=f"{dataset}: {augmentation}, {layers.replace('_', ' ')}", xlabel="test grid / training grid",
                   ylabel="entropy / log(patches)" if j == 0 else "")
    _legend(fig, axes, "position encoding")
    return fig


def _decorate(ax, dataset: str, title: str) -> None:
    ax.axvline(1.0, color="0.4", ls="--", lw=1)
    if CHANCE.get(dataset):
        ax.axhline(100 * CHANCE[dataset], color="0.6", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks([t for t in (0.5, 1, 2, 4) if t])
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set(title=f"{dataset}: {title}", xlabel="test grid / training grid", ylim=(0, 101))


def _legend(fig: plt.Figure, axes, title: str) -> None:
    """One legend for all panels (a panel may lack some lines), right of the grid."""
    seen = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), title=title, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
