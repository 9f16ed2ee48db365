"""Attention reliability metrics: is an explanation map stable under shift, and does it stay on the object?

No paper defines "attention reliability" for this study; the metrics below are standard similarity and
localisation measures applied to explanation maps. They take maps as tensors (B, H, W) on a patch grid (or
any grid), non-negative relevance where higher means more relevant, so they work for any explanation method
(raw CLS attention, rollout, gradient methods). Signed maps (e.g. linear attention's implied map) are used
through their positive part where a distribution is needed (JS, localisation), as evidence *for* the class.
Let a, b be two maps of the same image (clean vs corrupted, two resolutions, two training seeds), flattened
to P patches.

- Top-k IoU: T_a = indices of the ceil(f P) largest entries of a (ties broken by raster order),
  IoU = |T_a ∩ T_b| / |T_a ∪ T_b|. Range [0, 1]; 1 = same top patches. For f <= 1/2, a map against its
  reversed ordering scores 0. Default f = 0.2.
- Spearman rank correlation: Pearson correlation of the average ranks of a and b (scipy.stats.rankdata).
  Range [-1, 1]; 1 = same ordering, -1 = reversed ordering; NaN when either map is constant.
- Jensen-Shannon divergence: p = a+ / sum a+, q = b+ / sum b+, m = (p + q) / 2,
  JS = 1/2 KL(p || m) + 1/2 KL(q || m) in bits (base 2, scipy.spatial.distance.jensenshannon squared).
  Range [0, 1]; 0 = identical distributions, 1 = disjoint supports (ln 2 nats).
- Stability across resolutions: maps at two input resolutions (different grids) are resampled to a common
  grid (bilinear with antialiasing, torch interpolate; default: the coarser of the two grids) and compared
  with the three similarities. Across training seeds: maps of two models on the same images, same metrics.
- Localisation against ground-truth object masks (B, H_img, W_img) (union of the objects):
  patch coverage c_j = share of patch j's pixels inside the mask (area pooling to the map's grid);
  relevance mass = sum_j a+_j c_j / sum_j a+_j (Arras et al. 2022's relevance mass accuracy with patch maps
  upsampled by nearest neighbour), range [0, 1], the mask's area share for a uniform map;
  pointing game = 1[c_{argmax a} > 0] (Zhang et al. 2018: the most relevant patch touches the object;
  first maximum in raster order), range {0, 1} per image. These follow the definitions of
  lib/analysis/faithfulness.py (which computes them through quantus); here they are plain torch, fast
  enough to run for every corruption and severity.

References: Spearman 1904; Lin 1991, "Divergence measures based on the Shannon entropy" (IEEE Trans. Inf.
Theory); Zhang et al. 2018, "Top-down neural attention by excitation backprop" (arXiv 1608.00507); Arras,
Osman & Samek 2022, "CLEVR-XAI" (arXiv 2003.07258); Adebayo et al. 2018 (arXiv 1810.03292) and
Ghorbani, Abid & Zou 2019 (arXiv 1710.10547) for rank correlation and top-k intersection as explanation
similarity measures.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy.spatial.distance import jensenshannon
from scipy.stats import rankdata

TOP_FRACTION = 0.2


def _flat(maps: torch.Tensor) -> torch.Tensor:
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    return rearrange(maps.detach().double(), "b h w -> b (h w)")


def _check_pair(maps_a: torch.Tensor, maps_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps_a.shape != maps_b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}; "
                         "resample them to a common grid first (resample_maps)")
    return _flat(maps_a), _flat(maps_b)


def topk_iou(maps_a: torch.Tensor, maps_b: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """IoU of the top ceil(fraction * P) patch sets of two map batches (B, H, W): (B,) in [0, 1]."""
    a, b = _check_pair(maps_a, maps_b)
    k = max(1, math.ceil(fraction * a.shape[1]))

    def top(values: torch.Tensor) -> torch.Tensor:
        chosen = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
        return torch.zeros_like(values, dtype=torch.bool).scatter_(1, chosen, True)

    top_a, top_b = top(a), top(b)
    return (top_a & top_b).sum(1).double() / (top_a | top_b).sum(1).double()


def spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per map pair (B, H, W): (B,) in [-1, 1], NaN for a constant map."""
    a, b = _check_pair(maps_a, maps_b)
    ranks_a = torch.from_numpy(rankdata(a.numpy(), axis=1))
    ranks_b = torch.from_numpy(rankdata(b.numpy(), axis=1))
    da, db = ranks_a - ranks_a.mean(1, keepdim=True), ranks_b - ranks_b.mean(1, keepdim=True)
    return (da * db).sum(1) / ((da**2).sum(1) * (db**2).sum(1)).sqrt()


def js_divergence(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits of the maps' positive parts normalized to distributions: (B,)
    in [0, 1]; NaN when a map has no positive entry."""
    a, b = _check_pair(maps_a, maps_b)
    distance = jensenshannon(a.clamp(min=0).numpy(), b.clamp(min=0).numpy(), base=2, axis=1)
    return torch.from_numpy(np.asarray(distance, dtype=np.float64)) ** 2


def map_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor, fraction: float = TOP_FRACTION) -> dict[str, torch.Tensor]:
    """All three similarities per map pair: {"topk_iou", "spearman", "js_divergence"} -> (B,) each."""
    return {
        "topk_iou": topk_iou(maps_a, maps_b, fraction),
        "spearman": spearman(maps_a, maps_b),
        "js_divergence": js_divergence(maps_a, maps_b),
    }


def resample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps (B, h, w) resampled to size (H, W): bilinear, antialiased when shrinking, half-pixel centres, so
    the maps of two resolutions cover the same image area cell by cell."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = F.interpolate(rearrange(maps.double(), "b h w -> b 1 h w"), size=tuple(size), mode="bilinear",
                            antialias=True, align_corners=False)
    return rearrange(resized, "b 1 h w -> b h w")


def resolution_stability(maps_a: torch.Tensor, maps_b: torch.Tensor, size: tuple[int, int] | None = None,
                         fraction: float = TOP_FRACTION) -> dict[str, torch.Tensor]:
    """`map_similarity` of the same images' maps at two grids, both resampled to `size` (default: the
    coarser grid, so no map is invented detail by upsampling)."""
    if size is None:
        size = min(tuple(maps_a.shape[-2:]), tuple(maps_b.shape[-2:]), key=lambda hw: hw[0] * hw[1])
    return map_similarity(resample_maps(maps_a, size), resample_maps(maps_b, size), fraction)


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each grid cell's pixels inside the union of the object masks: masks (B, H, W) or
    (B, objects, H, W) bool -> (B, grid_h, grid_w) in [0, 1] (adaptive average pooling; exact when the
    image divides into the grid)."""
    union = masks.any(dim=1) if masks.ndim == 4 else masks
    return F.adaptive_avg_pool2d(rearrange(union.double(), "b h w -> b 1 h w"), grid)[:, 0]


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance inside the mask, sum_j a+_j c_j / sum_j a+_j: (B,) in [0, 1]
    (NaN for a map without positive entries)."""
    relevance = _flat(maps).clamp(min=0)
    coverage = _flat(patch_coverage(masks, tuple(maps.shape[-2:])))
    return (relevance * coverage).sum(1) / relevance.sum(1)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1.0 where the most relevant cell (first maximum) overlaps the mask, else 0.0: (B,)."""
    coverage = _flat(patch_coverage(masks, tuple(maps.shape[-2:])))
    best = _flat(maps).argmax(dim=1, keepdim=True)
    return (coverage.gather(1, best)[:, 0] > 0).double()


def localisation(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"relevance_mass", "pointing_game", "mask_share"} per image (B,); mask_share = the mask's share of
    the image, the relevance mass of a uniform map (chance level)."""
    return {
        "relevance_mass": relevance_mass(maps, masks),
        "pointing_game": pointing_game(maps, masks),
        "mask_share": _flat(patch_coverage(masks, tuple(maps.shape[-2:]))).mean(1),
    }
