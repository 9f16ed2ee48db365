"""Minimal attention (Bermeitinger et al. 2024): one query-key matrix, optionally symmetric, no value/output maps.

Standard multi-head attention scores token i against token j in head h as

    s_ij = (W_q,h x_i)^T (W_k,h x_j) / sqrt(d) = x_i^T (W_q,h^T W_k,h) x_j / sqrt(d),

a bilinear form whose C x C matrix W_q,h^T W_k,h has rank <= d = C / heads. "Reducing the Transformer
Architecture to a Minimum" (Bermeitinger, Hrycej, Pavone, Kath, Handschuh 2024) argues that (a) query and
key matrices can be collapsed into one similarity matrix, (b) a symmetric similarity needs only half the
parameters and makes every token similar to itself, and (c) the value and output projections can be
dropped, so that the attention output is a convex combination of the input tokens; together with dropping
the MLP (a model option, not this module: `mlp_ratio = 0`) this saves up to 90% of the parameters at
similar accuracy on MNIST and CIFAR-10. Here, per head h (heads split the C channels into slices of d):

- `similarity="symmetric"` (default): one projection W_qk (C x C, split into heads like W_q) serves as both
  query and key, q_h = k_h = W_qk,h x (+ b_h), so

      s_ij = q_h,i^T q_h,j / sqrt(d) = x_i^T (W_qk,h^T W_qk,h) x_j / sqrt(d) (+ bias terms),   s_ij = s_ji.

  The similarity matrix W_qk,h^T W_qk,h is symmetric positive semi-definite (rank <= d): a token's
  similarity to itself, |q_i|^2, is never negative. C^2 weights instead of standard attention's 2 C^2.
- `similarity="collapsed"`: one full C x C matrix W_h per head, s_ij = x_i^T W_h x_j / sqrt(d), neither
  symmetric nor rank-limited. Implemented as a "query" a_h,i = W_h^T x_i + u_h (C wide, one Linear of
  width heads * C) dotted with the raw token x_j as "key". The bias u_h is exactly what survives of standard
  attention's q/k biases: (W_q x_i + b_q)^T (W_k x_j + b_k) = x_i^T W_q^T W_k x_j + (W_k^T b_q)^T x_j + terms
  that depend on i only, and those cancel in the row softmax. So standard attention is the special case
  W_h = W_q,h^T W_k,h, u_h = W_k,h^T b_q,h (tested, with value_projection=True). heads * C^2 weights: more
  than standard attention's 2 C^2 once heads > 2, as the collapse only saves parameters for one or two heads.
- `value_projection=False` (default, the paper's minimum): head h's values are head h's slice of the input
  tokens themselves, out_h,i = sum_j A_h,ij x_j[h-slice], and the heads are concatenated with no output
  projection: every output channel is a convex combination of the same channel over the tokens. In this
  repo's pre-norm block the input is the LayerNorm-ed residual stream, so the values are normalized tokens.
  `value_projection=True` keeps W_v and W_o of standard attention (out = W_o concat_h(A_h W_v,h x)).

RoPE rotates the shared q/k per token, q'_i = R_i q_i with R_i the rotation at token i's position:

    s_ij = q_i^T R_i^T R_j q_j = q_i^T R_{j-i} q_j       (depends on positions only through the offset).

Note that this does *not* break the symmetry: queries and keys are still one and the same vector per token
(q'_i), so s_ji = q'_j . q'_i = s_ij; equivalently R_{i-j}^T = R_{j-i} (tested). The attention weights
A = softmax_rows(S) are not symmetric (each row has its own normalizer Z_i) but satisfy detailed balance,
Z_i A_ij = Z_j A_ji. In the collapsed form the C-wide "query" a_h and key x are rotated by the head's
table tiled over the C channels (C / d copies of its d / 2 channel-pair frequencies), so
s_ij = x_i^T W_h R_{j-i} x_j (+ u_h^T R_{j-i} x_j): relative, but not standard RoPE attention's
x_i^T W_q^T R_{j-i} W_k x_j, so the reduction to standard attention holds without RoPE only. Prefix tokens
(CLS) get the identity rotation, as everywhere in this repo; attention is global: CLS attends to every token
and every token to CLS.

What was available: the paper's abstract (arXiv 2410.13732, SciTePress) and a third-party reimplementation
(github.com/Abdessamad-Badaoui/Reducing_the_Transformer_Architecture_to_a_Minimum, not by the authors); the
full paper text and any official code could not be found, so the multi-head definitions above follow the
study's reading of the abstract, not the paper's equations. Deviations / choices, to check against the paper:
- Symmetric form: q = k = W_qk x, i.e. W_sym,h = W_qk,h^T W_qk,h, positive semi-definite. A general
  (indefinite) symmetric W with C (C + 1) / 2 free entries, as the abstract's "half of the parameters"
  may mean, is not implemented; the third-party code also uses a PSD matrix (T T^T, T lower triangular on the
  head's own d channels). With one head W_qk^T W_qk is full rank and has the abstract's parameter ratio 1/2.
- Multi-head values: the input split into heads (head h mixes only its own d channels). The paper's
  multi-head value handling without W_v is not known here.
- Scale 1/sqrt(d) in both forms (as standard attention, which makes the reduction exact); biases follow
  `qkv_bias` (q = k bias in the symmetric form, u_h in the collapsed one). The output projection, when kept,
  has a bias, as in `QKVAttention`.
- The attention-output dropout `proj_drop` is applied to the output also when there is no projection.

Parameters at dim C = 64, 4 heads, qkv_bias=True (softmax attention: qkv 3C^2 + 3C, proj C^2 + C = 16640):
symmetric 4160 (C^2 + C, 25%), symmetric + value/projection 12480 (3C^2 + 3C), collapsed 16640
(hC^2 + hC, equal to softmax at h = 4 by coincidence), collapsed + value/projection 24960.
The class keeps the `QKVAttention` interface but not its fused qkv projection, which does not fit.

References: Bermeitinger et al. 2024, "Reducing the Transformer Architecture to a Minimum" (arXiv 2410.13732);
Vaswani et al. 2017 (multi-head attention); Su et al. 2021, "RoFormer" (RoPE, arXiv 2104.09864).
"""
import torch
from einops import rearrange
from torch import nn

from lib.layers.attention.base import QKVAttention, softmax_attention
from lib.layers.rope import rotate_complex

SIMILARITIES = ("symmetric", "collapsed")


def tile_rotations(rope: torch.Tensor, copies: int) -> torch.Tensor:
    """Repeat per-head RoPE tables over `copies` head widths along the channel pairs.

    rope: complex (..., N, P) or its real form (..., N, P, 2); returns (..., N, copies * P) (or (..., copies * P, 2)),
    the same frequencies for channels [0, 2P), [2P, 4P), ...: a rotation of a vector `copies` heads wide."""
    pair_dim = -1 if rope.is_complex() else -2
    return torch.cat([rope] * copies, dim=pair_dim)


class SymmetricAttention(nn.Module):
    """Attention with one query-key matrix (symmetric q = k, or a collapsed full W per head), values optional.

    Args:
        dim: token width C.
        num_heads: number of heads h; d = C / h channels per head.
        qkv_bias: bias in the query-key projection (and in W_v with value_projection=True).
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout on the output (after W_o, or on the mixed tokens themselves without it).
        similarity: "symmetric" (default): q = k = W_qk x, W_qk a C x C projection split into heads, scores
            s_ij = q_i . q_j / sqrt(d) symmetric; "collapsed": one full C x C matrix W_h per head,
            s_ij = x_i^T W_h x_j / sqrt(d), not necessarily symmetric (standard attention's W_q,h^T W_k,h is
            the rank-d special case).
        value_projection: False (default, the paper's minimum): the values are the input tokens split into heads
            and there is no output projection; True: W_v and W_o as in standard attention.

    References: Bermeitinger et al. 2024 (arXiv 2410.13732).
    """

    supports_bias = False
    check_bias = QKVAttention.check_bias  # the shared refusal of a logit bias (and its error message)

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 similarity: str = "symmetric", value_projection: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; expected one of {SIMILARITIES}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.similarity = similarity
        # symmetric: W_qk, the shared query/key projection (C -> C, split into heads);
        # collapsed: rows of the per-head similarity matrices W_h^T stacked (C -> heads * C)
        self.qk = nn.Linear(dim, dim if similarity == "symmetric" else num_heads * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias) if value_projection else None
        # without W_o, an Identity stands where the heads sit side by side: the analysis masks heads at proj's input
        self.proj = nn.Linear(dim, dim) if value_projection else nn.Identity()
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def queries_and_keys(self, x: torch.Tensor, rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries and keys: (B, heads, N, d) for "symmetric" (one tensor), (B, heads, N, C) for "collapsed"."""
        if self.similarity == "symmetric":
            shared = rearrange(self.qk(x), "b n (h d) -> b h n d", h=self.num_heads)
            # rotate_qk(q, k) would rotate the same tensor twice: one rotation serves as both
            shared = shared if rope is None else rotate_complex(shared, rope)
            return shared, shared
        queries = rearrange(self.qk(x), "b n (h c) -> b h n c", h=self.num_heads)
        keys = rearrange(x, "b n c -> b 1 n c")
        if rope is not None:
            rope = tile_rotations(rope, self.num_heads)
            queries, keys = rotate_complex(queries, rope), rotate_complex(keys, rope)
        return queries, keys.expand_as(queries)

    def forward(self, x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None):
        self.check_bias(bias)
        q, k = self.queries_and_keys(x, rope)
        v = rearrange(x if self.v is None else self.v(x), "b n (h d) -> b h n d", h=self.num_heads)
        dropout_p = self.attn_drop if self.training else 0.0
        out, attn = softmax_attention(q, k, v, self.scale, None, dropout_p, return_attn)
        out = rearrange(out, "b h n d -> b n (h d)")
        y = self.proj_drop(self.proj(out))
        return (y, attn) if return_attn else y
