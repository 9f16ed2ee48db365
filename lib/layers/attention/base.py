"""The interface every attention variant shares: tokens and grid shape in, tokens out.

A variant is an `nn.Module` whose forward is

    forward(x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None) -> y  or  (y, attn)

x: (B, N, C) tokens, the first `num_prefix_tokens` of them prefix tokens (CLS) and the remaining
H * W patch tokens in row-major order of the (H, W) grid `grid_hw`. rope: optional complex rotations
e^{i phi} of shape (B|1, heads|1, N, head_dim / 2), one per channel pair (see
`lib.layers.rope.RotaryTables.rotation`). bias: optional float (B|1, heads, N, N) added to the attention
logits (a relative position bias such as `lib.layers.fire.FireBias`); only variants with
`supports_bias = True` take one (softmax attention), the others raise a ValueError. attn: (B, heads, N, N)
attention weights, returned only when asked for, so the fused kernels stay in use otherwise.

`QKVAttention` holds what most variants share: the fused qkv and output projections (named as in
timm's `Attention`, so weights convert directly) and the head split. A variant implements `mix`.
"""
import torch
from einops import rearrange
from torch import nn

from lib.layers.rope import rotate_complex


class QKVAttention(nn.Module):
    """qkv projection -> variant-specific token mixing per head -> output projection.

    A variant that takes a logit bias sets `supports_bias = True` and accepts `bias` as a keyword of `mix`.
    """

    supports_bias = False

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        """Mix values across tokens; q, k, v are (B, heads, N, head_dim). Returns (out, attn or None)."""
        raise NotImplementedError

    def check_bias(self, bias: torch.Tensor | None) -> dict:
        """`mix`'s keyword for a logit bias: {} without one; a ValueError if this variant cannot add one."""
        if bias is None:
            return {}
        if not self.supports_bias:
            raise ValueError(f"{type(self).__name__} does not take an attention-logit bias (a bias position encoding "
                             f"such as 'fire' needs softmax attention)")
        return {"bias": bias}

    def forward(self, x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None):
        extra = self.check_bias(bias)
        # chunk, not unbind: the backward joins the three gradients with one cat in qkv's own layout
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        out, attn = self.mix(q, k, v, tuple(grid_hw), num_prefix_tokens, rope, return_attn, **extra)
        y = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return (y, attn) if return_attn else y


def rotate_qk(q: torch.Tensor, k: torch.Tensor, rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply RoPE rotations (identity on prefix tokens) to queries and keys; no-op without RoPE."""
    if rope is None:
        return q, k
    return rotate_complex(q, rope), rotate_complex(k, rope)


def softmax_attention(q, k, v, scale: float, mask: torch.Tensor | None, dropout_p: float, return_attn: bool,
                      bias: torch.Tensor | None = None):
    """Scaled dot-product attention, softmax(q k^T * scale + bias, masked) v; fused SDPA unless the weights are wanted.

    mask: boolean (N, N) or broadcastable, True where a query may attend to a key.
    bias: float (N, N) or broadcastable (e.g. (1, heads, N, N)), added to the logits.
    """
    if bias is not None:
        bias = bias.to(q.dtype)  # SDPA wants a float mask in the queries' dtype (bf16 under autocast)
    if not return_attn:
        attn_mask = mask
        if bias is not None:  # SDPA takes one mask: a float one carries both
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale), None
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    weights = torch.nn.functional.dropout(attn, p=dropout_p) if dropout_p else attn
    return weights @ v, attn
