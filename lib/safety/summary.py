"""Across models: one summary row per evaluated model, mCE against a baseline variant, and the trust decision.

The decision rule (fixed before looking at the numbers): a deployment answers only when the temperature-scaled
maximum softmax probability reaches the threshold chosen on clean validation data so that the Clopper-Pearson
upper bound of the validation risk is at most the target risk. A variant is *trusted* when, at that threshold,
the Clopper-Pearson upper bound of the realized selective risk on the clean test images, and the mean of those
bounds over the moderate shifts (every corruption at severities <= `moderate_severity`), both stay at or below
the target risk: a risk measured on the few images a strict threshold accepts is not yet a guarantee (0 errors
in 44 images still allow 8.0%). Among trusted variants the recommendation is the one answering most often under
those shifts (highest mean coverage); ties go to the lower E-AURC under shift.
"""
import numpy as np
import pandas as pd

from lib.safety.corruptions import IMAGENET_C
from lib.safety.robustness import corruption_errors, mean_corruption_error

SHIFTS = (*IMAGENET_C, "occlusion")  # the corruptions the summary averages over (resolution shifts excluded)


def corruption_only(table: pd.DataFrame) -> pd.DataFrame:
    """The clean and corrupted rows of a shift_metrics table (resolution shifts dropped)."""
    return table[~table["family"].isin(["resolution"])]


def model_summary(run: str, table: pd.DataFrame, maps: pd.DataFrame, info: dict, moderate_severity: int) -> dict:
    """One model's summary from its shift_metrics / map_metrics tables and summary.json (`info`): clean,
    corrupted (all and moderate), resolution and rollout map-stability numbers."""
    clean = table[table["shift"] == "clean"].iloc[0]
    shifted = table[table["shift"].isin(SHIFTS)]
    moderate = shifted[shifted["severity"] <= moderate_severity]
    resolution = table[table["family"] == "resolution"]
    rollout = maps[(maps["method"] == "rollout") & maps["shift"].isin(SHIFTS)]
    rollout_moderate = rollout[rollout["severity"] <= moderate_severity]

    def map_mean(metric: str) -> float:
        return rollout_moderate.loc[rollout_moderate["metric"] == metric, "mean"].mean()

    return {
        "run": run, "dataset": clean["dataset"], "variant": clean["variant"], "test_images": int(clean["n"]),
        "target_risk": info["target_risk"], "temperature": info["temperature"],
        "threshold": info["thresholds"]["target_bound"],
        "clean_accuracy": clean["accuracy"], "corrupted_accuracy": shifted["accuracy"].mean(),
        "mean_corruption_error": mean_corruption_error(corruption_errors(corruption_only(table)))["mean_error"],
        "resolution_accuracy": resolution["accuracy"].mean() if len(resolution) else float("nan"),
        "clean_ece": clean["ece"], "clean_ece_ts": clean["ece_ts"],
        "shift_ece": moderate["ece"].mean(), "shift_ece_ts": moderate["ece_ts"].mean(),
        "clean_eaurc": clean["eaurc"], "shift_eaurc": moderate["eaurc"].mean(),
        "clean_augrc": clean["augrc"], "shift_augrc": moderate["augrc"].mean(),
        "clean_coverage": clean["coverage_target_bound"], "clean_accepted": int(clean["accepted_target_bound"]),
        "clean_risk": clean["risk_target_bound"], "clean_risk_upper": clean["risk_upper_target_bound"],
        "shift_coverage": moderate["coverage_target_bound"].mean(), "shift_risk": moderate["risk_target_bound"].mean(),
        "shift_risk_upper": moderate["risk_upper_target_bound"].mean(),
        "worst_shift_risk": moderate["risk_target_bound"].max(),
        "map_spearman": map_mean("spearman"), "map_topk_iou": map_mean("topk_iou"),
        "relevance_mass": map_mean("relevance_mass"),
    }


def add_mce(summary: pd.DataFrame, tables: dict[str, pd.DataFrame], baseline_variant: str, log=print) -> pd.DataFrame:
    """`summary` with mce / relative_mce against the baseline variant of the same dataset (from `tables`,
    run -> shift_metrics); a dataset without the baseline gets no mCE (logged)."""
    summary = summary.copy()
    for dataset, rows in summary.groupby("dataset"):
        base_run = rows.loc[rows["variant"] == baseline_variant, "run"]
        if not baseline_variant or base_run.empty:
            log(f"{dataset}: no baseline variant {baseline_variant!r} evaluated; mCE not reported")
            continue
        baseline = corruption_only(tables[base_run.iloc[0]])
        for index, run in rows["run"].items():
            errors = mean_corruption_error(corruption_errors(corruption_only(tables[run]), baseline))
            summary.loc[index, ["mce", "relative_mce"]] = errors["mce"], errors["relative_mce"]
    return summary


def recommendation(rows: pd.DataFrame, moderate_severity: int) -> str:
    """The decision rule (module docstring) applied to one dataset's summary rows, as text with the numbers."""
    target = rows["target_risk"].iloc[0]
    trusted = rows[(rows["clean_risk_upper"] <= target) & (rows["shift_risk_upper"] <= target)]
    dataset = rows["dataset"].iloc[0]
    reachable = rows[np.isfinite(rows["threshold"])]
    if reachable.empty:
        ranking = ", ".join(f"{r['variant']} {r['shift_eaurc']:.3f}" for _, r in rows.sort_values("shift_eaurc").iterrows())
        return (f"**{dataset}**: no variant reaches a selective risk of {target:.1%} at any confidence threshold on "
                f"the validation split (each would have to abstain on every image), so none can be trusted at "
                f"this risk: raise `safety.target_risk` or train better models. Excess AURC under moderate shift "
                f"(severity <= {moderate_severity}; lower is better) ranks them: {ranking}.")
    if trusted.empty:
        safest = reachable.sort_values(["shift_risk_upper", "shift_eaurc"]).iloc[0]
        return (f"**{dataset}**: no variant keeps the 95% upper bound of its selective risk at or below {target:.1%} "
                f"both clean and under moderate shift (severity <= {moderate_severity}) at its validation threshold. "
                f"The lowest bound under shift is {safest['variant']}'s: risk {safest['shift_risk']:.2%} (upper bound "
                f"{safest['shift_risk_upper']:.2%}) at coverage {safest['shift_coverage']:.1%}; clean: risk "
                f"{safest['clean_risk']:.2%} (upper bound {safest['clean_risk_upper']:.2%}, "
                f"{safest['clean_accepted']} images answered, coverage {safest['clean_coverage']:.1%}); threshold "
                f"{safest['threshold']:.4f} on the temperature-scaled MSP, T = {safest['temperature']:.2f}.")
    best = trusted.sort_values(["shift_coverage", "shift_eaurc"], ascending=[False, True]).iloc[0]
    others = ", ".join(f"{r['variant']} ({r['shift_coverage']:.1%})" for _, r in trusted.iterrows()
                       if r["variant"] != best["variant"])
    return (f"**{dataset}**: trust **{best['variant']}** with threshold {best['threshold']:.4f} on the "
            f"temperature-scaled maximum softmax probability (T = {best['temperature']:.2f}). It answers "
            f"{best['clean_coverage']:.1%} of clean test images with {best['clean_risk']:.2%} errors (upper bound "
            f"{best['clean_risk_upper']:.2%}) and, under moderate corruption, {best['shift_coverage']:.1%} with "
            f"{best['shift_risk']:.2%} errors (upper bound {best['shift_risk_upper']:.2%}; worst single "
            f"condition {best['worst_shift_risk']:.2%}); clean accuracy {best['clean_accuracy']:.1%}, corrupted "
            f"accuracy {best['corrupted_accuracy']:.1%}, ECE after scaling {best['clean_ece_ts']:.3f} clean and "
            f"{best['shift_ece_ts']:.3f} under shift. {len(trusted)} of {len(rows)} variants meet the rule"
            + (f"; the others answer less often under shift: {others}." if others else "."))
