"""The paper's tables: each result table read with the stage behind it named, numbers formatted with their
95% interval (`format_ci`: ``95.1 [93.6, 96.3]``) and written as Markdown and LaTeX (`write_table`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.stats import t_interval

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
    "method_comparison": Table("analysis_summary/method_comparison.csv", "analysis-summary",
                               "analysis/*/method_comparison.csv"),
    "analysis_accuracy": Table("analysis_summary/accuracy.csv", "analysis-summary", "analysis/*/accuracy.csv"),
    "fills": Table("analysis_summary/fills.csv", "analysis-summary", "analysis/*/fills.csv"),
    "ig_baseline": Table("analysis_summary/ig_baseline.csv", "analysis-summary", "analysis/*/ig_baseline.csv"),
    "sanity": Table("analysis_summary/sanity.csv", "analysis-summary", "analysis/*/sanity.csv"),
    "shift": Table("safety/*/shift_metrics.csv", "safety"),
    "risk_coverage": Table("safety/*/risk_coverage.csv", "safety"),
    "convex": Table("convex/summary.csv", "convex"),
    "rq1_accuracy": Table("rq1/summary/accuracy.csv", "rq1-summary"),
    "rq1_paired": Table("rq1/summary/paired.csv", "rq1-summary"),
    "rq1_ordering": Table("rq1/summary/heo_ordering.csv", "rq1-summary"),
    "rq1_entropy": Table("rq1/summary/entropy.csv", "rq1-summary"),
}


def missing_table(path: Path, stage: str, extra: str = "") -> FileNotFoundError:
    return FileNotFoundError(f"{path}: result table missing{extra} (written by the `{stage}` stage: "
                             f"run `dvc repro {stage}` first)")


def read_table(results_dir: Path | str, name: str) -> pd.DataFrame:
    """One result table by its name in TABLES; FileNotFoundError naming the missing file and its stage."""
    spec, results = TABLES[name], Path(results_dir)
    if "*" in spec.path:
        paths = sorted(results.glob(spec.path))
        if not paths:
            raise missing_table(results / spec.path, spec.stage, " (no run folder holds one)")
        return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    path = results / spec.path
    if path.is_file():
        return pd.read_csv(path)
    if spec.fallback:
        paths = sorted(results.glob(spec.fallback))
        if paths:
            return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
        raise missing_table(path, spec.stage, f" and no per-run {results / spec.fallback} either")
    raise missing_table(path, spec.stage)


def load_tables(results_dir: Path | str) -> dict[str, pd.DataFrame]:
    """Every table the paper needs; the first missing one stops with FileNotFoundError."""
    results = Path(results_dir)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: results folder not found")
    tables = {name: read_table(results, name) for name in TABLES}
    # safety runs: every folder with shift metrics must also have its risk-coverage table
    for folder in sorted(p.parent for p in results.glob("safety/*/shift_metrics.csv")):
        if not (folder / "risk_coverage.csv").is_file():
            raise missing_table(folder / "risk_coverage.csv", "safety")
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


def ci_row(row: pd.Series, value: str = "accuracy", scale: float = 100.0, digits: int = 1) -> str:
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
            "acc. at train px": ci_row(at[train_res]) if train_res in at else "n/a",
            "lowest px": low, "acc. at lowest px": ci_row(at[low]),
            "highest px": high, "acc. at highest px": ci_row(at[high]),
            "n": int(part["n"].iloc[0]),
        })
    return pd.DataFrame(rows)


def resolution_full_table(resolution: pd.DataFrame) -> pd.DataFrame:
    """RQ1, every point: one row per dataset, variant and test resolution."""
    return pd.DataFrame({
        "dataset": resolution["dataset"], "variant": resolution["variant"].map(label),
        "attention": resolution["attention"].map(label), "test px": resolution["resolution"].astype(int),
        "train px": resolution["train_resolution"].astype(int),
        "accuracy (%) [95% CI]": [ci_row(r) for _, r in resolution.iterrows()], "n": resolution["n"].astype(int),
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
    the token count from which it is faster than the softmax baseline by at least the stage's crossover margin
    (timings: medians, no CI)."""
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


def best_row(frame: pd.DataFrame, column: str, lowest: bool = False) -> pd.Series:
    """The row with the highest (or lowest) finite `column`."""
    frame = frame[np.isfinite(frame[column])]
    return frame.loc[frame[column].idxmin() if lowest else frame[column].idxmax()]


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
            "rollout deletion AUC": ci_row(rollout.iloc[0], "value", 1, 3) if len(rollout) else "n/a",
            "lowest deletion AUC": _method_cell(best_row(faith, "value", lowest=True)) if len(faith) else "n/a",
            "best pointing game (%)": _method_cell(best_row(point, "value"), 100, 1) if len(point) else "n/a",
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
            row["clean acc. (%)" if r["severity"] == 0 else f"severity {int(r['severity'])} (%)"] = ci_row(r)
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
