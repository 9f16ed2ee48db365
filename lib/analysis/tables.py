"""One trained model over a data set, in batches, summarised as tidy tables (one row per observation).

The functions here only loop over batches and turn the per-image results of `metrics`, `explain` and
`faithfulness` into pandas tables; every definition lives in those modules.
"""
import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.analysis.compare import compare_methods, oriented_scores, paired_mean_difference
from lib.analysis.explain import Explanations, explain, integrated_gradients
from lib.analysis.extract import attention_maps
from lib.analysis.faithfulness import (
    DIRECTIONS, curve_auc, localisation, patch_coverage, patch_ranking, perturbation_curves,
)
from lib.analysis.metrics import (
    attention_entropy, cls_distribution, gini, head_importance, high_norm_tokens, mean_attention_distance,
    offset_profile, pruning_curve, pruning_order, top_mass,
)
from lib.stats import bootstrap_ci, wilson_interval


def batch_slices(total: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def _rows(reference: torch.Tensor, part: slice, total: int) -> torch.Tensor:
    """A batch's share of a reference image: its rows where there is one per image, else the one shared image."""
    return reference[part] if len(reference) == total else reference


def _layer_head_frame(values: dict[str, torch.Tensor]) -> pd.DataFrame:
    """{column: (L, h) tensor} -> rows (layer, head, columns...)."""
    depth, heads = next(iter(values.values())).shape
    layer, head = np.meshgrid(np.arange(depth), np.arange(heads), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(),
                         **{name: value.flatten().numpy() for name, value in values.items()}})


def attention_tables(model: nn.Module, inputs: torch.Tensor, batch_size: int = 250, top_fraction: float = 0.1,
                     high_norm_threshold: float = 5.0, num_prefix_tokens: int | None = None) -> dict[str, pd.DataFrame]:
    """Attention statistics of every block and head, averaged over `inputs` (B, C, height, width).

    Returns tables
      layer_head: layer, head, mean distance (patches, pixels; and its std over images; and that of uniform
        attention), entropy (nats, and divided by log P), CLS top-mass (`top_fraction` of the patches), Gini;
      offset_profile: layer, head, dx, dy, mean_attention;
      high_norm: layer, outlier tokens per image, share of images with one, CLS and patch-query mass on them,
        their token share, median of the largest robust z-score.
    `num_prefix_tokens` defaults to the model's (CLS and any registers).
    """
    num_prefix_tokens = model.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in (
        "distance", "entropy", "top_mass", "gini", "count", "cls_mass", "patch_mass", "max_z")}
    profile_sum = None
    for part in batch_slices(len(inputs), batch_size):
        record = attention_maps(model, inputs[part])
        maps, grid_hw = record.maps, record.grid_hw
        cls = cls_distribution(maps, num_prefix_tokens)
        sinks = high_norm_tokens(record.tokens, maps, num_prefix_tokens, high_norm_threshold)
        for name, value in (("distance", mean_attention_distance(maps, grid_hw, num_prefix_tokens)),
                            ("entropy", attention_entropy(maps, num_prefix_tokens)),
                            ("top_mass", top_mass(cls, top_fraction)), ("gini", gini(cls)),
                            *sinks._asdict().items()):
            per_image[name].append(value)
        profile = offset_profile(maps, grid_hw, num_prefix_tokens).sum(dim=0)
        profile_sum = profile if profile_sum is None else profile_sum + profile
    stats = {name: torch.cat(values) for name, values in per_image.items()}
    patch_pixels = model.patch_embed.patch_size[1]
    num_patches = grid_hw[0] * grid_hw[1]
    uniform = torch.ones(1, 1, 1, num_patches + num_prefix_tokens, num_patches + num_prefix_tokens)
    layer_head = _layer_head_frame({
        "mean_distance_patches": stats["distance"].mean(0),
        "mean_distance_pixels": patch_pixels * stats["distance"].mean(0),
        "mean_distance_std_patches": stats["distance"].std(0),
        "entropy_nats": stats["entropy"].mean(0),
        "entropy_normalized": stats["entropy"].mean(0) / np.log(num_patches),
        "cls_top_mass": stats["top_mass"].mean(0),
        "cls_gini": stats["gini"].mean(0),
    }).assign(uniform_distance_pixels=patch_pixels * mean_attention_distance(uniform, grid_hw, num_prefix_tokens).item(),
              grid_h=grid_hw[0], grid_w=grid_hw[1], patch_size=patch_pixels, top_fraction=top_fraction)

    profile = profile_sum / len(inputs)
    depth, heads, rows, cols = profile.shape
    layer, head, dy, dx = np.meshgrid(np.arange(depth), np.arange(heads), np.arange(rows) - grid_hw[0] + 1,
                                      np.arange(cols) - grid_hw[1] + 1, indexing="ij")
    offsets = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "dx": dx.ravel(), "dy": dy.ravel(),
                            "mean_attention": profile.flatten().numpy()})

    has_outlier = stats["count"] > 0
    outlier_images = has_outlier.sum(0).clamp_min(1)
    high_norm = pd.DataFrame({
        "layer": np.arange(stats["count"].shape[1]),
        "outliers_per_image": stats["count"].mean(0).numpy(),
        "images_with_outliers": has_outlier.float().mean(0).numpy(),
        "cls_mass_on_outliers": ((stats["cls_mass"] * has_outlier).sum(0) / outlier_images).numpy(),
        "patch_mass_on_outliers": ((stats["patch_mass"] * has_outlier).sum(0) / outlier_images).numpy(),
        "outlier_token_share": (stats["count"].sum(0) / outlier_images / (num_patches + num_prefix_tokens)).numpy(),
        "max_robust_z_median": stats["max_z"].median(0).values.numpy(),
        "threshold": high_norm_threshold,
    })
    return {"layer_head": layer_head, "offset_profile": offsets, "high_norm": high_norm}


def head_importance_tables(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 250,
                           random_orders: int = 3, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Michel et al. head importance per (layer, head) and the pruning curves: heads removed from least to
    most important (layer-normalized scores), and in `random_orders` seeded random orders."""
    importance = torch.cat([head_importance(model, inputs[part], labels[part])
                            for part in batch_slices(len(inputs), batch_size)]).mean(0)
    depth, heads = importance.shape
    normalized = importance / importance.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    table = _layer_head_frame({"importance": importance, "importance_layer_normalized": normalized})
    orders = {"importance": pruning_order(importance)}
    generator = torch.Generator().manual_seed(seed)
    for index in range(random_orders):
        flat = torch.randperm(depth * heads, generator=generator)
        orders[f"random_{index}"] = torch.stack([flat // heads, flat % heads], dim=-1)
    curves = []
    for name, order in orders.items():
        accuracy = pruning_curve(model, inputs, labels, order, batch_size)
        curves.append(pd.DataFrame({"order": "importance" if name == "importance" else "random", "order_name": name,
                                    "heads_removed": np.arange(len(accuracy)), "accuracy": accuracy.numpy()}))
    return {"head_importance": table, "pruning": pd.concat(curves, ignore_index=True)}


def explain_all(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                batch_size: int = 250, ig_steps: int = 16, seed: int = 0, head_fusion: str = "mean",
                discard_ratio: float = 0.0) -> Explanations:
    """`explain` over all inputs in batches, concatenated."""
    generator = torch.Generator().manual_seed(seed)
    parts = [explain(model, inputs[part], targets[part], _rows(baseline, part, len(inputs)), generator, ig_steps,
                     head_fusion, discard_ratio)
             for part in batch_slices(len(inputs), batch_size)]
    return Explanations(
        maps={name: torch.cat([p.maps[name] for p in parts]) for name in parts[0].maps},
        ig_pixels=torch.cat([p.ig_pixels for p in parts]),
        cls_layers=torch.cat([p.cls_layers for p in parts]),
        logits=torch.cat([p.logits for p in parts]),
    )


def faithfulness_tables(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                        maps: dict[str, torch.Tensor], baseline: torch.Tensor, fractions: torch.Tensor,
                        batch_size: int = 250, resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Perturbation curves and AUCs (with bootstrap 95% CIs over images) of every method's maps (B, H, W).

    Returns tables
      curves: method, direction, fraction, probability (of the target class), accuracy;
      faithfulness: method, metric (deletion_auc, insertion_auc, positive_perturbation_auc,
        negative_perturbation_auc), value, ci_low, ci_high, n, better ("lower"/"higher");
      per_image: method, metric, image, value, better (every image's AUC: methods are compared on the same
        images, lib.analysis.compare).
    """
    num_patches = next(iter(maps.values()))[0].numel()
    tie_break = torch.randperm(num_patches, generator=torch.Generator().manual_seed(seed))
    rankings = {name: patch_ranking(saliency, tie_break) for name, saliency in maps.items()}
    parts = [perturbation_curves(model, inputs[part], labels[part], targets[part],
                                 {name: order[part] for name, order in rankings.items()},
                                 _rows(baseline, part, len(inputs)), fractions)
             for part in batch_slices(len(inputs), batch_size)]
    curve_rows, auc_rows, image_rows = [], [], []
    for key in parts[0]:
        method, direction = key
        probability = torch.cat([p[key].probability for p in parts])
        correct = torch.cat([p[key].correct for p in parts])
        curve_rows.append(pd.DataFrame({"method": method, "direction": direction, "fraction": fractions.numpy(),
                                        "probability": probability.mean(0).numpy(), "accuracy": correct.mean(0).numpy()}))
        readouts = {
            DIRECTIONS[0]: [("deletion_auc", probability, 1.0, "lower"), ("positive_perturbation_auc", correct, 0.9, "lower")],
            DIRECTIONS[1]: [("insertion_auc", probability, 1.0, "higher"), ("negative_perturbation_auc", correct, 0.9, "higher")],
        }[direction]
        for metric, curve, upto, better in readouts:
            per_image = curve_auc(curve, fractions, upto).numpy()
            low, high = bootstrap_ci(per_image, resamples, seed=seed)
            auc_rows.append({"method": method, "metric": metric, "value": per_image.mean(), "ci_low": low,
                             "ci_high": high, "n": len(per_image), "better": better})
            image_rows.append(pd.DataFrame({"method": method, "metric": metric, "image": np.arange(len(per_image)),
                                            "value": per_image, "better": better}))
    return {"curves": pd.concat(curve_rows, ignore_index=True), "faithfulness": pd.DataFrame(auc_rows),
            "per_image": pd.concat(image_rows, ignore_index=True)}


IG_FROM_FILL = "ig_from_fill"  # Integrated Gradients integrated from the fill image: the circular set-up, a control
FILL_METRICS = ("deletion_auc", "insertion_auc")


def faithfulness_by_fill(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                         maps: dict[str, torch.Tensor], fills: dict[str, torch.Tensor], fractions: torch.Tensor,
                         batch_size: int = 250, ig_steps: int = 16, resamples: int = 1000,
                         seed: int = 0) -> dict[str, dict[str, pd.DataFrame]]:
    """`faithfulness_tables` under every fill ({name: reference images, one per input or one shared}), each
    with one method more than `maps`: IG_FROM_FILL, Integrated Gradients integrated from that fill's image."""
    by_fill = {}
    for name, fill in fills.items():
        from_fill = torch.cat([integrated_gradients(model, inputs[part], targets[part], _rows(fill, part, len(inputs)),
                                                    ig_steps, internal_batch_size=part.stop - part.start).patches
                               for part in batch_slices(len(inputs), batch_size)])
        by_fill[name] = faithfulness_tables(model, inputs, labels, targets, {**maps, IG_FROM_FILL: from_fill}, fill,
                                            fractions, batch_size, resamples, seed)
    return by_fill


def without_method(tables: dict[str, pd.DataFrame], method: str) -> dict[str, pd.DataFrame]:
    return {name: table[table["method"] != method].reset_index(drop=True) for name, table in tables.items()}


def fill_sensitivity(by_fill: dict[str, dict[str, pd.DataFrame]], ig_method: str = "integrated_gradients",
                     resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """How much the fill decides the faithfulness verdicts (from `faithfulness_by_fill`).

    Returns tables
      fills: `compare_methods` of deletion and insertion AUC under each fill (column `fill`), the methods of
        `maps` only: which method is best or tied, and which beat the random order, fill by fill;
      ig_baseline: per fill and metric, IG_FROM_FILL minus `ig_method` (IG from the study's own baseline),
        per image, oriented so that positive means the fill-baseline IG looks more faithful; its mean and
        bootstrap 95% interval over the same images: what integrating from the fill image buys IG.
    """
    compared, ig_rows = [], []
    for name, tables in by_fill.items():
        per_image = tables["per_image"][tables["per_image"]["metric"].isin(FILL_METRICS)]
        methods = per_image[per_image["method"] != IG_FROM_FILL]
        compared.append(compare_methods(methods, resamples, seed).assign(fill=name))
        for metric, table in per_image.groupby("metric", sort=False):
            scores = oriented_scores(table)
            difference, low, high, n = paired_mean_difference(scores[IG_FROM_FILL], scores[ig_method], resamples, seed)
            ig_rows.append({"fill": name, "metric": metric, "better": table["better"].iloc[0],
                            "ig_from_fill": float(table.loc[table["method"] == IG_FROM_FILL, "value"].mean()),
                            "ig": float(table.loc[table["method"] == ig_method, "value"].mean()),
                            "gain": difference, "gain_low": low, "gain_high": high, "n": n})
    return {"fills": pd.concat(compared, ignore_index=True), "ig_baseline": pd.DataFrame(ig_rows)}


def localisation_per_image(maps: dict[str, torch.Tensor], masks: torch.Tensor, images: torch.Tensor,
                           labels: torch.Tensor, patch_size: tuple[int, int]) -> pd.DataFrame:
    """Every image's pointing-game hit and relevance mass per method (method, metric, image, value, better;
    NaN where quantus cannot score an image), for paired comparisons of methods on the same images."""
    parts = [pd.DataFrame({"method": method, "metric": metric, "image": np.arange(len(values)), "value": values,
                           "better": "higher"})
             for method, saliency in maps.items()
             for metric, values in localisation(saliency, masks, images, labels, patch_size).items()]
    return pd.concat(parts, ignore_index=True)


def localisation_table(per_image: pd.DataFrame, masks: torch.Tensor, patch_size: tuple[int, int],
                       resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Pointing game and relevance mass (union of the object masks) per method, with bootstrap 95% CIs over the
    images quantus could score, from `localisation_per_image`'s rows; and the mask's mean share of the image area
    (the relevance mass of a uniform map; the `random` method gives the chance level of both metrics empirically)."""
    area = patch_coverage(masks, patch_size).flatten(1).mean(-1).numpy()
    rows = []
    for (method, metric), part in per_image.groupby(["method", "metric"], sort=False):
        valid = part["value"].to_numpy()
        valid = valid[np.isfinite(valid)]
        low, high = bootstrap_ci(valid, resamples, seed=seed)
        rows.append({"method": method, "metric": metric, "value": valid.mean(), "ci_low": low, "ci_high": high,
                     "n": len(valid), "mask_area_share": area.mean()})
    return pd.DataFrame(rows)


def accuracy_vs_chance(correct: torch.Tensor, num_classes: int) -> pd.DataFrame:
    """One row: the share of images predicted right with its Wilson 95% interval, and chance (1 / classes).
    Explanations of a model whose interval reaches chance explain nothing; summaries leave such models out."""
    hits, n = int(correct.sum()), len(correct)
    low, high = wilson_interval(hits, n)
    return pd.DataFrame([{"accuracy": hits / n, "ci_low": low, "ci_high": high, "n": n, "chance": 1 / num_classes}])
