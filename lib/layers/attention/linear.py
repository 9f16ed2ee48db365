"""Linear attention (Katharopoulos et al. 2020), non-causal, with RoFormer-style RoPE.

Per head, with the feature map phi(x) = elu(x) + 1 > 0 applied to queries and keys:

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

computed right to left (the associative trick): S = sum_j phi(k_j) v_j^T is (d, d) and z = sum_j phi(k_j)
is (d,), so the cost is O(N d^2) in time and O(d^2) extra memory: linear in the number of tokens N, and
no N x N matrix is formed in the fast path. No 1/sqrt(d) scale is used (as in the paper).

RoPE (RoFormer, Su et al. 2021, section 3.4.4): the rotation R_i is applied to the features in the
numerator only, the denominator stays unrotated, so that it remains positive:

    out_i = (R_i phi(q_i))^T sum_j (R_j phi(k_j)) v_j^T / (phi(q_i)^T sum_j phi(k_j) + eps)

Prefix tokens (CLS) are ordinary tokens here: attention is global, so CLS attends to all and all attend
to CLS; the RoPE tables hold the identity rotation for them.

Explicit path (return_attn=True) returns the implied N x N map

    A_ij = (R_i phi(q_i))^T (R_j phi(k_j)) / (phi(q_i)^T sum_j phi(k_j) + eps),   out = A v,

which the fast path equals up to float rounding. Without RoPE, A_ij >= 0 and each row sums to
den_i / (den_i + eps) with den_i = sum_j phi(q_i)^T phi(k_j) > 0, i.e. to 1 up to eps / den_i (den_i is
typically of order N, so the deficit is far below float32 resolution for eps = 1e-6).
With RoPE the rotated numerator can be negative and rows need not sum to 1 (the RoFormer trade-off):
A is then not a probability distribution, only a signed mixing matrix.

`attn_drop` is accepted for interface compatibility and ignored: there is no attention matrix to drop
in the linear-time path. Parameters are exactly those of softmax attention (qkv and proj).

References: Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with
Linear Attention" (arXiv 2006.16236); Su et al. 2021, "RoFormer" (arXiv 2104.09864).
"""
import torch
import torch.nn.functional as F

from lib.layers.attention.base import QKVAttention, rotate_qk


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, positive everywhere."""
    return F.elu(x) + 1


class LinearAttention(QKVAttention):
    """Non-causal linear attention with phi = elu + 1; O(N d^2) fast path, explicit N x N map on request.

    Args:
        dim: token width C.
        num_heads: number of heads.
        qkv_bias: bias in the qkv projection.
        attn_drop: ignored (no attention matrix in the linear path); kept for the common constructor.
        proj_drop: dropout after the output projection.
        eps: added to the denominator.

    References: Katharopoulos et al. 2020 (arXiv 2006.16236); Su et al. 2021 (arXiv 2104.09864).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, eps: float = 1e-6):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.eps = eps

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        rot_q, rot_k = rotate_qk(phi_q, phi_k, rope)
        denominator = torch.einsum("bhnd,bhd->bhn", phi_q, phi_k.sum(dim=-2)) + self.eps
        if return_attn:
            attn = (rot_q @ rot_k.transpose(-2, -1)) / denominator[..., None]
            return attn @ v, attn
        kv = torch.einsum("bhnd,bhne->bhde", rot_k, v)  # sum_j R phi(k_j) v_j^T, (d, d) per head
        numerator = torch.einsum("bhnd,bhde->bhne", rot_q, kv)
        return numerator / denominator[..., None], None
