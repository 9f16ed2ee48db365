"""What attention does, measured: distance, entropy, concentration, offsets, head importance, sink tokens.

Conventions. Maps are (B, L, h, N, N) with `num_prefix_tokens` prefix tokens (CLS) first. The patch-to-patch
distribution of a map drops the prefix rows and columns and renormalizes each row over the patch keys,

    P[i, j] = |A[i, j]| / sum_j' |A[i, j']|,   i, j patches,

so that every variant (including linear attention's signed map, whose magnitude is used) gives a
distribution per query patch. Patch positions are (x, y) = (column, row) of the row-major grid, in patches;
multiply by the patch size for pixels. Every per-image quantity is returned per image (batch axis first),
so results do not depend on how images are batched or ordered.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lib.analysis.extract import masked_heads

MAD_TO_SIGMA = 1.4826  # median absolute deviation of a normal distribution, in standard deviations


def renormalize_rows(weights: torch.Tensor) -> torch.Tensor:
    """|w| / sum |w| along the last axis (rows of zeros stay zero)."""
    magnitude = weights.abs()
    return magnitude / magnitude.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)


def patch_distribution(maps: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(..., N, N) maps -> (..., P, P) patch-to-patch distributions (prefix dropped, rows renormalized)."""
    p = num_prefix_tokens
    return renormalize_rows(maps[..., p:, p:])


def cls_distribution(maps: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(..., N, N) maps -> (..., P): the CLS query's attention over the patches, renormalized."""
    return renormalize_rows(maps[..., 0, num_prefix_tokens:])


def patch_positions(grid_hw: tuple[int, int], device=None) -> torch.Tensor:
    """(P, 2) float (x, y) position of every patch, row-major, in patches."""
    y, x = torch.meshgrid(torch.arange(grid_hw[0], device=device), torch.arange(grid_hw[1], device=device), indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1).float()


def mean_attention_distance(maps: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean attention distance (Dosovitskiy et al. 2021, Fig. 7), in patches: (B, L, h, N, N) -> (B, L, h).

        d = mean_i sum_j P[i, j] * ||pos_i - pos_j||,   i, j patches

    Range [0, max distance on the grid]; 0 for attention to oneself. Multiply by the patch size for pixels.

    References: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv 2010.11929), Fig. 7 and App. D.7.
    """
    positions = patch_positions(grid_hw, maps.device).to(maps.dtype)  # float64 maps stay float64
    distances = torch.cdist(positions, positions)
    per_query = torch.einsum("...ij,ij->...i", patch_distribution(maps, num_prefix_tokens), distances)
    return per_query.mean(dim=-1)


def attention_entropy(maps: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean row entropy in nats of the patch-to-patch distributions: (B, L, h, N, N) -> (B, L, h).

        H = mean_i -sum_j P[i, j] log P[i, j]

    Range [0, log P]: 0 when each patch attends to one patch, log P when uniform over all P patches.

    References: e.g. Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse" (arXiv 2303.06296).
    """
    # the entropy of w / s with s = sum w is log s - sum(w log w) / s: no renormalised copy of the maps (at 577
    # tokens that copy, not the maps, was most of RQ1's entropy cost)
    weights = maps[..., num_prefix_tokens:, num_prefix_tokens:].abs()
    total = weights.sum(dim=-1)
    entropy = total.log() - torch.special.xlogy(weights, weights).sum(dim=-1) / total
    return torch.where(total > 0, entropy, 0.0).mean(dim=-1)  # a row of zeros: no distribution, entropy 0


def top_mass(distribution: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Share of a distribution's mass (..., P) in its top ceil(fraction * P) entries; range [k / P ... 1]
    (k / P for a uniform distribution, 1 when the mass sits on at most k patches)."""
    count = max(1, math.ceil(fraction * distribution.shape[-1]))
    return distribution.topk(count, dim=-1).values.sum(dim=-1) / distribution.sum(dim=-1)


def gini(distribution: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values (..., P): sum_i (2i - P - 1) x_(i) / (P sum x), x sorted
    ascending, i = 1..P. Range [0, 1 - 1/P]: 0 for uniform, 1 - 1/P for all mass on one patch.

    References: Hurley & Rickard 2009, "Comparing Measures of Sparsity" (arXiv 0811.4706).
    """
    count = distribution.shape[-1]
    ranks = torch.arange(1, count + 1, dtype=distribution.dtype, device=distribution.device)
    ordered = distribution.sort(dim=-1).values
    return ((2 * ranks - count - 1) * ordered).sum(dim=-1) / (count * ordered.sum(dim=-1))


def offset_index(grid_hw: tuple[int, int], device=None) -> torch.Tensor:
    """(P, P) index of the key-minus-query offset (dx, dy) of each patch pair into the (2H-1) x (2W-1) offsets."""
    h, w = grid_hw
    positions = patch_positions(grid_hw, device).long()
    offsets = positions[None, :, :] - positions[:, None, :]  # [i, j] = pos_j - pos_i
    return (offsets[..., 1] + h - 1) * (2 * w - 1) + (offsets[..., 0] + w - 1)


def offset_profile(maps: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean attention as a function of the key-minus-query offset: (B, L, h, N, N) -> (B, L, h, 2H-1, 2W-1).

        profile[dy, dx] = mean over patch pairs (i, j) with pos_j - pos_i = (dx, dy) of P[i, j]

    Index [H-1, W-1] is the zero offset. Range [0, 1]; a translation-invariant head (as RoPE's relative
    scores favour) shows a sharp profile, an absolute-position head a blurred one.
    """
    h, w = grid_hw
    index = offset_index(grid_hw, maps.device).flatten()
    bins = (2 * h - 1) * (2 * w - 1)
    one_hot = F.one_hot(index, bins).to(maps.dtype)  # (P * P, bins)
    sums = patch_distribution(maps, num_prefix_tokens).flatten(-2) @ one_hot
    profile = sums / one_hot.sum(dim=0)
    return rearrange(profile, "... (dy dx) -> ... dy dx", dy=2 * h - 1)


def head_importance(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image head importance |∂L/∂ξ_{l,h}| (Michel et al. 2019) at the gate ξ = 1: -> (B, L, h).

    L is the cross-entropy of the true label; ξ scales each head's output (`masked_heads`). A per-image gate
    gives every image its own gradient in one backward pass. The importance I_h = E_x |∂L/∂ξ_h| is the mean
    over images; range [0, inf).

    References: Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (arXiv 1905.10650).
    """
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    gate = torch.ones(len(inputs), depth, heads, requires_grad=True)
    with torch.enable_grad(), masked_heads(model, gate):
        loss = F.cross_entropy(model(inputs), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, gate)
    return grad.abs()


def pruning_order(importance: torch.Tensor, normalize_by_layer: bool = True) -> torch.Tensor:
    """Heads (layer, head) sorted from least to most important, (L * h, 2); importance (L, h).

    With `normalize_by_layer` the scores of each layer are divided by their l2 norm first (Michel et al. 2019,
    section 4.1). Ties keep the row-major head order.
    """
    scores = importance / importance.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize_by_layer else importance
    flat = scores.flatten().argsort(stable=True)
    return torch.stack([flat // importance.shape[1], flat % importance.shape[1]], dim=-1)


def pruning_curve(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                  batch_size: int = 500) -> torch.Tensor:
    """Accuracy with the first k heads of `order` (K, 2) removed, k = 0..K: -> (K + 1,). Range [0, 1].

    Removing a head of layer l leaves blocks 0..l-1 as they were, so each step reruns the blocks from l on,
    starting from the stored input of block l (at depth 4 about 40% fewer block evaluations than full
    forward passes; the logits are those of `forward_with_head_mask`, tested).
    """
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    correct = torch.zeros(len(order) + 1, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            images, truth = inputs[start:start + batch_size], labels[start:start + batch_size]
            mask = torch.ones(depth, heads)
            tokens, grid_hw = model.embed(images)
            tables = model.position_tables(tokens, grid_hw)
            block_inputs = [tokens] + [None] * depth  # [l]: input of block l under the current mask; [depth]: output
            first_changed = 0
            for removed in range(len(order) + 1):
                if removed:
                    first_changed, head = order[removed - 1].tolist()
                    mask[first_changed, head] = 0.0
                with masked_heads(model, mask):
                    for layer in range(first_changed, depth):
                        block_inputs[layer + 1], _ = model.forward_block(layer, block_inputs[layer], grid_hw, tables)
                logits = model.forward_head(model.norm(block_inputs[depth]))
                correct[removed] += (logits.argmax(-1) == truth).sum()
    return correct / len(inputs)


class HighNormTokens(NamedTuple):
    """Per image and block, (B, L) each: `count` of outlier patch tokens entering the block, the mass of the
    block's CLS attention on them (`cls_mass`, head mean) and of the mean patch query (`patch_mass`), and
    the largest robust z-score of a patch token norm (`max_z`)."""

    count: torch.Tensor
    cls_mass: torch.Tensor
    patch_mass: torch.Tensor
    max_z: torch.Tensor


def high_norm_tokens(tokens: torch.Tensor, maps: torch.Tensor, num_prefix_tokens: int = 1,
                     threshold: float = 5.0) -> HighNormTokens:
    """High-norm artifact tokens (Darcet et al. 2023) in the residual stream entering each block.

    tokens (B, L, N, C), maps (B, L, h, N, N). Per image and block, a patch token is an outlier when its
    norm's robust z-score exceeds `threshold`:

        z = (||x|| - median ||x||) / (1.4826 * MAD),   MAD = median | ||x|| - median ||x|| |

    over the image's patch tokens. Their attention mass is the raw (not renormalized) weight the block puts
    on them, averaged over heads: from the CLS query, and averaged over patch queries. Compare it with
    count / N, their share of the tokens.

    References: Darcet et al. 2023, "Vision Transformers Need Registers" (arXiv 2309.16588).
    """
    p = num_prefix_tokens
    norms = tokens[..., p:, :].norm(dim=-1)
    median = norms.median(dim=-1, keepdim=True).values
    mad = (norms - median).abs().median(dim=-1, keepdim=True).values
    robust_z = (norms - median) / (MAD_TO_SIGMA * mad).clamp_min(1e-12)
    outlier = (robust_z > threshold).to(maps.dtype)
    head_mean = maps.mean(dim=2)[..., p:]  # (B, L, N, P): mass on each patch key
    return HighNormTokens(
        count=outlier.sum(dim=-1),
        cls_mass=(head_mean[..., 0, :] * outlier).sum(dim=-1),
        patch_mass=(head_mean[..., p:, :] * outlier[..., None, :]).sum(dim=-1).mean(dim=-1),
        max_z=robust_z.amax(dim=-1),
    )
