"""MaxViT multi-axis attention: block attention in P x P windows, then grid attention on a dilated G x G grid.

With rotated queries and keys q, k (RoPE if given) and values v, two masked softmax steps share q and k:

    A_blk  = softmax(q k^T / sqrt(d) masked to M_blk),  M_blk[i, j]  = (y_i // P == y_j // P) and (x_i // P == x_j // P)
    A_grid = softmax(q k^T / sqrt(d) masked to M_grid), M_grid[i, j] = (y_i = y_j mod S_y) and (x_i = x_j mod S_x)
    out    = A_grid (A_blk v) = (A_grid A_blk) v,       S_y = ceil(H / G), S_x = ceil(W / G)

Block attention is local (each non-overlapping P x P window); grid attention is sparse and global: the
tokens of one group sit S apart, a G x G lattice spread over the whole image. These are exactly timm's
`window_partition` / `grid_partition` (maxxvit.py), which the fused path uses.

Grids not divisible by P or G (e.g. 5 x 9, or smaller than a window): the patch grid is zero-padded at
the bottom/right to a multiple of P (block step) or G (grid step), partitioned by timm's functions, and
padded tokens are masked out as keys (a padded query may attend to itself so that no row is empty; its
output is dropped). This keeps P and G fixed and gives border windows fewer real tokens; the grid
stride S = ceil(H / G) follows from padding H up to a multiple of G. The explicit masks above are the
same pattern written on the unpadded grid, and the fused and explicit paths agree.

Prefix tokens (CLS): in both steps the CLS token attends to every token (global) and every patch
attends to the CLS token in addition to its window / grid group.

Explicit path (return_attn=True): both steps as (N, N) masked maps; the returned map is A_grid @ A_blk
(B, heads, N, N), the exact operator applied to v; rows sum to 1.

Parameters: MaxViT stacks block attention and grid attention as two separate transformer layers (own
qkv, proj and MLP each). Here both steps live in one attention module sharing one qkv and one output
projection, so the parameter count equals softmax attention's (a separate qkv/proj per step would
double it). The composition order (block, then grid) follows MaxViT.

References: Tu et al. 2022, "MaxViT: Multi-Axis Vision Transformer" (arXiv 2204.01697); timm
`timm/models/maxxvit.py` (window_partition, grid_partition).
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.maxxvit import grid_partition, grid_reverse, window_partition, window_reverse

from lib.layers.attention.axial import prefixed_group_attention
from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention
from lib.layers.attention.sparse import cached, grid_positions, with_prefix

_PARTITIONS = {"block": (window_partition, window_reverse), "grid": (grid_partition, grid_reverse)}


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def padded_grid(grid_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The grid rounded up to a multiple of `size` along each axis."""
    return tuple(math.ceil(n / s) * s for n, s in zip(grid_hw, size))


def multi_axis_masks(grid_hw, window_size, grid_size, num_prefix_tokens: int, device=None):
    """(N, N) block and grid masks on the unpadded grid, prefix rows and columns all True."""
    (p_y, p_x), (g_y, g_x) = _pair(window_size), _pair(grid_size)
    s_y, s_x = math.ceil(grid_hw[0] / g_y), math.ceil(grid_hw[1] / g_x)
    x, y = grid_positions(grid_hw, device)

    def same(a, b):
        return a[:, None] == b[None, :]

    block = same(y // p_y, y // p_y) & same(x // p_x, x // p_x)
    grid = same(y % s_y, y % s_y) & same(x % s_x, x % s_x)
    return with_prefix(block, num_prefix_tokens), with_prefix(grid, num_prefix_tokens)


class MultiAxisAttention(QKVAttention):
    """MaxViT block-then-grid attention with shared q, k; out = (A_grid A_blk) v (see module docstring).

    Args:
        dim: token width C.
        num_heads: number of heads.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on the attention weights of each step (training only).
        proj_drop: dropout after the output projection.
        window_size: P (int or (P_y, P_x)), the block-attention window.
        grid_size: G (int or (G_y, G_x)), the grid-attention lattice; its stride is ceil(H / G).

    References: Tu et al. 2022 (arXiv 2204.01697); timm maxxvit.py.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 window_size: int | tuple[int, int] = 4, grid_size: int | tuple[int, int] = 4):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.window_size, self.grid_size = _pair(window_size), _pair(grid_size)
        if min(self.window_size + self.grid_size) < 1:
            raise ValueError(f"window_size and grid_size must be >= 1, got {window_size}, {grid_size}")
        self._masks: dict = {}

    def masks(self, grid_hw, num_prefix_tokens, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached explicit (block, grid) masks, each (N, N)."""
        key = ("explicit", tuple(grid_hw), num_prefix_tokens, str(device))
        return cached(self._masks, key, lambda: multi_axis_masks(
            tuple(grid_hw), self.window_size, self.grid_size, num_prefix_tokens, device))

    def _key_mask(self, kind: str, grid_hw, device) -> torch.Tensor | None:
        """(groups, T, T) mask hiding padded keys (a token always sees itself), or None without padding."""
        size = self.window_size if kind == "block" else self.grid_size
        padded = padded_grid(grid_hw, size)
        if padded == tuple(grid_hw):
            return None

        def build():
            partition = _PARTITIONS[kind][0]
            valid = torch.ones(1, *grid_hw, 1, device=device)
            valid = F.pad(valid, (0, 0, 0, padded[1] - grid_hw[1], 0, padded[0] - grid_hw[0]))
            valid = rearrange(partition(valid, list(size)), "g s0 s1 1 -> g (s0 s1)") > 0
            eye = torch.eye(valid.shape[1], dtype=torch.bool, device=device)
            return valid[:, None, :] | eye

        return cached(self._masks, (kind, tuple(grid_hw), str(device)), build)

    def partition_step(self, q, k, v, grid_hw, num_prefix_tokens: int, kind: str,
                       dropout_p: float = 0.0) -> torch.Tensor:
        """One fused step, kind "block" or "grid"; q, k, v and the result are (B, heads, N, d)."""
        b, heads = q.shape[:2]
        h, w = grid_hw
        p = num_prefix_tokens
        size = self.window_size if kind == "block" else self.grid_size
        hp, wp = padded_grid(grid_hw, size)
        partition, reverse = _PARTITIONS[kind]

        def split(z):  # (B, heads, N, d) -> (B, heads, groups, T, d)
            z = rearrange(z[:, :, p:], "b n (y x) d -> (b n) y x d", y=h, x=w)
            z = F.pad(z, (0, 0, 0, wp - w, 0, hp - h))
            return rearrange(partition(z, list(size)), "(b n g) s0 s1 d -> b n g (s0 s1) d", b=b, n=heads)

        out = prefixed_group_attention(*(split(z) for z in (q, k, v)), k[:, :, :p], v[:, :, :p], self.scale,
                                       dropout_p, key_mask=self._key_mask(kind, grid_hw, q.device))
        out = rearrange(out, "b n g (s0 s1) d -> (b n g) s0 s1 d", s0=size[0]).contiguous()
        out = reverse(out, list(size), [hp, wp])[:, :h, :w]
        patches = rearrange(out, "(b n) y x d -> b n (y x) d", b=b)
        if not p:
            return patches
        prefix = F.scaled_dot_product_attention(q[:, :, :p], k, v, dropout_p=dropout_p, scale=self.scale)
        return torch.cat([prefix, patches], dim=2)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        if not return_attn:
            blocks = self.partition_step(q, k, v, grid_hw, num_prefix_tokens, "block", dropout_p)
            return self.partition_step(q, k, blocks, grid_hw, num_prefix_tokens, "grid", dropout_p), None
        block_mask, grid_mask = self.masks(grid_hw, num_prefix_tokens, q.device)
        blocks, a_block = softmax_attention(q, k, v, self.scale, block_mask, dropout_p, True)
        out, a_grid = softmax_attention(q, k, blocks, self.scale, grid_mask, dropout_p, True)
        return out, a_grid @ a_block
