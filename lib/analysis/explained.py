"""Explain images, score every map under every fill, and sanity-check the maps: the RQ3 core that the `analysis` stage
(one model) and the `analysis-seeds` stage (every training seed, lib.analysis.seeds) share, so both compute it the
same way."""
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from lib.analysis.explain import Explanations, explain
from lib.analysis.fills import reference_images
from lib.analysis.sanity import cascading_randomisation
from lib.analysis.tables import explain_all, faithfulness_by_fill
from lib.config.schema import AnalysisParams
from lib.run.study import normalize, predict


class ExplainedImages(NamedTuple):
    """`predicted`: the class explained, per image; `ig_reference`: the (normalised) images Integrated Gradients
    integrates from; `explanations`: every method's maps; `by_fill`: faithfulness_by_fill's tables per fill."""

    predicted: torch.Tensor
    ig_reference: torch.Tensor
    explanations: Explanations
    by_fill: dict[str, dict[str, pd.DataFrame]]


def explain_and_score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean_colour: torch.Tensor,
                      settings: AnalysisParams, fills: list[str], seed: int, batch_size: int = 250,
                      resamples: int = 1000) -> ExplainedImages:
    """Explain the predicted class of each of `images` ([0, 1], (B, C, H, W)) with every method, Integrated Gradients
    from `settings.ig_baseline`'s reference, and score each map by deletion and insertion under every fill of
    `fills` (`reference_images` kinds; `mean_colour`, (1, C, 1, 1): the split's mean colour, the `mean` fill).
    `seed` draws the random maps and the tie-breaks; `resamples`: bootstrap resamples of the per-fill CIs."""
    inputs, patch = normalize(images), model.patch_embed.patch_size[0]
    reference = lambda kind: normalize(reference_images(kind, images, mean_colour, patch))
    predicted = predict(model, inputs, batch_size).argmax(-1)
    ig_reference = reference(settings.ig_baseline)
    explanations = explain_all(model, inputs, predicted, ig_reference, batch_size, settings.ig_steps, seed,
                               settings.head_fusion, settings.discard_ratio)
    fractions = torch.linspace(0, 1, settings.perturbation_steps + 1)
    by_fill = faithfulness_by_fill(model, inputs, labels, predicted, explanations.maps,
                                   {kind: reference(kind) for kind in fills}, fractions, batch_size,
                                   settings.ig_steps, resamples, seed)
    return ExplainedImages(predicted, ig_reference, explanations, by_fill)


def sanity_check(model: nn.Module, images: torch.Tensor, predicted: torch.Tensor, ig_reference: torch.Tensor,
                 settings: AnalysisParams, seed: int, resamples: int = 1000) -> pd.DataFrame:
    """Cascading randomisation (lib.analysis.sanity) on the first `settings.sanity_images` of `images` ([0, 1]):
    every method explains `predicted` as in explain_and_score (its IG reference, its seed), on the trained model
    and on copies with their layers re-drawn from the top down."""
    checked = slice(0, min(settings.sanity_images, len(images)))
    maps_of = lambda m, x, t: explain(m, x, t, ig_reference[checked], torch.Generator().manual_seed(seed),
                                      settings.ig_steps, settings.head_fusion, settings.discard_ratio).maps
    return cascading_randomisation(model, normalize(images[checked]), predicted[checked], maps_of, seed, resamples,
                                   settings.sanity_max_correlation)
