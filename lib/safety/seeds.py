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
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lib.config import Params
from lib.data import load_split
from lib.run.study import load_trained_model, run_name
from lib.run.train import train_to_file
from lib.safety.calibration import fit_temperature
from lib.safety.corruptions import FAMILY_OF, corrupt
from lib.safety.maps import run_model
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


def evaluate_seeds(params: Params, weights_dir: Path, log=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every trained seed of every run on every condition (module docstring): `conditions`, one prediction_row
    per (run, seed, condition), and `clean_correct`, per-image correctness on the clean images at the training
    resolution (what McNemar's test pairs)."""
    cfg, batch_size, root = params.safety, params.evaluate.batch_size, Path(params.data_root)
    rows, correct = [], []
    for dataset in dict.fromkeys(dataset for dataset, _ in cfg.runs.pairs()):
        spec = params.datasets[dataset]
        runs = [(variant, seed) for d, variant in cfg.runs.pairs() if d == dataset for seed in cfg.seeds]
        models = {key: load_trained_model(params.model_copy(update={"seed": key[1]}), dataset, key[0],
                                          Path(weights_dir) / f"{run_name(dataset, *key)}.pt") for key in runs}
        val = load_split(root, dataset, "val", spec.train_resolution, workers=params.data_workers)
        temperatures = {key: fit_temperature(run_model(model, val.images, batch_size, with_maps=False).logits,
                                             val.labels) for key, model in models.items()}
        test = load_split(root, dataset, "test", spec.train_resolution, limit=cfg.seed_test_images,
                          workers=params.data_workers)

        def record(condition: dict, images: torch.Tensor, labels: torch.Tensor) -> None:
            for (variant, seed), model in models.items():
                logits = run_model(model, images, batch_size, with_maps=False).logits
                rows.append({"dataset": dataset, "variant": variant, "seed": seed, **condition,
                             **prediction_row(logits, labels, temperatures[(variant, seed)], {})})
                if condition["shift"] == CLEAN and condition["resolution"] == spec.train_resolution:
                    correct.append(pd.DataFrame({"dataset": dataset, "variant": variant, "seed": seed,
                                                 "image": range(len(labels)),
                                                 "correct": (logits.argmax(-1) == labels).numpy()}))

        record({"shift": CLEAN, "family": CLEAN, "severity": 0, "resolution": spec.train_resolution}, test.images,
               test.labels)
        patch_size = next(iter(models.values())).patch_embed.patch_size[0]
        for scale in cfg.seed_scales:
            resolution = scaled_resolution(spec.train_resolution, scale, patch_size)
            scaled = load_split(root, dataset, "test", resolution, limit=len(test), workers=params.data_workers)
            record({"shift": CLEAN, "family": CLEAN, "severity": 0, "resolution": resolution}, scaled.images,
                   scaled.labels)
        for corruption in cfg.corruptions:
            for severity in cfg.severities:
                images = corrupt(test.images, corruption, severity, params.seed)  # the same copy for every model
                record({"shift": corruption, "family": FAMILY_OF[corruption], "severity": severity,
                        "resolution": spec.train_resolution}, images, test.labels)
            log(f"{dataset} {corruption}: {len(models)} models tested at severities {list(cfg.severities)}")
    return pd.DataFrame(rows), pd.concat(correct, ignore_index=True)


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


def severity_effects(conditions: pd.DataFrame) -> pd.DataFrame:
    """Whether each corruption's strongest severity measurably hurts: per (dataset, variant, corruption), clean
    accuracy minus accuracy at the highest severity tested, mean over seeds with its 95% t-interval."""
    rows = []
    for (dataset, variant), table in conditions.groupby(["dataset", "variant"], sort=False):
        clean = table[(table["shift"] == CLEAN)].groupby("seed")["accuracy"].first()  # training resolution first
        corrupted = table[table["shift"] != CLEAN]
        for corruption, rows_c in corrupted.groupby("shift", sort=False):
            worst = rows_c[rows_c["severity"] == rows_c["severity"].max()].set_index("seed")["accuracy"]
            drop, low, high = t_interval((clean - worst).dropna())
            rows.append({"dataset": dataset, "variant": variant, "corruption": corruption,
                         "family": rows_c["family"].iloc[0], "severity": int(rows_c["severity"].max()),
                         "accuracy_drop": drop, "ci_low": low, "ci_high": high, "hurts": bool(low > 0)})
    return pd.DataFrame(rows)


def findings(intervals: pd.DataFrame, comparison: pd.DataFrame, effects: pd.DataFrame) -> list[str]:
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
    return lines
