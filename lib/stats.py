"""Statistics over training seeds: the mean with a Student-t interval, and paired differences.

A claim that compares trained models rests on the spread between training seeds, not on the spread between
test images: each seed is one independent replicate of the whole training run, and the interval is over
seeds. Two variants are compared by paired differences: the same seed index (the same initialisation draw,
data order and augmentation stream where the variants allow) tested on the same images, so the pair shares
everything but the variant and the differences vary less than the accuracies themselves.
"""
import math

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of independent values (NaN bounds for fewer than 2).

        mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def paired_difference(first: dict, second: dict, confidence: float = 0.95) -> dict:
    """Mean of first[s] - second[s] over the seeds s both have, with its Student-t interval.

    first, second: {seed: value}. Returns {"difference", "ci_low", "ci_high", "seeds"}; only seeds present
    in both count (a pair needs both of its members).
    """
    seeds = sorted(set(first) & set(second))
    mean, low, high = t_interval([first[s] - second[s] for s in seeds], confidence)
    return {"difference": mean, "ci_low": low, "ci_high": high, "seeds": len(seeds)}


def verdict(difference: dict, first: str, second: str) -> str:
    """'first > second' or 'first < second' where the interval excludes 0, else 'no difference detected'."""
    low, high = difference["ci_low"], difference["ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not testable (fewer than 2 seeds)"
    if low > 0:
        return f"{first} > {second}"
    if high < 0:
        return f"{first} < {second}"
    return "no difference detected"
