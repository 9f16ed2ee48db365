"""2D FIRE: a learned relative position bias, a function of log-compressed, grid-normalised patch offsets.

FIRE (Li et al. 2023) adds to the attention logit of query i and key j the bias

    b(i, j) = f_theta( psi(i - j) / psi(max(L, i)) ),      psi(d) = log(c d + 1),

with c and the threshold L learnable and f_theta a small MLP (1 -> hidden -> heads), per layer. The
normaliser psi(max(L, i)) is "progressive interpolation": the input stays in [0, 1] at any sequence
length, so a longer sequence is met with inputs seen in training, more finely spaced.

For a bidirectional 2D patch grid (H, W) this module uses, for query patch (xq, yq) and key (xk, yk),
dx = xk - xq and dy = yk - yq,

    u = sign(dx) psi_x(|dx|) / (psi_x(max(|L_x|, W - 1)) + eps)
    v = sign(dy) psi_y(|dy|) / (psi_y(max(|L_y|, H - 1)) + eps),      psi_a(d) = log(|c_a| d + 1)
    b(q, k) = f_theta(u, v),          f_theta: 2 -> hidden (ReLU) -> heads,

with c = (c_x, c_y), L = (L_x, L_y) and f_theta per layer. Choices, and why:
- The signed offset keeps direction (a bidirectional grid has keys on both sides; FIRE's causal i - j
  is never negative); the log compresses it as in FIRE.
- The normaliser is the grid's largest offset along the axis, W - 1 (FIRE's query position i is the
  largest offset a causal query has). It is one number per grid, so at one grid the bias depends on
  the offset (dx, dy) only, never on where the pair sits: the relative-position property, exactly.
  Per axis, so a non-square grid, or one grown along one axis, is normalised per axis.
- The threshold L floors the normaliser. It starts at the training grid's size (L_x = W0, L_y = H0),
  one more than the largest training offset: up to that size (training grid and smaller, i.e. down-
  scaled tests) an offset keeps the meaning it had in training, and beyond it the inputs are
  interpolated into the range seen in training (|u| <= psi(W0 - 1) / psi(W0) < 1). Starting above the
  training extent also gives L a gradient in training (below it, the max would ignore L).
- c starts at 1 (FIRE: 0.1 for token distances in the hundreds; patch offsets here are 1 to ~50).
- Prefix tokens (CLS) have no position: their rows and columns of the bias are 0. A separate learned
  CLS bias per head (as BEiT has) would be redundant: softmax ignores a constant added to a whole row,
  so a constant in the CLS row does nothing, and in a patch row f_theta's output bias, which shifts
  every patch-patch logit of a head, already is a per-head bias of the CLS column against the patches.
- c, L and the MLP are per layer (as FIRE) and per axis (c, L), stacked over layers so one batched
  evaluation per forward serves every layer. f_theta is evaluated once per distinct offset,
  (2H - 1)(2W - 1) of them, and gathered into the (N, N) table.

Initialisation: the first layer as PyTorch's nn.Linear default (U(-1/sqrt 2, 1/sqrt 2)), so its
features see the O(1) inputs; the output layer truncated normal (std 0.02) and zero bias, so the
model starts with a small bias, as a Swin / BEiT relative-bias table does. The parameters are plain
tensors, not nn.Linear, so the ViT's init of Linear layers leaves this intact.

Weight decay: `no_weight_decay()` names c, L and the MLP biases. c and L shape the coordinate
transform (decay would pull c to 0, i.e. no log compression, and L to 0, i.e. no floor): a prior on
the transform, not a regulariser. The MLP weight matrices are decayed as any weights: decay keeps
f_theta small and smooth, which is what it relies on between and beyond the offsets it was trained at.

Use with softmax attention only: the model adds the bias to the logits before the softmax
(`lib.layers.attention.SoftmaxAttention`); other attention variants refuse a bias.

References: Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
Transformers" (FIRE, arXiv 2310.04418); Liu et al. 2021, "Swin Transformer" (relative position bias
gathered from a (2H - 1)(2W - 1) table, arXiv 2103.14030).
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import trunc_normal_
from torch import nn


def relative_index(grid_hw: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """(H*W, H*W) index of the key-minus-query offset (dy, dx) into a row-major (2H - 1, 2W - 1) table."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    x, y = x.flatten(), y.flatten()
    dx = x[None, :] - x[:, None] + (w - 1)
    dy = y[None, :] - y[:, None] + (h - 1)
    return dy * (2 * w - 1) + dx


class FireBias(nn.Module):
    """2D FIRE relative position bias for every layer: (depth, 1, heads, N, N) logit biases (see module docstring).

    Args:
        num_heads: heads per layer (outputs of f_theta).
        depth: number of layers (one c, L and f_theta each).
        train_grid_hw: the training grid (H0, W0); the threshold starts at (L_y, L_x) = (H0, W0).
        hidden_dim: f_theta's hidden width (FIRE: 32).
        init_c: initial c on both axes.
        init_threshold: initial L on both axes; None: the training grid's size per axis.
        eps: added to the normaliser (FIRE's guard for c -> 0).

    References: Li et al. 2023 (FIRE, arXiv 2310.04418).
    """

    def __init__(
        self, num_heads: int, depth: int, train_grid_hw: Sequence[int], hidden_dim: int = 32, init_c: float = 1.0,
        init_threshold: float | None = None, eps: float = 1e-6,
    ):
        super().__init__()
        if not init_c > 0:
            raise ValueError(f"init_c must be positive, got {init_c}")
        self.train_grid_hw = (int(train_grid_hw[0]), int(train_grid_hw[1]))
        self.num_heads, self.depth, self.hidden_dim, self.eps = num_heads, depth, hidden_dim, float(eps)
        h0, w0 = self.train_grid_hw
        threshold = (w0, h0) if init_threshold is None else (init_threshold, init_threshold)
        # per layer, (x, y)
        self.c = nn.Parameter(torch.full((depth, 2), float(init_c)))
        self.threshold = nn.Parameter(torch.tensor([float(t) for t in threshold]).repeat(depth, 1))
        self.fc1_weight = nn.Parameter(torch.empty(depth, 2, hidden_dim))
        self.fc1_bias = nn.Parameter(torch.empty(depth, hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(depth, hidden_dim, num_heads))
        self.fc2_bias = nn.Parameter(torch.zeros(depth, num_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(2)  # nn.Linear's default for fan_in = 2
        nn.init.uniform_(self.fc1_weight, -bound, bound)
        nn.init.uniform_(self.fc1_bias, -bound, bound)
        trunc_normal_(self.fc2_weight, std=0.02)
        nn.init.zeros_(self.fc2_bias)

    def inputs(self, grid_hw: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """(depth, 2H - 1, 2W - 1, 2) inputs (u, v) of f_theta per offset (dy, dx), each from -(n - 1) to n - 1."""
        h, w = int(grid_hw[0]), int(grid_hw[1])
        c = self.c.float().abs()  # (depth, 2)
        extent = torch.tensor([w - 1.0, h - 1.0], device=device)
        normaliser = torch.log1p(c * torch.maximum(self.threshold.float().abs(), extent)) + self.eps  # (depth, 2)

        def axis(n: int, a: int) -> torch.Tensor:  # (depth, 2n - 1) signed, log-compressed, normalised offsets
            d = torch.arange(-(n - 1), n, device=device, dtype=torch.float32)
            return d.sign() * torch.log1p(c[:, a:a + 1] * d.abs()) / normaliser[:, a:a + 1]

        u, v = axis(w, 0), axis(h, 1)
        return torch.stack(torch.broadcast_tensors(u[:, None, :], v[:, :, None]), dim=-1)

    def offset_table(self, grid_hw: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """(depth, heads, 2H - 1, 2W - 1) bias f_theta(u, v) per layer, head and offset (dy, dx)."""
        hidden = torch.einsum("lyxa,lah->lyxh", self.inputs(grid_hw, device), self.fc1_weight.float())
        hidden = F.relu(hidden + self.fc1_bias.float()[:, None, None, :])
        return torch.einsum("lyxh,lhk->lkyx", hidden, self.fc2_weight.float()) + self.fc2_bias.float()[..., None, None]

    def forward(self, grid_hw: tuple[int, int], num_prefix_tokens: int,
                device: torch.device | None = None) -> torch.Tensor:
        """(depth, 1, heads, N, N) biases, N = num_prefix_tokens + H * W; 0 in the prefix rows and columns."""
        table = self.offset_table(grid_hw, device).flatten(-2)  # (depth, heads, (2H - 1)(2W - 1))
        bias = table[:, :, relative_index(grid_hw, device)]  # (depth, heads, HW, HW)
        p = num_prefix_tokens
        bias = F.pad(bias, (p, 0, p, 0)) if p else bias
        return rearrange(bias, "l k n m -> l 1 k n m")

    def no_weight_decay(self) -> set[str]:
        """c, L and the MLP biases (named: stacked per layer they are 2-D, which timm's 1-D rule would miss);
        the MLP weight matrices are decayed (see the module docstring)."""
        return {"c", "threshold", "fc1_bias", "fc2_bias"}

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, depth={self.depth}, hidden_dim={self.hidden_dim}, "
                f"train_grid_hw={self.train_grid_hw}")
