"""Masked softmax attention on the 2D patch grid: sliding-window local and Child et al.'s sparse patterns.

Every variant here is ordinary multi-head softmax attention with a boolean mask M (True = may attend):

    A = softmax(q k^T * scale, masked to -inf where M is False),   out = A v.

Masked positions get exactly zero probability (exp(-inf) = 0 in the explicit path; SDPA with a bool mask
in the fused path). Patch coordinates are (x, y) = (column, row) in the row-major (H, W) grid and
dx = x_j - x_i, dy = y_j - y_i are the key-minus-query offsets. Patterns (non-causal, 2D):

- `local` (radius r): M_ij = |dx| <= r and |dy| <= r, a (2r + 1) x (2r + 1) sliding window clipped at
  the grid border.
- `sparse_strided` (stride s), Child et al.'s strided pattern moved from 1D offsets to 2D offsets.
  Local part L_ij = |dx| < s and |dy| < s; strided part S_ij = dx mod s = 0 and dy mod s = 0 (a
  dilated grid through the query). As in 1D, any key is reachable in two hops (strided, then local),
  since every offset d = a s + r with |r| < s. `factorization="union"` (default): every head uses
  M = L or S (Child et al.'s "merged head"); `factorization="heads"`: the first ceil(heads/2) heads use
  L and the others S (their multi-head factorization).
- `sparse_fixed` (block s, summary c), Child et al.'s fixed pattern in 2D. The grid is cut into s x s
  blocks (clipped at the border); M_ij = (i and j in the same block) or (j lies in the last c rows or
  the last c columns of its own block: the block's "summary" L-shaped band). Border blocks narrower
  than s still get a summary band (their last c rows/columns inside the grid).

Prefix tokens (CLS) in every pattern: the CLS token attends to every token and every token attends to
the CLS token (their rows and columns of M are all True). Since every token also attends to itself, no
row of M is empty, so softmax never sees a fully masked row.

Masks are built once per (grid, num_prefix_tokens, device) and kept in a small per-module dict.

flex_attention (checked on torch 2.14.1 CPU, this repo's environment):
- `create_block_mask(...)` without `device=` fails on a machine without a GPU ("Found no NVIDIA
  driver on your system..."): it defaults to CUDA. With `device="cpu"` it works; its BLOCK_SIZE is
  (128, 128), so at this study's sizes (50 tokens at 7x7, 197 at 14x14) it skips no work at all
  (sparsity 0.00% for N = 50; even a +-5 band at N = 512 skips only 37.5% of the blocks).
- Forward with inputs that require grad, eager or compiled, raises `NotImplementedError:
  FlexAttention does not support backward on CPU. Please set the input requires_grad to False or use
  another device.` So CPU training cannot use it.
- Forward without grad works: eager (it warns "flex_attention called without torch.compile() - this
  will use an unfused implementation that materializes the full scores matrix") and compiled
  (`torch.compile(flex_attention)`; about 16 s cold compile on 2 cores), both equal to SDPA with the
  dense bool mask to ~4e-7.
What is used: the explicit dense bool mask with SDPA (CPU and GPU, training and inference). With
`use_flex=True` the fused path calls flex_attention with the same mask as a BlockMask (compiled on
CUDA, eager on CPU), only when it can: no maps requested, no attention dropout, and on CPU only when no
input requires grad; otherwise it silently takes the SDPA path. The CPU forward equality is tested; the
CUDA path is untested here (no GPU).

References: Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (arXiv 1904.10509);
Beltagy et al. 2020, "Longformer" (sliding-window attention, arXiv 2004.05150).
"""
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention

MASK_CACHE_SIZE = 8


def cached(cache: dict, key, build: Callable[[], torch.Tensor], max_entries: int = MASK_CACHE_SIZE):
    """Look `key` up in `cache`, building and storing it on a miss; drops the oldest entry when full."""
    if key not in cache:
        if len(cache) >= max_entries:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


def grid_positions(grid_hw: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer column x and row y of every patch, row-major, each (H*W,)."""
    h, w = grid_hw
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return x.flatten(), y.flatten()


def grid_offsets(grid_hw: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key-minus-query offsets dx[i, j] = x_j - x_i and dy[i, j] = y_j - y_i, each (H*W, H*W)."""
    x, y = grid_positions(grid_hw, device)
    return x[None, :] - x[:, None], y[None, :] - y[:, None]


def with_prefix(patch_mask: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Extend a (..., HW, HW) patch mask to (..., N, N): prefix tokens attend to and are attended by all."""
    p = num_prefix_tokens
    return F.pad(patch_mask, (p, 0, p, 0), value=True) if p else patch_mask


def local_mask(grid_hw: tuple[int, int], radius: int, device=None) -> torch.Tensor:
    """(HW, HW) sliding window: |dx| <= radius and |dy| <= radius."""
    dx, dy = grid_offsets(grid_hw, device)
    return (dx.abs() <= radius) & (dy.abs() <= radius)


def strided_masks(grid_hw: tuple[int, int], stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Child et al.'s two strided patterns in 2D, each (HW, HW): local (|dx|, |dy| < s), strided (dx, dy = 0 mod s)."""
    dx, dy = grid_offsets(grid_hw, device)
    local = (dx.abs() < stride) & (dy.abs() < stride)
    strided = (dx.remainder(stride) == 0) & (dy.remainder(stride) == 0)
    return local, strided


def fixed_mask(grid_hw: tuple[int, int], block: int, summary: int, device=None) -> torch.Tensor:
    """(HW, HW) fixed pattern: same s x s block, or key in the last `summary` rows/columns of its block."""
    h, w = grid_hw
    x, y = grid_positions(grid_hw, device)
    bx, by = x // block, y // block
    # end (exclusive) of each token's block along each axis, clipped to the grid
    end_x = ((bx + 1) * block).clamp(max=w)
    end_y = ((by + 1) * block).clamp(max=h)
    is_summary = (x >= end_x - summary) | (y >= end_y - summary)
    same_block = (bx[:, None] == bx[None, :]) & (by[:, None] == by[None, :])
    return same_block | is_summary[None, :]


_compiled_flex = None


def _flex_attention_fn(device: torch.device):
    """flex_attention, compiled once per process on CUDA; the eager (unfused, no-grad) version on CPU."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


class MaskedAttention(QKVAttention):
    """Softmax attention restricted by a boolean grid mask; subclasses define `patch_mask`.

    Args:
        dim: token width C.
        num_heads: number of heads.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
        use_flex: run the fused path through `flex_attention` when possible (see the module docstring).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, use_flex: bool = False):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.use_flex = use_flex
        self._masks: dict = {}
        self._block_masks: dict = {}

    def patch_mask(self, grid_hw: tuple[int, int], device) -> torch.Tensor:
        """(HW, HW) or (heads, HW, HW) boolean mask over patch tokens (True = may attend)."""
        raise NotImplementedError

    def mask(self, grid_hw: tuple[int, int], num_prefix_tokens: int, device) -> torch.Tensor:
        """Cached (N, N) or (heads, N, N) mask including prefix tokens."""
        key = (tuple(grid_hw), num_prefix_tokens, str(device))
        return cached(self._masks, key, lambda: with_prefix(self.patch_mask(tuple(grid_hw), device), num_prefix_tokens))

    def _flex_usable(self, q, k, v, dropout_p: float, return_attn: bool) -> bool:
        if not self.use_flex or return_attn or dropout_p:
            return False
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return q.device.type == "cuda" or not needs_grad

    def _flex(self, q, k, v, mask: torch.Tensor, key) -> torch.Tensor:
        from torch.nn.attention.flex_attention import create_block_mask
        n = mask.shape[-1]
        if mask.dim() == 3:
            def mask_mod(b, h, qi, ki):
                return mask[h, qi, ki]
            heads = mask.shape[0]
        else:
            def mask_mod(b, h, qi, ki):
                return mask[qi, ki]
            heads = None
        block_mask = cached(self._block_masks, key,
                            lambda: create_block_mask(mask_mod, None, heads, n, n, device=q.device))
        return _flex_attention_fn(q.device)(q, k, v, block_mask=block_mask, scale=self.scale)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        q, k = rotate_qk(q, k, rope)
        mask = self.mask(grid_hw, num_prefix_tokens, q.device)
        dropout_p = self.attn_drop if self.training else 0.0
        if self._flex_usable(q, k, v, dropout_p, return_attn):
            return self._flex(q, k, v, mask, (tuple(grid_hw), num_prefix_tokens, str(q.device))), None
        return softmax_attention(q, k, v, self.scale, mask, dropout_p, return_attn)


class LocalAttention(MaskedAttention):
    """2D sliding-window attention: a patch attends to patches with |dx| <= r and |dy| <= r, plus CLS.

        A = softmax(q k^T / sqrt(d) masked to |x_j - x_i| <= r and |y_j - y_i| <= r),  out = A v

    Prefix tokens attend to all tokens and are attended by all. Parameters are those of softmax
    attention (qkv and proj only).

    Args:
        window_radius: r; the window is (2r + 1) x (2r + 1). r >= max(H, W) - 1 gives global attention.
        (others as `MaskedAttention`)

    References: Child et al. 2019 (arXiv 1904.10509); Beltagy et al. 2020 (arXiv 2004.05150);
    Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models" (arXiv 1906.05909).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, window_radius: int = 2, use_flex: bool = False):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, use_flex=use_flex)
        if window_radius < 0:
            raise ValueError(f"window_radius must be >= 0, got {window_radius}")
        self.window_radius = window_radius

    def patch_mask(self, grid_hw, device):
        return local_mask(grid_hw, self.window_radius, device)


class StridedSparseAttention(MaskedAttention):
    """Child et al.'s strided sparse attention on the 2D patch grid (non-causal).

        L_ij = |dx| < s and |dy| < s        (local: the (2s - 1)^2 neighbourhood)
        S_ij = dx = 0 mod s and dy = 0 mod s (strided: a dilated grid through the query)
        union:  A = softmax(q k^T / sqrt(d) masked to L or S) for every head
        heads:  the first ceil(heads / 2) heads are masked to L, the others to S

    Prefix tokens attend to all tokens and are attended by all. Parameters are those of softmax
    attention. s = 1 makes the union global.

    Args:
        stride: s >= 1.
        factorization: "union" (merged head) or "heads" (local and strided head groups; needs >= 2 heads).
        (others as `MaskedAttention`)

    References: Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (arXiv 1904.10509).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, stride: int = 3, factorization: str = "union", use_flex: bool = False):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, use_flex=use_flex)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if factorization not in ("union", "heads"):
            raise ValueError(f"factorization must be 'union' or 'heads', got {factorization!r}")
        if factorization == "heads" and num_heads < 2:
            raise ValueError("factorization='heads' needs at least 2 heads (one local, one strided)")
        self.stride = stride
        self.factorization = factorization

    def patch_mask(self, grid_hw, device):
        local, strided = strided_masks(grid_hw, self.stride, device)
        if self.factorization == "union":
            return local | strided
        num_local = math.ceil(self.num_heads / 2)
        return torch.stack([local] * num_local + [strided] * (self.num_heads - num_local))


class FixedSparseAttention(MaskedAttention):
    """Child et al.'s fixed sparse attention on the 2D patch grid (non-causal).

        B_ij = block(i) == block(j),  blocks of s x s patches (clipped at the grid border)
        C_j  = j lies in the last c rows or the last c columns of its block ("summary" positions)
        A = softmax(q k^T / sqrt(d) masked to B_ij or C_j),  out = A v

    Prefix tokens attend to all tokens and are attended by all. Parameters are those of softmax
    attention. s >= max(H, W) makes it global.

    Args:
        block_size: s >= 1.
        summary: c, 1 <= c <= s.
        (others as `MaskedAttention`)

    References: Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (arXiv 1904.10509).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, block_size: int = 4, summary: int = 1, use_flex: bool = False):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, use_flex=use_flex)
        if block_size < 1 or not 1 <= summary <= block_size:
            raise ValueError(f"need block_size >= 1 and 1 <= summary <= block_size, got {block_size}, {summary}")
        self.block_size = block_size
        self.summary = summary

    def patch_mask(self, grid_hw, device):
        return fixed_mask(grid_hw, self.block_size, self.summary, device)
