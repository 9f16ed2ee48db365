"""RQ4 over training seeds: the case study's position encodings compared on the whole test split, seed by seed.

`notebooks/safety.py` studies one trained model in depth (maps, attention signals, abstention) on the first
`safety.num_test_images` images. A claim that one encoding is more robust or better calibrated than another rests
on the spread between training seeds instead: every run of `safety.runs` is trained here with each seed of
`safety.seeds` (the case-study recipe: `train` with `datasets.<name>.train`), and every model is tested on the same
images (the first `safety.seed_test_images` of the test split; null: all of them):

- clean at the training resolution and at each of `safety.seed_scales` times it (re-rendered or resized);
- under every corruption of `safety.corruptions` at every severity, each corrupted copy made once and shown to
  every model.

Per model and condition (`prediction_row`): accuracy, ECE before and after temperature scaling (T fitted on the
model's own clean validation predictions) and AUGRC. Between encodings (`compare_to_baseline`): paired differences
from `safety.baseline_variant` over seeds (same seed index, same images) with 95% t-intervals; mCE the ImageNet-C
way, each corruption's summed errors over severities divided by the baseline model's of the same seed; and an exact
McNemar test per seed on the clean images (`mcnemar`), a per-seed statement about test images, not about training.

Attention reliability as a predictor, over seeds (`predictor_differences`): every model's per-image signals
(lib.safety.predictors: MSP, predictive entropy, energy, rollout and CLS-attention entropy, rollout top mass, sink
mass, the rollout's stability under small pixel noise, and MSP + attention combined by a logistic regression; and,
from the other seeds of the same encoding, their agreement with the model's prediction and with its rollout map:
`signals_with_seeds`) on the clean test images and on the moderate shifts pooled (every corruption at severity <=
`safety.moderate_severity`); each signal's direction and the combined score are fixed on the model's own clean
validation split. Error-detection AUROC, clean-vs-shifted AUROC and AUGRC per seed, and paired over seeds
(`PREDICTOR_COMPARISONS`) each attention score minus MSP (does attention tell more about errors than confidence
does?) and the seeds' map agreement minus their prediction agreement (the same question, asked of a baseline that
sees the same models).
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lib.config import Params
from lib.data import load_split
from lib.run.study import load_trained_model, run_name
from lib.run.train import train_to_file
from lib.safety.calibration import fit_temperature, probabilities
from lib.safety.corruptions import FAMILY_OF, corrupt, length_reference
from lib.safety.maps import STABILITY_NOISE, Outputs, run_model
from lib.safety.predictors import (ATTENTION_SIGNALS, SPLITS, detection_table, fit_combined, labelled_signals,
                                   orientations, predictor_split, seed_signals)
from lib.safety.shift import prediction_row
from lib.stats import paired_difference, t_interval, verdict

CLEAN = "clean"
# the per-seed numbers the encodings are compared on: name -> (column of `per_seed_metrics`, higher is better)
COMPARED = {
    "clean accuracy": ("clean_accuracy", True),
    "accuracy at the larger resolution": ("scaled_accuracy", True),
    "mean accuracy under corruption": ("corrupted_accuracy", True),
    "accuracy at severity 5": ("severity5_accuracy", True),
    "clean ECE": ("clean_ece", False),
    "clean ECE after temperature scaling": ("clean_ece_ts", False),
    "ECE at the larger resolution, after temperature scaling": ("scaled_ece_ts", False),
    "ECE under moderate shift, after temperature scaling": ("moderate_ece_ts", False),
    "clean AUGRC": ("clean_augrc", False),
    "mCE (baseline = 1)": ("mce", False),
}


def scaled_resolution(train_resolution: int, scale: float, patch_size: int) -> int:
    """train_resolution x scale, rounded to a whole number of patches (at least one)."""
    return patch_size * max(1, round(train_resolution * scale / patch_size))


def train_seeds(params: Params, weights_dir: Path, checkpoint_dir: Path, log=print) -> pd.DataFrame:
    """Train every run of `safety.runs` with every seed of `safety.seeds` into weights_dir/<run>-seed<k>.pt; the
    per-epoch history of each, one row per epoch."""
    rows = []
    for dataset, variant in params.safety.runs.pairs():
        for seed in params.safety.seeds:
            run = run_name(dataset, variant, seed)
            history = train_to_file(params.model_copy(update={"seed": seed}), dataset, variant,
                                    Path(weights_dir) / f"{run}.pt", Path(checkpoint_dir) / f"safety-{run}.pt")
            rows += [{"dataset": dataset, "variant": variant, "seed": seed, **record} for record in history]
            log(f"{run}: trained, validation accuracy {history[-1]['val/acc']:.3f}")
    return pd.DataFrame(rows)


class SeedResults(NamedTuple):
    """`conditions`: one prediction_row per (run, seed, condition); `clean_correct`: per-image correctness on the
    clean images at the training resolution (what McNemar's test pairs); `predictors`: lib.safety.predictors'
    detection_table per (run, seed), on the clean images and the moderate shifts pooled."""

    conditions: pd.DataFrame
    clean_correct: pd.DataFrame
    predictors: pd.DataFrame


def signals_with_seeds(outputs: dict[tuple[str, int], Outputs], labels: torch.Tensor,
                       temperatures: dict[tuple[str, int], float], fraction: float) -> dict[tuple[str, int], pd.DataFrame]:
    """`labelled_signals` of every model (keyed (variant, seed), all run on the same images), with the SEED_SIGNALS
    among the seeds of its variant where it has at least two."""
    frames = {key: labelled_signals(out, labels, temperatures[key], fraction) for key, out in outputs.items()}
    for variant in dict.fromkeys(variant for variant, _ in outputs):
        keys = [key for key in outputs if key[0] == variant]
        if len(keys) < 2:
            continue
        agreement = seed_signals([probabilities(outputs[key].logits, temperatures[key]) for key in keys],
                                 [outputs[key].maps["rollout"] for key in keys])
        for key, frame in zip(keys, agreement):
            frames[key] = pd.concat([frames[key], frame], axis=1)
    return frames


def evaluate_seeds(params: Params, weights_dir: Path, log=print) -> SeedResults:
    """Every trained seed of every run on every condition (module docstring)."""
    cfg, batch_size, root = params.safety, params.evaluate.batch_size, Path(params.data_root)
    rows, correct, predictors = [], [], []
    for dataset in dict.fromkeys(dataset for dataset, _ in cfg.runs.pairs()):
        spec = params.datasets[dataset]
        runs = [(variant, seed) for d, variant in cfg.runs.pairs() if d == dataset for seed in cfg.seeds]
        models = {key: load_trained_model(params.model_copy(update={"seed": key[1]}), dataset, key[0],
                                          Path(weights_dir) / f"{run_name(dataset, *key)}.pt") for key in runs}
        val = load_split(root, dataset, "val", spec.train_resolution, workers=params.data_workers)
        temperatures, val_outputs = {}, {}
        for key, model in models.items():
            val_outputs[key] = run_model(model, val.images, batch_size, stability_noise=STABILITY_NOISE, seed=params.seed)
            temperatures[key] = fit_temperature(val_outputs[key].logits, val.labels)
        val_signals = signals_with_seeds(val_outputs, val.labels, temperatures, cfg.top_fraction)
        signals = {key: {split: [] for split in SPLITS} for key in models}  # the splits detection_table scores
        test = load_split(root, dataset, "test", spec.train_resolution, limit=cfg.seed_test_images,
                          workers=params.data_workers)

        def record(condition: dict, images: torch.Tensor, labels: torch.Tensor) -> None:
            split = predictor_split(condition["shift"], condition["severity"],
                                    condition["resolution"] == spec.train_resolution, cfg.moderate_severity)
            outputs = {key: run_model(model, images, batch_size, with_maps=split is not None,
                                      stability_noise=STABILITY_NOISE, seed=params.seed) for key, model in models.items()}
            for (variant, seed), out in outputs.items():
                rows.append({"dataset": dataset, "variant": variant, "seed": seed, **condition,
                             **prediction_row(out.logits, labels, temperatures[(variant, seed)], {})})
                if split == CLEAN:
                    correct.append(pd.DataFrame({"dataset": dataset, "variant": variant, "seed": seed,
                                                 "image": range(len(labels)),
                                                 "correct": (out.logits.argmax(-1) == labels).numpy()}))
            if split is not None:
                for key, frame in signals_with_seeds(outputs, labels, temperatures, cfg.top_fraction).items():
                    signals[key][split].append(frame)

        record({"shift": CLEAN, "family": CLEAN, "severity": 0, "resolution": spec.train_resolution}, test.images,
               test.labels)
        patch_size = next(iter(models.values())).patch_embed.patch_size[0]
        reference_size = length_reference(cfg.corruption_lengths, *test.images.shape[-2:], patch_size)
        for scale in cfg.seed_scales:
            resolution = scaled_resolution(spec.train_resolution, scale, patch_size)
            scaled = load_split(root, dataset, "test", resolution, limit=len(test), workers=params.data_workers)
            record({"shift": CLEAN, "family": CLEAN, "severity": 0, "resolution": resolution}, scaled.images,
                   scaled.labels)
        for corruption in cfg.corruptions:
            for severity in cfg.severities:
                # the same copy for every model
                images = corrupt(test.images, corruption, severity, params.seed, reference_size=reference_size)
                record({"shift": corruption, "family": FAMILY_OF[corruption], "severity": severity,
                        "resolution": spec.train_resolution}, images, test.labels)
            log(f"{dataset} {corruption}: {len(models)} models tested at severities {list(cfg.severities)}")
        for (variant, seed), frames in signals.items():
            val_frame = val_signals[(variant, seed)]
            clean, shifted = (pd.concat(frames[split], ignore_index=True) for split in SPLITS)
            table = detection_table(clean, shifted, orientations(val_frame), fit_combined(val_frame))
            predictors.append(table.assign(dataset=dataset, variant=variant, seed=seed))
    return SeedResults(pd.DataFrame(rows), pd.concat(correct, ignore_index=True),
                       pd.concat(predictors, ignore_index=True))


def mean_corruption_errors(conditions: pd.DataFrame, baseline_variant: str) -> pd.DataFrame:
    """mCE per (dataset, variant, seed): the mean over corruptions of sum_s E_{s,c} / sum_s E^base_{s,c}, the
    baseline being `baseline_variant`'s model of the same seed (Hendrycks & Dietterich 2019; it has mCE 1)."""
    corrupted = conditions[conditions["shift"] != CLEAN]
    errors = corrupted.groupby(["dataset", "variant", "seed", "shift"])["error"].sum().reset_index()
    base = errors[errors["variant"] == baseline_variant].drop(columns="variant").rename(columns={"error": "base"})
    merged = errors.merge(base, on=["dataset", "seed", "shift"])
    merged["ce"] = merged["error"] / merged["base"]
    return merged.groupby(["dataset", "variant", "seed"])["ce"].mean().rename("mce").reset_index()


def per_seed_metrics(conditions: pd.DataFrame, baseline_variant: str, moderate_severity: int) -> pd.DataFrame:
    """One row per (dataset, variant, seed) with the numbers of COMPARED."""
    rows = []
    for (dataset, variant, seed), table in conditions.groupby(["dataset", "variant", "seed"], sort=False):
        clean = table[table["shift"] == CLEAN]
        train = clean["resolution"].iloc[0]  # the first clean row is the training resolution (evaluate_seeds)
        at_train, scaled = clean[clean["resolution"] == train].iloc[0], clean[clean["resolution"] != train]
        corrupted = table[table["shift"] != CLEAN]
        rows.append({
            "dataset": dataset, "variant": variant, "seed": seed, "test_images": int(at_train["n"]),
            "clean_accuracy": at_train["accuracy"],
            "scaled_accuracy": scaled["accuracy"].iloc[-1] if len(scaled) else np.nan,  # the largest scale
            "corrupted_accuracy": corrupted["accuracy"].mean(),
            "severity5_accuracy": corrupted.loc[corrupted["severity"] == 5, "accuracy"].mean(),
            "clean_ece": at_train["ece"], "clean_ece_ts": at_train["ece_ts"],
            "scaled_ece_ts": scaled["ece_ts"].iloc[-1] if len(scaled) else np.nan,
            "moderate_ece_ts": corrupted.loc[corrupted["severity"] <= moderate_severity, "ece_ts"].mean(),
            "clean_augrc": at_train["augrc"],
        })
    metrics = pd.DataFrame(rows)
    return metrics.merge(mean_corruption_errors(conditions, baseline_variant), on=["dataset", "variant", "seed"],
                         how="left")


def seed_intervals(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of every COMPARED number, per (dataset, variant)."""
    rows = []
    for (dataset, variant), table in metrics.groupby(["dataset", "variant"], sort=False):
        for name, (column, _) in COMPARED.items():
            mean, low, high = t_interval(table[column])
            rows.append({"dataset": dataset, "variant": variant, "metric": name, "mean": mean, "ci_low": low,
                         "ci_high": high, "seeds": int(table[column].notna().sum()),
                         "test_images": int(table["test_images"].iloc[0])})
    return pd.DataFrame(rows)


def mcnemar(first: np.ndarray, second: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers' per-image correctness on the same images: of the discordant images,
    `first_only` are right only for the first, `second_only` only for the second; under H0 each discordant image
    goes either way with probability 1/2 (two-sided binomial test; p = 1 without discordant images)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"McNemar pairs images: got {first.shape} and {second.shape} correctness values")
    first_only, second_only = int((first & ~second).sum()), int((~first & second).sum())
    discordant = first_only + second_only
    p = stats.binomtest(first_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"first_only": first_only, "second_only": second_only, "p_value": float(p)}


def compare_to_baseline(metrics: pd.DataFrame, clean_correct: pd.DataFrame, baseline_variant: str) -> pd.DataFrame:
    """Every other variant minus `baseline_variant`, per dataset and COMPARED number: the paired difference over
    seeds with its 95% t-interval and verdict, and per seed McNemar's test on the clean images (how many seeds
    reject H0 at 0.05, and in which direction)."""
    rows = []
    for dataset, table in metrics.groupby("dataset", sort=False):
        base = table[table["variant"] == baseline_variant].set_index("seed")
        correct = clean_correct[clean_correct["dataset"] == dataset]
        for variant in dict.fromkeys(table["variant"]):
            if variant == baseline_variant:
                continue
            other = table[table["variant"] == variant].set_index("seed")
            tests = [mcnemar(correct[(correct["variant"] == variant) & (correct["seed"] == seed)]["correct"],
                             correct[(correct["variant"] == baseline_variant) & (correct["seed"] == seed)]["correct"])
                     for seed in other.index if seed in base.index]
            for name, (column, higher_is_better) in COMPARED.items():
                difference = paired_difference(other[column].to_dict(), base[column].to_dict())
                rows.append({"dataset": dataset, "variant": variant, "baseline": baseline_variant, "metric": name,
                             **difference, "higher_is_better": higher_is_better,
                             "verdict": verdict(difference, variant, baseline_variant)})
            rows.append({"dataset": dataset, "variant": variant, "baseline": baseline_variant,
                         "metric": "McNemar, clean images", "seeds": len(tests),
                         "mcnemar_better": sum(t["p_value"] < 0.05 and t["first_only"] > t["second_only"] for t in tests),
                         "mcnemar_worse": sum(t["p_value"] < 0.05 and t["first_only"] < t["second_only"] for t in tests),
                         "mcnemar_p_values": " ".join(f"{t['p_value']:.3g}" for t in tests)})
    return pd.DataFrame(rows)


def worst_severity_drops(conditions: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, variant, seed, corruption): clean accuracy at the training resolution minus the accuracy at the
    corruption's highest severity tested (column `accuracy_drop`), with the corruption's family and that severity."""
    drops = []
    for _, table in conditions.groupby(["dataset", "variant"], sort=False):
        clean = table[(table["shift"] == CLEAN)].groupby("seed")["accuracy"].first()  # training resolution first
        corrupted = table[table["shift"] != CLEAN]
        worst = corrupted[corrupted["severity"] == corrupted.groupby("shift")["severity"].transform("max")]
        drops.append(worst.assign(accuracy_drop=worst["seed"].map(clean) - worst["accuracy"])[
            ["dataset", "variant", "seed", "shift", "family", "severity", "accuracy_drop"]])
    return pd.concat(drops, ignore_index=True)


def _drop_intervals(drops: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per (dataset, variant, *`by`): the per-seed mean drop's mean over seeds with its 95% t-interval."""
    rows = []
    keys = ["dataset", "variant", *by]
    for values, part in drops.groupby(keys, sort=False):
        drop, low, high = t_interval(part.groupby("seed")["accuracy_drop"].mean().dropna())
        rows.append({**dict(zip(keys, values)), "corruptions": part["shift"].nunique(),
                     "severity": int(part["severity"].max()), "accuracy_drop": drop, "ci_low": low, "ci_high": high,
                     "hurts": bool(low > 0)})
    return pd.DataFrame(rows)


def severity_effects(conditions: pd.DataFrame) -> pd.DataFrame:
    """Whether each corruption's strongest severity measurably hurts: per (dataset, variant, corruption), clean
    accuracy minus accuracy at the highest severity tested, mean over seeds with its 95% t-interval."""
    table = _drop_intervals(worst_severity_drops(conditions), ["shift", "family"])
    return table.rename(columns={"shift": "corruption"}).drop(columns="corruptions")


def family_effects(conditions: pd.DataFrame) -> pd.DataFrame:
    """`severity_effects` per corruption family: the family's mean accuracy drop from clean to its corruptions'
    strongest severity, mean over seeds with its 95% t-interval, per (dataset, variant, family)."""
    return _drop_intervals(worst_severity_drops(conditions), ["family"])


# the scores compared paired over seeds, (score, reference): attention, MSP + attention and the seeds' prediction
# agreement against MSP; the seeds' rollout-map agreement against their prediction agreement (both see every seed)
PREDICTOR_COMPARISONS = (*((score, "msp") for score in (*ATTENTION_SIGNALS, "combined", "seed_agreement")),
                         ("seed_map_agreement", "seed_agreement"))
# detection_table's columns compared over seeds: column -> (name, higher is better)
PREDICTOR_METRICS = {"error_auroc": ("error-detection AUROC", True), "augrc": ("AUGRC", False),
                     "shift_auroc": ("clean-vs-shifted AUROC", True)}


def predictor_intervals(predictors: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of every score's PREDICTOR_METRICS, per (dataset, variant, split, score)."""
    rows = []
    for (dataset, variant, split, score), table in predictors.groupby(["dataset", "variant", "split", "score"], sort=False):
        for column, (name, _) in PREDICTOR_METRICS.items():
            if column in table and table[column].notna().any():
                mean, low, high = t_interval(table[column])
                rows.append({"dataset": dataset, "variant": variant, "split": split, "score": score, "metric": name,
                             "mean": mean, "ci_low": low, "ci_high": high, "seeds": int(table[column].notna().sum()),
                             "images": int(table["images"].iloc[0])})
    return pd.DataFrame(rows)


def predictor_differences(predictors: pd.DataFrame, comparisons=PREDICTOR_COMPARISONS) -> pd.DataFrame:
    """Each (score, reference) of `comparisons`: score minus reference per (dataset, variant, split) and metric,
    paired over seeds (the same model's scores on the same images) with its 95% t-interval and verdict; skipped
    where either score is missing (no combined score where validation was all correct, no seed signals from one
    seed, shift AUROC on shifted splits only)."""
    rows = []
    for (dataset, variant, split), table in predictors.groupby(["dataset", "variant", "split"], sort=False):
        for score, reference in comparisons:
            base = table[table["score"] == reference].set_index("seed")
            other = table[table["score"] == score].set_index("seed")
            for column, (name, higher_is_better) in PREDICTOR_METRICS.items():
                if any(len(t) == 0 or column not in t or t[column].isna().all() for t in (other, base)):
                    continue
                difference = paired_difference(other[column].to_dict(), base[column].to_dict())
                stated = verdict(difference, score, reference)
                if column == "augrc" and stated != "no difference detected":  # lower AUGRC: better abstention
                    stated = f"{score} abstains {'worse' if difference['ci_low'] > 0 else 'better'} than {reference}"
                rows.append({"dataset": dataset, "variant": variant, "split": split, "score": score,
                             "reference": reference, "metric": name, **difference, "higher_is_better": higher_is_better,
                             "verdict": stated})
    return pd.DataFrame(rows)


def predictor_findings(intervals: pd.DataFrame, differences: pd.DataFrame) -> list[str]:
    """Per model and split: each score's error-detection AUROC over seeds, then each attention signal's AUROC minus
    MSP's and every metric of MSP + attention minus MSP's, with verdicts; last, in how many (model, split) pairs
    MSP + attention abstains better or worse than MSP (AUGRC), and in how many the seeds' map agreement detects errors
    better or worse than their prediction agreement. Every difference is in predictor_differences.csv."""
    lines = []
    for (dataset, variant, split), table in intervals.groupby(["dataset", "variant", "split"], sort=False):
        auroc = table[table["metric"] == "error-detection AUROC"]
        first = auroc.iloc[0]
        stated = ", ".join(f"{r['score']} {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for _, r in auroc.iterrows())
        lines.append(f"{dataset}-{variant}, {split} ({int(first['seeds'])} seeds, {int(first['images'])} images): "
                     f"error-detection AUROC (0.5 is chance) {stated}.")
        paired = differences[(differences["dataset"] == dataset) & (differences["variant"] == variant)
                             & (differences["split"] == split)
                             & ((differences["score"] == "combined") | (differences["metric"] == "error-detection AUROC"))]
        stated = [f"{r['metric']} {r['score']} − {r['reference']} {r['difference']:+.3f} [{r['ci_low']:+.3f}, "
                  f"{r['ci_high']:+.3f}]: **{r['verdict']}**" for _, r in paired.iterrows()]
        if stated:
            lines.append(f"{dataset}-{variant}, {split}, paired over seeds: " + "; ".join(stated) + ".")
    augrc = differences[(differences["score"] == "combined") & (differences["metric"] == "AUGRC")]
    if len(augrc):
        better = int((augrc["ci_high"] < 0).sum())
        worse = int((augrc["ci_low"] > 0).sum())
        lines.append(f"MSP + attention abstains better than MSP alone (AUGRC interval over seeds below 0) in {better} "
                     f"and worse (above 0) in {worse} of {len(augrc)} (model, split) pairs; no difference detected in "
                     f"the other {len(augrc) - better - worse}.")
    maps = differences[(differences["score"] == "seed_map_agreement") & (differences["reference"] == "seed_agreement")
                       & (differences["metric"] == "error-detection AUROC")]
    if len(maps):
        better = int((maps["ci_low"] > 0).sum())
        worse = int((maps["ci_high"] < 0).sum())
        lines.append(f"Across training seeds, agreement on the rollout map detects errors better than agreement on the "
                     f"prediction (error-detection AUROC interval over seeds above 0) in {better} and worse (below 0) in "
                     f"{worse} of {len(maps)} (model, split) pairs; no difference detected in the other "
                     f"{len(maps) - better - worse}.")
    return lines


def findings(intervals: pd.DataFrame, comparison: pd.DataFrame, effects: pd.DataFrame,
             families: pd.DataFrame | None = None) -> list[str]:
    """The sentences results/README.md quotes: each variant's numbers over seeds, each difference from the
    baseline with its verdict, McNemar's per-seed tests, and the corruptions whose strongest severity does not
    measurably hurt."""
    lines = []
    for (dataset, variant), table in intervals.groupby(["dataset", "variant"], sort=False):
        get = table.set_index("metric")
        accuracy, ece = get.loc["clean accuracy"], get.loc["clean ECE after temperature scaling"]
        corrupted = get.loc["mean accuracy under corruption"]
        lines.append(f"{dataset}-{variant} ({int(accuracy['seeds'])} seeds, {int(accuracy['test_images'])} test images): clean accuracy "
                     f"{accuracy['mean']:.1%} [{accuracy['ci_low']:.1%}, {accuracy['ci_high']:.1%}], mean accuracy "
                     f"under corruption {corrupted['mean']:.1%} [{corrupted['ci_low']:.1%}, {corrupted['ci_high']:.1%}], "
                     f"clean ECE after temperature scaling {ece['mean']:.3f} [{ece['ci_low']:.3f}, {ece['ci_high']:.3f}] "
                     f"(95% t-intervals over training seeds).")
    for (dataset, variant), table in comparison.groupby(["dataset", "variant"], sort=False):
        base = table["baseline"].iloc[0]
        differences = table[table["metric"] != "McNemar, clean images"]
        stated = [f"{row['metric']} {row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]: "
                  f"**{row['verdict']}**" for _, row in differences.iterrows()]
        lines.append(f"{dataset}, {variant} − {base}, paired over seeds: " + "; ".join(stated) + ".")
        test = table[table["metric"] == "McNemar, clean images"].iloc[0]
        lines.append(f"{dataset}, {variant} vs {base}, exact McNemar test on the clean test images of each seed: "
                     f"{variant} better (p < 0.05) in {int(test['mcnemar_better'])} and worse in "
                     f"{int(test['mcnemar_worse'])} of {int(test['seeds'])} seeds (p = {test['mcnemar_p_values']}).")
    mild = effects[~effects["hurts"]]
    if len(effects):
        severity = int(effects["severity"].max())
        named = ", ".join(f"{r['corruption']} ({r['dataset']}-{r['variant']}, {r['accuracy_drop']:+.1%})"
                          for _, r in mild.iterrows())
        lines.append(f"Severity {severity} measurably lowers accuracy (t-interval over seeds above 0) for "
                     f"{int(effects['hurts'].sum())} of {len(effects)} (corruption, model) pairs"
                     + (f"; not for {named}." if len(mild) else "."))
    if families is not None and len(families):
        per_model = [f"{dataset}-{variant}: " + ", ".join(
                         f"{r['family']} {r['accuracy_drop']:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}]"
                         for _, r in table.iterrows())
                     for (dataset, variant), table in families.groupby(["dataset", "variant"], sort=False)]
        lines.append(f"Per corruption family (mean over its corruptions), the accuracy drop from clean to severity "
                     f"{int(families['severity'].max())} is measurable in {int(families['hurts'].sum())} of "
                     f"{len(families)} (family, model) pairs; drop with its 95% t-interval over seeds, "
                     + "; ".join(per_model) + ".")
    return lines
