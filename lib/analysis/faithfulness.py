"""Is an explanation faithful to the model, and does it point at the objects? Perturbation and localisation.

Removing a patch replaces its pixels by those of a baseline image, the *fill* (`lib.analysis.fills`: the
split's per-channel mean colour, a constant image, in the headline tables; the image blurred; another
image). Patches are ranked by relevance (ties broken by one fixed, seeded random order of the patches,
the same for every image, so no method is favoured by raster order) and removed whole, in steps of
`fractions` of the patch count P (round(f * P) patches at fraction f).

One sweep per direction serves two protocols each:

- Most relevant first ("deletion" in RISE, "positive perturbation" in Chefer et al.).
- Least relevant first ("negative perturbation"); read backwards it is RISE "insertion": at insertion
  fraction f the most relevant f * P patches are shown on the baseline image, which is the least-relevant-
  first sweep at fraction 1 - f (RISE inserts onto a blurred image; here onto the same baseline image, so
  the two protocols share forward passes). Where f * P is a half-integer k + 1/2 the sweep removes
  round(P - f * P) = P - k patches, so insertion shows k, one patch fewer than RISE's round(f * P) = k + 1
  (on the study's grids with 10 steps: only MNIST's 49 patches at f = 0.5).

Curves (per image, over fractions f in [0, 1]):
- probability: softmax probability of the explained (predicted) class; deletion AUC = ∫ p df over the
  most-relevant-first sweep (lower is better), insertion AUC = ∫ p df over the least-relevant-first sweep
  (equal to the insertion curve's area; higher is better). Trapezoid including f = 0 and f = 1; range [0, 1].
- correct: top-1 correctness against the true label; positive / negative perturbation AUC = ∫ acc df over
  f in [0, 0.9] (Chefer et al. remove 10%..90%, AUC by trapezoid including 0%); range [0, 0.9], multiply by
  100 for Chefer's scale (ViT-B ImageNet: negative 54.16 for their method, 53.1 rollout, 41.52 Grad-CAM;
  positive 17.03). Lower is better for positive, higher for negative.

Localisation (shapes, whose masks mark the circle and the square): the label is the relative position of
the two objects, so both matter and the target region is the union of both masks. Patch maps are shown to
quantus at pixel level, every pixel carrying its patch's value (nearest upsampling); the positive part of
the relevance is used (signed methods: evidence for the class).
- Pointing game (Zhang et al. 2018): hit when a patch of maximal relevance overlaps the union mask; range
  {0, 1} per image, mean = hit rate.
- Relevance mass accuracy (Arras et al. 2022): sum of relevance inside the mask / total relevance, i.e.
  sum_p r_p c_p / sum_p r_p with c_p the patch's mask coverage; range [0, 1], the mask's area share for a
  uniform map.

Confidence intervals: percentile bootstrap over images (the mean's 2.5% and 97.5% quantiles).

References: Petsiuk, Das & Saenko 2018, "RISE" (arXiv 1806.07421); Chefer, Gur & Wolf 2021 (arXiv
2012.09838, section 5 "perturbation tests"); Zhang et al. 2018, "Top-down neural attention by excitation
backprop" (arXiv 1608.00507); Arras, Osman & Samek 2022, "CLEVR-XAI" (arXiv 2003.07258); quantus (Hedström
et al. 2023, arXiv 2202.06861); Efron & Tibshirani 1993 (bootstrap).
"""
from typing import NamedTuple

import numpy as np
import quantus
import torch
from einops import rearrange, reduce, repeat
from torch import nn

DIRECTIONS = ("most_relevant_first", "least_relevant_first")


def patch_ranking(saliency: torch.Tensor, tie_break: torch.Tensor) -> torch.Tensor:
    """Patch indices from most to least relevant, (B, P), for saliency (B, H, W).

    tie_break: a permutation of the P patches; equal saliencies are ordered by it.
    """
    shuffled = saliency.flatten(1)[:, tie_break]
    order = shuffled.argsort(dim=-1, descending=True, stable=True)
    return tie_break[order]


def remove_patches(inputs: torch.Tensor, baseline: torch.Tensor, removed: torch.Tensor,
                   patch_size: tuple[int, int]) -> torch.Tensor:
    """inputs (B, C, height, width) with the patches in `removed` (B, k) replaced by `baseline`'s pixels."""
    patch_h, patch_w = patch_size
    grid_h, grid_w = inputs.shape[-2] // patch_h, inputs.shape[-1] // patch_w
    keep = torch.ones(len(inputs), grid_h * grid_w, dtype=inputs.dtype, device=inputs.device)
    keep = keep.scatter(1, removed, 0.0)
    keep = repeat(keep, "b (h w) -> b 1 (h p) (w q)", h=grid_h, p=patch_h, q=patch_w)
    return inputs * keep + baseline * (1 - keep)


class Curve(NamedTuple):
    """Per image and fraction (B, F): softmax probability of the target class, and top-1 correctness."""

    probability: torch.Tensor
    correct: torch.Tensor


def _readout(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probability = logits.softmax(dim=-1).gather(1, targets[:, None])[:, 0]
    return probability, (logits.argmax(dim=-1) == labels).float()


def perturbation_curves(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                        rankings: dict[str, torch.Tensor], baseline: torch.Tensor,
                        fractions: torch.Tensor) -> dict[tuple[str, str], Curve]:
    """Both removal sweeps for every method's ranking (B, P), one forward per fraction for all of them.

    Returns {(method, direction): Curve}. Fraction 0 is the clean input and fraction 1 the baseline for
    every method, each evaluated once.
    """
    patch_size = model.patch_embed.patch_size
    num_patches = next(iter(rankings.values())).shape[1]
    batch = len(inputs)
    keys = [(method, direction) for method in rankings for direction in DIRECTIONS]
    columns: dict[tuple[str, str], list] = {key: [] for key in keys}
    with torch.no_grad():
        for fraction in fractions.tolist():
            count = int(np.floor(fraction * num_patches + 0.5))
            if count in (0, num_patches):
                shared = inputs if count == 0 else baseline.expand_as(inputs)
                readout = _readout(model(shared), targets, labels)
                for key in keys:
                    columns[key].append(readout)
                continue
            perturbed = []
            for method, direction in keys:
                order = rankings[method]
                removed = order[:, :count] if direction == DIRECTIONS[0] else order[:, num_patches - count:]
                perturbed.append(remove_patches(inputs, baseline, removed, patch_size))
            logits = model(torch.cat(perturbed))
            for index, key in enumerate(keys):
                part = slice(index * batch, (index + 1) * batch)
                columns[key].append(_readout(logits[part], targets, labels))
    return {key: Curve(torch.stack([p for p, _ in column], 1), torch.stack([c for _, c in column], 1))
            for key, column in columns.items()}


def curve_auc(curve: torch.Tensor, fractions: torch.Tensor, upto: float = 1.0) -> torch.Tensor:
    """Per-image trapezoid area of curve (B, F) over the fractions <= upto (F,): -> (B,)."""
    kept = fractions <= upto + 1e-9
    return torch.trapezoid(curve[:, kept], fractions[kept], dim=-1)


def patch_coverage(masks: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch's pixels inside the union of the object masks: (B, objects, H, W) -> (B, h, w)."""
    union = masks.any(dim=1).float()
    return reduce(union, "b (h p) (w q) -> b h w", "mean", p=patch_size[0], q=patch_size[1])


def _quantus_arrays(saliency: torch.Tensor, masks: torch.Tensor, patch_size: tuple[int, int]):
    """Pixel-level arrays in quantus's channel-first layout: relevance (positive part, each pixel its
    patch's value) and the union mask, both (B, 1, height, width)."""
    pixels = repeat(saliency.clamp(min=0), "b h w -> b 1 (h p) (w q)", p=patch_size[0], q=patch_size[1])
    union = rearrange(masks.any(dim=1), "b h w -> b 1 h w")
    return pixels.numpy().astype(np.float32), union.numpy()


def localisation(saliency: torch.Tensor, masks: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                 patch_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-image pointing-game hits and relevance mass accuracy (quantus) for saliency (B, H, W) against
    the union of the object masks (B, objects, height, width)."""
    relevance, union = _quantus_arrays(saliency, masks, patch_size)
    common = dict(model=None, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=relevance, s_batch=union,
                  channel_first=True)
    options = dict(abs=False, normalise=False, disable_warnings=True, display_progressbar=False)
    return {
        "pointing_game": np.asarray(quantus.PointingGame(**options)(**common), dtype=np.float64),
        "relevance_mass": np.asarray(quantus.RelevanceMassAccuracy(**options)(**common), dtype=np.float64),
    }
