"""Complex rotation attention (ComplexFormer's CMHA, Shao et al. 2025): per-head adaptive query-key phase rotation.

Euler transform. Every head splits its query and key into P = head_dim / 2 channel pairs (a, b) and reads each
pair as the polar complex number a + i b = r e^{i theta}, r = |a + i b|, theta = atan2(b, a) in (-pi, pi].

Adaptive differential rotation. With the relative position angle Delta phi (below), the score of query i and key j
in head h is

    AS_ij,p   = theta^q_ip - theta^k_jp                                   semantic angle difference
    Adapt(AS) = alpha_h AS + b_h                                         per-head adaptation
    score_ij  = scale * sum_p r^q_ip r^k_jp cos(alpha_h (theta^q_ip - theta^k_jp) + b_h + (phi_ip - phi_jp))
    attn      = softmax_j(score_ij),   out_i = sum_j attn_ij v_j,

the real part of sum_p r^q r^k exp[i(Adapt(AS) + Delta P)], the paper's exp[i(Adapt(AS_mn,i) + Delta(P_mn),i)].
At alpha_h = 1, b_h = 0 this is Re(q~_i conj(k~_j)) with q~ = q e^{i phi}: exactly RoPE softmax attention.

Efficient form (what runs). cos(alpha (theta_q - theta_k) + b + phi_i - phi_j) splits per token, so the score is a plain
dot product of rotated vectors, with no (B, H, N, N, P) tensor:

    q'_ip = r^q_ip e^{i(alpha_h theta^q_ip + b_h + phi_ip)},   k'_jp = r^k_jp e^{i(alpha_h theta^k_jp + phi_jp)},
    score_ij = scale * sum_p Re(q'_ip conj(k'_jp)) = scale * <q'_i, k'_j>   (pairs as real 2-vectors).

r e^{i alpha theta} is computed as the pair itself turned by (alpha - 1) theta, so alpha = 1 leaves q, k untouched and
r is never formed; then the model's RoPE tables turn q', k' by phi (`rotate_qk`). The fused path is one SDPA call, the
explicit path a plain softmax (`softmax_attention`); real arithmetic throughout (atan2, cos, sin), so torch.compile
and torch.export trace it.

Position angle. phi_ip is the angle of the `rope` table (the model's RoPE-Mixed or RoPE-Axial rotation e^{i phi} of
token i, pair p; identity on prefix tokens), so with pos_embed rope_mixed the layer is RoPE-Mixed plus 2 scalars per
head. Without `rope` the position term is zero and the score is position-free.

Mapping to the official code (shaojintian/complexFormer, the first author's repository: `ComplexMultiHeadAttentionV2`
in `attention/complex_attention.py` and `cmha_with_kv_cache.py`). The arXiv paper 2505.10222 is listed as withdrawn;
its full text was not available here, only its abstract, so the formula above follows the abstract's
exp[i(Adapt(AS) + Delta P)] and the code. The code computes magnitude and phase per pair, then
`delta * (phase_q - phase_k) + bias + delta_p`, sum_p r_q r_k cos(.) and softmax, with `delta_p = (m - n) g_p` a fixed
sinusoidal relative angle (RoPE's). Here alpha = `delta`, b = `bias`, and Delta P comes from this repo's 2D RoPE
tables. Deviations, all deliberate:
- granularity: the paper says per head; the code learns delta, bias per (head, pair). Default per head (+2 * heads
  parameters); `per_pair=True` gives the code's (head, pair) form (+2 * heads * P).
- init: the code draws delta ~ N(0, 1/sqrt(P)) (near zero: the semantic phase starts almost ignored); here
  alpha = 1, b = 0, so the layer starts as RoPE softmax attention (tested equal to `SoftmaxAttention`).
- scale: the code adds no 1/sqrt(head_dim); here scale = head_dim^-0.5 as in softmax attention, so the alpha = 1
  reduction is exact.
- pairs: the code pairs channel p with p + head_dim/2; here pairs are interleaved (x0, x1), (x2, x3), ... as the
  RoPE tables are (a fixed permutation of the qkv output channels, no change in what the layer can express).
- the code's +1e-9 inside the modulus is not needed (r is never formed); a pair exactly at 0 has no phase and is
  given theta = 0 (no gradient through atan2's 0/0 there).
- no per-head weight on the position angle. The paper has none (Delta P enters with weight 1), and none can be
  applied exactly here: the layer sees phi only as the phasor e^{i phi}, i.e. modulo 2 pi, and beta * wrap(phi) is not
  a function of the offset for non-integer beta (it would break the relative-position property). With RoPE-Mixed,
  whose frequencies are learned per head, such a weight would also be redundant.

Properties. The score depends on positions only through the offsets phi_i - phi_j (tested with shifted grids).
alpha_h theta is discontinuous where theta wraps (the pair crossing the negative real axis) for non-integer alpha; this
is inherent to the Euler-transform definition (the official code has it too) and absent at alpha = 1.
b_h is a phase offset on the query side; at alpha = 1 it could be absorbed into W_q, not in general.

return_attn returns the softmax weights (B, heads, N, N); rows sum to 1; CLS attends to all and is attended to.
No logit bias (`supports_bias = False`).

Parameters: softmax attention plus alpha and b, stored flat (heads,) or (heads * P,): 1-D, so timm's optimizer factory
does not weight-decay them (decay would pull alpha towards 0). At dim = 64, heads = 4: 16,640 + 8 = 16,648.

References: Shao et al. 2025, "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific
Complex Vector Attention" (arXiv 2505.10222, listed as withdrawn); Tian et al. 2024, "EulerFormer" (SIGIR 2024, the
Euler transform and differential rotation it builds on); Su et al. 2021, "RoFormer" (arXiv 2104.09864).
"""
import torch
from einops import rearrange
from torch import nn

from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention


def pair_phases(x: torch.Tensor) -> torch.Tensor:
    """theta = atan2(b, a) of the interleaved pairs (a, b) of x (..., 2P) -> (..., P); 0 for a pair at the origin.

    atan2's gradient is 0/0 at the origin; a zero pair has no phase, so it is measured as the pair (1, 0) with no
    gradient through the phase (its rotation does not change it anyway).
    """
    a, b = rearrange(x, "... (p two) -> two ... p", two=2)
    at_origin = (a == 0) & (b == 0)
    return torch.atan2(torch.where(at_origin, 0.0, b), torch.where(at_origin, 1.0, a))


def rotate_pairs(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Turn the interleaved pairs (a, b) of x (..., 2P) by angle (..., P): (a c - b s, b c + a s)."""
    a, b = rearrange(x, "... (p two) -> two ... p", two=2)
    c, s = angle.cos(), angle.sin()
    return rearrange(torch.stack([a * c - b * s, b * c + a * s]), "two ... p -> ... (p two)")


class ComplexRotationAttention(QKVAttention):
    """Softmax attention on r_q r_k cos(alpha_h (theta_q - theta_k) + b_h + phi_i - phi_j), per channel pair, summed.

    Args:
        dim: token width C.
        num_heads: number of heads; head_dim = dim / num_heads must be even (channel pairs).
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
        per_pair: learn alpha and b per (head, channel pair), as the official code does, instead of per head (the
            paper's wording, default).

    References: Shao et al. 2025 (arXiv 2505.10222); official code shaojintian/complexFormer.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 per_pair: bool = False):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if self.head_dim % 2:
            raise ValueError(f"the Euler transform needs an even head_dim (channel pairs), got {self.head_dim}")
        self.num_pairs = self.head_dim // 2
        self.per_pair = per_pair
        size = num_heads * (self.num_pairs if per_pair else 1)
        # flat 1-D parameters: timm's optimizer factory leaves them undecayed; alpha = 1, b = 0 starts as RoPE attention
        self.semantic_scale = nn.Parameter(torch.ones(size))  # alpha
        self.semantic_offset = nn.Parameter(torch.zeros(size))  # b

    def per_head(self, param: torch.Tensor) -> torch.Tensor:
        """A flat (heads * G,) parameter as (heads, 1, G), broadcasting over tokens and (G = 1) over pairs."""
        return rearrange(param, "(h g) -> h 1 g", h=self.num_heads)

    def semantic_rotation(self, x: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """r e^{i(alpha theta + b)} for the pairs of x (B, heads, N, head_dim): x turned by (alpha - 1) theta (+ b)."""
        compute = x.to(torch.promote_types(x.dtype, torch.float32))  # phases in at least float32 (bf16 under autocast)
        angle = (self.per_head(self.semantic_scale) - 1) * pair_phases(compute)
        if offset is not None:
            angle = angle + self.per_head(offset)
        return rotate_pairs(compute, angle).to(x.dtype)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        # the offset b goes on the query side only, so that it enters the difference once: Adapt(AS) = alpha AS + b
        q = self.semantic_rotation(q, self.semantic_offset)
        k = self.semantic_rotation(k, None)
        q, k = rotate_qk(q, k, rope)  # + phi_i on queries, + phi_j on keys: the relative angle phi_i - phi_j
        dropout_p = self.attn_drop if self.training else 0.0
        return softmax_attention(q, k, v, self.scale, None, dropout_p, return_attn)
