"""One model under shift: the per-condition rows of the safety evaluation (notebooks/safety.py).

A condition is the clean test set, one corruption at one severity, or another test resolution. For each,
`prediction_row` summarizes the logits (accuracy with its 95% Wilson interval, calibration before and
after temperature scaling, AURC, coverage and realized risk at the validation thresholds) and `map_rows` the explanation maps (similarity to the clean maps and localisation
on the object masks, mean and standard error over images, NaNs left out). `seed_map_stability` compares
the maps of models trained with different seeds on the same clean images.
"""

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.config import Params
from lib.data import ImageSet, load_split
from lib.run.study import load_trained_model, run_name
from lib.safety.calibration import calibration_metrics, probabilities, reliability_bins
from lib.safety.corruptions import FAMILY_OF, corrupt, length_reference
from lib.safety.maps import STABILITY_NOISE, run_model
from lib.safety.predictors import labelled_signals, predictor_split
from lib.safety.reliability import localisation, resolution_stability
from lib.safety.selective import augrc, aurc, excess_aurc, risk_coverage_curve, selective_metrics
from lib.stats import wilson_interval


def confidence_and_correct(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum softmax probability of softmax(logits / T) (N,) and top-1 correctness (N,)."""
    confidence, predicted = probabilities(logits, temperature).max(dim=-1)
    return confidence, predicted == labels


def prediction_row(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                   thresholds: dict[str, float]) -> dict[str, float]:
    """Accuracy (with 95% Wilson CI), calibration raw and temperature-scaled (suffix _ts), AURC / E-AURC / AUGRC
    (of the MSP; the same before and after scaling, which keeps the ranking), and for every named
    threshold (applied to the temperature-scaled MSP) the coverage, the realized selective risk with its
    Clopper-Pearson upper bound, and the counts accepted and wrong."""
    raw, scaled = calibration_metrics(logits, labels), calibration_metrics(logits, labels, temperature)
    confidence, correct = confidence_and_correct(logits, labels, temperature)
    low, high = wilson_interval(int(correct.sum()), len(correct))
    row = {"n": len(labels), **raw, "error": 1 - raw["accuracy"], "ci_low": low, "ci_high": high}
    row |= {f"{name}_ts": value for name, value in scaled.items() if name != "accuracy"}
    row |= {"aurc": aurc(confidence, correct), "eaurc": excess_aurc(confidence, correct),
            "augrc": augrc(confidence, correct)}
    for name, threshold in thresholds.items():
        selected = selective_metrics(confidence, correct, threshold)
        row |= {f"coverage_{name}": selected["coverage"], f"risk_{name}": selected["selective_risk"],
                f"risk_upper_{name}": selected["risk_upper"], f"accepted_{name}": selected["accepted"],
                f"errors_{name}": selected["errors"]}
    return row


def _summarize(values: dict[str, torch.Tensor]) -> list[dict]:
    """Mean, standard error and count of each per-image metric, NaNs left out."""
    rows = []
    for metric, per_image in values.items():
        finite = per_image[~torch.isnan(per_image)].numpy()
        sem = finite.std(ddof=1) / math.sqrt(len(finite)) if len(finite) > 1 else np.nan
        rows.append({"metric": metric, "mean": finite.mean() if len(finite) else np.nan, "sem": sem, "n": len(finite)})
    return rows


def map_rows(maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None, masks: torch.Tensor | None,
             fraction: float) -> list[dict]:
    """Long-format rows (method, metric, mean, sem, n): similarity of each method's maps to the reference
    maps of the same images (resampled to the coarser grid when the grids differ), and localisation on the
    masks when given."""
    rows = []
    for method, values in maps.items():
        metrics = {}
        if reference is not None:
            metrics |= resolution_stability(values, reference[method], fraction=fraction)
        if masks is not None:
            metrics |= localisation(values, masks)
        rows += [{"method": method, **row} for row in _summarize(metrics)]
    return rows


def bins_frame(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> pd.DataFrame:
    """Reliability-diagram bins before (scaled=False) and after (scaled=True) temperature scaling."""
    frames = []
    for scaled, t in ((False, 1.0), (True, temperature)):
        bins = reliability_bins(probabilities(logits, t), labels)
        frames.append(pd.DataFrame({k: v.numpy() for k, v in bins.items()}).assign(scaled=scaled))
    return pd.concat(frames, ignore_index=True)


def curve_frame(logits: torch.Tensor, labels: torch.Tensor, points: int = 101) -> pd.DataFrame:
    """The MSP risk-coverage curve at `points` evenly spaced coverages (the rank ceil(c N), at least 1)."""
    confidence, correct = confidence_and_correct(logits, labels, 1.0)
    curve = risk_coverage_curve(confidence, correct)
    ranks = np.maximum(np.ceil(np.linspace(0, 1, points) * len(labels)).astype(int), 1) - 1
    return pd.DataFrame({"coverage": curve.coverage.numpy()[ranks], "risk": curve.risk.numpy()[ranks]})


class ShiftResults(NamedTuple):
    """Every condition of one model: `shifts` (one prediction_row per condition), `maps` (map_rows, long
    format), `signals` (one row per condition and image: `image`, `correct` and lib.safety.predictors'
    signals), reliability `bins` and risk-coverage `curves` (clean and every severity, corruptions pooled),
    and example images / rollout maps (name -> first images) for the figures."""

    shifts: pd.DataFrame
    maps: pd.DataFrame
    signals: pd.DataFrame
    bins: pd.DataFrame
    curves: pd.DataFrame
    example_images: dict[str, torch.Tensor]
    example_maps: dict[str, torch.Tensor]


def evaluate_shifts(model: nn.Module, test: ImageSet, base: dict, temperature: float, thresholds: dict[str, float],
                    corruptions: list[str], severities: list[int], seed: int, top_fraction: float,
                    moderate_severity: int, resolution_sets: dict[int, ImageSet] | None = None,
                    example_corruptions: tuple[str, ...] = (), example_severity: int = 3, num_examples: int = 4,
                    batch_size: int = 500, corruption_lengths: str = "image", log=print) -> ShiftResults:
    """The model on clean `test`, on each corruption at each severity (seeded), on each re-rendered test set
    of `resolution_sets` (resolution -> the same images at another size). Maps of a shifted condition are
    compared with the clean maps of the same images; `base` (dataset, variant, resolution) is added to every row.
    `corruption_lengths` scales the corruptions' lengths to the image or the model's patch (`length_reference`).
    The rollout stability signal (a second forward pass) is computed only where the predictors are scored
    (`predictor_split`: clean, and corruptions up to `moderate_severity`); elsewhere it is NaN."""
    shift_rows, map_table, signal_frames, pooled = [], [], [], {}
    example_images, example_maps = {}, {}

    def record(condition: dict, outputs, labels, reference, masks) -> None:
        shift_rows.append({**condition, **prediction_row(outputs.logits, labels, temperature, thresholds)})
        map_table.extend({**condition, **row} for row in map_rows(outputs.maps, reference, masks, top_fraction))
        signals = labelled_signals(outputs, labels, temperature, top_fraction)
        signal_frames.append(signals.assign(**{k: condition[k] for k in ("shift", "family", "severity", "resolution")}))

    def keep_examples(name: str, images: torch.Tensor, outputs) -> None:
        example_images[name], example_maps[name] = images[:num_examples], outputs.maps["rollout"][:num_examples]

    reference_size = length_reference(corruption_lengths, *test.images.shape[-2:], model.patch_embed.patch_size[0])
    clean = run_model(model, test.images, batch_size, stability_noise=STABILITY_NOISE, seed=seed)
    record({**base, "shift": "clean", "family": "clean", "severity": 0}, clean, test.labels, None, test.masks)
    pooled[0] = [clean.logits]
    keep_examples("clean", test.images, clean)

    for corruption in corruptions:
        for severity in severities:
            images = corrupt(test.images, corruption, severity, seed, reference_size=reference_size)
            scored = predictor_split(corruption, severity, True, moderate_severity) is not None
            outputs = run_model(model, images, batch_size, stability_noise=STABILITY_NOISE if scored else 0.0, seed=seed)
            condition = {**base, "shift": corruption, "family": FAMILY_OF[corruption], "severity": severity}
            record(condition, outputs, test.labels, clean.maps, test.masks)
            pooled.setdefault(severity, []).append(outputs.logits)
            if corruption in example_corruptions and severity == example_severity:
                keep_examples(corruption, images, outputs)
        log(f"{corruption}: accuracy by severity {[round(r['accuracy'], 3) for r in shift_rows if r['shift'] == corruption]}")

    for resolution, shifted in (resolution_sets or {}).items():
        outputs = run_model(model, shifted.images, batch_size, seed=seed)  # another resolution: not scored
        condition = {**base, "shift": "resolution", "family": "resolution", "severity": float("nan"),
                     "resolution": resolution}
        record(condition, outputs, shifted.labels, clean.maps, shifted.masks)

    bins, curves = [], []
    for severity, logits in pooled.items():
        labels = test.labels.repeat(len(logits))
        condition = "clean" if severity == 0 else f"severity {severity}"
        bins.append(bins_frame(torch.cat(logits), labels, temperature).assign(condition=condition))
        curves.append(curve_frame(torch.cat(logits), labels).assign(condition=condition))
    return ShiftResults(pd.DataFrame(shift_rows), pd.DataFrame(map_table), pd.concat(signal_frames, ignore_index=True),
                        pd.concat(bins, ignore_index=True),
                        pd.concat(curves, ignore_index=True), example_images, example_maps)


SEED_MAP_COLUMNS = ["dataset", "variant", "pos_embed", "seed", "other_seed", "prediction_agreement", "method",
                    "metric", "mean", "sem", "n"]


def seed_map_stability(params: Params, runs_dir: Path, batch_size: int = 500, log=print) -> pd.DataFrame:
    """Across training seeds: for every run of `seeds.runs` and every extra seed, the similarity of the
    extra seed's explanation maps to the maps of the run trained with `seed`, on the first
    `seeds.map_images` clean test images at the training resolution (`map_rows` with the `seed` model's maps
    as reference; top-k IoU over `seeds.top_fraction` of the patches). Empty without extra seeds."""
    rows, settings = [], params.seeds
    for dataset, variant in settings.runs.pairs() if settings.seeds else []:
        spec = params.datasets[dataset]
        images = load_split(Path(params.data_root), dataset, "test", spec.train_resolution, limit=settings.map_images,
                            workers=params.data_workers).images

        def maps_of(run: str):
            model = load_trained_model(params, dataset, variant, Path(runs_dir) / run / "model.pt")
            return run_model(model, images, batch_size)

        reference = maps_of(run_name(dataset, variant))
        for seed in settings.seeds:
            run = run_name(dataset, variant, seed)
            outputs = maps_of(run)
            agreement = (outputs.logits.argmax(-1) == reference.logits.argmax(-1)).double().mean().item()
            rows += [{"dataset": dataset, "variant": variant, "pos_embed": params.variants[variant].pos_embed,
                      "seed": params.seed, "other_seed": seed, "prediction_agreement": agreement, **row}
                     for row in map_rows(outputs.maps, reference.maps, None, settings.top_fraction)]
            log(f"{run}: maps compared with seed {params.seed} on {len(images)} images")
    return pd.DataFrame(rows, columns=SEED_MAP_COLUMNS)
