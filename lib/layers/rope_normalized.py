"""RoPE-Mixed on normalised patch coordinates: DINOv3's coordinate convention applied to RoPE-Mixed.

RoPE-Mixed (`lib.layers.rope`) rotates channel pair p of the patch at integer column x and row y by
fx_p * x + fy_p * y, so a larger test image reaches positions never seen in training. Here each axis
is instead mapped to the box [-1, 1] by its own grid size, the patch centres

    x_n = (x + 0.5) * 2 / W - 1,        y_n = (y + 0.5) * 2 / H - 1        (DINOv3, "separate")

so a larger grid samples the same box more densely, as APE's bicubic resampling does. The angle is

    phi_p = gx_p * (x_n - ax) + gy_p * (y_n - ay),    (gx, gy) = (fx * W0 / 2, fy * H0 / 2)

with (fx, fy) the learnable RoPE-Mixed frequencies (same layout, same initialisation, same parameter
name `freqs`, in radians per patch of the training grid (H0, W0)), and (ax, ay) = (-1 + 1/W0, -1 + 1/H0)
the anchor: the box point where RoPE-Mixed's origin, patch (0, 0), lies at the training grid. Prefix
tokens (CLS) are not rotated, i.e. they sit at the anchor. At the training grid the integer index is
the affine map x = (x_n + 1) * W0 / 2 - 0.5 of x_n, so gx * (x_n - ax) = fx * x: the angles, and so every
score, are RoPE-Mixed's with the same `freqs`, and a RoPE-Mixed model's weights load unchanged. At another
grid (H, W) the angle is fx * ((x + 0.5) * W0 / W - 0.5) + ...: position interpolation (Chen et al. 2023)
by W0 / W per axis of the patch centres, up- and down-scaling alike; the relative-position property
holds within a grid (the angle is linear in the position).

DINOv3 anchors its (unrotated) prefix tokens at the box centre. Anchoring them where RoPE-Mixed has its
origin instead changes only the CLS-patch scores by a fixed rotation per pair, and it makes the two
encodings one function at the training grid: what differs between them in RQ1 is then only the
coordinates off the training grid and the training-time augmentation, not a different CLS geometry.

Keeping `freqs` in training-grid patch units (rather than storing g = f * W0 / 2) keeps AdamW's step
on the angles the same as RoPE-Mixed's, so at the training grid the two differ only in the
augmentation below, not in an effective learning rate that would depend on the grid size.

Training-time box augmentation (DINOv3; off in eval mode), applied to (x_n, y_n) in this order:

    shift:   x_n += a_x,  y_n += a_y,          a ~ U(-shift, shift) per axis
    jitter:  x_n *= j_x,  y_n *= j_y,          log j ~ U(-log jitter, log jitter) per axis
    rescale: x_n *= s,    y_n *= s,            log s ~ U(-log rescale, log rescale), shared

One draw per forward pass, shared by every image of the batch and every layer, as DINOv3's
`RopePositionEmbedding` draws it; from torch's global RNG (the training loop seeds it per seed and
epoch). The box (the patches) moves, the anchor (the prefix tokens) stays. The rescale (about the box
centre) shows the model patch offsets at 1/R to R times their size, which is what a test grid's
interpolation later asks of it. Between patches a shift is a constant phase per pair and cancels in
q . k; it changes only the CLS-patch scores (the box moves against the prefix tokens), as in DINOv3.

No parameters beyond RoPE-Mixed's; `freqs` is not decayed.

References: Simeoni et al. 2025, "DINOv3" (arXiv 2508.10104; facebookresearch/dinov3
`RopePositionEmbedding`, timm `RotaryEmbeddingDinoV3`); Heo et al. 2024, "Rotary Position Embedding
for Vision Transformer" (RoPE-Mixed, arXiv 2403.13298); Chen et al. 2023, "Extending Context Window of
Large Language Models via Positional Interpolation" (arXiv 2306.15595).
"""
import math
from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from lib.layers.rope import RotaryTables, mixed_frequencies, rotation_angles


def normalized_coords(grid_hw: Sequence[int], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch centres in [-1, 1] per axis, (arange(0.5, n) / n) * 2 - 1, in row-major token order: x, y each (H*W,)."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    ys = torch.arange(0.5, h, device=device, dtype=torch.float32) / h * 2 - 1
    xs = torch.arange(0.5, w, device=device, dtype=torch.float32) / w * 2 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x.flatten(), y.flatten()


def _log_uniform(shape: tuple[int, ...], limit: float) -> torch.Tensor:
    """exp(U(-log limit, log limit)) from torch's global (CPU) RNG: the same draws on every device."""
    return torch.exp((torch.rand(shape) * 2 - 1) * math.log(limit))


class RopeMixedNormalized(nn.Module):
    """RoPE-Mixed on [-1, 1] patch coordinates with DINOv3's training-time box augmentation (see module docstring).

    Args:
        head_dim: channels per head D (divisible by 4).
        num_heads: heads per layer.
        depth: number of layers (one frequency set per layer).
        train_grid_hw: the training grid (H0, W0); fixes the frequency scale g = f * (W0 / 2, H0 / 2).
        theta: RoPE-Mixed's base for the initial magnitudes (10, Heo et al. 2024).
        rescale: R, shared log-uniform box scale in [1/R, R] while training (DINOv3: 2); None or 1: off.
        jitter: J, per-axis log-uniform scale in [1/J, J] while training; None or 1: off.
        shift: A, per-axis uniform shift in [-A, A] while training (cancels in q . k); None or 0: off.

    References: Simeoni et al. 2025 (DINOv3, arXiv 2508.10104); Heo et al. 2024 (arXiv 2403.13298).
    """

    def __init__(
        self, head_dim: int, num_heads: int, depth: int, train_grid_hw: Sequence[int], theta: float = 10.0,
        rescale: float | None = 2.0, jitter: float | None = None, shift: float | None = None,
    ):
        super().__init__()
        for name, value, low in (("rescale", rescale, 1.0), ("jitter", jitter, 1.0), ("shift", shift, 0.0)):
            if value is not None and not value >= low:
                raise ValueError(f"{name} must be None or >= {low:g}, got {value}")
        self.train_grid_hw = (int(train_grid_hw[0]), int(train_grid_hw[1]))
        self.rescale, self.jitter, self.shift = rescale, jitter, shift
        self.freqs = nn.Parameter(mixed_frequencies(head_dim, num_heads, depth, theta))
        h0, w0 = self.train_grid_hw
        # (fx, fy) -> (gx, gy): integer index x = (x_n + 1) * W0 / 2 - 0.5 at the training grid
        self.register_buffer("half_extent", torch.tensor([w0 / 2, h0 / 2]).view(2, 1, 1, 1), persistent=False)
        # where x = 0, y = 0 (RoPE-Mixed's origin, where its unrotated CLS sits) lies in the box at the training grid
        self.anchor = (-1 + 1 / w0, -1 + 1 / h0)

    def normalized_frequencies(self) -> torch.Tensor:
        """(2, depth, heads, P) frequencies (gx, gy) in radians per unit of the [-1, 1] box."""
        return self.freqs * self.half_extent

    def sample_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training draw: per-axis (x, y) scale = jitter * rescale and shift, each (2,); identity when off."""
        scale, offset = torch.ones(2), torch.zeros(2)
        if self.shift:
            offset = (torch.rand(2) * 2 - 1) * self.shift
        if self.jitter and self.jitter != 1:
            scale = scale * _log_uniform((2,), self.jitter)
        if self.rescale and self.rescale != 1:
            scale = scale * _log_uniform((1,), self.rescale)
        return scale, offset

    def coordinates(self, grid_hw: Sequence[int],
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_n, y_n) of every patch in the box, each (H*W,); augmented (one new draw per call) in training mode."""
        x, y = normalized_coords(grid_hw, device)
        if self.training:
            scale, offset = (t.to(device) for t in self.sample_box())
            x, y = (x + offset[0]) * scale[0], (y + offset[1]) * scale[1]  # DINOv3's order: shift, then scale
        return x, y

    def forward(self, grid_hw: tuple[int, int], tokens: torch.Tensor, num_prefix_tokens: int) -> RotaryTables:
        x, y = self.coordinates(grid_hw, tokens.device)
        # relative to the anchor, where the unrotated prefix tokens sit; (depth, H, N, P)
        angles = rotation_angles(self.normalized_frequencies(), x - self.anchor[0], y - self.anchor[1])
        return RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), num_prefix_tokens)

    def no_weight_decay(self) -> set[str]:
        return {"freqs"}

    def extra_repr(self) -> str:
        return f"train_grid_hw={self.train_grid_hw}, rescale={self.rescale}, jitter={self.jitter}, shift={self.shift}"
