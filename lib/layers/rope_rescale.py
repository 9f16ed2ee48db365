"""Test-time frequency rescaling of a trained RoPE-Mixed for a test grid of another size.

A trained RoPE-Mixed rotates channel pair p of the token at patch (x, y) by fx_p x + fy_p y. On a test grid
(H, W) that differs from the training grid (H0, W0), each axis a gets the ratio s_a = E_a / T_a (training
extent over test extent: s < 1 when the test image is larger) and every frequency component is multiplied
by a factor; the three rules of the long-context literature, applied per axis:

- `pi`, position interpolation (Chen et al. 2023): factor s_a for every component, i.e. positions are
  rescaled so that the test grid spans the training grid's range of angles.
- `ntk`, NTK-aware scaling (bloc97 2023, as written in Peng et al. 2023): the base theta becomes
  theta * kappa^(K / (K - 1)) with kappa = 1 / s_a, so the pair with magnitude index k (theta^(-k/K), k < K per
  axis, the index RoPE-Mixed's initial magnitudes have) gets factor s_a^(k / (K - 1)): the highest frequency
  (k = 0) is kept, the lowest (k = K - 1) is interpolated like `pi`.
- `yarn`, YaRN's "NTK-by-parts" ramp (Peng et al. 2023, without its attention temperature): per component,
  r = E_a |f_a| / (2 pi) periods over the training extent, gamma = clamp((r - alpha) / (beta - alpha), 0, 1),
  factor s_a + (1 - s_a) gamma: components that complete fewer than alpha periods across the training grid
  are interpolated, those above beta kept. alpha = 1, beta = 2 (the study's `rope_adaptive_res`, which is this
  rule restricted to larger grids). Where every component has gamma = 0, `yarn` *is* `pi`.

At the training grid every factor is exactly 1: the rescaled model is RoPE-Mixed, bit for bit. Frequencies are
constant over one grid, so the relative-position property holds at every grid. The rules are applied both to
larger (s < 1) and to smaller (s > 1) test grids.

References: Chen et al. 2023, "Extending Context Window of Large Language Models via Positional
Interpolation" (arXiv 2306.15595); Peng et al. 2023, "YaRN" (arXiv 2309.00071); Lu et al. 2024, "FiT"
(VisionNTK / VisionYaRN, arXiv 2402.12376).
"""
import math
from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from lib.layers.rope import RotaryTables, patch_coords, rotation_angles
from lib.layers.rope_adaptive import yarn_ramp

RESCALINGS = ("pi", "ntk", "yarn")


def axis_ratios(train_grid_hw: Sequence[int], grid_hw: Sequence[int]) -> tuple[float, float]:
    """(s_x, s_y): training extent over test extent per axis (1 at the training grid)."""
    return train_grid_hw[1] / grid_hw[1], train_grid_hw[0] / grid_hw[0]


def periods_over_grid(freqs: torch.Tensor, train_grid_hw: Sequence[int]) -> torch.Tensor:
    """Full periods (2, ..., P) that each component of frequencies (2, ..., P) = (fx, fy) turns across the training
    grid (x over its width, y over its height): YaRN's r."""
    extents = freqs.new_tensor([train_grid_hw[1], train_grid_hw[0]]).view(2, *([1] * (freqs.dim() - 1)))
    return extents * freqs.abs() / (2 * math.pi)


def ramp_weights(freqs: torch.Tensor, train_grid_hw: Sequence[int], alpha: float = 1.0, beta: float = 2.0) -> torch.Tensor:
    """YaRN's gamma per component (2, ..., P) of frequencies (2, ..., P) on the training grid: 0 interpolate, 1 keep."""
    return yarn_ramp(periods_over_grid(freqs, train_grid_hw), alpha, beta)


def rescale_factors(freqs: torch.Tensor, train_grid_hw: Sequence[int], grid_hw: Sequence[int], method: str,
                    alpha: float = 1.0, beta: float = 2.0) -> torch.Tensor:
    """Factors (2, ..., P) that multiply the frequencies (2, ..., P) = (fx, fy) at the test grid `grid_hw`."""
    if method not in RESCALINGS:
        raise ValueError(f"unknown rescaling {method!r}; expected one of {RESCALINGS}")
    shape = (2, *([1] * (freqs.dim() - 1)))
    ratios = freqs.new_tensor(axis_ratios(train_grid_hw, grid_hw)).view(shape)
    if method == "pi":
        return ratios.expand_as(freqs)
    if method == "ntk":
        pairs = freqs.shape[-1]
        per_axis = pairs // 2  # RoPE-Mixed: magnitude index k < K for the first K pairs, again for the last K
        index = torch.arange(pairs, device=freqs.device) % per_axis
        exponent = index / (per_axis - 1) if per_axis > 1 else torch.ones(pairs, device=freqs.device)
        return (ratios ** exponent.to(freqs.dtype)).expand_as(freqs)
    gamma = ramp_weights(freqs, train_grid_hw, alpha, beta)
    return ratios + (1 - ratios) * gamma


class RopeRescaled(nn.Module):
    """A trained RoPE-Mixed (`base`, its `freqs` shared, not copied) with a test-time rescaling rule.

    Args:
        base: a module with `freqs` (2, depth, heads, P), e.g. `lib.layers.rope.RopeMixed`.
        train_grid_hw: the grid the base was trained on.
        method: 'pi', 'ntk' or 'yarn' (see the module docstring).
    """

    def __init__(self, base: nn.Module, train_grid_hw: Sequence[int], method: str, alpha: float = 1.0, beta: float = 2.0):
        super().__init__()
        if method not in RESCALINGS:
            raise ValueError(f"unknown rescaling {method!r}; expected one of {RESCALINGS}")
        if not isinstance(getattr(base, "freqs", None), torch.Tensor) or base.freqs.dim() != 4:
            raise ValueError("RopeRescaled needs a RoPE-Mixed-like module with freqs of shape (2, depth, heads, P)")
        self.base, self.method = base, method
        self.train_grid_hw = (int(train_grid_hw[0]), int(train_grid_hw[1]))
        self.alpha, self.beta = float(alpha), float(beta)

    def frequencies_at(self, grid_hw: Sequence[int]) -> torch.Tensor:
        freqs = self.base.freqs
        if tuple(grid_hw) == self.train_grid_hw:
            return freqs
        return freqs * rescale_factors(freqs, self.train_grid_hw, grid_hw, self.method, self.alpha, self.beta)

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        angles = rotation_angles(self.frequencies_at(grid_hw), x, y)  # (depth, H, N, P)
        return RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), num_prefix_tokens)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, train_grid_hw={self.train_grid_hw}"
