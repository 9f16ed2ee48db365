"""Standard multi-head softmax self-attention (Vaswani et al. 2017), optionally with RoPE."""
from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention


class SoftmaxAttention(QKVAttention):
    """Global softmax attention over all tokens: fused SDPA, or explicit when maps are requested."""

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        return softmax_attention(q, k, v, self.scale, None, dropout_p, return_attn)
