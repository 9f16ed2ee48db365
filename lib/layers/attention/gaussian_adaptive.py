"""Gaussian Adaptive Attention (GAAM, Ioannides et al. 2024): Gaussian feature recalibration, then softmax attention.

GAAM re-weights features with a Gaussian of their own statistics. The C input channels of a token are split
into h heads of d = C / h channels; head i has its own learnable mean offsets delta_ig and standard-deviation
scales c_ig for g = 1..K Gaussians. For token t and channel j of head i, with x_tij its value,

    mu_ti      = (1/d) sum_j x_tij                        mean of the head's channels
    sigma2_ti  = (1/d) sum_j (x_tij - mu_ti)^2             (population) variance
    z_tijg     = (x_tij - (mu_ti + delta_ig)) / sqrt(sigma2_ti + eps)
    G_tij      = prod_g exp(-z_tijg^2 / (2 c_ig^2))        in (0, 1]
    x'_tij     = x_tij * G_tij

(the paper's phi = mu + delta and scaled variance xi = c^2). The block then runs ordinary multi-head softmax
attention (RoPE on q, k via `rotate_qk`) on the recalibrated tokens, with this module's own qkv and output
projections: y = proj(softmax(q' k'^T / sqrt(d)) v'), q', k', v' = qkv(x'). A channel far from its
(offset) head mean in units of the head's standard deviation is damped; one at mu + delta passes
unchanged. Every token is recalibrated from its own features only, so CLS is treated like a patch, and the
attention is global (CLS attends to all and all attend to CLS).

How GAAM enters the block (the "GAAM + attention" of the paper's experiments): in the authors' experiment
code (gioannides/DAAM-PEFT-paper-code, `GQDAAM.py`, the "DAAM + GQA" models) the multi-head Gaussian module
recalibrates the input features first, and grouped-query dot-product attention then computes its queries,
keys and values from the recalibrated features (q = k = v = Linear(DAAM(x)) -> GQA). Here the same order
sits inside the ViT block's token mixer: x (already pre-normed by the block) -> Gaussian recalibration ->
qkv -> softmax attention -> proj; the block's residual is around all of it. Multi-head softmax attention
stands in for GQA (GQA with as many key/value heads as query heads is multi-head attention).

Which code and where it differs from the paper: two official codes exist.
- The paper's equations and its experiment code (DAAM-PEFT-paper-code, class `DAAM`): one Gaussian per head,
  G = exp(-z^2 / (2 xi)), xi initialized to 2, no normalization of G, output x * G. Statistics there are
  taken along the axis the heads split (the 24 stacked encoder layers of a frozen backbone) with one
  (delta, xi) per feature of the other axis.
- The library (gioannides/Gaussian-Adaptive-Attention, pip `gaussian-adaptive-attention`, `GaussianBlock.py`):
  `norm_axis` chosen by the user (its README example: the feature axis of (batch, features)), heads split
  that axis into contiguous chunks, statistics over each chunk, scalar `mean_offsets[g]` and `c[g]` per head
  for K Gaussians whose densities N(.; mu + delta_g, c_g^2 sigma^2) are MULTIPLIED, the product renormalized
  to sum to 1 along the axis, output x * G (and `GaussianBlock` adds x back: x + x * G).
This module follows the library for the layout (heads split the channel axis, statistics per token over
the head's channels, scalar delta and c per head and Gaussian, the product of K Gaussians, G's std scale c
squared so xi = c^2 > 0 always) and the paper/experiment code for the weights themselves (unnormalized
G in (0, 1], no 1/sqrt(2 pi c^2) factor, population variance with eps inside the square root, xi init 2, no
extra residual: the ViT block has its own). The library's renormalization would shrink every token by ~1/d
before qkv (it relies on GaussianBlock's residual to undo that). Statistics over the channel axis rather
than over tokens: the experiment code's axis (stacked backbone layers) has no counterpart in a ViT block,
and statistics over a raster's tokens split into heads would tie heads to image regions; over channels,
GAAM heads are groups of the input channels (the same grouping the attention heads use on q, k, v, but
taken before the qkv projection, as in the paper's GAAM -> Linear -> attention order).

Reduction: c -> inf gives G = 1 (exactly, at c = inf), and the module is then softmax attention with the
same qkv/proj weights (tested against `SoftmaxAttention` with the same state dict).

Importance Factor (IF): the paper's learning-based explainability metric, the Gaussian weights min-max
normalized, IF = (A - min A) / (max A - min A), with A the weights averaged over the batch and the sequence
(the experiment code saves A = G.mean(time).mean(batch) per head as its "attention maps"). Here A has shape
(heads, d): the mean G of every head's channel over all tokens of a batch (prefix tokens included), min-max
normalized over the whole map of this layer; 1 marks the channel the layer keeps most, 0 the one it damps
most. I could not read the paper's own text of the IF definition (only its abstract and the code were
available); the min-max form is the reading-list/recalled definition, the averaging is the code's.
`importance_factor(x)` computes it for tokens x; `importance_factor()` uses the last forward's weights,
kept (detached) in `self.last_gaussian_weights` (B, N, heads, d), like `MoHAttention.last_routing`.

return_attn returns the softmax maps (B, heads, N, N) of the attention on the recalibrated tokens, rows
summing to 1; the Gaussian weights are separate (`last_gaussian_weights`).

Parameters: softmax attention plus delta and c, 2 * h * K scalars, stored 1-D (heads * gaussians,) so
that timm's optimizer factory does not weight-decay them (it skips 1-D parameters, as it does norms and
biases; decaying c would sharpen every Gaussian); at dim=64, heads=4, K=1: +8 (+0.05% of 16,640).

References: Ioannides, Chadha, Elkins 2024, "Gaussian Adaptive Attention is All You Need" (arXiv 2401.11143;
v4 "Density Adaptive Attention is All You Need"); code github.com/gioannides/Gaussian-Adaptive-Attention and
github.com/gioannides/DAAM-PEFT-paper-code.
"""
import math

import torch
from einops import rearrange, reduce
from torch import nn

from lib.layers.attention.softmax import SoftmaxAttention


class GaussianAdaptiveAttention(SoftmaxAttention):
    """Gaussian recalibration of each head's channels (learnable mean offsets, variance scales), then softmax attention.

    Args:
        dim: token width C.
        num_heads: number of heads h (Gaussian heads split C into h groups of C / h channels; attention heads as usual).
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
        num_gaussians: K, Gaussians per head whose product forms the weights (library's `num_gaussians`; the paper: 1).
        mean_offset_init: initial delta (both codes: 0).
        variance_scale_init: initial xi = c^2 (2, as in the experiment code, whose `c` is xi itself).
        eps: added to the variance inside the square root (the experiment code's 1e-5).

    References: Ioannides et al. 2024 (arXiv 2401.11143).
    """

    supports_bias = False  # the recalibration is per token; a relative logit bias is untested with it

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 num_gaussians: int = 1, mean_offset_init: float = 0.0, variance_scale_init: float = 2.0,
                 eps: float = 1e-5):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if num_gaussians < 1:
            raise ValueError(f"need num_gaussians >= 1, got {num_gaussians}")
        if not variance_scale_init > 0:
            raise ValueError(f"need variance_scale_init > 0, got {variance_scale_init}")
        self.num_gaussians = num_gaussians
        self.eps = eps
        # (heads * gaussians,), head-major; 1-D so that timm's optimizer factory leaves them undecayed
        self.mean_offsets = nn.Parameter(torch.full((num_heads * num_gaussians,), float(mean_offset_init)))
        self.std_scales = nn.Parameter(torch.full((num_heads * num_gaussians,), math.sqrt(variance_scale_init)))
        self.last_gaussian_weights: torch.Tensor | None = None

    def gaussian_weights(self, x: torch.Tensor) -> torch.Tensor:
        """G (B, N, heads, d) in (0, 1] for tokens x (B, N, C): the product of each head's K Gaussians."""
        features = rearrange(x, "b n (h d) -> b n h 1 d", h=self.num_heads)
        mean = features.mean(dim=-1, keepdim=True)
        inv_std = torch.rsqrt(features.var(dim=-1, unbiased=False, keepdim=True) + self.eps)
        offsets = rearrange(self.mean_offsets, "(h g) -> h g 1", h=self.num_heads)
        scales = rearrange(self.std_scales, "(h g) -> h g 1", h=self.num_heads)
        z = (features - (mean + offsets)) * inv_std  # (b, n, h, g, d)
        # a product of Gaussians is the exp of the summed exponents
        return torch.exp(-(z.square() / (2 * scales.square())).sum(dim=-2))

    @torch.no_grad()
    def importance_factor(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """IF (heads, d): the mean Gaussian weight of every channel over batch and tokens, min-max normalized.

        x: tokens (B, N, C) as the module sees them (after the block's norm); None uses the last forward's weights.
        """
        weights = self.last_gaussian_weights if x is None else self.gaussian_weights(x)
        if weights is None:
            raise ValueError("no forward pass yet: pass the tokens x")
        mean_weights = reduce(weights.float(), "b n h d -> h d", "mean")
        low, high = mean_weights.min(), mean_weights.max()
        return (mean_weights - low) / (high - low).clamp_min(torch.finfo(mean_weights.dtype).eps)

    def forward(self, x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None):
        self.check_bias(bias)
        weights = self.gaussian_weights(x)
        self.last_gaussian_weights = weights.detach()
        recalibrated = x * rearrange(weights, "b n h d -> b n (h d)")
        return super().forward(recalibrated, grid_hw, num_prefix_tokens, rope=rope, return_attn=return_attn)
