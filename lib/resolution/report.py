"""Aggregating per-run results into the study's tables."""
import math

import numpy as np
import pandas as pd

from lib.stats import t_interval


def position_encodings(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the position-encoding comparison: every variant with softmax attention."""
    return table[table["attention"] == "softmax"]


def attention_variants(table: pd.DataFrame, reference: str | None = None) -> pd.DataFrame | None:
    """The rows of the attention comparison: every variant with the position encoding `reference`, softmax
    attention included. `reference` None: the encoding the non-softmax variants share most (None when every
    variant is softmax attention)."""
    if reference is None:
        others = table[table["attention"] != "softmax"]
        if others.empty:
            return None
        reference = others["pos_embed"].mode().iloc[0]
    return table[table["pos_embed"] == reference]


def resolution_summary(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Wide table for one dataset: a row per variant, test accuracy (%) per resolution; '*' marks training."""
    part = table[table["dataset"] == dataset]
    train_res = part["train_resolution"].iloc[0]
    wide = part.pivot(index="variant", columns="resolution", values="accuracy").mul(100).round(1)
    wide = wide.reindex(list(dict.fromkeys(part["variant"])))  # study order, not alphabetical
    wide.columns = [f"{r}*" if r == train_res else str(r) for r in wide.columns]
    return wide.reset_index()


def resolution_markdown(table: pd.DataFrame) -> str:
    """One Markdown table per dataset (accuracy % by test resolution in pixels; * = training resolution)."""
    sections = []
    for dataset in dict.fromkeys(table["dataset"]):
        n = int(table.loc[table["dataset"] == dataset, "n"].iloc[0])
        sections.append(f"### {dataset} (test accuracy %, n = {n}; columns: test resolution in pixels, * = training)\n\n"
                        + resolution_summary(table, dataset).to_markdown(index=False))
    return "\n\n".join(sections) + "\n"


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Accuracy over training seeds: per (dataset, variant, resolution), the number of seeds, the mean
    and its 95% Student-t interval, clipped to [0, 1] (an accuracy's range; with few, spread seeds the
    t-interval is wider than that), the standard deviation, and the lowest and highest seed's accuracy
    (`per_seed`: evaluation rows with a `seed` column, one run per seed)."""
    columns = ["dataset", "variant", "resolution", "train_resolution", "seeds", "accuracy", "ci_low", "ci_high", "std",
               "min", "max"]
    rows = []
    for (dataset, variant, resolution), group in per_seed.groupby(["dataset", "variant", "resolution"], sort=False):
        mean, low, high = t_interval(group["accuracy"])
        rows.append({"dataset": dataset, "variant": variant, "resolution": resolution,
                     "train_resolution": group["train_resolution"].iloc[0], "seeds": group["seed"].nunique(),
                     "accuracy": mean, "ci_low": max(low, 0.0) if np.isfinite(low) else low,
                     "ci_high": min(high, 1.0) if np.isfinite(high) else high,
                     "std": group["accuracy"].std(ddof=1) if len(group) > 1 else math.nan,
                     "min": group["accuracy"].min(), "max": group["accuracy"].max()})
    return pd.DataFrame(rows, columns=columns)
