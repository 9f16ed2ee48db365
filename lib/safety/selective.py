"""Selective prediction: answer only when confident enough, abstain otherwise. Risk-coverage curves, AURC,
excess AURC, AUGRC, exact confidence bounds on selective risk, and the abstention threshold for a target risk.

A confidence score kappa_i per sample (default: the maximum softmax probability, MSP; any score where
higher means "more likely correct" works, e.g. -entropy or a temperature-scaled MSP) ranks the N samples.
Accepting the top k gives

    coverage(k) = k / N,    selective risk(k) = (errors among the top k) / k.

- Risk-coverage curve: risk(k) against coverage(k), k = 1..N. Tied scores are ordered at random, and the
  curve is its expectation over those orderings: inside a group of tied samples the expected number of
  errors grows linearly (no arbitrary tie-break by index, which could flatter or punish a model).
- AURC (Geifman, Uziel & El-Yaniv 2019): 1/N sum_k risk(k), the area under the curve. Range [0, 1],
  lower is better.
- Optimal AURC: the AURC of an oracle ranking (every correct sample before every error), with n_c correct
  samples: 1/N sum_k max(0, k - n_c) / k; close to r + (1 - r) ln(1 - r) for error rate r (the paper's
  continuous form). Depends only on the accuracy.
- E-AURC = AURC - optimal AURC >= 0: the part of the area due to the ranking, 0 for a perfect ranking.
- AUGRC (Traub et al. 2024): 1/N sum_k (errors among the top k) / N, the area under the *generalized* risk
  (the share of all samples that are accepted and wrong) against coverage. Range [0, 0.5]; lower is better.
  Unlike AURC it does not weight the first few accepted samples' risk as heavily as the rest.
- Clopper-Pearson bound: with e errors among n accepted samples, the upper end of the exact 95% binomial
  interval, Beta^-1(0.975; e + 1, n - e) (1 when e = n or n = 0). 0 errors in 44 accepted images still
  allow a risk of 8.0%.
- Threshold for a target risk: the lowest threshold tau (largest coverage) among the observed scores such
  that the selective risk of {kappa >= tau} is <= the target on the calibration (validation) split, or,
  with `upper_bound=True`, such that the Clopper-Pearson upper bound of that risk is <= the target (Geifman &
  El-Yaniv 2017's selection with guaranteed risk bounds the same binomial tail; here the bound is pointwise,
  not corrected for the scan over thresholds). tau = +inf (abstain on everything) when no threshold qualifies.
  Applied to the test split (clean or shifted) it gives the coverage and the risk actually realized.

References: Geifman & El-Yaniv 2017, "Selective Classification for Deep Neural Networks" (NeurIPS, arXiv
1705.08500); Geifman, Uziel & El-Yaniv 2019, "Bias-Reduced Uncertainty Estimation for Deep Neural
Classifiers" (ICLR, arXiv 1805.08206); Traub et al. 2024, "Overcoming Common Flaws in the Evaluation of
Selective Classification Systems" (NeurIPS, arXiv 2407.01032); El-Yaniv & Wiener 2010 (JMLR) for the
risk-coverage trade-off; Clopper & Pearson 1934 for the exact interval.
"""

import math
from typing import NamedTuple

import torch
from scipy.stats import beta


def clopper_pearson_upper(errors: int, n: int, level: float = 0.95) -> float:
    """Upper end of the exact (Clopper-Pearson) two-sided `level` interval of a binomial rate: errors of n."""
    if not 0 <= errors <= n:
        raise ValueError(f"errors must be in [0, n], got {errors} of {n}")
    if errors == n:  # also n = 0: nothing accepted says nothing about the risk
        return 1.0
    return float(beta.ppf(1 - (1 - level) / 2, errors + 1, n - errors))


class RiskCoverage(NamedTuple):
    """Curve points k = 1..N (N,) each: coverage k / N, expected selective risk of the top k, and the
    score of the k-th ranked sample (the threshold that accepts it)."""

    coverage: torch.Tensor
    risk: torch.Tensor
    threshold: torch.Tensor


def _ranked(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores sorted descending (N,), the expected cumulative error count after each rank (N,) with ties in
    random order, and the index of the last sample of each tie group (G,)."""
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError(f"confidence and correct must be matching non-empty 1-D tensors, got "
                         f"{tuple(confidence.shape)} and {tuple(correct.shape)}")
    order = torch.argsort(confidence.double(), descending=True, stable=True)
    scores = confidence.double()[order]
    errors = (~correct.bool()[order]).double()
    _, group, counts = torch.unique_consecutive(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)  # 1-based rank of each group's last sample
    starts = ends - counts
    cumulative = errors.cumsum(0)
    before = torch.cat([torch.zeros(1, dtype=torch.float64), cumulative[ends - 1]])[:-1]  # errors ranked above a group
    group_rate = (cumulative[ends - 1] - before) / counts
    rank = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    expected = before[group] + (rank - starts[group]) * group_rate[group]
    return scores, expected, ends - 1


def risk_coverage_curve(confidence: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
    """Risk-coverage curve of a score (N,) for correctness flags (N,), see the module docstring."""
    scores, expected_errors, _ = _ranked(confidence, correct)
    rank = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    return RiskCoverage(rank / len(scores), expected_errors / rank, scores)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk-coverage curve, 1/N sum_k risk(k), in [0, 1]."""
    return risk_coverage_curve(confidence, correct).risk.mean().item()


def optimal_aurc(correct: torch.Tensor) -> float:
    """AURC of the oracle ranking: 1/N sum_k max(0, k - n_correct) / k."""
    rank = torch.arange(1, len(correct) + 1, dtype=torch.float64)
    return ((rank - correct.bool().sum()).clamp(min=0) / rank).mean().item()


def excess_aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """E-AURC = AURC - optimal AURC, >= 0 (0 for a ranking that puts every correct sample first)."""
    return aurc(confidence, correct) - optimal_aurc(correct)


def augrc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the generalized risk-coverage curve, 1/N sum_k (errors among the top k) / N, in [0, 0.5]."""
    _, expected_errors, _ = _ranked(confidence, correct)
    return (expected_errors / len(expected_errors)).mean().item()


def threshold_for_risk(confidence: torch.Tensor, correct: torch.Tensor, target_risk: float,
                       upper_bound: bool = False) -> float:
    """Lowest observed score tau with selective risk of {confidence >= tau} <= target_risk (or its
    Clopper-Pearson upper bound <= target_risk when upper_bound); +inf when no threshold qualifies."""
    scores, expected_errors, last = _ranked(confidence, correct)
    accepted = (last + 1).tolist()
    errors = expected_errors[last].round().long().tolist()  # at the end of a tie group the count is exact
    risks = [clopper_pearson_upper(e, n) if upper_bound else e / n for n, e in zip(accepted, errors)]
    qualifying = [group for group, risk in enumerate(risks) if risk <= target_risk]
    return scores[last[qualifying[-1]]].item() if qualifying else math.inf


def selective_metrics(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict[str, float]:
    """Coverage (share with confidence >= threshold), selective risk among them (NaN if none accepted) with its
    Clopper-Pearson upper bound, and the numbers accepted and wrong among them."""
    accepted = confidence.double() >= threshold
    count = int(accepted.sum())
    errors = int((~correct.bool() & accepted).sum())
    return {
        "coverage": count / len(confidence),
        "selective_risk": errors / count if count else math.nan,
        "risk_upper": clopper_pearson_upper(errors, count),
        "accepted": count,
        "errors": errors,
    }
