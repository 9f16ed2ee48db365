"""Does attention predict anything? Per-image reliability signals scored as detectors of errors and of shift.

The proposal's "attention reliability" must predict when a model is wrong to be of use for safety. Every
signal below is computed from one forward pass of the image alone (no clean reference, which a deployed
model never has), so each is a candidate confidence score (the seed signals also see the other training seeds' models):

    confidence baselines   msp: max softmax probability of softmax(z / T);  neg_entropy: -H(softmax(z / T));
                           energy: T logsumexp(z / T) (Liu et al. 2020: higher is more in-distribution)
    attention signals      rollout_entropy, cls_entropy: Shannon entropy (nats) of the rollout map / the last
                           block's CLS attention map, normalized to sum 1 over patches;
                           rollout_top_mass: share of the rollout map on its top `fraction` of patches;
                           sink_mass: the last block's CLS attention to the prefix tokens (lib.safety.maps);
                           rollout_stability: rank correlation of the rollout map with that of the image under
                           small pixel noise (lib.safety.maps; the one signal that needs a second forward pass)
    across training seeds  (`seed_signals`, where several seeds of one model are tested on the same images)
                           seed_agreement: the other seeds' mean probability of this model's predicted class, a
                           deep-ensemble-style confidence (Lakshminarayanan et al. 2017), the baseline of
                           seed_map_agreement: the mean rank correlation of this model's rollout map with the
                           other seeds' (attention's counterpart: do the seeds look at the same patches?)

Which direction means "more likely correct" is not assumed: `orientations` fixes each signal's sign on the
clean validation split (the sign whose AUROC there is >= 0.5), and the test splits only evaluate it.
`combined` is a logistic regression on the standardized confidence baseline plus the attention signals,
fitted on the clean validation split, so that "does attention add anything over confidence?" is asked of a
score that uses both. The seed signals stay out of it: they see several models, MSP one.

Scores per signal and split (clean test images; the moderate shifts pooled):
- error AUROC: P(score of a correct image > score of a wrong one), ties 1/2 (sklearn roc_auc_score);
- AUGRC of the selective classifier that abstains on the lowest scores (lib.safety.selective.augrc);
- shift AUROC (pooled split only): P(score of a clean image > score of a corrupted one), over the same images.
`paired_augrc_difference` compares two scores on the same images by a paired bootstrap over test images
(each image with all its corrupted copies): an interval over images of one trained model, not over seeds.

References: Hendrycks & Gimpel 2017 (MSP, arXiv 1610.02136); Liu et al. 2020, "Energy-based Out-of-
distribution Detection" (arXiv 2010.03759); Traub et al. 2024 (AUGRC, arXiv 2407.01032); Abnar & Zuidema
2020 (rollout, arXiv 2005.00928); Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles" (arXiv 1612.01474).
"""
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lib.analysis.metrics import top_mass
from lib.safety.reliability import spearman
from lib.safety.selective import augrc

CONFIDENCE_SIGNALS = ("msp", "neg_entropy", "energy")
ATTENTION_SIGNALS = ("rollout_entropy", "cls_entropy", "rollout_top_mass", "sink_mass", "rollout_stability")
SIGNALS = CONFIDENCE_SIGNALS + ATTENTION_SIGNALS  # `image_signals`: one model, one image
SEED_SIGNALS = ("seed_agreement", "seed_map_agreement")  # `seed_signals`: one image, every training seed's model


def _as_distribution(maps: torch.Tensor) -> torch.Tensor:
    """Maps (N, H, W) as distributions over their patches (N, P): positive part, summing to 1."""
    p = maps.flatten(1).double().clamp(min=0)
    return p / p.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _entropy(distribution: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(distribution, distribution).sum(dim=-1)


def image_signals(logits: torch.Tensor, maps: dict[str, torch.Tensor], temperature: float,
                  fraction: float = 0.2, sink: torch.Tensor | None = None,
                  stability: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per image: every signal of SIGNALS, from logits (N, K) and maps {'rollout', 'cls_attention'}
    (N, H, W) of the same forward pass, and the per-image sink mass and stability (N,) where given (else those two
    columns are left out, and every function below scores the signals a frame has)."""
    scaled = logits.double() / temperature
    probs = scaled.softmax(dim=-1)
    extra = {name: values.double().numpy() for name, values in (("sink_mass", sink), ("rollout_stability", stability))
             if values is not None}
    return pd.DataFrame({
        "msp": probs.max(dim=-1).values.numpy(),
        "neg_entropy": (-_entropy(probs)).numpy(),
        "energy": (temperature * scaled.logsumexp(dim=-1)).numpy(),
        "rollout_entropy": _entropy(_as_distribution(maps["rollout"])).numpy(),
        "cls_entropy": _entropy(_as_distribution(maps["cls_attention"])).numpy(),
        "rollout_top_mass": top_mass(_as_distribution(maps["rollout"]), fraction).numpy(),
        **extra,
    })


def seed_signals(probabilities: list[torch.Tensor], rollouts: list[torch.Tensor]) -> list[pd.DataFrame]:
    """SEED_SIGNALS per model and image, from every seed's probabilities softmax(z / T) (N, K) and rollout maps
    (N, H, W) on the same N images (one entry per seed, at least two): seed_agreement is the other seeds' mean
    probability of this seed's predicted class, seed_map_agreement the mean Spearman correlation of this seed's
    rollout map with the other seeds' (0 where a map is constant)."""
    if len(probabilities) < 2 or len(probabilities) != len(rollouts):
        raise ValueError(f"seed signals need the probabilities and maps of >= 2 seeds, got {len(probabilities)} "
                         f"and {len(rollouts)}")
    frames = []
    for k, (probs, rollout) in enumerate(zip(probabilities, rollouts)):
        others = [j for j in range(len(probabilities)) if j != k]
        predicted = probs.argmax(dim=-1, keepdim=True)
        agreement = torch.stack([probabilities[j].gather(1, predicted)[:, 0] for j in others]).mean(dim=0)
        maps = torch.stack([torch.nan_to_num(spearman(rollout, rollouts[j]), nan=0.0) for j in others]).mean(dim=0)
        frames.append(pd.DataFrame({"seed_agreement": agreement.double().numpy(),
                                    "seed_map_agreement": maps.double().numpy()}))
    return frames


SPLITS = ("clean", "moderate shift")


def predictor_split(shift: str, severity: float, at_train_resolution: bool, moderate_severity: int) -> str | None:
    """Which split a test condition's images are scored in: 'clean' (no corruption, the training resolution),
    'moderate shift' (a corruption at severity <= `moderate_severity`, the training resolution) or None (a severer
    corruption, another resolution: not scored as predictors)."""
    if not at_train_resolution:
        return None
    if shift == "clean":
        return "clean"
    return "moderate shift" if severity <= moderate_severity else None


def scored_splits(signals: pd.DataFrame, train_resolution: int, moderate_severity: int) -> list[pd.DataFrame]:
    """The rows of a signals frame (columns shift, severity, resolution) in each of SPLITS, by `predictor_split`."""
    split = [predictor_split(shift, severity, resolution == train_resolution, moderate_severity)
             for shift, severity, resolution in zip(signals["shift"], signals["severity"], signals["resolution"])]
    return [signals[[s == name for s in split]] for name in SPLITS]


def labelled_signals(outputs, labels: torch.Tensor, temperature: float, fraction: float = 0.2) -> pd.DataFrame:
    """`image_signals` of one pass (lib.safety.maps.Outputs: logits and maps) with each image's index `image` and
    whether its top-1 prediction is `correct`."""
    signals = image_signals(outputs.logits, outputs.maps, temperature, fraction, outputs.sink, outputs.stability)
    signals.insert(0, "correct", (outputs.logits.argmax(dim=-1) == labels).numpy())
    signals.insert(0, "image", range(len(labels)))
    return signals


def error_auroc(score: np.ndarray, correct: np.ndarray) -> float:
    """P(score of a correct image > score of a wrong one); NaN when all are correct or all wrong."""
    correct = np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, score))


def orientations(val: pd.DataFrame, signals=SIGNALS + SEED_SIGNALS) -> dict[str, int]:
    """+1 or -1 per signal: the sign under which higher means "more likely correct" on `val` (has `correct`);
    +1 where `val` cannot tell (every image correct, or every one wrong)."""
    signs = {}
    for signal in (s for s in signals if s in val):
        auroc = error_auroc(val[signal].to_numpy(), val["correct"].to_numpy())
        signs[signal] = -1 if auroc < 0.5 else 1
    return signs


def fit_combined(val: pd.DataFrame, confidence: str = "msp",
                 attention=ATTENTION_SIGNALS) -> Callable[[pd.DataFrame], np.ndarray] | None:
    """Logistic regression of `correct` on the standardized confidence signal and the attention signals, fitted
    on `val`; returns the score it gives any frame of signals (its predicted P(correct)), or None where `val`
    holds only correct or only wrong images (nothing to fit)."""
    if val["correct"].nunique() < 2:
        return None
    columns = [confidence, *(signal for signal in attention if signal in val)]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(val[columns].to_numpy(), val["correct"].to_numpy())
    return lambda frame: model.predict_proba(frame[columns].to_numpy())[:, 1]


def scores(frame: pd.DataFrame, orient: dict[str, int], combined=None) -> pd.DataFrame:
    """Oriented signals (higher = more likely correct), plus `combined` (`fit_combined`'s score) when given."""
    out = pd.DataFrame({s: orient[s] * frame[s].to_numpy() for s in orient}, index=frame.index)
    if combined is not None:
        out["combined"] = combined(frame)
    return out


def detection_table(clean: pd.DataFrame, shifted: pd.DataFrame, orient: dict[str, int], combined=None) -> pd.DataFrame:
    """Per score and split ('clean', 'moderate shift'): error AUROC and AUGRC; for the shifted split also the
    shift AUROC against the clean images. `clean` and `shifted` have the signals and `correct`."""
    rows = []
    clean_scores, shifted_scores = scores(clean, orient, combined), scores(shifted, orient, combined)
    for name in clean_scores.columns:
        for split, frame, values in (("clean", clean, clean_scores[name]), ("moderate shift", shifted, shifted_scores[name])):
            correct = frame["correct"].to_numpy(dtype=bool)
            row = {"score": name, "split": split, "images": len(frame), "accuracy": correct.mean(),
                   "error_auroc": error_auroc(values.to_numpy(), correct),
                   "augrc": augrc(torch.tensor(values.to_numpy(dtype=float)), torch.tensor(correct))}
            if split == "moderate shift":
                is_clean = np.r_[np.ones(len(clean)), np.zeros(len(shifted))]
                row["shift_auroc"] = float(roc_auc_score(is_clean, np.r_[clean_scores[name], values]))
            rows.append(row)
    return pd.DataFrame(rows)


class _Ranking:
    """A score's descending order with tie groups, so that the AUGRC of any reweighting of its rows (a bootstrap
    resample: row weight = how often its image was drawn) costs two bincounts. Same definition as
    lib.safety.selective.augrc: an error copy in a tie group of total weight W_g starting after weight S_g has
    expected position S_g + (W_g + 1) / 2 and counts in N + 1 - that position of the N top-k sets."""

    def __init__(self, score: np.ndarray, correct: np.ndarray):
        self.order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
        _, self.tie = np.unique(np.asarray(score, dtype=float)[self.order], return_inverse=True)
        self.tie = self.tie.max() - self.tie  # np.unique sorts ascending: number the groups from the top score
        self.error = ~np.asarray(correct, dtype=bool)[self.order]

    def augrc(self, weights: np.ndarray) -> float:
        weights = np.asarray(weights, dtype=float)[self.order]
        total = weights.sum()
        group_weight = np.bincount(self.tie, weights)
        group_errors = np.bincount(self.tie, weights * self.error)
        start = np.cumsum(group_weight) - group_weight
        return float((group_errors * (total + 1 - start - (group_weight + 1) / 2)).sum() / total**2)


def paired_augrc_difference(first: np.ndarray, second: np.ndarray, correct: np.ndarray, groups: np.ndarray,
                            resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUGRC(first) - AUGRC(second) on the same rows with a 95% percentile interval from a paired bootstrap that
    resamples `groups` (the test image each row shows: its corrupted copies move together), negative where
    `first` abstains better."""
    a, b = _Ranking(first, correct), _Ranking(second, correct)
    ones = np.ones(len(correct))
    difference = a.augrc(ones) - b.augrc(ones)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    count = inverse.max() + 1
    generator = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        weights = np.bincount(generator.integers(0, count, count), minlength=count)[inverse]
        draws.append(a.augrc(weights) - b.augrc(weights))
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"difference": difference, "ci_low": float(low), "ci_high": float(high)}


def predictor_comparisons(clean: pd.DataFrame, shifted: pd.DataFrame, orient: dict[str, int], combined,
                          reference: str = "msp", resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AUGRC of the combined score minus the reference's, per split, paired on the same images
    (`paired_augrc_difference`, images resampled with their corrupted copies); no rows without a combined score."""
    columns = ["split", "first", "second", "difference", "ci_low", "ci_high", "verdict"]
    if combined is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for split, frame in (("clean", clean), ("moderate shift", shifted)):
        values = scores(frame, orient, combined)
        correct, groups = frame["correct"].to_numpy(dtype=bool), frame["image"].to_numpy()
        result = paired_augrc_difference(values["combined"], values[reference], correct, groups, resamples, seed)
        verdict = ("no difference detected" if result["ci_low"] <= 0 <= result["ci_high"]
                   else "combined abstains better" if result["difference"] < 0 else f"{reference} abstains better")
        rows.append({"split": split, "first": "combined", "second": reference, **result, "verdict": verdict})
    return pd.DataFrame(rows, columns=columns)


def predictor_lines(detection: pd.DataFrame, paired: pd.DataFrame, name: str) -> list[str]:
    """Sentences for one model: error and shift AUROC of MSP, of each attention signal and of the combined
    score, and the combined score's AUGRC against MSP (`detection_table`, `predictor_comparisons`)."""
    table = detection.set_index(["score", "split"])

    def both(score: str) -> str:
        return f"{table.loc[(score, 'clean'), 'error_auroc']:.3f} / {table.loc[(score, 'moderate shift'), 'error_auroc']:.3f}"

    def shift(score: str) -> str:
        return f"{table.loc[(score, 'moderate shift'), 'shift_auroc']:.3f}"

    present = [s for s in ATTENTION_SIGNALS if (s, "clean") in table.index]
    attention = ", ".join(f"{s} {both(s)}" for s in present)
    combined = (f"MSP + attention (logistic, fitted on validation) {both('combined')}"
                if ("combined", "clean") in table.index
                else "MSP + attention not fitted (the validation images were all correct or all wrong)")
    lines = [f"- {name}: error-detection AUROC, clean / moderate shift ({int(table.loc[('msp', 'clean'), 'images'])} / "
             f"{int(table.loc[('msp', 'moderate shift'), 'images'])} images; 0.5 is chance, below 0.5 the signal "
             f"moves against the direction that flagged errors on clean validation): MSP {both('msp')}; "
             f"attention signals {attention}; {combined}. "
             f"Clean-vs-shifted AUROC: MSP {shift('msp')}; "
             + ", ".join(f"{s} {shift(s)}" for s in present) + "."]
    for _, row in paired.iterrows():
        lines.append(f"- {name}, {row['split']}: AUGRC of MSP + attention − MSP alone = {row['difference']:+.4f} "
                     f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] (95% bootstrap over test images, one training "
                     f"seed): {row['verdict']}.")
    return lines
