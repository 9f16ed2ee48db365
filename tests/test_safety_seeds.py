"""RQ4 over training seeds (lib/safety/seeds.py): McNemar's test, mCE against the same seed's baseline, paired
differences over seeds, the severity checks per corruption and per family, and attention signals against MSP as
error detectors over seeds, on hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from lib.safety.seeds import (
    CLEAN, COMPARED, compare_to_baseline, family_effects, findings, mcnemar, mean_corruption_errors, per_seed_metrics,
    predictor_differences, predictor_findings, predictor_intervals, scaled_resolution, seed_intervals, severity_effects,
)


def test_mcnemar_exact_p_value_by_hand():
    # 3 images right only for the first, none only for the second: P(3 of 3 discordant one way) * 2 sides = 0.25
    first = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    second = np.array([1, 0, 0, 0, 0, 0], dtype=bool)
    assert mcnemar(first, second) == {"first_only": 3, "second_only": 0, "p_value": pytest.approx(0.25)}
    # 1 vs 4 discordant: p = 2 * P(X <= 1), X ~ Bin(5, 1/2) = 2 * 6 / 32
    first, second = np.array([1, 0, 0, 0, 0, 1]), np.array([0, 1, 1, 1, 1, 1])
    assert mcnemar(first, second)["p_value"] == pytest.approx(12 / 32)
    assert mcnemar(first, first)["p_value"] == 1.0  # no discordant image: nothing to test
    with pytest.raises(ValueError, match="pairs images"):
        mcnemar(first, first[:3])


def test_scaled_resolution_is_a_whole_number_of_patches():
    assert scaled_resolution(24, 1.5, 4) == 36
    assert scaled_resolution(32, 1.5, 4) == 48
    assert scaled_resolution(28, 1.5, 4) in (40, 44)  # 42 px rounds to 10 or 11 patches
    assert scaled_resolution(8, 0.1, 4) == 4  # never below one patch


def conditions_table(errors: dict, clean_accuracy: dict, scaled_accuracy: dict | None = None) -> pd.DataFrame:
    """A conditions table as evaluate_seeds writes it: errors {(variant, seed, corruption, severity): error}."""
    rows = []
    for (variant, seed), accuracy in clean_accuracy.items():
        rows.append({"dataset": "d", "variant": variant, "seed": seed, "shift": CLEAN, "family": CLEAN, "severity": 0,
                     "resolution": 24, "n": 10, "accuracy": accuracy, "error": 1 - accuracy, "ece": 0.1,
                     "ece_ts": 0.05, "augrc": 0.02})
        for scale_accuracy in ([scaled_accuracy[(variant, seed)]] if scaled_accuracy else []):
            rows.append({**rows[-1], "resolution": 36, "accuracy": scale_accuracy, "error": 1 - scale_accuracy})
    for (variant, seed, corruption, severity), error in errors.items():
        rows.append({"dataset": "d", "variant": variant, "seed": seed, "shift": corruption, "family": "noise",
                     "severity": severity, "resolution": 24, "n": 10, "accuracy": 1 - error, "error": error,
                     "ece": 0.2, "ece_ts": 0.1, "augrc": 0.05})
    return pd.DataFrame(rows)


def test_mce_divides_by_the_same_seeds_baseline_errors():
    errors = {("ape", 0, "noise", 1): 0.2, ("ape", 0, "noise", 2): 0.4, ("ape", 0, "fog", 1): 0.1, ("ape", 0, "fog", 2): 0.1,
              ("rope", 0, "noise", 1): 0.1, ("rope", 0, "noise", 2): 0.2, ("rope", 0, "fog", 1): 0.3, ("rope", 0, "fog", 2): 0.1,
              ("ape", 1, "noise", 1): 1.0, ("ape", 1, "noise", 2): 1.0, ("ape", 1, "fog", 1): 1.0, ("ape", 1, "fog", 2): 1.0,
              ("rope", 1, "noise", 1): 0.5, ("rope", 1, "noise", 2): 0.5, ("rope", 1, "fog", 1): 0.5, ("rope", 1, "fog", 2): 0.5}
    table = conditions_table(errors, {("ape", 0): 0.9, ("rope", 0): 0.9, ("ape", 1): 0.9, ("rope", 1): 0.9})
    mce = mean_corruption_errors(table, "ape").set_index(["variant", "seed"])["mce"]
    assert mce[("ape", 0)] == pytest.approx(1.0) and mce[("ape", 1)] == pytest.approx(1.0)
    assert mce[("rope", 0)] == pytest.approx((0.3 / 0.6 + 0.4 / 0.2) / 2)  # noise 0.5, fog 2.0
    assert mce[("rope", 1)] == pytest.approx(0.5)  # seed 1's baseline, not seed 0's


def three_seeds(rope_gain: float) -> pd.DataFrame:
    """ape and rope over seeds 0-2; rope's clean accuracy = ape's + rope_gain + a seed-dependent wobble."""
    clean = {("ape", s): 0.7 + 0.05 * s for s in range(3)}
    clean |= {("rope", s): 0.7 + 0.05 * s + rope_gain + (0.01, -0.01, 0.0)[s] for s in range(3)}
    errors = {(v, s, "noise", sev): 1 - clean[(v, s)] + 0.1 * sev for v in ("ape", "rope") for s in range(3)
              for sev in (1, 5)}
    return conditions_table(errors, clean, {key: value - 0.1 for key, value in clean.items()})


def test_paired_difference_over_seeds_and_its_verdict():
    table = three_seeds(rope_gain=0.1)
    metrics = per_seed_metrics(table, "ape", moderate_severity=3)
    assert set(metrics.columns) >= {column for column, _ in COMPARED.values()}
    assert metrics.set_index(["variant", "seed"]).loc[("rope", 1), "scaled_accuracy"] == pytest.approx(0.74)
    correct = pd.DataFrame([{"dataset": "d", "variant": v, "seed": s, "image": i, "correct": (i < 8) if v == "rope" else (i < 5)}
                            for v in ("ape", "rope") for s in range(3) for i in range(10)])
    comparison = compare_to_baseline(metrics, correct, "ape").set_index("metric")
    clean = comparison.loc["clean accuracy"]
    # differences 0.11, 0.09, 0.10: mean 0.1, sd 0.01, t_{0.975, 2} = 4.303
    assert clean["difference"] == pytest.approx(0.1) and clean["seeds"] == 3
    assert clean["ci_high"] - clean["ci_low"] == pytest.approx(2 * 4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert clean["verdict"] == "rope > ape"
    assert comparison.loc["clean ECE", "verdict"] == "no difference detected"  # identical ECE: difference 0
    test = comparison.loc["McNemar, clean images"]
    assert test["mcnemar_better"] == 0 and test["mcnemar_worse"] == 0  # 3 vs 0 discordant: p = 0.25 per seed
    lines = findings(seed_intervals(metrics), comparison.reset_index(), severity_effects(table))
    assert any("clean accuracy +0.100" in line and "**rope > ape**" in line for line in lines)
    assert any("better (p < 0.05) in 0 and worse in 0 of 3 seeds (p = 0.25 0.25 0.25)" in line for line in lines)


def test_no_difference_where_the_interval_covers_zero():
    table = three_seeds(rope_gain=0.0)
    comparison = compare_to_baseline(per_seed_metrics(table, "ape", 3), pd.DataFrame(
        columns=["dataset", "variant", "seed", "image", "correct"]), "ape").set_index("metric")
    assert comparison.loc["clean accuracy", "verdict"] == "no difference detected"


def test_severity_check_flags_a_corruption_that_does_not_hurt():
    table = three_seeds(rope_gain=0.1)
    # a second corruption whose strongest severity leaves accuracy where it was (blur at a tiny image size)
    harmless = table[table["shift"] == "noise"].assign(shift="blur", family="blur")
    clean = table[(table["shift"] == CLEAN) & (table["resolution"] == 24)].set_index(["variant", "seed"])["accuracy"]
    harmless["accuracy"] = [clean[(v, s)] + (0.01, -0.02, 0.0)[s] for v, s in zip(harmless["variant"], harmless["seed"])]
    effects = severity_effects(pd.concat([table, harmless])).set_index(["variant", "corruption"])
    assert effects.loc[("ape", "noise"), "hurts"] and effects.loc[("ape", "noise"), "accuracy_drop"] == pytest.approx(0.5)
    assert not effects.loc[("ape", "blur"), "hurts"] and effects.loc[("ape", "blur"), "severity"] == 5
    lines = findings(seed_intervals(per_seed_metrics(table, "ape", 3)), pd.DataFrame(columns=["dataset", "variant"]),
                     effects.reset_index())
    assert lines[-1].startswith("Severity 5 measurably lowers accuracy") and "not for blur (d-ape" in lines[-1]


def test_scaled_ece_is_the_larger_resolutions():
    table = three_seeds(rope_gain=0.1)
    table.loc[(table["shift"] == CLEAN) & (table["resolution"] == 36), "ece_ts"] = 0.3
    metrics = per_seed_metrics(table, "ape", 3)
    assert (metrics["scaled_ece_ts"] == 0.3).all() and (metrics["clean_ece_ts"] == 0.05).all()


def test_family_effect_is_the_mean_over_the_familys_corruptions():
    table = three_seeds(rope_gain=0.1)
    # a second noise corruption that does not hurt: the family's drop is the mean of 0.5 and 0 at every seed
    harmless = table[table["shift"] == "noise"].assign(shift="shot")
    clean = table[(table["shift"] == CLEAN) & (table["resolution"] == 24)].set_index(["variant", "seed"])["accuracy"]
    harmless["accuracy"] = [clean[(v, s)] for v, s in zip(harmless["variant"], harmless["seed"])]
    families = family_effects(pd.concat([table, harmless])).set_index(["variant", "family"])
    noise = families.loc[("ape", "noise")]
    assert noise["accuracy_drop"] == pytest.approx(0.25) and noise["corruptions"] == 2 and noise["hurts"]
    lines = findings(seed_intervals(per_seed_metrics(table, "ape", 3)), pd.DataFrame(columns=["dataset", "variant"]),
                     severity_effects(table), families.reset_index())
    assert "measurable in 2 of 2 (family, model) pairs" in lines[-1] and "d-ape: noise +25.0% [+25.0%, +25.0%]" in lines[-1]


def detection_rows(auroc: dict, augrc: dict, seeds=range(3)) -> pd.DataFrame:
    """detection_table rows of one model per seed: auroc/augrc {score: value at seed 0}, + 0.01 per seed for MSP."""
    return pd.DataFrame([{"dataset": "d", "variant": "ape", "seed": seed, "split": "clean", "score": score, "images": 100,
                          "accuracy": 0.9, "error_auroc": value + 0.01 * seed * (score == "msp"),
                          "augrc": augrc[score] + (0.001, -0.001, 0.0)[seed] * (score == "combined")}
                         for seed in seeds for score, value in auroc.items()])


def test_predictor_differences_pair_each_score_with_msp_over_seeds():
    rows = detection_rows({"msp": 0.9, "rollout_entropy": 0.6, "cls_entropy": 0.5, "rollout_top_mass": 0.6, "combined": 0.9},
                          {"msp": 0.02, "rollout_entropy": 0.05, "cls_entropy": 0.05, "rollout_top_mass": 0.05,
                           "combined": 0.02})
    differences = predictor_differences(rows).set_index(["score", "metric"])
    rollout = differences.loc[("rollout_entropy", "error-detection AUROC")]
    # 0.6 - (0.90, 0.91, 0.92): mean -0.31, sd 0.01
    assert rollout["difference"] == pytest.approx(-0.31) and rollout["seeds"] == 3
    assert rollout["ci_high"] - rollout["ci_low"] == pytest.approx(2 * 4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert rollout["verdict"] == "rollout_entropy < msp"
    assert differences.loc[("rollout_entropy", "AUGRC"), "verdict"] == "rollout_entropy abstains worse than msp"
    assert differences.loc[("combined", "AUGRC"), "verdict"] == "no difference detected"  # +-0.001 around 0
    assert ("combined", "clean-vs-shifted AUROC") not in differences.index  # no shift AUROC on the clean split
    lines = predictor_findings(predictor_intervals(rows), predictor_differences(rows))
    assert lines[0].startswith("d-ape, clean (3 seeds, 100 images): error-detection AUROC (0.5 is chance) msp 0.910 [")
    assert "AUGRC combined − msp +0.000 [" in lines[1] and "rollout_entropy − msp -0.310" in lines[1]
    assert lines[-1].startswith("MSP + attention abstains better than MSP alone (AUGRC interval over seeds below 0) "
                                "in 0 and worse (above 0) in 0 of 1 (model, split) pairs")


def test_predictor_differences_skip_a_combined_score_that_was_not_fitted():
    rows = detection_rows({"msp": 0.9, "rollout_entropy": 0.6}, {"msp": 0.02, "rollout_entropy": 0.05})
    differences = predictor_differences(rows)
    assert set(differences["score"]) == {"rollout_entropy"}
    assert not any(line.startswith("MSP + attention") for line in predictor_findings(predictor_intervals(rows), differences))


def test_seed_map_agreement_is_compared_with_the_seeds_prediction_agreement_not_with_msp():
    """The seeds' map agreement sees every seed's model, so its paired comparison is with their prediction agreement;
    that one is compared with MSP; with one seed's signals missing, neither comparison is made."""
    rows = detection_rows({"msp": 0.9, "seed_agreement": 0.95, "seed_map_agreement": 0.6},
                          {"msp": 0.02, "seed_agreement": 0.015, "seed_map_agreement": 0.05})
    differences = predictor_differences(rows).set_index(["score", "metric"])
    assert set(differences.index.get_level_values("score")) == {"seed_agreement", "seed_map_agreement"}
    maps = differences.loc[("seed_map_agreement", "error-detection AUROC")]
    assert maps["reference"] == "seed_agreement" and maps["difference"] == pytest.approx(-0.35)
    assert maps["verdict"] == "seed_map_agreement < seed_agreement"
    agreement = differences.loc[("seed_agreement", "error-detection AUROC")]
    assert agreement["reference"] == "msp" and agreement["difference"] == pytest.approx(0.95 - 0.91)
    lines = predictor_findings(predictor_intervals(rows), predictor_differences(rows))
    assert lines[-1].startswith("Across training seeds, agreement on the rollout map detects errors better than "
                                "agreement on the prediction (error-detection AUROC interval over seeds above 0) in 0 "
                                "and worse (below 0) in 1 of 1 (model, split) pairs")
    alone = detection_rows({"msp": 0.9, "seed_map_agreement": 0.6}, {"msp": 0.02, "seed_map_agreement": 0.05})
    assert len(predictor_differences(alone)) == 0
