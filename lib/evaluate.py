"""Resolution extrapolation: accuracy of a trained model at its training resolution and others.

A model trained at one image size is tested on the same test images at other sizes, patch size
fixed, so the patch grid shrinks or grows (Heo et al. 2024, Fig. 4). MNIST test images are resized;
the procedural `shapes` scenes are re-rendered at each size, so larger images carry real detail.
"""
import math
from pathlib import Path

import pandas as pd
import torch

from lib.checkpoint import load_checkpoint
from lib.config import Params
from lib.data import load_split
from lib.study import build_model
from lib.train import evaluate_accuracy


def load_trained_model(params: Params, dataset: str, variant: str, weights_path: Path) -> torch.nn.Module:
    """Rebuild the model from params and load the weights a training run saved."""
    state = load_checkpoint(weights_path)
    if "model" not in state:
        raise ValueError(f"{weights_path}: expected a dict with a 'model' state dict, found keys {sorted(state)}")
    model = build_model(params, dataset, variant)
    model.load_state_dict(state["model"])
    return model.eval()


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (better than +-1.96 SE near 0 and 1)."""
    if total == 0:
        return math.nan, math.nan
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def accuracy_vs_resolution(
    model: torch.nn.Module, params: Params, dataset: str, variant: str, split: str = "test",
) -> pd.DataFrame:
    """One row per test resolution: accuracy with its 95% CI, loss, grid and token count."""
    spec = params.datasets[dataset]
    patch = params.model_for(variant).patch_size
    rows = []
    for resolution in sorted({spec.train_resolution, *spec.eval_resolutions}):
        data = load_split(Path(params.data_root), dataset, split, resolution)
        metrics = evaluate_accuracy(model, data, params.evaluate.batch_size)
        correct = round(metrics["acc"] * len(data))
        low, high = wilson_interval(correct, len(data))
        rows.append({
            "dataset": dataset,
            "variant": variant,
            "attention": params.variants[variant].attention,
            "pos_embed": params.variants[variant].pos_embed,
            "resolution": resolution,
            "train_resolution": spec.train_resolution,
            "grid": resolution // patch,
            "tokens": (resolution // patch) ** 2,
            "accuracy": metrics["acc"],
            "ci_low": low,
            "ci_high": high,
            "loss": metrics["loss"],
            "n": len(data),
        })
    return pd.DataFrame(rows)
