"""Bi-Level Routing Attention (BRA, BiFormer; Zhu et al. CVPR 2023): route regions, then attend to their tokens.

The (H, W) patch grid is cut into regions of r_h x r_w tokens (at most S x S regions, S = `regions_per_side`,
the official `n_win`). With per-head queries, keys and values q, k, v (heads concatenated where written
without a head index) and R the set of regions:

    Q^r_m = mean_{i in region m} q_i,   K^r_m = mean_{j in region m} k_j           region-level q, k   (|R|, C)
    A^r   = Q^r (K^r)^T                                                            region affinity     (|R|, |R|)
    I^r_m = top-k indices of row m of A^r                                          routed regions      (|R|, k)
    M_ij  = region(j) in I^r_{region(i)}                                           token mask          (HW, HW)
    out_i = sum_j softmax_j(q_i k_j^T / sqrt(d) masked to M_i) v_j  +  LCE(v)_i     per head
    LCE(v) = depthwise conv_{kxk}(v on the (H, W) grid), zero padding, with bias   ("lepe", side_dwconv)

so each query attends, token to token, to every token of the top-k regions of its own region, and to
nothing else. Routing is shared by the heads (A^r uses all C = heads x head_dim channels, as the official
code's `qk_dim`) and carries no gradient: the top-k indices are piecewise constant, and like the official
default (diff_routing=False, soft_routing=False: `KVGather(mul_weight='none')`) the routing scores never
scale the values; q and k are detached for routing. A region's own index is not forced into its top-k
(as in the official code); a row is never empty since k >= 1 and every region holds a real token.

Regions and grids not divisible by S. Regions are r_h = ceil(H / S) by r_w = ceil(W / S) tokens, so
ceil(H / r_h) <= S regions cover the rows (likewise columns); the last row/column of regions may be cut
by the grid border (conceptually padded at the bottom/right, like the official `auto_pad`). Tiny grids
get fewer regions: 1x1 -> one region; 3x12 with S = 3 -> 1x4-token regions, 3 x 3 of them; 5x9 -> 2x3
tokens, 3 x 3 regions, the last region row one real token row high. top-k is clipped to the number of
regions. Padded positions never exist as tokens here: region means average the real tokens only, and
the mask M is over real tokens, so padded positions never receive attention (tested against an explicit
pad-gather-mask implementation). The official code instead pads the feature map with zeros before the
qkv projection, so its padded tokens carry k = v = the projection bias, enter the region means, and
receive attention; and its LCE conv sees those padded values. Here the LCE conv zero-pads the real grid.

Prefix tokens (CLS) have no region: the CLS token attends to every token and every token attends to the
CLS token (their rows and columns of M are all True); they do not enter the region means, and get no
LCE term (they have no grid position).

RoPE: BiFormer has no RoPE. Routing uses the un-rotated (content) q, k means, so regions are chosen by
content only and the choice does not depend on where the grid sits; the token-level attention uses
q, k rotated by `rotate_qk` as every other variant here.

Attention maps (return_attn=True): the dense (B, heads, N, N) softmax weights, exactly zero outside the
routed regions (plus CLS), rows summing to 1. They describe the attention path only: the LCE term is a
separate, non-attention path added to the output and is not in the maps. The fused path is SDPA with the
same boolean mask (B, 1, N, N) instead of the official gather of the routed regions' keys/values: the
output is identical (tested against a gather implementation), but the compute is dense, O(N^2) like
softmax attention: at this study's sizes (tens to a few hundred tokens on CPU) the masked kernel is the
faster one; BRA's O(N^{4/3}) saving needs the gather (or a block-sparse kernel) at large N.

Settings. The paper (BiFormer-T/S/B, 224 px): S = n_win = 7 at every stage (56x56 stage-1 features ->
8x8-token regions), top-k = 1, 4, 16 in stages 1-3 and full attention in stage 4 (topk = -2: global
attention with LCE, the same as top-k = S^2 here), LCE kernel 5 (side_dwconv=5), no kv downsampling
(kv_downsample_mode='identity'). Defaults here fit the study's 6x6 patch grid: S = 3 (2x2-token regions,
9 regions), top-k = 4 of 9 (each query sees 16 of 36 patches plus CLS), LCE kernel 5.
Not included: BiFormer's block-level 3x3 depthwise conv position encoding before attention
(before_attn_dwconv), which is outside the attention layer; kv downsampling modes; learnable routing
(param_routing) and soft routing.

Parameters: softmax attention's qkv and proj, plus the depthwise LCE conv (C k^2 + C); at dim=64, k=5:
+1664 over softmax attention's 16640 (+10.0%). With lce_kernel=0 exactly softmax attention's.

References: Zhu et al. 2023, "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023,
arXiv 2303.08810); official code rayleizhu/BiFormer (`ops/bra_legacy.py`, `models/biformer.py`).
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention
from lib.layers.attention.sparse import cached, grid_positions, with_prefix


def region_layout(grid_hw: tuple[int, int], regions_per_side: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((r_h, r_w) tokens per region, (n_h, n_w) regions per axis) for a grid cut into at most S x S regions."""
    size = tuple(math.ceil(n / regions_per_side) for n in grid_hw)
    count = tuple(math.ceil(n / s) for n, s in zip(grid_hw, size))
    return size, count


def region_of_tokens(grid_hw: tuple[int, int], regions_per_side: int, device=None) -> torch.Tensor:
    """Region index (row-major over regions) of every patch token, (H*W,) long."""
    (size_h, size_w), (_, count_w) = region_layout(grid_hw, regions_per_side)
    x, y = grid_positions(grid_hw, device)
    return (y // size_h) * count_w + x // size_w


def region_averaging(region_of: torch.Tensor, num_regions: int) -> torch.Tensor:
    """(R, H*W) matrix whose rows average the real tokens of each region."""
    members = F.one_hot(region_of, num_regions).T.float()
    return members / members.sum(dim=1, keepdim=True)


class BiLevelRoutingAttention(QKVAttention):
    """BiFormer's bi-level routing attention: top-k region routing, then token attention within the routed regions.

    Args:
        dim: token width C.
        num_heads: number of heads.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        regions_per_side: S, at most S x S regions (official `n_win`); regions are ceil(H/S) x ceil(W/S) tokens.
        topk: routed regions per region (clipped to the number of regions); >= S^2 gives global attention.
        lce_kernel: kernel of the depthwise local context enhancement conv on V (official `side_dwconv`),
            odd, or 0 for none.

    References: Zhu et al. 2023 (arXiv 2303.08810); rayleizhu/BiFormer.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 regions_per_side: int = 3, topk: int = 4, lce_kernel: int = 5):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if regions_per_side < 1 or topk < 1:
            raise ValueError(f"need regions_per_side >= 1 and topk >= 1, got {regions_per_side}, {topk}")
        if lce_kernel < 0 or (lce_kernel and lce_kernel % 2 == 0):
            raise ValueError(f"lce_kernel must be 0 (off) or odd, got {lce_kernel}")
        self.regions_per_side = regions_per_side
        self.topk = topk
        self.lce_kernel = lce_kernel
        self.lce = nn.Conv2d(dim, dim, lce_kernel, padding=lce_kernel // 2, groups=dim) if lce_kernel else None
        self._regions: dict = {}

    def regions(self, grid_hw: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (region index of every patch (HW,), averaging matrix (R, HW))."""
        def build():
            region_of = region_of_tokens(grid_hw, self.regions_per_side, device)
            num_regions = math.prod(region_layout(grid_hw, self.regions_per_side)[1])
            return region_of, region_averaging(region_of, num_regions)

        return cached(self._regions, (tuple(grid_hw), str(device)), build)

    def route(self, q_patches: torch.Tensor, k_patches: torch.Tensor, averaging: torch.Tensor) -> torch.Tensor:
        """Top-k region indices (B, R, k) from un-rotated patch q, k (B, heads, HW, d); no gradient."""
        averaging = averaging.to(q_patches.dtype)
        q_region, k_region = (torch.einsum("rn,bhnd->brhd", averaging, t.detach()).flatten(2)
                              for t in (q_patches, k_patches))
        affinity = q_region @ k_region.transpose(-2, -1)  # A^r, (B, R, R); a scale would not change the top-k
        return affinity.topk(min(self.topk, affinity.shape[-1]), dim=-1).indices

    def mask(self, q, k, grid_hw, num_prefix_tokens: int) -> torch.Tensor:
        """Boolean (B, 1, N, N) mask: the tokens of the routed regions, plus prefix rows and columns."""
        region_of, averaging = self.regions(grid_hw, q.device)
        p = num_prefix_tokens
        routed_index = self.route(q[:, :, p:], k[:, :, p:], averaging)
        num_regions = averaging.shape[0]
        routed = torch.zeros(q.shape[0], num_regions, num_regions, dtype=torch.bool, device=q.device)
        routed = routed.scatter(-1, routed_index, True)  # routed[b, m, n]: region m routes to region n
        patch_mask = routed[:, region_of[:, None], region_of[None, :]]  # (B, HW, HW)
        return with_prefix(patch_mask, p)[:, None]

    def local_context(self, v: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """LCE: depthwise conv of the patch values on the grid, (B, heads, N, d); zero on prefix tokens."""
        h, w = grid_hw
        grid = rearrange(v[:, :, num_prefix_tokens:], "b n (y x) d -> b (n d) y x", y=h, x=w)
        context = rearrange(self.lce(grid), "b (n d) y x -> b n (y x) d", n=self.num_heads)
        return F.pad(context, (0, 0, num_prefix_tokens, 0))

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        mask = self.mask(q, k, grid_hw, num_prefix_tokens)  # routing on content, before RoPE
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        out, attn = softmax_attention(q, k, v, self.scale, mask, dropout_p, return_attn)
        if self.lce is not None:
            out = out + self.local_context(v, grid_hw, num_prefix_tokens)
        return out, attn
