"""Adaptive-frequency 2D RoPE: the study's own variants of RoPE-Mixed.

All three keep the one formula of `lib.layers.rope`: channel pair p of a token at patch column x and
row y is rotated by

    phi_p(x, y) = fx_p * x + fy_p * y,

and only change where the frequencies (fx_p, fy_p) come from. Within one image (one grid, one set of
frequencies) the angle stays linear in the position, so attention scores between rotated queries and
keys still depend on positions only through the offset (the relative-position property). Each module
has RopeMixed's call signature, `forward(grid_hw, tokens, num_prefix_tokens) -> RotaryTables`, and
the same parameter layout for the base frequencies, (2, depth, heads, P) with P = head_dim / 2.

- `RopeResolutionAdaptive`: RoPE-Mixed whose frequencies are rescaled per axis at test grids larger
  than the training grid, with a YaRN-style ramp over how many periods a frequency completes across
  the training grid (long wavelengths are interpolated, short ones extrapolated).
- `RopeContentAdaptive`: RoPE-Mixed whose frequencies are scaled per image, layer and head by a small
  learned function of the mean patch token (CARoPE-like); exactly RoPE-Mixed at initialisation.
- `RopeGatedBank`: every channel pair's frequency is a softmax-gated convex combination of a fixed
  bank of candidate 2D frequencies (directions x magnitudes, plus a zero entry that switches the pair
  off).

Weight decay: `lib.models.VisionTransformer.no_weight_decay()` excludes every parameter under `rope.`.
Each module here also defines its own `no_weight_decay()` (timm's convention for RoPE modules) naming
the parameters that should not be decayed; for `RopeContentAdaptive` that leaves out the content
projection's weight matrix, whose decay pulls the scale back towards 1, i.e. towards RoPE-Mixed.

References: Heo et al. 2024 (RoPE-Mixed, arXiv 2403.13298); Peng et al. 2023, "YaRN" (arXiv
2309.00071); Lu et al. 2024, "FiT" (VisionNTK / VisionYaRN, arXiv 2402.12376); CARoPE
(content-aware RoPE, per-head frequencies from token content); Barbero et al. 2024, "Round and round
we go" (p-RoPE).
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lib.layers.rope import RotaryTables, mixed_frequencies, patch_coords, rotation_angles


def yarn_ramp(periods: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """YaRN's "NTK-by-parts" ramp: 0 below alpha periods, 1 above beta, linear in between.

        gamma(r) = clamp((r - alpha) / (beta - alpha), 0, 1)
    """
    if not beta > alpha:
        raise ValueError(f"the ramp needs beta > alpha, got alpha={alpha}, beta={beta}")
    return ((periods - alpha) / (beta - alpha)).clamp(0.0, 1.0)


class RopeResolutionAdaptive(nn.Module):
    """RoPE-Mixed with YaRN-style, per-axis frequency interpolation at grids larger than the training grid.

    Method. Learned frequencies f = (fx, fy) per layer, head and channel pair, exactly as RoPE-Mixed
    (same initialisation, same parameter). The module knows the training grid (H0, W0). At a test
    grid (H, W) each axis a in {x, y}, with training extent E_x = W0, E_y = H0 and test extent
    T_x = W, T_y = H, gets

        s_a = min(1, E_a / T_a)                 position-interpolation factor of the axis
        r_a = E_a * |f_a| / (2 pi)              periods the axis component completes on the training grid
        gamma_a = clamp((r_a - alpha) / (beta - alpha), 0, 1)        ramp, defaults alpha = 1, beta = 2
        f'_a = f_a * (s_a + (1 - s_a) * gamma_a)

    and the angle is phi = f'_x * x + f'_y * y. A component that completes fewer than alpha periods
    across the training grid (long wavelength: the model never saw its full phase range) is
    interpolated, f'_a = s_a * f_a, which maps the test grid's positions back into the trained range
    along that axis; one completing more than beta periods (short wavelength: all phases seen) is
    extrapolated unchanged, f'_a = f_a, keeping the local resolution between neighbouring patches;
    the ramp blends the two. A mixed 2D frequency is handled by projecting it on the axes: its x and y
    components are ramped and scaled separately, so a non-square test grid (or one grown along one
    axis only) interpolates only the axis that grew. At the training grid, or any grid not larger
    along an axis, s_a = 1 and f'_a = f_a * 1 exactly: the module is RoPE-Mixed there, bit for bit.
    The frequencies stay constant over one grid, so the relative-position property holds at every
    grid.

    Closest prior art: FiT's VisionNTK / VisionYaRN (Lu et al. 2024), which apply NTK / YaRN scaling
    per axis to fixed axial RoPE frequencies with one base; YaRN's "NTK-by-parts" ramp (Peng et al.
    2023). What it adds: the ramp acts on learned, per-layer, per-head mixed 2D frequencies, whose
    axis components can be small even for a large-magnitude pair (so interpolation is decided per
    axis component, not per frequency index), and it needs no base or schedule. YaRN's attention
    temperature is left out (RotaryTables carry rotations only). No parameters beyond RoPE-Mixed's.
    """

    def __init__(
        self, head_dim: int, num_heads: int, depth: int, train_grid_hw: Sequence[int], theta: float = 10.0,
        alpha: float = 1.0, beta: float = 2.0,
    ):
        super().__init__()
        if beta <= alpha:
            raise ValueError(f"the ramp needs beta > alpha, got alpha={alpha}, beta={beta}")
        self.train_grid_hw = (int(train_grid_hw[0]), int(train_grid_hw[1]))
        self.alpha, self.beta = float(alpha), float(beta)
        self.freqs = nn.Parameter(mixed_frequencies(head_dim, num_heads, depth, theta))

    def axis_factors(self, grid_hw: Sequence[int]) -> torch.Tensor:
        """(2, depth, heads, P) factors multiplying (fx, fy) at the grid (H, W); all ones up to the training grid."""
        h0, w0 = self.train_grid_hw
        extents = self.freqs.new_tensor([w0, h0]).view(2, 1, 1, 1)
        scales = self.freqs.new_tensor([min(1.0, w0 / grid_hw[1]), min(1.0, h0 / grid_hw[0])]).view(2, 1, 1, 1)
        periods = extents * self.freqs.abs() / (2 * math.pi)
        return scales + (1 - scales) * yarn_ramp(periods, self.alpha, self.beta)

    def frequencies_at(self, grid_hw: Sequence[int]) -> torch.Tensor:
        """(2, depth, heads, P) frequencies used at the grid (H, W)."""
        return self.freqs * self.axis_factors(grid_hw)

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        angles = rotation_angles(self.frequencies_at(grid_hw), x, y)  # (depth, H, N, P)
        return RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), num_prefix_tokens)

    def no_weight_decay(self) -> set[str]:
        return {"freqs"}

    def extra_repr(self) -> str:
        return f"train_grid_hw={self.train_grid_hw}, alpha={self.alpha}, beta={self.beta}"


class RopeContentAdaptive(nn.Module):
    """RoPE-Mixed whose frequencies are scaled per image, layer and head by a function of the image content.

    Method. Base frequencies f_{l,h,p} = (fx, fy) as RoPE-Mixed (learned, per layer l, head h, pair p).
    For image b with patch tokens t_{b,1..N} (after the patch embedding and any absolute position,
    prefix tokens excluded; the model calls the module once per forward with these tokens):

        u_b = LayerNorm(mean_n t_{b,n})                           (C,)
        z_{b,l,h} = w_{l,h} . u_b + c_{l,h}                       w, c zero at initialisation
        log k_{b,l,h} = m * tanh(z_{b,l,h} / m)                   bounded, m = log 4 by default
        phi_{b,l,h,p}(x, y) = k_{b,l,h} * (fx_{l,h,p} * x + fy_{l,h,p} * y)

    so k is in [1/4, 4], and k = exp(0) = 1 exactly at initialisation, where the module reproduces
    RoPE-Mixed bit for bit. Because k is one number per image, layer and head, the angle is still
    linear in the position within an image: the relative-position property holds within each image.
    What changes across images is the spatial scale each head attends at, e.g. a zoomed-in digit can
    shift a head to lower frequencies. The tables carry a batch dimension B. w and c are plain
    parameters (not an nn.Linear) so the ViT's truncated-normal init of Linear layers leaves the
    zero initialisation intact.

    Closest prior art: CARoPE (content-aware RoPE: per-head frequencies computed from token content,
    for language models). What it adds: a 2D, vision version on RoPE-Mixed's learned mixed
    frequencies; the content enters through one pooled image summary per image (not per token), which
    is what keeps the relative-position property exact within an image; the scale is bounded and starts
    exactly at RoPE-Mixed, so the variant is a strict, zero-cost-at-init extension of the baseline.

    Parameters beyond RoPE-Mixed: 2C (LayerNorm) + depth * heads * (C + 1).
    """

    def __init__(
        self, embed_dim: int, head_dim: int, num_heads: int, depth: int, theta: float = 10.0,
        max_log_scale: float = math.log(4.0),
    ):
        super().__init__()
        if max_log_scale <= 0:
            raise ValueError(f"max_log_scale must be positive, got {max_log_scale}")
        self.depth, self.num_heads, self.max_log_scale = depth, num_heads, float(max_log_scale)
        self.freqs = nn.Parameter(mixed_frequencies(head_dim, num_heads, depth, theta))
        self.norm = nn.LayerNorm(embed_dim)
        self.scale_weight = nn.Parameter(torch.zeros(depth * num_heads, embed_dim))
        self.scale_bias = nn.Parameter(torch.zeros(depth * num_heads))

    def scales(self, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """(depth, B, heads) frequency scales k for a batch of token sequences (B, N, C)."""
        summary = self.norm(tokens[:, num_prefix_tokens:].mean(dim=1))
        z = F.linear(summary, self.scale_weight, self.scale_bias)
        log_scale = self.max_log_scale * torch.tanh(z / self.max_log_scale)
        return rearrange(log_scale.float().exp(), "b (l h) -> l b h", l=self.depth, h=self.num_heads)

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        angles = rotation_angles(self.freqs, x, y)  # (depth, H, N, P)
        scales = self.scales(tokens, num_prefix_tokens)  # (depth, B, H)
        angles = rearrange(angles, "l h n p -> l 1 h n p") * scales[..., None, None]
        return RotaryTables.from_angles(angles, num_prefix_tokens)

    def no_weight_decay(self) -> set[str]:
        """Everything but the content projection's weight matrix (decaying it shrinks k towards 1)."""
        return {"freqs", "norm.weight", "norm.bias", "scale_bias"}

    def extra_repr(self) -> str:
        return f"depth={self.depth}, num_heads={self.num_heads}, max_log_scale={self.max_log_scale:.4f}"


def frequency_bank(head_dim: int, theta: float, num_directions: int, magnitude_scales: Sequence[float]) -> torch.Tensor:
    """(2, P, K) candidate frequencies per channel pair, K = num_directions * len(magnitude_scales) + 1.

    Entry (j, d) of pair p is m_p * sigma_j * (cos(2 pi d / num_directions), sin(2 pi d / num_directions))
    at index j * num_directions + d, with m_p the axial magnitude of pair p (1 / theta^(4i / head_dim),
    i = p mod P/2); the last entry is the zero frequency.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got head_dim={head_dim}")
    magnitudes = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)
    magnitudes = magnitudes.repeat(2)  # (P,): both halves of the pairs span the same magnitudes
    angles = torch.arange(num_directions, dtype=torch.float32) * (2 * math.pi / num_directions)
    directions = torch.stack([angles.cos(), angles.sin()])  # (2, D)
    sigma = torch.tensor([float(s) for s in magnitude_scales])
    bank = magnitudes[None, :, None, None] * sigma[None, None, :, None] * directions[:, None, None, :]  # (2, P, S, D)
    bank = rearrange(bank, "two p s d -> two p (s d)")
    return torch.cat([bank, bank.new_zeros(2, bank.shape[1], 1)], dim=-1)


class RopeGatedBank(nn.Module):
    """Each channel pair's 2D frequency is a learned softmax gate over a fixed bank of candidates.

    Method. For pair p the bank holds K = n_dir * n_mag + 1 candidate frequencies
    b_{p,k} = m_p * sigma_j * (cos(2 pi d / n_dir), sin(2 pi d / n_dir)) for directions d < n_dir and
    magnitude multipliers sigma_j (default 0.5, 1, 2) of the pair's axial magnitude
    m_p = 1 / theta^(4i / head_dim), plus b_{p,K} = (0, 0). Learned logits a_{l,h,p,k} per layer,
    head, pair and entry give

        w_{l,h,p} = softmax_k(a_{l,h,p,k})
        f_{l,h,p} = sum_k w_{l,h,p,k} * b_{p,k}          (a convex combination, |f| <= 2 m_p)
        phi_{l,h,p}(x, y) = fx_{l,h,p} * x + fy_{l,h,p} * y

    Initialisation mirrors RoPE-Mixed: per (layer, head) one random bank direction d0; pairs in the
    first half favour (d0, sigma = 1), pairs in the second half the perpendicular direction
    (d0 + n_dir/4), with logit `init_logit` on the favoured entry and 0 elsewhere. The directions cover
    the full circle, so the non-favoured entries sum to minus the favoured one and f starts exactly
    along the favoured direction, magnitude (w0 - (1 - w0) / (K - 1)) * m_p (about 0.86 m_p by default).
    Uniform logits give f = 0: an untrained gate is "off", not biased to some direction.

    In the continuous limit a convex combination is just a learned frequency, so the gating adds no
    expressiveness over RoPE-Mixed. What it adds: (1) a bounded, well-conditioned search space: every
    frequency stays inside the convex hull of the bank (|f| <= 2 m_p, no drift into aliased
    frequencies above pi), and the gradient w.r.t. the logits does not scale with the frequency's
    magnitude; (2) sparsity / pruning: the zero entry lets a pair switch itself off (p-RoPE-like: a
    pair with f = 0 carries content-only, position-free similarity), and gate entropies say which
    directions and scales each head actually uses, an interpretable readout.

    Closest prior art: RoPE-Mixed (learned 2D frequencies), p-RoPE (removing the lowest frequencies),
    LeRoPE (a learned scale per frequency). Parameters: depth * heads * P * K logits, replacing
    RoPE-Mixed's 2 * depth * heads * P frequencies.
    """

    def __init__(
        self, head_dim: int, num_heads: int, depth: int, theta: float = 10.0, num_directions: int = 8,
        magnitude_scales: Sequence[float] = (0.5, 1.0, 2.0), init_logit: float = 5.0,
    ):
        super().__init__()
        if num_directions % 4:
            raise ValueError(f"num_directions must be divisible by 4 (perpendicular pairs), got {num_directions}")
        scales = [float(s) for s in magnitude_scales]
        if 1.0 not in scales:
            raise ValueError(f"magnitude_scales must contain 1.0 (the initial magnitude), got {magnitude_scales}")
        self.num_directions, self.magnitude_scales = num_directions, tuple(scales)
        bank = frequency_bank(head_dim, theta, num_directions, scales)
        self.register_buffer("bank", bank, persistent=False)
        num_pairs, num_entries = bank.shape[1:]
        favoured_direction = torch.randint(0, num_directions, (depth, num_heads, 1))
        perpendicular = (favoured_direction + num_directions // 4) % num_directions
        unit = scales.index(1.0) * num_directions
        favoured = unit + torch.cat(
            [favoured_direction.expand(-1, -1, num_pairs // 2), perpendicular.expand(-1, -1, num_pairs // 2)], dim=-1,
        )  # (depth, heads, P) bank index
        logits = torch.zeros(depth, num_heads, num_pairs, num_entries)
        logits.scatter_(-1, favoured[..., None], init_logit)
        self.logits = nn.Parameter(logits)

    def gates(self) -> torch.Tensor:
        """(depth, heads, P, K) softmax weights over the bank."""
        return self.logits.float().softmax(dim=-1)

    def effective_frequencies(self) -> torch.Tensor:
        """(2, depth, heads, P) frequencies f = sum_k w_k b_k, RoPE-Mixed's layout."""
        return torch.einsum("lhpk,tpk->tlhp", self.gates(), self.bank)

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        angles = rotation_angles(self.effective_frequencies(), x, y)  # (depth, H, N, P)
        return RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), num_prefix_tokens)

    def no_weight_decay(self) -> set[str]:
        """The logits: decay would pull every gate towards uniform, i.e. every pair towards f = 0."""
        return {"logits"}

    def extra_repr(self) -> str:
        entries = self.bank.shape[-1]
        return f"num_directions={self.num_directions}, magnitude_scales={self.magnitude_scales}, entries={entries}"
