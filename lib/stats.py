"""Statistics over training seeds: the mean with a Student-t interval, and paired differences.

A claim that compares trained models rests on the spread between training seeds, not on the spread between
test images: each seed is one independent replicate of the whole training run, and the interval is over
seeds. Two variants are compared by paired differences: the same seed index (the same initialisation draw,
data order and augmentation stream where the variants allow) tested on the same images, so the pair shares
everything but the variant and the differences vary less than the accuracies themselves.

The Wilson interval over test images (one model's accuracy) is a secondary column, never a claim's interval.
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


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (better than +-1.96 SE near 0 and 1)."""
    if total == 0:
        return math.nan, math.nan
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (n,) over resampled items."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.float64)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
