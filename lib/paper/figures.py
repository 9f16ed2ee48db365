"""The paper's figures, one style (lib.plots.set_style, seaborn "colorblind"), each from the result tables."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from lib.paper.tables import METRIC_LABELS, label, severity_curve
from lib.plots import ci_error_lengths, palette_for, plot_accuracy_vs_resolution, plot_cost_vs_tokens
from lib.resolution.report import attention_variants
from lib.stats import t_interval

def _figure_legend(fig: plt.Figure, title: str = "") -> plt.Figure:
    """One legend for the whole figure, right of the panels, with every line of every panel once
    (panels may show different variants)."""
    entries = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.legend(list(entries.values()), list(entries), title=title or None, frameon=False, fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def figure_resolution(resolution: pd.DataFrame) -> plt.Figure:
    """RQ1: accuracy vs test resolution per dataset, position encodings (softmax attention), 95% CI bands."""
    part = resolution[resolution["attention"] == "softmax"].assign(variant=lambda t: t["variant"].map(label))
    return _figure_legend(plot_accuracy_vs_resolution(part, hue="variant"), "position encoding")


def figure_resolution_attention(resolution: pd.DataFrame) -> plt.Figure | None:
    """RQ1/RQ2: the attention variants (all with RoPE-Mixed) against softmax RoPE-Mixed, where trained."""
    part = attention_variants(resolution)
    if part is None:
        return None
    part = part[part["dataset"].isin(set(resolution.loc[resolution["attention"] != "softmax", "dataset"]))]
    part = part.assign(variant=lambda t: t["variant"].map(label))
    return _figure_legend(plot_accuracy_vs_resolution(part, hue="variant"), "attention")


def training_curves(results_dir: Path | str, runs: Collection[str] | None = None) -> pd.DataFrame:
    """Validation accuracy per epoch of every trained run (results/runs/<run>/live: one seed each), or of `runs`
    only: run, dataset, epoch, accuracy. Empty where no run has curves. DVC never deletes the folder of a run
    since removed from params.yaml, so the pipeline passes the runs the study evaluates."""
    frames = []
    for path in sorted(Path(results_dir).glob("runs/*/live/plots/metrics/val/acc.tsv")):
        run = path.parents[4].name  # runs/<run>/live/plots/metrics/val/acc.tsv; dvclive's step 0 is epoch 1
        if runs is not None and run not in runs:
            continue
        curve = pd.read_csv(path, sep="\t")
        frames.append(pd.DataFrame({"run": run, "dataset": run.split("-")[0], "epoch": curve["step"] + 1,
                                    "accuracy": curve["acc"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "dataset", "epoch", "accuracy"])


def figure_training_curves(curves: pd.DataFrame) -> plt.Figure | None:
    """Validation accuracy against epoch, every trained run in one chart per data set (colour and line style per
    run, so the lines stay apart in grey print)."""
    if curves.empty:
        return None
    datasets = list(dict.fromkeys(curves["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.6 * len(datasets), 3.6), squeeze=False)
    styles = ("-", "--", "-.", ":")
    for ax, dataset in zip(axes[0], datasets):
        part = curves[curves["dataset"] == dataset]
        runs = list(dict.fromkeys(part["run"]))
        colours = palette_for(runs)
        for i, (run, rows) in enumerate(part.groupby("run", sort=False)):
            ax.plot(rows["epoch"], 100 * rows["accuracy"], color=colours[run], ls=styles[i % len(styles)], lw=1.3,
                    label=run.removeprefix(f"{dataset}-"))
        ax.set(title=f"{dataset}: every trained run (one seed)", xlabel="epoch", ylabel="validation accuracy (%)",
               ylim=(0, 101))
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def figure_cost(cost: pd.DataFrame) -> plt.Figure:
    """RQ2: time, memory and throughput against tokens, log-log."""
    return plot_cost_vs_tokens(cost.assign(variant=cost["variant"].map(label)))


def figure_distance(layer_head: pd.DataFrame | None, title: str = "") -> plt.Figure | None:
    """RQ3: mean attention distance per layer, one line per variant (mean over heads, 95% t-CI band),
    heads as dots, the uniform-attention distance dashed."""
    if layer_head is None or layer_head.empty:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    colours = palette_for(layer_head["variant"])
    offsets = np.linspace(-0.12, 0.12, max(len(colours), 1))
    for offset, (variant, colour) in zip(offsets, colours.items()):
        part = layer_head[layer_head["variant"] == variant]
        stats = pd.DataFrame([(layer, *t_interval(rows["mean_distance_pixels"]))
                              for layer, rows in part.groupby("layer")], columns=["layer", "mean", "low", "high"])
        ax.plot(stats["layer"], stats["mean"], marker="o", ms=4, color=colour, label=label(variant))
        ax.fill_between(stats["layer"], stats["low"], stats["high"], color=colour, alpha=0.15)
        ax.scatter(part["layer"] + offset, part["mean_distance_pixels"], s=8, color=colour, alpha=0.5, lw=0)
    uniform = layer_head["uniform_distance_pixels"].iloc[0]
    ax.axhline(uniform, color="0.4", ls="--", lw=1)
    ax.annotate("uniform attention", (layer_head["layer"].min(), uniform), xytext=(2, 3), textcoords="offset points",
                fontsize=8, color="0.3")
    ax.set(xlabel="layer", ylabel="mean attention distance (px)", xticks=sorted(layer_head["layer"].unique()))
    fig.tight_layout()
    return _figure_legend(fig, title)


def figure_method_bars(table: pd.DataFrame | None, metrics: list[str], title: str = "") -> plt.Figure | None:
    """RQ3: grouped bars, one panel per metric, methods on x, one bar per variant, 95% CI error bars."""
    if table is None or table.empty:
        return None
    metrics = [m for m in metrics if m in set(table["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    colours = palette_for(table["variant"])
    methods = list(dict.fromkeys(table["method"]))
    width = 0.8 / max(len(colours), 1)
    for ax, metric in zip(axes[0], metrics):
        part = table[table["metric"] == metric]
        for i, (variant, colour) in enumerate(colours.items()):
            rows = part[part["variant"] == variant].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (i - (len(colours) - 1) / 2) * width
            err = ci_error_lengths(rows["value"], rows["ci_low"], rows["ci_high"])
            ax.bar(x, rows["value"], width, yerr=err, color=colour, label=label(variant), capsize=2,
                   error_kw={"lw": 0.8})
        ax.set_xticks(np.arange(len(methods)), [m.replace("_", " ") for m in methods], rotation=35, ha="right")
        ax.set(title=METRIC_LABELS.get(metric, metric), ylabel="value [95% CI]")
    fig.tight_layout()
    return _figure_legend(fig, title)


def figure_safety(shift: pd.DataFrame, risk_coverage: pd.DataFrame) -> plt.Figure:
    """RQ4: accuracy against corruption severity per variant (clean at 0; 95% CIs), then one risk-coverage
    panel per variant, one curve per condition (clean, severity 1-5)."""
    curve = severity_curve(shift)
    runs = list(dict.fromkeys(zip(risk_coverage["dataset"], risk_coverage["variant"])))
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.2 * (1 + len(runs)), 3.4), squeeze=False)
    ax = axes[0][0]
    colours = palette_for(curve["variant"])
    for (dataset, variant), part in curve.groupby(["dataset", "variant"], sort=False):
        part = part.sort_values("severity")
        ax.plot(part["severity"], 100 * part["accuracy"], marker="o", ms=4, color=colours[variant],
                label=f"{label(variant)} ({dataset})" if curve["dataset"].nunique() > 1 else label(variant))
        ax.fill_between(part["severity"], 100 * part["ci_low"], 100 * part["ci_high"], color=colours[variant],
                        alpha=0.15)
    ax.set(xlabel="corruption severity (0 = clean)", ylabel="test accuracy (%)", title="accuracy under corruption")
    ax.legend(frameon=False, fontsize=8)
    for ax, (dataset, variant) in zip(axes[0][1:], runs):
        part = risk_coverage[(risk_coverage["dataset"] == dataset) & (risk_coverage["variant"] == variant)]
        conditions = list(dict.fromkeys(part["condition"]))
        shades = palette_for(conditions)
        for condition in conditions:
            rows = part[part["condition"] == condition].sort_values("coverage")
            ax.plot(100 * rows["coverage"], 100 * rows["risk"], color=shades[condition], label=condition,
                    lw=1.8 if condition == "clean" else 1.1)
        ax.set(xlabel="coverage (%)", ylabel="selective risk (%)", title=f"risk-coverage: {label(variant)} ({dataset})",
               xlim=(0, 100), ylim=(0, None))
    axes[0][-1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def figure_convex(convex: pd.DataFrame) -> plt.Figure:
    """RQ5: test accuracy of every head (mean over seeds, 95% t-CI), one panel per setting, coloured by family."""
    settings = list(dict.fromkeys(convex["setting"]))
    heads = list(dict.fromkeys(convex["head"]))
    colours = palette_for(convex["family"])
    fig, axes = plt.subplots(1, len(settings), figsize=(4.4 * len(settings) + 1.6, 0.32 * len(heads) + 1.4),
                             sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        part = convex[convex["setting"] == setting].set_index("head")
        for yy, head in zip(np.arange(len(heads))[::-1], heads):
            if head in part.index:
                row = part.loc[head]
                ax.barh(yy, 100 * row["test_accuracy"], xerr=100 * row["ci95"], color=colours[row["family"]],
                        capsize=2, error_kw={"lw": 0.8})
        low = max(0, 100 * (part["test_accuracy"] - part["ci95"]).min() - 5)
        ax.set(xlabel="test accuracy (%) [95% CI]", xlim=(low, 100), title=setting)
        ax.title.set_fontsize(9)
    axes[0][0].set_yticks(np.arange(len(heads))[::-1], heads)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    axes[0][-1].legend(handles, list(colours), frameon=False, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
