"""Explanation methods compared on the same images: paired bootstrap differences, ties reported as ties.

Two methods scored on the same test images are compared by the per-image difference of their scores; its mean
gets a percentile-bootstrap 95% interval over images (`bootstrap_ci` with one seed draws the same resampled
images for every pair, so every comparison of a metric resamples the same images). Scores are oriented so that
positive is better: a "lower is better" AUC enters with its sign flipped.

Per metric, the best method is the one with the best mean; a method whose gap to it has an interval that
reaches 0 is *tied* with it, so "best" is stated alone only where every other method is worse beyond the
interval. Every method is also compared with the random order (`reference`), the baseline a faithful
explanation has to beat: its AUC alone says little, as the random order's own AUC varies by model.

These are intervals over test images for one trained model: they say whether the methods differ on this
model, not whether the difference holds across training seeds.
"""
import numpy as np
import pandas as pd

from lib.stats import bootstrap_ci

STATUS_BEST, STATUS_TIED, STATUS_WORSE = "best", "tied with best", "worse"


def oriented_scores(table: pd.DataFrame) -> pd.DataFrame:
    """method x image scores of one metric, with the sign flipped where lower is better."""
    sign = 1.0 if table["better"].iloc[0] == "higher" else -1.0
    return sign * table.pivot(index="image", columns="method", values="value")


def paired_mean_difference(first: pd.Series, second: pd.Series, resamples: int,
                           seed: int) -> tuple[float, float, float, int]:
    """Mean of first - second over the images both score, its bootstrap 95% interval, and the image count."""
    difference = (first - second).dropna().to_numpy()
    if len(difference) == 0:
        return np.nan, np.nan, np.nan, 0
    low, high = bootstrap_ci(difference, resamples, seed=seed)
    return float(difference.mean()), low, high, len(difference)


def compare_methods(per_image: pd.DataFrame, resamples: int = 1000, seed: int = 0,
                    reference: str = "random") -> pd.DataFrame:
    """Per metric and method: the mean score, the paired difference from `reference` and the gap to the best
    method (both oriented: positive means better than the reference / the best is better), each with its
    bootstrap 95% interval over the same images, and the status best / tied with best / worse.

    per_image: method, metric, image, value, better ("higher"/"lower"), as `faithfulness_tables` and
    `localisation_per_image` write it. The reference takes part in neither the best nor the ties.
    """
    rows = []
    for metric, table in per_image.groupby("metric", sort=False):
        scores = oriented_scores(table)
        candidates = [method for method in scores.columns if method != reference]
        best = max(candidates, key=lambda method: scores[method].mean())
        for method in scores.columns:
            vs_reference = (paired_mean_difference(scores[method], scores[reference], resamples, seed)
                            if reference in scores.columns and method != reference else (np.nan,) * 3 + (0,))
            if method == reference:
                gap = (np.nan,) * 4
            elif method == best:  # no gap to itself: nothing to resample
                gap = (0.0, 0.0, 0.0, int(scores[best].notna().sum()))
            else:
                gap = paired_mean_difference(scores[best], scores[method], resamples, seed)
            status = ("" if method == reference else STATUS_BEST if method == best
                      else STATUS_TIED if gap[1] <= 0 else STATUS_WORSE)
            rows.append({
                "metric": metric, "method": method, "better": table["better"].iloc[0],
                "value": float(table.loc[table["method"] == method, "value"].mean()),
                "vs_reference": vs_reference[0], "vs_reference_low": vs_reference[1],
                "vs_reference_high": vs_reference[2], "gap_to_best": gap[0], "gap_low": gap[1], "gap_high": gap[2],
                "n": int(scores[method].notna().sum()), "status": status, "reference": reference,
            })
    return pd.DataFrame(rows)


def top_group(comparison: pd.DataFrame, metric: str) -> list[str]:
    """The best method of `metric` followed by those tied with it (one table of `compare_methods`)."""
    part = comparison[comparison["metric"] == metric]
    best = part.loc[part["status"] == STATUS_BEST, "method"].tolist()
    return best + sorted(part.loc[part["status"] == STATUS_TIED, "method"])
