"""One figure style for the study: seaborn, colour-blind-safe palette, PNG + PDF side by side.

seaborn is imported where it is used: the training notebook, run once per model, only draws curves
with matplotlib and is spared the import.
"""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PALETTE = "colorblind"
PNG_DPI = 150  # the PDF is the print version; the PNG is for screens (README, JupyterLab)


def set_style() -> None:
    """Paper style: white grid, readable fonts, colour-blind palette, embedded TrueType fonts in PDF."""
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1)
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight", "figure.dpi": 110})


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.pdf (PDF without a timestamp, so reruns give the same bytes)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=PNG_DPI, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return paths


def palette_for(names) -> dict:
    """One colour of the study's palette per distinct name, in first-seen order."""
    import seaborn as sns

    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette(PALETTE, max(len(names), 1))))


def ci_error_lengths(values, low, high) -> np.ndarray:
    """matplotlib error-bar lengths (2, N) of a CI around `values`. A percentile bootstrap interval may exclude
    the point estimate (or miss it by float round-off) and matplotlib rejects negative lengths: clipped to 0."""
    values = np.asarray(values, dtype=float)
    return np.clip(np.stack([values - np.asarray(low, dtype=float), np.asarray(high, dtype=float) - values]), 0, None)


def publish(fig: plt.Figure, stem: Path) -> list[Path]:
    """`save_figure`, close the figure and show the saved PNG in the notebook (drawing the figure once more
    for the notebook would take as long as saving it)."""
    from IPython.display import Image, display

    paths = save_figure(fig, stem)
    plt.close(fig)
    display(Image(filename=str(paths[0])))
    return paths


def plot_accuracy_vs_resolution(table: pd.DataFrame, hue: str = "pos_embed") -> plt.Figure:
    """Heo et al.'s Fig. 4 style: test accuracy against test resolution, one line per variant,
    95% CI bands, the training resolution marked, one panel per dataset."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    palette = palette_for(table[hue])
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        for name, rows in part.groupby(hue, sort=False):
            rows = rows.sort_values("resolution")
            ax.plot(rows["resolution"], 100 * rows["accuracy"], marker="o", ms=4, label=name, color=palette[name])
            ax.fill_between(rows["resolution"], 100 * rows["ci_low"], 100 * rows["ci_high"], alpha=0.15, color=palette[name])
        train_res = part["train_resolution"].iloc[0]
        ax.axvline(train_res, color="0.4", ls="--", lw=1)
        ax.annotate("train", (train_res, ax.get_ylim()[0]), xytext=(3, 3), textcoords="offset points", fontsize=8, color="0.3")
        ax.set(title=dataset, xlabel="test resolution (pixels)", ylabel="test accuracy (%)")
    axes[0][-1].legend(title=hue.replace("_", " "), frameon=False, loc="best")
    fig.tight_layout()
    return fig


def plot_training_curves(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss and accuracy per epoch, train and validation (matplotlib only)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(history["epoch"], history[f"{split}/{metric}"], style, marker="o", ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cost_vs_tokens(table: pd.DataFrame) -> plt.Figure:
    """Forward and training time per image, peak memory and achieved GFLOP/s against tokens, log-log."""
    panels = [("forward_ms_per_image", "forward ms / image"), ("train_ms_per_image", "training ms / image"),
              ("peak_mb", "peak memory (MB)"), ("train_gflops_per_s", "training GFLOP/s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    palette = palette_for(table["variant"])
    variants = list(palette)
    for ax, (column, label) in zip(axes, panels):
        for name in variants:
            rows = table[table["variant"] == name].sort_values("tokens")
            ax.plot(rows["tokens"], rows[column].clip(lower=1e-3), marker="o", ms=3, label=name, color=palette[name])
        ax.set(xscale="log", yscale="log", xlabel="tokens (patches)", ylabel=label)
    axes[-1].legend(frameon=False, fontsize=8, loc="best")
    fig.tight_layout()
    return fig
