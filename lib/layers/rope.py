"""Rotary position embeddings (RoPE) for 2D patch grids.

Every 2D RoPE here is one formula with different frequencies. A head of width D holds P = D/2
channel pairs; the pair p of a token at patch column x and row y is rotated by the angle

    phi_p(x, y) = fx_p * x + fy_p * y.

Because R(a)^T R(b) = R(b - a), the score between a rotated query at (x, y) and a rotated key at
(x', y') depends on positions only through the offset (x' - x, y' - y): the relative-position
property. Positions are integer patch indices, so a larger test image simply extends the grid.

- RoPE-Axial: fixed frequencies; the first P/2 pairs rotate with x only (fy = 0), the last P/2 with y
  only (fx = 0), magnitudes 1 / theta^(4i/D) for i < D/4, theta = 100 (Heo et al. 2024).
- RoPE-Mixed: learnable (fx, fy) per layer, head and pair; each head starts from the axial magnitudes
  (theta = 10) turned by a random angle, so a pair can mix both axes (Heo et al. 2024).

Channel pairs are interleaved, (x0, x1), (x2, x3), ..., as in naver-ai/rope-vit and timm's
`RotaryEmbeddingMixed`. Prefix tokens (CLS) are not rotated: their tables hold cos = 1, sin = 0.
A pair (a, b) is rotated as the complex number a + i b times e^{i phi}: one elementwise product, no
pair-swapping copies, and one (cos + i sin) table per forward pass for all layers. Under `torch.compile`
and `torch.export` the same rotation runs in real arithmetic, (a c - b s, b c + a s) on a real (..., P, 2)
table of (cos, sin): Dynamo cannot trace `view_as_complex` and Inductor has no complex kernels, while eager
keeps the complex product, the faster one on this CPU.

References: Su et al. 2021, "RoFormer" (arXiv 2104.09864); Heo et al. 2024, "Rotary Position
Embedding for Vision Transformer" (arXiv 2403.13298).
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def patch_coords(grid_hw: tuple[int, int], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Column (x) and row (y) index of every patch, in the row-major token order of a (H, W) grid."""
    h, w = grid_hw
    y, x = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return x.flatten(), y.flatten()


def rotation_angles(freqs: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angles fx * x + fy * y, computed in float32.

    Args:
        freqs: (2, ..., P) frequencies, freqs[0] = fx and freqs[1] = fy.
        x, y: (N,) patch coordinates.
    Returns:
        (..., N, P) angles.
    """
    freqs = freqs.float()
    return x[:, None] * freqs[0].unsqueeze(-2) + y[:, None] * freqs[1].unsqueeze(-2)


def as_complex_pairs(x: torch.Tensor) -> torch.Tensor:
    """Real (..., 2P) -> complex (..., P) view, pair (x0, x1) as x0 + i x1 (copies only if x is not viewable)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    pairs = x.unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of x (..., N, D) by full-width tables (..., N, D).

    cos = (c0, c0, c1, c1, ...) and sin = (-s0, s0, -s1, s1, ...), as `RotaryTables.layer` gives them:
    pair (a, b) becomes (a c - b s, b c + a s), computed as one complex product (a + i b)(c + i s).
    """
    return rotate_complex(x, unit_phasors(cos, sin))


def unit_phasors(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Full-width tables (..., 2P) -> the per-pair rotations c + i s (..., P) that `rotate_complex` takes."""
    return torch.complex(cos[..., 0::2], sin[..., 1::2])


def rotate_complex(x: torch.Tensor, phasors: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of x (..., N, 2P) by unit complex numbers (..., N, P): (a + i b) e^{i phi}.

    One elementwise product over whole rows (forward and backward), with no copies of x for pair swaps.
    Heads stored inside tokens (x a (B, H, N, D) view of the qkv projection's (B, N, H, D) memory) are
    rotated in that token-major order, so that neither pass needs a layout copy. `phasors` may also be the
    real form (..., N, P, 2) of (cos, sin) that `RotaryTables` builds under compile: `rotate_real`.
    """
    if not phasors.is_complex():
        return rotate_real(x, phasors)
    if x.dim() >= 3 and phasors.dim() >= 3 and x.stride(-3) < x.stride(-2):
        return rotate_complex(x.transpose(-3, -2), phasors.transpose(-3, -2)).transpose(-3, -2)
    return torch.view_as_real(as_complex_pairs(x) * phasors).flatten(-2).to(x.dtype)


def rotate_real(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """`rotate_complex` in real arithmetic: pairs (a, b) of x (..., N, 2P) by (c, s) = cos_sin (..., N, P, 2) become
    (a c - b s, b c + a s), in float32 as the complex product. Traceable by torch.compile and torch.export."""
    pairs = rearrange(x.float(), "... (p two) -> ... p two", two=2)
    a, b, c, s = pairs[..., 0], pairs[..., 1], cos_sin[..., 0], cos_sin[..., 1]
    return rearrange(torch.stack([a * c - b * s, b * c + a * s], dim=-1), "... p two -> ... (p two)").to(x.dtype)


def full_width(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair cos, sin (..., P) -> the full-width tables (..., 2P) that `rotate` takes."""
    return cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved channel pairs of x (..., N, 2P) by angles given as cos, sin (..., N, P)."""
    return rotate(x, *full_width(cos, sin))


class RotaryTables(NamedTuple):
    """Per-pair rotations e^{i phi} = cos phi + i sin phi as complex (L, B, H, N, P); L, B and H may be 1.

    L indexes layers (1 when all layers share one table), B the batch, H the heads and N the tokens,
    prefix tokens included (with the identity rotation). Built once per forward pass, for all layers
    in one op, and shared by the queries and keys of every block (`rotate_complex`). `cos`, `sin`
    and `layer` give the same rotations as full-width real tables (see `rotate`).
    """

    phasors: torch.Tensor  # complex (L, B, H, N, P); under compile real (L, B, H, N, P, 2) holding (cos, sin)

    @classmethod
    def from_angles(cls, angles: torch.Tensor, num_prefix_tokens: int, real: bool | None = None) -> "RotaryTables":
        """Tables for angles (L, B, H, N_patches, P), prefixed by identity rotations for the prefix tokens.

        real: the real (cos, sin) form instead of complex numbers; default: only while torch.compile or
        torch.export traces the model."""
        angles = F.pad(angles, (0, 0, num_prefix_tokens, 0))
        if real if real is not None else torch.compiler.is_compiling():
            return cls(torch.stack([angles.cos(), angles.sin()], dim=-1))
        phasors = torch.polar(torch.ones_like(angles), angles)
        # stored token-major (N before H in memory), the layout of the qkv projection's output that
        # queries and keys are views of: the product then runs on matching strides, 2.5x faster on CPU
        return cls(phasors.transpose(-3, -2).contiguous().transpose(-3, -2))

    def _cos_sin(self, rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rotation.is_complex():
            return rotation.real, rotation.imag
        return rotation[..., 0], rotation[..., 1]

    @property
    def cos(self) -> torch.Tensor:
        """Full-width cos table (L, B, H, N, D): (c0, c0, c1, c1, ...)."""
        return full_width(*self._cos_sin(self.phasors))[0]

    @property
    def sin(self) -> torch.Tensor:
        """Full-width sin table (L, B, H, N, D): (-s0, s0, -s1, s1, ...)."""
        return full_width(*self._cos_sin(self.phasors))[1]

    def rotation(self, index: int) -> torch.Tensor:
        """Rotations for block `index` as `rotate_complex` takes them: complex (B, H, N, P), or real (B, H, N, P, 2)."""
        return self.phasors[index if self.phasors.shape[0] > 1 else 0]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width (cos, sin) for block `index`, each (B, H, N, D)."""
        return full_width(*self._cos_sin(self.rotation(index)))


def axial_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """(2, P) axial frequencies: the first P/2 pairs follow x, the last P/2 follow y."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got head_dim={head_dim}")
    magnitudes = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)
    zeros = torch.zeros_like(magnitudes)
    fx = torch.cat([magnitudes, zeros])
    fy = torch.cat([zeros, magnitudes])
    return torch.stack([fx, fy])


def mixed_frequencies(head_dim: int, num_heads: int, depth: int, theta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(2, depth, num_heads, P) RoPE-Mixed initial frequencies.

    Each (layer, head) takes the axial magnitudes and one random angle a ~ U(0, 2pi): the first P/2
    pairs point along a, the last P/2 along a + pi/2 (Heo et al. 2024, `init_random_2d_freqs`).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got head_dim={head_dim}")
    magnitudes = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)
    angle = torch.rand(depth, num_heads, 1, generator=generator) * 2 * math.pi
    fx = torch.cat([magnitudes * torch.cos(angle), magnitudes * torch.cos(angle + math.pi / 2)], dim=-1)
    fy = torch.cat([magnitudes * torch.sin(angle), magnitudes * torch.sin(angle + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy])


class RopeAxial(nn.Module):
    """RoPE-Axial: fixed frequencies shared by every layer and head."""

    def __init__(self, head_dim: int, theta: float = 100.0):
        super().__init__()
        freqs = axial_frequencies(head_dim, theta)
        self.register_buffer("freqs", rearrange(freqs, "two p -> two 1 1 1 p"), persistent=False)

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        return RotaryTables.from_angles(rotation_angles(self.freqs, x, y), num_prefix_tokens)


class RopeMixed(nn.Module):
    """RoPE-Mixed: learnable 2D frequencies per layer, head and channel pair (no weight decay)."""

    def __init__(self, head_dim: int, num_heads: int, depth: int, theta: float = 10.0):
        super().__init__()
        self.freqs = nn.Parameter(mixed_frequencies(head_dim, num_heads, depth, theta))

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = patch_coords(grid_hw, tokens.device)
        angles = rotation_angles(self.freqs, x, y)  # (depth, H, N, P)
        return RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), num_prefix_tokens)
