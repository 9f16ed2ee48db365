"""Standard multi-head softmax self-attention (Vaswani et al. 2017), optionally with RoPE and a logit bias."""
from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention


class SoftmaxAttention(QKVAttention):
    """Global softmax attention over all tokens: fused SDPA, or explicit when maps are requested.

    A logit bias (B|1, heads, N, N), e.g. a relative position bias, is added before the softmax on both paths
    (SDPA's float `attn_mask`), so the returned maps are the weights the fused path uses.
    """

    supports_bias = True

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn, bias=None):
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        return softmax_attention(q, k, v, self.scale, None, dropout_p, return_attn, bias=bias)
