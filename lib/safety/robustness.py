"""Corruption errors relative to a baseline model: CE, relative CE, mCE (Hendrycks & Dietterich 2019).

With E^f_{s,c} the top-1 error of model f on corruption c at severity s and E^f_clean its clean error:

    CE^f_c          = sum_{s=1..5} E^f_{s,c} / sum_{s=1..5} E^base_{s,c}
    relative CE^f_c = sum_s (E^f_{s,c} - E^f_clean) / sum_s (E^base_{s,c} - E^base_clean)
    mCE, relative mCE = the means over the 15 ImageNet-C corruptions.

Both are ratios (1 = as robust as the baseline, lower is better; 100 x in the paper's tables, where the
baseline is AlexNet). Relative CE measures the *degradation* caused by the corruption; it is undefined
(NaN here) when the baseline is not degraded by the corruption (denominator <= 0). Without a baseline the
unnormalized mean error over corruptions and severities is reported instead.

Tables are tidy: one row per (shift, severity) with columns shift, severity and error; severity 0 is the
clean test set (shift "clean").

References: Hendrycks & Dietterich 2019 (arXiv 1903.12261), section 4.1.
"""

import numpy as np
import pandas as pd

from lib.safety.corruptions import IMAGENET_C


def _errors(table: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Per-corruption severity errors (corruption x severity) and the clean error of one model's table."""
    clean = table.loc[table["shift"] == "clean", "error"]
    if len(clean) != 1:
        raise ValueError(f"expected exactly one clean row (shift 'clean'), found {len(clean)}")
    corrupted = table[(table["severity"] >= 1) & (table["shift"] != "clean")]
    return corrupted.pivot_table(index="shift", columns="severity", values="error"), float(clean.iloc[0])


def corruption_errors(table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per corruption: mean_error (over its severities), and with a baseline ce and relative_ce.

    Only corruptions and severities present in both tables enter a ratio (a model evaluated on fewer
    severities is compared on those)."""
    errors, clean = _errors(table)
    rows = pd.DataFrame({"shift": errors.index, "mean_error": errors.mean(axis=1).to_numpy()})
    if baseline is None:
        return rows
    base_errors, base_clean = _errors(baseline)
    shared = errors.columns.intersection(base_errors.columns)
    base = base_errors.reindex(index=errors.index, columns=shared)
    own = errors[shared]
    ce = own.sum(axis=1) / base.sum(axis=1)
    degradation = base.sub(base_clean).sum(axis=1)
    relative = own.sub(clean).sum(axis=1) / degradation.where(degradation > 0)
    return rows.assign(ce=ce.to_numpy(), relative_ce=relative.to_numpy())


def mean_corruption_error(per_corruption: pd.DataFrame) -> dict[str, float]:
    """mCE and relative mCE (NaN without a baseline) and the mean error, over the ImageNet-C corruptions
    present (occlusion and other extra shifts are excluded, as in the paper's 15-corruption mean)."""
    rows = per_corruption[per_corruption["shift"].isin(IMAGENET_C)]
    return {
        "mean_error": float(rows["mean_error"].mean()),
        "mce": float(rows["ce"].mean()) if "ce" in rows else np.nan,
        "relative_mce": float(rows["relative_ce"].mean()) if "relative_ce" in rows else np.nan,
        "corruptions": int(len(rows)),
    }
