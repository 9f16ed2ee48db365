"""Attention signals as error and shift detectors (lib/safety/predictors.py), on cases with known answers."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lib.safety.maps import Outputs
from lib.safety.predictors import (SIGNALS, detection_table, error_auroc, fit_combined,
                                   image_signals, labelled_signals, orientations, paired_augrc_difference, predictor_comparisons,
                                   predictor_lines, scores)


def test_image_signals_match_their_definitions():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    uniform = torch.ones(2, 3, 3)
    peaked = torch.zeros(2, 3, 3)
    peaked[:, 1, 1] = 1.0
    signals = image_signals(logits, {"rollout": uniform, "cls_attention": peaked}, temperature=2.0, fraction=0.2)
    p = torch.softmax(logits / 2.0, dim=-1).double()
    assert signals["msp"].tolist() == pytest.approx(p.max(dim=-1).values.tolist())
    assert signals["neg_entropy"].tolist() == pytest.approx((p * p.log()).sum(-1).tolist())
    assert signals["energy"].tolist() == pytest.approx((2.0 * torch.logsumexp(logits.double() / 2.0, -1)).tolist())
    assert signals["rollout_entropy"].tolist() == pytest.approx([math.log(9)] * 2)  # uniform over 9 patches
    assert signals["cls_entropy"].tolist() == pytest.approx([0.0, 0.0], abs=1e-9)  # all mass on one patch
    assert signals["rollout_top_mass"].tolist() == pytest.approx([2 / 9] * 2)  # top ceil(0.2 * 9) = 2 patches
    assert list(signals.columns) == [s for s in SIGNALS if s not in ("sink_mass", "rollout_stability")]  # not given
    full = image_signals(logits, {"rollout": uniform, "cls_attention": peaked}, 2.0, 0.2,
                         sink=torch.tensor([0.1, 0.4]), stability=torch.tensor([1.0, -0.5]))
    assert list(full.columns) == list(SIGNALS)
    assert full["sink_mass"].tolist() == pytest.approx([0.1, 0.4]) and full["rollout_stability"].tolist() == [1.0, -0.5]


def test_labelled_signals_add_the_image_index_and_top1_correctness():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    maps = {"rollout": torch.rand(3, 2, 2), "cls_attention": torch.rand(3, 2, 2)}
    sink, stability = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.9, 0.1, 1.0])
    signals = labelled_signals(Outputs(logits, maps, sink, stability), torch.tensor([0, 2, 2]), temperature=1.5)
    assert signals["image"].tolist() == [0, 1, 2] and signals["correct"].tolist() == [True, False, True]
    assert signals[list(SIGNALS)].equals(image_signals(logits, maps, 1.5, sink=sink, stability=stability))


def _frame(values: dict, correct) -> pd.DataFrame:
    frame = pd.DataFrame({s: values.get(s, np.zeros(len(correct))) for s in SIGNALS})
    frame["correct"] = np.asarray(correct, dtype=bool)
    frame["image"] = np.arange(len(correct)) % 10
    return frame


def test_orientation_is_fixed_on_validation_and_only_applied_to_test():
    correct = np.array([True] * 6 + [False] * 4)
    val = _frame({"msp": np.linspace(1, 0, 10), "rollout_entropy": np.linspace(0, 1, 10)}, correct)
    orient = orientations(val)
    assert orient["msp"] == 1 and orient["rollout_entropy"] == -1  # high entropy went with errors
    assert error_auroc(val["msp"].to_numpy(), correct) == 1.0
    flipped = _frame({"msp": np.linspace(0, 1, 10)}, correct)  # the test split reverses msp: AUROC 0, not 1
    table = detection_table(flipped, flipped, orient)
    assert table.set_index(["score", "split"]).loc[("msp", "clean"), "error_auroc"] == 0.0
    assert math.isnan(error_auroc(np.arange(4.0), np.ones(4, dtype=bool)))  # one class: undefined


def test_shift_auroc_separates_clean_from_shifted_scores():
    correct = np.array([True, False] * 5)
    clean = _frame({"msp": np.full(10, 0.9)}, correct)
    shifted = _frame({"msp": np.full(10, 0.4)}, correct)
    table = detection_table(clean, shifted, {s: 1 for s in SIGNALS})
    row = table.set_index(["score", "split"]).loc[("msp", "moderate shift")]
    assert row["shift_auroc"] == 1.0 and row["error_auroc"] == 0.5  # constant within a split: chance for errors


def test_combined_score_uses_an_attention_signal_that_msp_misses():
    generator = np.random.default_rng(0)
    n = 400
    correct = generator.random(n) < 0.7
    msp = generator.random(n)  # uninformative
    entropy = np.where(correct, 1.0, 2.0) + 0.3 * generator.standard_normal(n)  # informative
    val = _frame({"msp": msp, "rollout_entropy": entropy}, correct)
    test = _frame({"msp": generator.random(n), "rollout_entropy": np.where(correct, 1.0, 2.0)
                   + 0.3 * generator.standard_normal(n)}, correct)
    orient = orientations(val)
    combined = fit_combined(val)
    table = detection_table(test, test, orient, combined).set_index(["score", "split"])
    assert table.loc[("combined", "clean"), "error_auroc"] > 0.9 > 0.6 > table.loc[("msp", "clean"), "error_auroc"]
    paired = predictor_comparisons(test, test, orient, combined, resamples=200, seed=0)
    row = paired[(paired["first"] == "combined") & (paired["split"] == "clean")].iloc[0]
    assert row["ci_high"] < 0 and row["verdict"] == "combined abstains better"
    assert list(paired["first"]) == ["combined", "combined"] and list(paired["split"]) == ["clean", "moderate shift"]


def test_weighted_augrc_equals_augrc_of_the_resampled_rows_ties_included():
    from lib.safety.predictors import _Ranking
    from lib.safety.selective import augrc

    generator = np.random.default_rng(1)
    score = np.round(generator.random(60), 1)  # many ties
    correct = generator.random(60) < 0.6
    ranking = _Ranking(score, correct)
    assert ranking.augrc(np.ones(60)) == pytest.approx(augrc(torch.tensor(score), torch.tensor(correct)))
    weights = generator.integers(0, 3, 60)
    repeated = np.repeat(np.arange(60), weights)  # the resample, written out row by row
    assert ranking.augrc(weights) == pytest.approx(augrc(torch.tensor(score[repeated]), torch.tensor(correct[repeated])))


def test_paired_bootstrap_of_identical_scores_is_zero_and_seeded():
    correct = np.array([True, False, True, True, False, True] * 5)
    score = np.linspace(0, 1, len(correct))
    groups = np.arange(len(correct)) // 2  # two rows per image, resampled together
    same = paired_augrc_difference(score, score, correct, groups, resamples=100, seed=3)
    assert same == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    other = paired_augrc_difference(score, -score, correct, groups, resamples=100, seed=3)
    assert other == paired_augrc_difference(score, -score, correct, groups, resamples=100, seed=3)
    assert other["ci_low"] <= other["difference"] <= other["ci_high"]


def test_predictor_lines_quote_the_tables():
    rows = []
    for split, images in (("clean", 200), ("moderate shift", 9600)):
        for score, value in (("msp", 0.8), ("rollout_entropy", 0.6), ("cls_entropy", 0.55), ("rollout_top_mass", 0.5),
                             ("combined", 0.81), ("neg_entropy", 0.79), ("energy", 0.7)):
            rows.append({"score": score, "split": split, "images": images, "error_auroc": value,
                         "shift_auroc": value - 0.1 if split != "clean" else np.nan})
    paired = pd.DataFrame([{"split": "moderate shift", "first": "combined", "second": "msp", "difference": -0.0012,
                            "ci_low": -0.003, "ci_high": 0.0004, "verdict": "no difference detected"}])
    first, second = predictor_lines(pd.DataFrame(rows), paired, "signs-ape")
    assert "flagged errors on clean validation): MSP 0.800 / 0.800; attention signals rollout_entropy 0.600 / 0.600, " \
           "cls_entropy 0.550 / 0.550, rollout_top_mass 0.500 / 0.500; MSP + attention" in first
    assert "Clean-vs-shifted AUROC: MSP 0.700; rollout_entropy 0.500, cls_entropy 0.450, rollout_top_mass 0.400." in first
    assert second == ("- signs-ape, moderate shift: AUGRC of MSP + attention − MSP alone = -0.0012 [-0.0030, +0.0004] "
                      "(95% bootstrap over test images, one training seed): no difference detected.")
    assert scores(pd.DataFrame({s: [1.0] for s in SIGNALS}), {s: -1 for s in SIGNALS})["msp"].tolist() == [-1.0]


def test_validation_of_one_class_fits_no_combined_score_and_says_so():
    correct = np.zeros(10, dtype=bool)  # a tiny or untrained model: every validation image wrong
    val = _frame({"msp": np.linspace(0, 1, 10)}, correct)
    assert fit_combined(val) is None
    test = _frame({"msp": np.linspace(0, 1, 10)}, np.array([True, False] * 5))
    orient = orientations(val)
    table = detection_table(test, test, orient, None)
    assert "combined" not in set(table["score"])
    paired = predictor_comparisons(test, test, orient, None)
    assert paired.empty and "verdict" in paired.columns
    first, = predictor_lines(table, paired, "tiny")
    assert "MSP + attention not fitted (the validation images were all correct or all wrong)" in first


def test_scored_splits_take_clean_and_moderate_rows_at_the_training_resolution():
    from lib.safety.predictors import predictor_split, scored_splits
    signals = pd.DataFrame({"shift": ["clean", "fog", "fog", "resolution", "clean"],
                            "severity": [0, 3, 4, float("nan"), 0], "resolution": [24, 24, 24, 36, 36]})
    clean, moderate = scored_splits(signals, 24, 3)
    assert clean.index.tolist() == [0] and moderate.index.tolist() == [1]
    assert predictor_split("fog", 4, True, 3) is None and predictor_split("clean", 0, False, 3) is None


def test_seed_signals_by_hand():
    """Three seeds on two images: seed_agreement is the other seeds' mean probability of this seed's predicted class,
    seed_map_agreement the mean rank correlation of its rollout map with theirs."""
    from lib.safety.predictors import seed_signals

    probabilities = [torch.tensor([[0.7, 0.3], [0.6, 0.4]]), torch.tensor([[0.8, 0.2], [0.1, 0.9]]),
                     torch.tensor([[0.9, 0.1], [0.2, 0.8]])]
    ramp = torch.arange(4.0).reshape(1, 2, 2)
    rollouts = [torch.cat([ramp, ramp]), torch.cat([ramp, -ramp]), torch.cat([ramp, torch.ones(1, 2, 2)])]
    first, second, third = seed_signals(probabilities, rollouts)
    # seed 0 predicts class 0 on both images: the others give it (0.8 + 0.9) / 2 and (0.1 + 0.2) / 2
    assert first["seed_agreement"].tolist() == pytest.approx([0.85, 0.15])
    assert second["seed_agreement"].tolist() == pytest.approx([0.8, 0.6])  # class 0, then class 1: (0.4 + 0.8) / 2
    # image 0: every map the same ramp (correlation 1); image 1: seed 1 reversed (-1), seed 2 constant (0, not NaN)
    assert first["seed_map_agreement"].tolist() == pytest.approx([1.0, -0.5])
    assert second["seed_map_agreement"].tolist() == pytest.approx([1.0, -0.5])
    assert third["seed_map_agreement"].tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        seed_signals(probabilities[:1], rollouts[:1])
