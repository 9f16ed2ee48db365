"""Mixture-of-Head attention (MoH, Jin et al. 2024): heads as experts, chosen and weighted per token.

Standard multi-head softmax attention computes heads H^1..H^h (RoPE as usual) and sums them through the
output projection, out = sum_i H^i W_O^i. MoH gives every token t a gate g_i(t) per head,

    out_t = sum_i g_i(t) H^i_t W_O^i,

with the first h_s heads "shared" (always on) and the other E = h - h_s heads "routed" (top-k per token):

    p(t)      = softmax(W_r x_t)                                   (E,)   routed-head probabilities
    K(t)      = top-k indices of p(t)
    g_r(t)_i  = k * p_i(t) / sum_{j in K(t)} p_j(t)   if i in K(t), else 0
    g_s(t)_i  = h_s * softmax(W_s x_t)_i                           (h_s,) (= 1 when h_s = 1, no W_s)
    [a_1, a_2](t) = 2 * softmax(W_h x_t)                                  shared vs routed balance
    g(t)      = [a_1(t) g_s(t), a_2(t) g_r(t)]                     (h,)

This is the normalization of the official code (SkyworkAI/MoH: top-k renormalized, scaled by k; shared
gates scaled by h_s; the two-way balance scaled by 2). The paper writes the same gates without those
factors (g = [a_1 softmax(W_s x), a_2 softmax(W_r x) on the top-k]); the factors make every gate 1 at
uniform routing, so with k = E and zero router weights MoH is exactly multi-head attention with the
same qkv/proj weights (tested). Without shared heads (h_s = 0) g = g_r.

Load balance (Switch-style, on the routed heads, over the T = B * N tokens of the batch):

    f_i = (1/T) sum_t 1[i in K(t)],   P_i = (1/T) sum_t p_i(t),   aux_loss = beta * E * sum_i f_i P_i

(the official code's E^2 * mean_i f_i P_i; the paper writes sum_i f_i P_i, a rescaled beta). It is set on
every forward as `self.aux_loss` (a scalar with grad through P; f is a count); training code may add it
to the task loss, nothing here does. Whenever P is uniform (e.g. zero router weights) aux_loss = beta k.
Note that k is not a lower bound in general: as in Switch Transformers, f_i P_i couples counts and
probabilities and a batch can score below k; it is a bound for a single token (E * top-k mass >= k).

Prefix tokens (CLS) are routed like every other token; attention itself is global softmax, so CLS
attends to all and all attend to CLS.

return_attn returns the standard per-head softmax maps (B, heads, N, N), rows summing to 1, before
gating: the routing weights are separate, the last ones kept (detached) in `self.last_routing`
(B, N, heads), zero for heads a token did not select. All heads are computed and then gated (no compute
is skipped; a dense CPU implementation).

Parameters: softmax attention plus the routers W_r (C x E), W_h (C x 2, when h_s > 0) and W_s (C x h_s,
when h_s > 1), no biases; at dim=64, heads=4, h_s=1: +320 (+1.9%).

References: Jin et al. 2024, "MoH: Multi-Head Attention as Mixture-of-Head Attention" (arXiv 2410.11842);
Fedus et al. 2021, "Switch Transformers" (load-balance loss, arXiv 2101.03961).
"""
import math

import torch
from einops import rearrange
from torch import nn

from lib.layers.attention.base import QKVAttention, rotate_qk, softmax_attention


def load_balance_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """E * sum_i f_i P_i over tokens; probs (..., E) router probabilities, selected (..., E) 0/1 top-k mask."""
    num_experts = probs.shape[-1]
    p_mean = probs.reshape(-1, num_experts).mean(dim=0)
    f = selected.reshape(-1, num_experts).to(probs.dtype).mean(dim=0)
    return num_experts * (f * p_mean).sum()


class MoHAttention(QKVAttention):
    """Mixture-of-Head attention: per-token gates on the heads (shared heads always on, top-k routed).

    Args:
        dim: token width C.
        num_heads: number of heads h.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
        shared_heads: h_s, heads always active (the first h_s heads), 0 <= h_s < h.
        top_k: routed heads kept per token, 1 <= k <= h - h_s; None: ceil((h - h_s) / 2).
        aux_loss_coef: beta, the load-balance loss coefficient (the paper uses 0.01).

    References: Jin et al. 2024 (arXiv 2410.11842).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 shared_heads: int = 1, top_k: int | None = None, aux_loss_coef: float = 0.01):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if not 0 <= shared_heads < num_heads:
            raise ValueError(f"need 0 <= shared_heads < num_heads, got {shared_heads=}, {num_heads=}")
        self.shared_heads = shared_heads
        self.routed_heads = num_heads - shared_heads
        self.top_k = math.ceil(self.routed_heads / 2) if top_k is None else top_k
        if not 1 <= self.top_k <= self.routed_heads:
            raise ValueError(f"need 1 <= top_k <= {self.routed_heads} routed heads, got top_k={top_k}")
        self.aux_loss_coef = aux_loss_coef
        self.router = nn.Linear(dim, self.routed_heads, bias=False)
        self.type_router = nn.Linear(dim, 2, bias=False) if shared_heads > 0 else None
        self.shared_router = nn.Linear(dim, shared_heads, bias=False) if shared_heads > 1 else None
        self.aux_loss: torch.Tensor | None = None
        self.last_routing: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates (B, N, heads) and the load-balance loss (scalar, without beta) for tokens x (B, N, C)."""
        probs = self.router(x).softmax(dim=-1)
        top = probs.topk(self.top_k, dim=-1).indices
        selected = torch.zeros_like(probs).scatter(-1, top, 1.0)
        kept = probs * selected
        routed = self.top_k * kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).eps)
        if self.shared_heads:
            if self.shared_router is not None:
                shared = self.shared_heads * self.shared_router(x).softmax(dim=-1)
            else:
                shared = torch.ones_like(probs[..., :1])
            balance = 2 * self.type_router(x).softmax(dim=-1)
            gates = torch.cat([balance[..., :1] * shared, balance[..., 1:] * routed], dim=-1)
        else:
            gates = routed
        return gates, load_balance_loss(probs, selected)

    def mix(self, q, k, v, grid_hw, num_prefix_tokens, rope, return_attn):
        q, k = rotate_qk(q, k, rope)
        dropout_p = self.attn_drop if self.training else 0.0
        return softmax_attention(q, k, v, self.scale, None, dropout_p, return_attn)

    def forward(self, x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None):
        self.check_bias(bias)
        gates, balance = self.route(x)
        self.aux_loss = self.aux_loss_coef * balance
        self.last_routing = gates.detach()
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out, attn = self.mix(q, k, v, tuple(grid_hw), num_prefix_tokens, rope, return_attn)
        out = out * rearrange(gates, "b n h -> b h n 1")
        y = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return (y, attn) if return_attn else y
