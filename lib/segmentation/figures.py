"""The segmentation stage's figure: pixel mIoU against the test scale, seed means with 95% t-intervals."""
import itertools

import matplotlib.pyplot as plt
import pandas as pd

from lib.plots import ci_error_lengths, palette_for

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_miou_vs_scale(summary: pd.DataFrame) -> plt.Figure:
    """One panel per head, one line per position encoding; the training resolution marked."""
    heads = list(dict.fromkeys(summary["head"]))
    variants = list(dict.fromkeys(summary["variant"]))
    colours = palette_for(variants)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.4 * len(heads), 3.3), squeeze=False, sharey=True)
    for ax, head in zip(axes[0], heads):
        for variant, marker in zip(variants, itertools.cycle(MARKERS)):
            rows = summary[(summary["head"] == head) & (summary["variant"] == variant)].sort_values("grid_ratio")
            y = 100 * rows["miou"].to_numpy()
            err = 100 * ci_error_lengths(rows["miou"], rows["ci_low"].fillna(rows["miou"]),
                                         rows["ci_high"].fillna(rows["miou"]))
            ax.errorbar(rows["grid_ratio"], y, yerr=err, label=variant, color=colours[variant], marker=marker,
                        capsize=2, ms=4, lw=1.2)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(summary["grid_ratio"].unique()), [f"{s:.3g}x" for s in sorted(summary["grid_ratio"].unique())])
        ax.set_title(f"{head} (trained at 1x)")
        ax.set_xlabel("test grid / training grid (zoom)")
    axes[0][0].set_ylabel("pixel mIoU (%), seed mean [95% CI]")
    axes[0][-1].legend(title="position encoding", fontsize=8, loc="best")
    return fig
