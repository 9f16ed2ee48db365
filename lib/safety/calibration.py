"""Calibration: does a predicted probability mean what it says? ECE, reliability diagrams, NLL, Brier score,
and temperature scaling fitted on the validation split.

Notation: N samples, K classes, p_i in the simplex the predicted probabilities of sample i, y_i its label,
conf_i = max_k p_ik the confidence, pred_i = argmax_k p_ik, acc_i = 1[pred_i = y_i].

- ECE (Guo et al. 2017; Naeini et al. 2015): M = 15 equal-width bins of confidence,
  ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|, with acc(B_m), conf(B_m) the mean accuracy and mean
  confidence of the samples in bin m. Range [0, 1], 0 for perfect calibration (lower is better). Computed
  with torchmetrics' multiclass_calibration_error (norm "l1"). Its bins are left-closed, [m/M, (m+1)/M),
  and a confidence of exactly 1.0 (after torchmetrics casts to float32) falls into a 16th bin of its own,
  while Guo et al.'s bins are right-closed; the two agree unless a confidence lies exactly on a bin edge
  (tests/test_safety.py checks the formula against torchmetrics). The estimate is biased upwards for small
  N (an empty-ish bin's |acc - conf| is noisy).
- Reliability diagram: per bin the mean confidence, accuracy and count (`reliability_bins`).
- NLL: -1/N sum_i log p_{i, y_i}. Range [0, inf), lower is better; log K for a uniform predictor.
- Brier score (Brier 1950, multiclass form): 1/N sum_i sum_k (p_ik - 1[k = y_i])^2. Range [0, 2], lower is
  better; 1 - 1/K for a uniform predictor.
- Temperature scaling (Guo et al. 2017): p = softmax(z / T) with one T > 0 minimizing the validation NLL,
  found by L-BFGS on log T (so T stays positive). It changes confidences but never the argmax, so
  accuracy and the confidence ranking (hence risk-coverage curves and AURC) are unchanged. Under a shift,
  the T fitted on clean validation data is applied as is: whether it still helps is the question.

References: Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural Networks" (arXiv
1706.04599); Naeini, Cooper & Hauskrecht 2015 (AAAI), "Obtaining Well Calibrated Probabilities Using
Bayesian Binning"; Brier 1950, Monthly Weather Review 78(1); torchmetrics (Lightning AI).
"""

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

NUM_BINS = 15
TEMPERATURE_RANGE = (1e-2, 1e2)  # the fitted T is clipped to this range (a degenerate fit cannot run off)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) in float64 (N, K): float32 softmax saturates to exactly 1.0 for logit gaps > ~17."""
    return torch.softmax(logits.double() / temperature, dim=-1)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = NUM_BINS) -> float:
    """Top-label ECE with `num_bins` equal-width bins (torchmetrics); probs (N, K) must be probabilities
    (torchmetrics would treat logits that happen to lie in [0, 1] as probabilities)."""
    return multiclass_calibration_error(probs, labels, num_classes=probs.shape[-1], n_bins=num_bins, norm="l1").item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = NUM_BINS) -> dict[str, torch.Tensor]:
    """Reliability-diagram data per bin m = 0..M-1, bin [m/M, (m+1)/M) (the last bin closed at 1):
    lower, upper edges; count |B_m|; confidence conf(B_m) and accuracy acc(B_m) (NaN for an empty bin).

    sum_m count_m / N * |accuracy_m - confidence_m| is the ECE (equal to torchmetrics' value whenever no
    confidence is exactly 1.0)."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)
    # the binning rule of torchmetrics (bucketize, right=True), with 1.0 kept in the last bin
    index = (torch.bucketize(confidence.double(), edges, right=True) - 1).clamp(max=num_bins - 1)
    count = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(correct))
    confidence_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, index, confidence.double())
    correct_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, index, correct)
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count,
        "confidence": confidence_sum / count,
        "accuracy": correct_sum / count,
    }


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label] in float64 (log-sum-exp, no saturation)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - onehot_k)^2, in [0, 2]."""
    onehot = F.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=-1).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """T = exp(t*), t* = argmin_t NLL(logits / exp(t)), by L-BFGS with strong Wolfe line search from t = 0
    (T = 1); clipped to TEMPERATURE_RANGE. Deterministic (no random initialization)."""
    logits, labels = logits.detach().double(), labels.detach()
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp().clamp(*TEMPERATURE_RANGE))


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                        num_bins: int = NUM_BINS) -> dict[str, float]:
    """accuracy, mean confidence, ECE, NLL and Brier score of softmax(logits / T)."""
    probs = probabilities(logits, temperature)
    confidence, predicted = probs.max(dim=-1)
    return {
        "accuracy": (predicted == labels).double().mean().item(),
        "confidence": confidence.mean().item(),
        "ece": expected_calibration_error(probs, labels, num_bins),
        "nll": negative_log_likelihood(logits, labels, temperature),
        "brier": brier_score(probs, labels),
    }
