"""Axial attention: softmax attention along grid rows, then along grid columns, in one module.

With rotated queries and keys q, k (RoPE if given) and values v, two masked softmax steps share q and k:

    A_row = softmax(q k^T / sqrt(d) masked to M_row),   M_row[i, j] = (y_i == y_j)
    A_col = softmax(q k^T / sqrt(d) masked to M_col),   M_col[i, j] = (x_i == x_j)
    out   = A_col (A_row v) = (A_col A_row) v

The row step mixes each patch with the patches of its row, the column step mixes the row-mixed values
along each column, so after the two steps every patch has seen every patch (through the patch at its
column and the source's row), at cost O(N (H + W) d) instead of O(N^2 d).

Prefix tokens (CLS): in both steps the CLS token attends to every token (a global row of the mask)
and every patch also attends to the CLS token (in addition to its row or column).

Explicit path (return_attn=True): both steps as (N, N) masked softmax maps; the returned map is the
composition A = A_col @ A_row (B, heads, N, N), the exact linear operator applied to v, whose rows
sum to 1 (a product of row-stochastic matrices). Its support is the two-hop reachability of the masks,
which is full: every (i, j) connects through the patch (row of j, column of i), and through CLS.
Fused path: rows and columns are reshaped into batches (fused SDPA per row/column, the prefix keys
prepended to every line), the prefix queries use one global SDPA.

Difference from Ho et al. 2019: they give each axis its own attention layer (own projections); here
the two steps share one qkv and one output projection, so the module is a drop-in for one attention
layer with exactly the parameters of softmax attention (qkv + proj), and the composed map is exact.

References: Ho et al. 2019, "Axial Attention in Multidimensional Transformers" (arXiv 1912.12180);
Wang et al. 2020, "Axial-DeepLab" (arXiv 2003.07853).
"""
import torch
import torch.nn.functional as F
from einops import rearrange

from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention
from lib.layers.attention.sparse import cached, grid_offsets, with_prefix


def prefixed_group_attention(q, k, v, k_prefix, v_prefix, scale: float, dropout_p: float,
                             key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention within groups of patch tokens, the prefix keys prepended to every group.

    Args:
        q, k, v: (B, heads, G, T, d): G groups of T patch tokens.
        k_prefix, v_prefix: (B, heads, P, d) prefix keys and values (P may be 0).
        key_mask: optional (G, T, T) bool mask over the group's patch keys (prefix keys are always allowed).
    Returns:
        (B, heads, G, T, d).
    """
    b, h, g, t, d = q.shape
    p = k_prefix.shape[-2]
    k = torch.cat([k_prefix[:, :, None].expand(b, h, g, p, d), k], dim=3)
    v = torch.cat([v_prefix[:, :, None].expand(b, h, g, p, d), v], dim=3)
    mask = None
    if key_mask is not None:
        mask = F.pad(key_mask, (p, 0), value=True)  # (G, T, P + T)
        mask = rearrange(mask, "g t s -> 1 g 1 t s").expand(b, g, 1, t, p + t).reshape(b * g, 1, t, p + t)
    q, k, v = (rearrange(z, "b h g t d -> (b g) h t d") for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return rearrange(out, "(b g) h t d -> b h g t d", b=b)


def axial_masks(grid_hw: tuple[int, int], num_prefix_tokens: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) row and column masks: same row / same column, prefix rows and columns all True."""
    dx, dy = grid_offsets(grid_hw, device)
    return with_prefix(dy == 0, num_prefix_tokens), with_prefix(dx == 0, num_prefix_tokens)


class AxialAttention(QKVAttention):
    """Row attention then column attention with shared q, k; out = (A_col A_row) v (see module docstring).

    Args:
        dim: token width C.
        num_heads: number of heads.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on the attention weights of each step (training only).
        proj_drop: dropout after the output projection.

    References: Ho et al. 2019 (arXiv 1912.12180); Wang et al. 2020 (arXiv 2003.07853).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self._masks: dict = {}

    def masks(self, grid_hw, num_prefix_tokens, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (row, column) masks, each (N, N)."""
        key = (tuple(grid_hw), num_prefix_tokens, str(device))
        return cached(self._masks, key, lambda: axial_masks(tuple(grid_hw), num_prefix_tokens, device))

    def axis_step(self, q, k, v, grid_hw, num_prefix_tokens: int, axis: str, dropout_p: float = 0.0) -> torch.Tensor:
        """One fused step along `axis` ("row" or "col"); q, k, v and the result are (B, heads, N, d)."""
        h, w = grid_hw
        p = num_prefix_tokens
        line = {"row": "b h (y x) d -> b h y x d", "col": "b h (y x) d -> b h x y d"}[axis]
        back = {"row": "b h y x d -> b h (y x) d", "col": "b h x y d -> b h (y x) d"}[axis]
        qs, ks, vs = (rearrange(z[:, :, p:], line, y=h, x=w) for z in (q, k, v))
        patches = prefixed_group_attention(qs, ks, vs, k[:, :, :p], v[:, :, :p], self.scale, dropout_p)
        patches = rearrange(patches, back)
        if not p:
            return patches
        prefix = F.scaled_dot_product_attention(q[:, :, :p], k, v, dropout_p=dropout_p, scale=self.scale)
        return torch.cat([prefix, patches], dim=2)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        if not return_attn:
            rows = self.axis_step(q, k, v, grid_hw, num_prefix_tokens, "row", dropout_p)
            return self.axis_step(q, k, rows, grid_hw, num_prefix_tokens, "col", dropout_p), None
        row_mask, col_mask = self.masks(grid_hw, num_prefix_tokens, q.device)
        rows, a_row = softmax_attention(q, k, v, self.scale, row_mask, dropout_p, True)
        out, a_col = softmax_attention(q, k, rows, self.scale, col_mask, dropout_p, True)
        return out, a_col @ a_row
