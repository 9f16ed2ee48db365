"""Sanity checks for explanations (Adebayo et al. 2018, "Sanity checks for saliency maps", arXiv 1810.03292):
cascading model-parameter randomisation.

An explanation of what the *model* learned must change when the model's learned weights are destroyed. The
cascade re-draws the weights from the top down (the classifier head with the final norm, then the last block,
..., then the first, finally the patch embedding and position parameters), and after each step every method
explains the same images for the same target classes (the trained model's predictions). The similarity of
each randomised map to the trained model's map is the Spearman rank correlation over the patches, per image.

A method whose maps barely change as the weights go is explaining the input (edges, the image's layout),
not the model: it *fails* the check where, with every layer re-drawn, the 95% bootstrap interval of its mean
rank correlation reaches `max_correlation`. The `random` method (maps drawn from a fixed seed, independent of
the model) fails by construction: it is the check's negative control.

Each re-drawn tensor keeps the trained tensor's mean and standard deviation (Gaussian draws), so activations
keep their scale and a randomised model still produces usable gradients and attention.
"""
import copy

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from lib.stats import bootstrap_ci


def cascade(model: nn.Module) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
    """The randomisation steps, top down: (name, the modules and parameters it re-draws)."""
    steps = [("head", [model.head, model.norm])]
    steps += [(f"block {index}", [block]) for index, block in reversed(list(enumerate(model.blocks)))]
    embedding = [model.patch_embed, model.cls_token] + [part for part in (model.reg_token, model.abs_pos, model.rope,
                                                                          model.pos_bias) if part is not None]
    return steps + [("embedding", embedding)]


@torch.no_grad()
def redraw(parts: list[nn.Module | nn.Parameter], generator: torch.Generator) -> None:
    """Replace every floating-point parameter of `parts` by Gaussian draws of the same mean and standard deviation."""
    parameters = [p for part in parts for p in ([part] if isinstance(part, nn.Parameter) else part.parameters())]
    for parameter in parameters:
        if parameter.is_floating_point():
            std = parameter.std() if parameter.numel() > 1 else parameter.abs()
            draw = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(draw * std.nan_to_num(0.0) + parameter.mean())


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """Per image, Spearman's rank correlation of two (B, H, W) maps over the patches (NaN where a map is constant)."""
    return np.array([spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
                     if a.flatten().unique().numel() > 1 and b.flatten().unique().numel() > 1 else np.nan
                     for a, b in zip(first, second)])


def cascading_randomisation(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, explain_maps,
                            seed: int = 0, resamples: int = 1000, max_correlation: float = 0.5) -> pd.DataFrame:
    """Per cascade step and method: the mean rank correlation of the randomised model's maps with the trained
    model's, its bootstrap 95% interval over the images, and (last step) whether the method fails.

    explain_maps(model, inputs, targets) -> {method: (B, H, W) maps}; it is called on copies, never on `model`.
    """
    trained = explain_maps(model, inputs, targets)
    randomised = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    steps = cascade(randomised)
    for depth, (name, parts) in enumerate(steps, start=1):
        redraw(parts, generator)
        maps = explain_maps(randomised, inputs, targets)
        for method, reference in trained.items():
            correlation = rank_correlation(reference, maps[method])
            valid = correlation[np.isfinite(correlation)]
            low, high = bootstrap_ci(valid, resamples, seed=seed) if len(valid) else (np.nan, np.nan)
            last = depth == len(steps)
            rows.append({"step": depth, "randomised": name, "method": method,
                         "spearman": float(valid.mean()) if len(valid) else np.nan, "ci_low": low, "ci_high": high,
                         "n": len(valid), "max_correlation": max_correlation,
                         "fails": bool(high >= max_correlation) if last and len(valid) else None})
    return pd.DataFrame(rows)
