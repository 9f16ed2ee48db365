"""Paper-ready figures, tables and a results README, built only from the study's result tables.

Nothing here trains or evaluates a model: every number comes from a CSV written by an earlier stage
(`load_tables` names the stage behind each table), is formatted with its 95% confidence interval where
the table has one (`format_ci`: ``95.1 [93.6, 96.3]``), and is written as Markdown and LaTeX
(`write_table`). `build_readme` states the research questions and the numbers that answer them, every
number pulled from those tables.

Layout of `out_dir` (see `build_all`):

    figures/<name>.png, figures/<name>.pdf     one style (lib.plots.set_style, seaborn "colorblind")
    tables/<name>.md, tables/<name>.tex        every table in both formats
    README.md                                  the answers to RQ1-RQ5, linking tables and figures
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from lib.extrapolation.figures import plot_accuracy_vs_scale, plot_entropy_vs_scale, plot_rescalings
from lib.extrapolation.summary import difference_grid
from lib.plots import (ci_error_lengths, palette_for, plot_accuracy_vs_resolution, plot_cost_vs_tokens, save_figure,
                       set_style)
from lib.report import attention_variants, position_encodings, t_interval

# Display names; a name not listed is shown as it is in the tables.
LABELS = {
    "none": "no position", "ape": "APE", "sincos": "sin-cos", "rope_axial": "RoPE-Axial", "rope_mixed": "RoPE-Mixed",
    "rope_axial_ape": "RoPE-Axial + APE", "rope_mixed_ape": "RoPE-Mixed + APE",
    "rope_adaptive_res": "RoPE res.-adaptive", "rope_adaptive_content": "RoPE content-adaptive",
    "rope_gated_bank": "RoPE gated bank", "rope_mixed_norm": "RoPE-Mixed (norm. coords)", "fire": "FIRE",
    "linear": "linear", "local": "local", "sparse_strided": "sparse strided",
    "sparse_fixed": "sparse fixed", "axial": "axial", "multi_axis": "multi-axis", "moh": "MoH",
    "softmax": "softmax",
}

METRIC_LABELS = {
    "deletion_auc": "deletion AUC (lower better)", "insertion_auc": "insertion AUC (higher better)",
    "positive_perturbation_auc": "positive perturbation AUC (lower better)",
    "negative_perturbation_auc": "negative perturbation AUC (higher better)",
    "pointing_game": "pointing game", "relevance_mass": "relevance mass",
}


FAITHFULNESS_METRICS = ["deletion_auc", "insertion_auc", "positive_perturbation_auc", "negative_perturbation_auc"]
LOCALISATION_METRICS = ["pointing_game", "relevance_mass"]


def label(name: str) -> str:
    return LABELS.get(name, name)


# --------------------------------------------------------------------------------------------- tables in

@dataclass(frozen=True)
class Table:
    """A result table: where it lies under results/ and which stage writes it."""
    path: str
    stage: str
    fallback: str = ""  # a glob of per-run tables to concatenate when `path` is absent


TABLES = {
    "resolution": Table("resolution/resolution.csv", "evaluate"),
    "seed_maps": Table("resolution/seed_map_stability.csv", "evaluate"),
    "cost": Table("efficiency/cost_vs_tokens.csv", "efficiency"),
    "scaling": Table("efficiency/scaling.csv", "efficiency"),
    "lib_vs_timm": Table("efficiency/lib_vs_timm.csv", "efficiency"),
    "efficiency_targets": Table("efficiency/targets.csv", "efficiency"),
    "layer_head": Table("analysis_summary/layer_head.csv", "analysis-summary", "analysis/*/layer_head.csv"),
    "faithfulness": Table("analysis_summary/faithfulness.csv", "analysis-summary", "analysis/*/faithfulness.csv"),
    "localisation": Table("analysis_summary/localisation.csv", "analysis-summary", "analysis/*/localisation.csv"),
    "shift": Table("safety/*/shift_metrics.csv", "safety"),
    "risk_coverage": Table("safety/*/risk_coverage.csv", "safety"),
    "convex": Table("convex/summary.csv", "convex"),
    "rq1_accuracy": Table("rq1/summary/accuracy.csv", "rq1-summary"),
    "rq1_paired": Table("rq1/summary/paired.csv", "rq1-summary"),
    "rq1_ordering": Table("rq1/summary/heo_ordering.csv", "rq1-summary"),
    "rq1_entropy": Table("rq1/summary/entropy.csv", "rq1-summary"),
}


def _missing(path: Path, stage: str, extra: str = "") -> FileNotFoundError:
    return FileNotFoundError(f"{path}: result table missing{extra} (written by the `{stage}` stage: "
                             f"run `dvc repro {stage}` first)")


def read_table(results_dir: Path | str, name: str) -> pd.DataFrame:
    """One result table by its name in TABLES; FileNotFoundError naming the missing file and its stage."""
    spec, results = TABLES[name], Path(results_dir)
    if "*" in spec.path:
        paths = sorted(results.glob(spec.path))
        if not paths:
            raise _missing(results / spec.path, spec.stage, " (no run folder holds one)")
        return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    path = results / spec.path
    if path.is_file():
        return pd.read_csv(path)
    if spec.fallback:
        paths = sorted(results.glob(spec.fallback))
        if paths:
            return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
        raise _missing(path, spec.stage, f" and no per-run {results / spec.fallback} either")
    raise _missing(path, spec.stage)


def load_tables(results_dir: Path | str) -> dict[str, pd.DataFrame]:
    """Every table the paper needs; the first missing one stops with FileNotFoundError."""
    results = Path(results_dir)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: results folder not found")
    tables = {name: read_table(results, name) for name in TABLES}
    # safety runs: every folder with shift metrics must also have its risk-coverage table
    for folder in sorted(p.parent for p in results.glob("safety/*/shift_metrics.csv")):
        if not (folder / "risk_coverage.csv").is_file():
            raise _missing(folder / "risk_coverage.csv", "safety")
    return tables


# --------------------------------------------------------------------------------------------- numbers

def format_ci(value: float, low: float, high: float, scale: float = 100.0, digits: int = 1) -> str:
    """``95.1 [93.6, 96.3]``: value and 95% CI, multiplied by `scale`; 'n/a' for a missing value,
    the value alone when the interval is missing."""
    def fmt(x: float) -> str:
        return f"{scale * x:.{digits}f}"

    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return fmt(value)
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def _ci_row(row: pd.Series, value: str = "accuracy", scale: float = 100.0, digits: int = 1) -> str:
    return format_ci(row[value], row["ci_low"], row["ci_high"], scale, digits)


# --------------------------------------------------------------------------------------------- tables out

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Plain text for LaTeX (pandas escapes cells and headers, not the caption)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """`stem`.md (caption as a heading line, then the table) and `stem`.tex (a captioned table float)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, tex = stem.with_suffix(".md"), stem.with_suffix(".tex")
    md.write_text(f"{caption}\n\n{table.to_markdown(index=False)}\n")
    align = "".join("l" if table[c].dtype == object or isinstance(table[c].dtype, pd.StringDtype) else "r"
                    for c in table.columns)
    latex = table.to_latex(index=False, escape=True, caption=latex_escape(caption), label=f"tab:{stem.name}",
                           column_format=align)
    tex.write_text(latex)
    return [md, tex]


def resolution_table(resolution: pd.DataFrame) -> pd.DataFrame:
    """RQ1: per dataset and variant, test accuracy (%) with CI at the training, lowest and highest resolution."""
    rows = []
    for (dataset, variant), part in resolution.groupby(["dataset", "variant"], sort=False):
        part = part.sort_values("resolution")
        train_res = int(part["train_resolution"].iloc[0])
        at = {r: part[part["resolution"] == r].iloc[0] for r in part["resolution"]}
        low, high = int(part["resolution"].min()), int(part["resolution"].max())
        rows.append({
            "dataset": dataset, "variant": label(variant), "attention": label(part["attention"].iloc[0]),
            "train px": train_res,
            "acc. at train px": _ci_row(at[train_res]) if train_res in at else "n/a",
            "lowest px": low, "acc. at lowest px": _ci_row(at[low]),
            "highest px": high, "acc. at highest px": _ci_row(at[high]),
            "n": int(part["n"].iloc[0]),
        })
    return pd.DataFrame(rows)


def resolution_full_table(resolution: pd.DataFrame) -> pd.DataFrame:
    """RQ1, every point: one row per dataset, variant and test resolution."""
    return pd.DataFrame({
        "dataset": resolution["dataset"], "variant": resolution["variant"].map(label),
        "attention": resolution["attention"].map(label), "test px": resolution["resolution"].astype(int),
        "train px": resolution["train_resolution"].astype(int),
        "accuracy (%) [95% CI]": [_ci_row(r) for _, r in resolution.iterrows()], "n": resolution["n"].astype(int),
    })


def rq1_ordering_table(ordering: pd.DataFrame) -> pd.DataFrame:
    """RQ1: per data set, training grid, augmentation, protocol and scale above 1, the three paired differences of Heo et al.'s
    ordering and whether it holds."""
    return ordering.rename(columns={"mixed_vs_axial": "RoPE-Mixed - RoPE-Axial", "axial_vs_ape": "RoPE-Axial - APE",
                                    "mixed_vs_ape": "RoPE-Mixed - APE"})


def rq1_accuracy_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """RQ1: one row per cell and method, the seed mean [95% t-CI] per protocol and scale."""
    table = accuracy.copy()
    table["cell"] = [format_ci(a, lo, hi) for a, lo, hi in zip(table["accuracy"], table["ci_low"], table["ci_high"])]
    table["test"] = [f"{p.replace('field_of_view', 'fov')} {s:g}x" for p, s in zip(table["protocol"], table["scale"])]
    wide = table.pivot_table(index=["dataset", "train_grid", "augmentation", "variant", "method"], columns="test", values="cell",
                             aggfunc="first", sort=False)
    return wide.reset_index()


def cost_table(cost: pd.DataFrame, scaling: pd.DataFrame) -> pd.DataFrame:
    """RQ2: per attention variant, forward / training time at the fewest and most tokens, log-log slopes and
    the token count from which it is faster than the softmax baseline (timings: medians, no CI)."""
    rows = []
    for variant, part in cost.groupby("variant", sort=False):
        part = part.sort_values("tokens")
        first, last = part.iloc[0], part.iloc[-1]
        fit = scaling[scaling["variant"] == variant]
        fit = fit.iloc[0] if len(fit) else pd.Series(dtype=float)
        crossover = fit.get("forward_crossover_tokens", math.nan)
        faster = ("(baseline)" if first["attention"] == "softmax" else
                  "never" if not np.isfinite(crossover) else f"{crossover:.0f}")
        rows.append({
            "variant": label(variant), "attention": label(first["attention"]),
            "fewest tokens": int(first["tokens"]),
            "forward ms/img (fewest)": round(float(first["forward_ms_per_image"]), 3),
            "most tokens": int(last["tokens"]), "forward ms/img (most)": round(float(last["forward_ms_per_image"]), 3),
            "train ms/img (most)": round(float(last["train_ms_per_image"]), 3),
            "peak MB (most)": round(float(last["peak_mb"]), 1),
            "forward slope": round(float(fit.get("forward_slope", math.nan)), 2),
            "train slope": round(float(fit.get("train_slope", math.nan)), 2),
            "faster than softmax from (tokens)": faster,
        })
    return pd.DataFrame(rows)


def _distance_cell(rows: pd.DataFrame) -> str:
    """Mean attention distance (px) of some heads: mean [95% t-CI over the heads]."""
    return format_ci(*t_interval(rows["mean_distance_pixels"]), 1, 2)


def distance_table(layer_head: pd.DataFrame) -> pd.DataFrame:
    """RQ3: mean attention distance (pixels) per variant and layer: mean over heads [95% t-CI over heads]."""
    rows = []
    for (variant, layer), part in layer_head.groupby(["variant", "layer"], sort=False):
        ent, ent_low, ent_high = t_interval(part["entropy_normalized"])
        rows.append({"variant": label(variant), "layer": int(layer), "heads": len(part),
                     "mean distance (px) [95% CI over heads]": _distance_cell(part),
                     "uniform distance (px)": round(float(part["uniform_distance_pixels"].iloc[0]), 2),
                     "normalized entropy [95% CI]": format_ci(ent, ent_low, ent_high, 1, 3)})
    return pd.DataFrame(rows)


def _method_metric_table(table: pd.DataFrame, digits: int) -> pd.DataFrame:
    cells = [format_ci(r["value"], r["ci_low"], r["ci_high"], 1, digits) for _, r in table.iterrows()]
    table = table.assign(cell=cells)
    wide = table.pivot_table(index=["variant", "method"], columns="metric", values="cell", aggfunc="first", sort=False)
    wide = wide.reset_index()
    wide["variant"] = wide["variant"].map(label)
    wide.columns.name = None
    return wide.rename(columns={m: METRIC_LABELS.get(m, m) for m in wide.columns})


def faithfulness_table(faithfulness: pd.DataFrame) -> pd.DataFrame:
    """RQ3: every explanation method's faithfulness AUCs per variant, value [95% bootstrap CI]."""
    return _method_metric_table(faithfulness, 3)


def localisation_table(localisation: pd.DataFrame) -> pd.DataFrame:
    """RQ3: pointing game and relevance mass per variant and method, value [95% CI]."""
    return _method_metric_table(localisation, 3)


def _method_cell(row: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    return f"{row['method']} {format_ci(row['value'], row['ci_low'], row['ci_high'], scale, digits)}"


def analysis_summary_table(layer_head: pd.DataFrame, faithfulness: pd.DataFrame,
                           localisation: pd.DataFrame) -> pd.DataFrame:
    """RQ3 at a glance, one row per analysed variant: mean attention distance in the first and last layer
    (mean over heads), attention rollout's deletion AUC, the most faithful method by deletion AUC, and the
    best pointing game (shapes' object masks), each with its 95% CI."""
    rows = []
    for variant, part in layer_head.groupby("variant", sort=False):
        first, last = part["layer"].min(), part["layer"].max()
        faith = faithfulness[(faithfulness["variant"] == variant) & (faithfulness["metric"] == "deletion_auc")]
        rollout = faith[faith["method"] == "rollout"]
        point = localisation[(localisation["variant"] == variant) & (localisation["metric"] == "pointing_game")]
        rows.append({
            "variant": label(variant), "attention": label(part["attention"].iloc[0]),
            "position": label(part["pos_embed"].iloc[0]),
            "distance first layer (px)": _distance_cell(part[part["layer"] == first]),
            "distance last layer (px)": _distance_cell(part[part["layer"] == last]),
            "rollout deletion AUC": _ci_row(rollout.iloc[0], "value", 1, 3) if len(rollout) else "n/a",
            "lowest deletion AUC": _method_cell(_best(faith, "value", lowest=True)) if len(faith) else "n/a",
            "best pointing game (%)": _method_cell(_best(point, "value"), 100, 1) if len(point) else "n/a",
        })
    return pd.DataFrame(rows)


def _is_corruption(shift: pd.DataFrame) -> pd.Series:
    return ~shift["family"].isin(["clean", "resolution"])


def severity_curve(shift: pd.DataFrame) -> pd.DataFrame:
    """RQ4: per variant, accuracy at each severity: clean (severity 0, its own CI) and the mean over every
    corruption at severity s with a 95% t-interval over the corruptions."""
    rows = []
    for (dataset, variant), part in shift.groupby(["dataset", "variant"], sort=False):
        clean = part[part["family"] == "clean"]
        if len(clean):
            c = clean.iloc[0]
            rows.append({"dataset": dataset, "variant": variant, "severity": 0, "accuracy": c["accuracy"],
                         "ci_low": c["ci_low"], "ci_high": c["ci_high"], "conditions": 1})
        corrupted = part[_is_corruption(part)]
        for severity, at in corrupted.groupby("severity"):
            mean, low, high = t_interval(at["accuracy"])
            rows.append({"dataset": dataset, "variant": variant, "severity": int(severity), "accuracy": mean,
                         "ci_low": low, "ci_high": high, "conditions": len(at)})
    return pd.DataFrame(rows)


def safety_table(shift: pd.DataFrame) -> pd.DataFrame:
    """RQ4: per variant, clean accuracy, mean corrupted accuracy per severity (95% CI), calibration and AURC."""
    curve = severity_curve(shift)
    rows = []
    for (dataset, variant), part in curve.groupby(["dataset", "variant"], sort=False):
        runs = shift[(shift["dataset"] == dataset) & (shift["variant"] == variant)]
        clean = runs[runs["family"] == "clean"].iloc[0]
        row = {"dataset": dataset, "variant": label(variant), "n": int(clean["n"])}
        for _, r in part.iterrows():
            row["clean acc. (%)" if r["severity"] == 0 else f"severity {int(r['severity'])} (%)"] = _ci_row(r)
        row.update({"clean ECE": round(float(clean["ece"]), 3), "clean ECE after T": round(float(clean["ece_ts"]), 3),
                    "clean AURC": round(float(clean["aurc"]), 3), "clean E-AURC": round(float(clean["eaurc"]), 3)})
        rows.append(row)
    return pd.DataFrame(rows)


def convex_table(convex: pd.DataFrame) -> pd.DataFrame:
    """RQ5: every head's test accuracy (%) per setting over seeds, mean [95% t-CI], with the validation choice,
    size, rank and duality gap."""
    return pd.DataFrame({
        "setting": convex["setting"], "head": convex["head"], "features / fit": convex["family"],
        "seeds": convex["seeds"].astype(int),
        "test acc. (%) [95% CI]": [format_ci(m, m - h, m + h) for m, h in zip(convex["test_accuracy"], convex["ci95"])],
        "chosen": [f"{r} = {v:.2g}" for r, v in zip(convex["regularizer"], convex["chosen_value"])],
        "at grid edge": convex["at_edge"].astype(int),
        "parameters": convex["parameters"].astype(int),
        "rank": [f"{r:.1f}" if np.isfinite(r) else "n/a" for r in convex["rank"]],
        "relative duality gap": [f"{g:.1e}" if np.isfinite(g) else "n/a" for g in convex["relative_gap"]],
    })


# --------------------------------------------------------------------------------------------- figures

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


# --------------------------------------------------------------------------------------------- README

QUESTIONS = {
    "RQ1": "Resolution extrapolation: when does RoPE keep its accuracy at other test resolutions, and does the answer "
           "depend on the encoding, the training augmentation, what a larger image shows (zoom or a wider field of "
           "view) or a test-time rescaling of the frequencies?",
    "RQ2": "Efficiency: what does each attention variant cost as the number of tokens grows, and from how many "
           "tokens on are linear / sparse / local variants cheaper than softmax attention?",
    "RQ3": "Attention analysis and faithfulness: how far does trained attention look per layer, and which "
           "explanation method is the most faithful and best localised?",
    "RQ4": "Safety and reliability: how do accuracy, calibration and selective prediction hold up under "
           "corruption shift?",
    "RQ5": "Convex heads: do convex attention / mixer heads on frozen features beat linear, MLP and "
           "Adam-trained attention heads?",
}


def _best(frame: pd.DataFrame, column: str, lowest: bool = False) -> pd.Series:
    frame = frame[np.isfinite(frame[column])]
    return frame.loc[frame[column].idxmin() if lowest else frame[column].idxmax()]


def rq1_lines(findings: str, accuracy: pd.DataFrame) -> list[str]:
    """RQ1's answer: the sentences `rq1-summary` computed from the seed tables (findings.md), after the design."""
    seeds = int(accuracy["seeds"].min())
    grids = "; ".join(f"{dataset} " + " and ".join(f"{g}x{g}" for g in sorted(set(part)))
                      for dataset, part in accuracy.groupby("dataset", sort=False)["train_grid"])
    design = (f"- Design: every cell (data set x training grid x training augmentation x position encoding; training "
              f"grids: {grids}) trained with {seeds} seeds; "
              f"each seed tested on the same {int(accuracy['n'].iloc[0])} test images at every scale and protocol. "
              "Values are seed means [95% t-interval over seeds]; differences are paired by seed index on the same "
              "images, in accuracy points, and a difference is stated only where its interval excludes 0.")
    return [design, *[line for line in findings.splitlines() if line.strip()]]


def zoo_resolution_lines(resolution: pd.DataFrame) -> list[str]:
    """The single-seed resolution sweep of every trained run: what it is, and that no claim rests on it."""
    runs = resolution["run"].nunique() if "run" in resolution else len(resolution.drop_duplicates(["dataset", "variant"]))
    return [f"- Every run the other questions analyse ({runs} runs, one training seed each, light augmentation, zoom "
            "protocol, Wilson intervals over test images) tested at every resolution of its data set. One seed per "
            "variant: RQ1's claims rest on the seed study above, not on this table."]


def rq2_lines(cost: pd.DataFrame, scaling: pd.DataFrame, lib_vs_timm: pd.DataFrame | None = None,
              targets: pd.DataFrame | None = None) -> list[str]:
    lines = []
    softmax = set(cost.loc[cost["attention"] == "softmax", "variant"])
    for _, row in scaling.iterrows():
        crossover = row["forward_crossover_tokens"]
        where = ("the softmax baseline" if row["variant"] in softmax else
                 f"faster than softmax from {crossover:.0f} tokens on" if np.isfinite(crossover)
                 else "never faster than softmax in the measured range")
        lines.append(f"- {label(row['variant'])}: forward time grows with log-log slope {row['forward_slope']:.2f} "
                     f"(training {row['train_slope']:.2f}); {where}.")
    most = cost[cost["tokens"] == cost["tokens"].max()]
    fastest = _best(most, "forward_ms_per_image", lowest=True)
    lines.append(f"- At {int(fastest['tokens'])} tokens the fastest forward pass is {label(fastest['variant'])}'s, "
                 f"{fastest['forward_ms_per_image']:.3g} ms per image. Timings are medians of repeated steps on one "
                 f"machine; the tables hold no confidence intervals for them.")
    if lib_vs_timm is not None and targets is not None:
        lines += speed_goal_lines(lib_vs_timm, targets)
    return lines


def _goal_value(row: pd.Series, percent: bool) -> str:
    """'1.13x [1.10, 1.16]' or '7.2% [5.0, 9.1]': the median over rounds [slowest, fastest round]."""
    if percent:
        return f"{100 * row['value']:.1f}% [{100 * row['min']:.1f}, {100 * row['max']:.1f}]"
    return f"{row['value']:.2f}x [{row['min']:.2f}, {row['max']:.2f}]"


def speed_goal_lines(lib_vs_timm: pd.DataFrame, targets: pd.DataFrame) -> list[str]:
    """lib against timm, eager and compiled (the efficiency stage's lib_vs_timm.csv and targets.csv): each goal's
    median over the interleaved rounds with its slowest and fastest round, whether it was met, and what
    compiling cost."""
    first = lib_vs_timm.iloc[0]
    lines = [f"- lib against timm at the same configuration ({int(first['grid'])}x{int(first['grid'])} patches, batch "
             f"{int(first['batch'])}, training steps; median over interleaved rounds [slowest, fastest round]):"]
    measured = targets[targets["value"].notna() & (targets["target"] != "linear attention forward log-log slope")]
    for _, row in measured.iterrows():
        percent = "overhead" in row["target"] or "FLOP/s" in row["target"]
        verdict = "" if row["goal"] == "(reference)" else f"; goal {row['goal']}: {'met' if row['met'] else 'missed'}"
        lines.append(f"  - {row['target']}, {row['mode']}: {_goal_value(row, percent)}{verdict}.")
    compiled = lib_vs_timm[lib_vs_timm["mode"] == "compiled"].set_index("model")
    eager = lib_vs_timm[lib_vs_timm["mode"] == "eager"].set_index("model")
    for model, row in compiled.iterrows():
        saved = 1 / eager.loc[model, "images_per_s_train"] - 1 / row["images_per_s_train"]  # seconds per image
        steps = row["compile_seconds"] / (saved * row["batch"]) if saved > 0 else np.inf
        lines.append(f"  - torch.compile, {model}: {row['images_per_s_train'] / eager.loc[model, 'images_per_s_train']:.2f}x "
                     f"the eager training throughput after {row['compile_seconds']:.0f} s of compiling"
                     + (f", which pays off after {steps:,.0f} steps." if np.isfinite(steps) else ", never paid off."))
    return lines


def _count_best(table: pd.DataFrame, metric: str, lowest: bool) -> str:
    """'integrated_gradients in 9 of 16 variants, rollout in 4, ...': which method is best per variant."""
    part = table[table["metric"] == metric]
    winners = pd.Series([_best(rows, "value", lowest)["method"] for _, rows in part.groupby("variant", sort=False)])
    counts = winners.value_counts()
    return ", ".join(f"{method} in {n}" + (f" of {len(winners)} variants" if i == 0 else "")
                     for i, (method, n) in enumerate(counts.items()))


def rq3_lines(layer_head: pd.DataFrame, faithfulness: pd.DataFrame, localisation: pd.DataFrame) -> list[str]:
    """RQ3 across the analysed variants: the range of last-layer attention distances, which explanation
    method is most faithful / best localised how often, and where attention rollout beats random maps."""
    last = layer_head[layer_head["layer"] == layer_head["layer"].max()]
    distance = last.groupby("variant", sort=False)["mean_distance_pixels"].mean()
    lines = [f"- mean attention distance in the last layer (layer {int(last['layer'].iloc[0])}, mean over heads) "
             f"runs from {distance.min():.2f} px ({label(distance.idxmin())}) to {distance.max():.2f} px "
             f"({label(distance.idxmax())}) over {len(distance)} variants; uniform attention gives "
             f"{last['uniform_distance_pixels'].iloc[0]:.2f} px."]
    deletion_winners = _count_best(faithfulness, "deletion_auc", lowest=True)
    insertion_winners = _count_best(faithfulness, "insertion_auc", lowest=False)
    lines.append(f"- most faithful method by deletion AUC (lower better): {deletion_winners}; by insertion AUC "
                 f"(higher better): {insertion_winners} (n = {int(faithfulness['n'].iloc[0])} test images per variant).")
    deletion = faithfulness[faithfulness["metric"] == "deletion_auc"].set_index(["variant", "method"])
    variants = list(dict.fromkeys(faithfulness["variant"]))
    if {"rollout", "random"} <= set(faithfulness["method"]):
        beats = [v for v in variants if deletion.loc[(v, "rollout"), "ci_high"] < deletion.loc[(v, "random"), "ci_low"]]
        missed = [label(v) for v in variants if v not in beats]
        lines.append(f"- attention rollout deletes the prediction faster than random patch orders (deletion AUC, "
                     f"95% bootstrap CIs apart) in {len(beats)} of {len(variants)} variants"
                     + (f"; not in: {', '.join(missed)}." if missed else "."))
    if len(localisation):
        lines.append(f"- best pointing game (object masks): {_count_best(localisation, 'pointing_game', False)}.")
    return lines


def rq4_lines(shift: pd.DataFrame, recommendation: str = "", seed_maps: pd.DataFrame | None = None,
              predictors: str = "") -> list[str]:
    """Per variant: clean accuracy, calibration and corrupted accuracy; attention maps across training seeds
    (`seed_map_lines`) when given; then the safety-summary stage's trust decision (`recommendation`, its
    recommendation.md) and its attention-as-predictor lines (`predictors`, attention_predictors.md) when given."""
    curve = severity_curve(shift)
    lines = []
    for (dataset, variant), part in curve.groupby(["dataset", "variant"], sort=False):
        clean_rows = shift[(shift["dataset"] == dataset) & (shift["variant"] == variant) & (shift["family"] == "clean")]
        worst = part[part["severity"] == part["severity"].max()].iloc[0]
        text = f"- {label(variant)} ({dataset}): "
        if len(clean_rows):
            clean = clean_rows.iloc[0]
            text += (f"clean accuracy {_ci_row(clean)}% (n = {int(clean['n'])}); ECE {clean['ece']:.3f} -> "
                     f"{clean['ece_ts']:.3f} after temperature scaling; E-AURC {clean['eaurc']:.3f}; ")
        text += (f"mean accuracy over {int(worst['conditions'])} corruptions at severity {int(worst['severity'])}: "
                 f"{_ci_row(worst)}% (95% t-CI over corruptions).")
        lines.append(text)
    lines += seed_map_lines(seed_maps) if seed_maps is not None else []
    if recommendation.strip():
        lines += ["", "Which variant to trust, and at which abstention threshold (safety-summary stage):", "",
                  recommendation.strip()]
    if predictors.strip():
        lines += ["", "Does attention predict errors? Per-image attention signals against confidence as error and "
                      "shift detectors (safety stage; directions and the combined score fixed on validation):", "",
                  predictors.strip()]
    return lines


def seed_map_lines(seed_maps: pd.DataFrame) -> list[str]:
    """Attention reliability across training seeds (the evaluate stage's seed_map_stability.csv): per run,
    each map method's similarity to the study seed's maps, averaged over the extra seeds; nothing without them."""
    lines = []
    for (dataset, variant), part in seed_maps.groupby(["dataset", "variant"], sort=False):
        means = part.groupby(["method", "metric"])["mean"].mean()
        methods = "; ".join(f"{method}: top-k IoU {means[(method, 'topk_iou')]:.2f}, Spearman "
                            f"{means[(method, 'spearman')]:.2f}, JS divergence {means[(method, 'js_divergence')]:.3f}"
                            for method in dict.fromkeys(part["method"]))
        lines.append(f"- attention maps across training seeds, {label(variant)} ({dataset}, seed "
                     f"{int(part['seed'].iloc[0])} vs {sorted(set(part['other_seed'].astype(int)))}, "
                     f"{int(part['n'].max())} test images): {methods}; same predicted class on "
                     f"{100 * part['prediction_agreement'].mean():.1f}% of the images.")
    return lines


def rq5_lines(findings: str, convex: pd.DataFrame) -> list[str]:
    """RQ5's answer: the design, then the verdicts the `convex` stage computed from paired seed differences."""
    settings = ", ".join(f"`{name}`" for name in dict.fromkeys(convex["setting"]))
    design = (f"Design: heads on frozen tokens of RQ1's trained seeds ({settings}; backbone -> the heads' data set), "
              f"{int(convex['seeds'].min())} seeds (seed k: the backbone's k-th training seed), every head the same "
              f"number of regularization values chosen on validation; differences are paired over seeds [95% t-CI] "
              f"and stated only where the interval excludes 0. Findings:")
    return [design, *[line for line in findings.splitlines() if line.strip()]]


def build_readme(tables: dict[str, pd.DataFrame], products: dict[str, pd.DataFrame], figures: dict[str, str],
                 link_prefix: str = "", recommendation: str = "", findings: str = "", convex_findings: str = "",
                 predictors: str = "") -> str:
    """The results README: per research question, the answer's numbers (from the tables), the main table
    in Markdown, and links to the figure and the table files. `figures` maps a name to its PNG's path relative
    to the paper folder; `link_prefix` is the paper folder seen from where the README is written ("" inside it)."""
    def fig(name: str, caption: str) -> str:
        png = f"{link_prefix}{figures[name]}" if name in figures else ""
        return f"- Figure: [{caption}]({png}) ([PDF]({Path(png).with_suffix('.pdf').as_posix()}))" if png else ""

    def tab(name: str) -> str:
        stem = f"{link_prefix}tables/{name}"
        return f"- Table: [`{stem}.md`]({stem}.md), LaTeX [`{stem}.tex`]({stem}.tex)"

    t, p = tables, products
    sections = [
        "# Results",
        "",
        "Generated by `notebooks/paper_figures.py` (`lib/paper.py`) from the study's result tables; every number "
        "below is read from them, none is typed by hand. Accuracies are in %, as value [95% confidence interval].",
    ]
    rq1_figures = [fig(name, name.replace("_", " ")) for name in figures if name.startswith(("rq1_",))]
    parts = [
        ("RQ1", rq1_lines(findings, t["rq1_accuracy"]), "rq1_ordering",
         [*rq1_figures, tab("rq1_ordering"), tab("rq1_paired"), tab("rq1_accuracy")]),
        ("RQ2", rq2_lines(t["cost"], t["scaling"], t["lib_vs_timm"], t["efficiency_targets"]), "cost", [fig("cost_vs_tokens", "cost vs tokens"), tab("cost")]),
        ("RQ3", rq3_lines(t["layer_head"], t["faithfulness"], t["localisation"]), "analysis",
         [fig("attention_distance", "mean attention distance per layer, position encodings"),
          fig("attention_distance_attention", "mean attention distance per layer, attention variants"),
          fig("faithfulness", "faithfulness AUCs with 95% CIs, position encodings"),
          fig("faithfulness_attention", "faithfulness AUCs with 95% CIs, attention variants"),
          fig("localisation", "localisation with 95% CIs, position encodings"),
          fig("localisation_attention", "localisation with 95% CIs, attention variants"),
          tab("analysis"), tab("distance"), tab("faithfulness"), tab("localisation")]),
        ("RQ4", rq4_lines(t["shift"], recommendation, t["seed_maps"], predictors), "safety",
         [fig("safety", "accuracy vs severity and risk-coverage"), tab("safety")]),
        ("RQ5", rq5_lines(convex_findings, t["convex"]), "convex",
         [fig("convex_heads", "convex heads accuracy per setting"), tab("convex")]),
    ]
    for rq, lines, main_table, links in parts:
        sections += ["", f"## {rq}. {QUESTIONS[rq]}", "", *lines, "", p[main_table].to_markdown(index=False), "",
                     *[link for link in links if link]]
        if rq == "RQ1":
            sections += ["", "### Every trained run at every resolution (one seed each)", "",
                         *zoo_resolution_lines(t["resolution"]), "", p["resolution"].to_markdown(index=False), "",
                         fig("accuracy_vs_resolution", "accuracy vs resolution, position encodings"),
                         fig("accuracy_vs_resolution_attention", "accuracy vs resolution, attention variants"),
                         fig("training_curves", "validation accuracy per epoch, every trained run"),
                         tab("resolution"), tab("resolution_full")]
    return "\n".join(sections).rstrip() + "\n"


# --------------------------------------------------------------------------------------------- all

def build_all(results_dir: Path | str, out_dir: Path | str, show: bool = False,
              results_readme: Path | str | None = None, paper_folder: str = "paper") -> dict:
    """Read every table, write every figure, table and the README under `out_dir`; return what was written.

    `results_readme` (for example results/README.md) gets the same README with its links pointing into
    `paper_folder`, the name `out_dir` has once published (the pipeline writes into a staging folder first)."""
    out = Path(out_dir)
    tables = load_tables(results_dir)
    products = {
        "resolution": resolution_table(tables["resolution"]),
        "resolution_full": resolution_full_table(tables["resolution"]),
        "cost": cost_table(tables["cost"], tables["scaling"]),
        "analysis": analysis_summary_table(tables["layer_head"], tables["faithfulness"], tables["localisation"]),
        "distance": distance_table(tables["layer_head"]),
        "faithfulness": faithfulness_table(tables["faithfulness"]),
        "localisation": localisation_table(tables["localisation"]),
        "safety": safety_table(tables["shift"]),
        "convex": convex_table(tables["convex"]),
        "rq1_ordering": rq1_ordering_table(tables["rq1_ordering"]),
        "rq1_paired": difference_grid(tables["rq1_paired"]),
        "rq1_accuracy": rq1_accuracy_table(tables["rq1_accuracy"]),
    }
    captions = {
        "resolution": "RQ1: test accuracy (%) [95% CI] at the training, lowest and highest test resolution.",
        "resolution_full": "RQ1: test accuracy (%) [95% CI] at every test resolution.",
        "cost": "RQ2: cost of each attention variant against tokens (medians of timed steps; log-log slopes).",
        "analysis": "RQ3: per variant, mean attention distance (px, mean over heads [95% t-CI]), deletion AUCs "
                    "and pointing game [95% bootstrap CI].",
        "distance": "RQ3: mean attention distance per layer, mean over heads [95% t-CI over heads].",
        "faithfulness": "RQ3: faithfulness AUCs of each explanation method, value [95% bootstrap CI].",
        "localisation": "RQ3: localisation of each explanation method, value [95% CI].",
        "safety": "RQ4: clean accuracy and mean corrupted accuracy per severity (%) [95% CI], calibration, AURC.",
        "convex": "RQ5: test accuracy (%) of every head on frozen tokens per setting (backbone -> data), mean over seeds "
                  "[95% t-CI]; the regularization chosen on validation (median over seeds) and how many seeds chose a "
                  "grid edge.",
        "rq1_ordering": "RQ1: Heo et al.'s ordering above the training resolution, paired differences in accuracy "
                        "points [95% t-CI over seeds]; 'holds' where both adjacent differences are above 0.",
        "rq1_paired": "RQ1: paired differences (accuracy points, mean over seeds [95% t-CI]) at 0.5x, 1.5x, 2x and 4x "
                      "the training grid; * where the interval excludes 0.",
        "rq1_accuracy": "RQ1: test accuracy (%), seed mean [95% t-CI over seeds], every cell, method, protocol and scale.",
    }
    written = []
    for name, table in products.items():
        written += write_table(table, out / "tables" / name, captions[name])

    set_style()
    figures = {
        "accuracy_vs_resolution": figure_resolution(tables["resolution"]),
        "accuracy_vs_resolution_attention": figure_resolution_attention(tables["resolution"]),
        "cost_vs_tokens": figure_cost(tables["cost"]),
        "attention_distance": figure_distance(position_encodings(tables["layer_head"]), "position encoding"),
        "attention_distance_attention": figure_distance(attention_variants(tables["layer_head"]), "attention"),
        "faithfulness": figure_method_bars(position_encodings(tables["faithfulness"]), FAITHFULNESS_METRICS,
                                           "position encoding"),
        "faithfulness_attention": figure_method_bars(attention_variants(tables["faithfulness"]), FAITHFULNESS_METRICS,
                                                     "attention"),
        "localisation": figure_method_bars(position_encodings(tables["localisation"]), LOCALISATION_METRICS,
                                           "position encoding"),
        "localisation_attention": figure_method_bars(attention_variants(tables["localisation"]), LOCALISATION_METRICS,
                                                     "attention"),
        "safety": figure_safety(tables["shift"], tables["risk_coverage"]),
        "convex_heads": figure_convex(tables["convex"]),
        "training_curves": figure_training_curves(training_curves(results_dir, set(tables["resolution"]["run"]))),
    }
    for dataset in dict.fromkeys(tables["rq1_accuracy"]["dataset"]):
        figures[f"rq1_accuracy_vs_scale_{dataset}"] = plot_accuracy_vs_scale(tables["rq1_accuracy"], dataset)
        figures[f"rq1_entropy_vs_scale_{dataset}"] = plot_entropy_vs_scale(tables["rq1_entropy"], dataset)
        rescaled = tables["rq1_accuracy"][(tables["rq1_accuracy"]["dataset"] == dataset)
                                          & (tables["rq1_accuracy"]["method"] != "trained")]
        if not rescaled.empty:
            figures[f"rq1_rescalings_{dataset}"] = plot_rescalings(tables["rq1_accuracy"], dataset)
    links = {}
    for name, figure in figures.items():
        if figure is None:
            continue
        written += save_figure(figure, out / "figures" / name)
        links[name] = f"figures/{name}.png"
        if show:
            plt.show()
        else:
            plt.close(figure)
    readme = out / "README.md"
    trust = Path(results_dir) / "safety_summary" / "recommendation.md"  # optional: written by safety-summary
    recommendation = trust.read_text() if trust.is_file() else ""
    predictors_path = Path(results_dir) / "safety_summary" / "attention_predictors.md"  # optional, like the above
    predictors = predictors_path.read_text() if predictors_path.is_file() else ""
    findings_path = Path(results_dir) / "rq1" / "summary" / "findings.md"
    if not findings_path.is_file():
        raise _missing(findings_path, "rq1-summary")
    findings = findings_path.read_text()
    convex_path = Path(results_dir) / "convex" / "findings.md"
    if not convex_path.is_file():
        raise _missing(convex_path, "convex")
    texts = {"recommendation": recommendation, "findings": findings, "convex_findings": convex_path.read_text(),
             "predictors": predictors}
    readme.write_text(build_readme(tables, products, links, **texts))
    written.append(readme)
    if results_readme is not None:
        Path(results_readme).write_text(build_readme(tables, products, links, link_prefix=f"{paper_folder}/", **texts))
        written.append(Path(results_readme))
    return {"tables": products, "figures": links, "written": written, "readme": readme}
