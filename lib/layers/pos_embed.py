"""Absolute position embeddings (APE) added to patch tokens, at any grid size.

- Learned APE: a (H0 * W0, C) table trained at the training grid (H0, W0); another grid gets the
  table resampled bicubically (timm's `resample_abs_pos_embed`), as DeiT and Heo et al. do.
- 2D sin-cos APE: fixed; half the channels encode the row, half the column, with sines and cosines
  at geometric frequencies 1 / 10000^(i / (C/4)) (MoCo v3 / MAE). Defined for any grid directly.

The CLS token gets no position embedding (it has no position), as in rope-vit's APE variants.

References: Dosovitskiy et al. 2021 (ViT); Chen et al. 2021 (MoCo v3) for 2D sin-cos.
"""
import torch
from einops import rearrange
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed, trunc_normal_
from torch import nn


class LearnedPosEmbed(nn.Module):
    """Learned absolute position table, resampled bicubically for grids other than the training grid."""

    def __init__(self, embed_dim: int, grid_hw: tuple[int, int]):
        super().__init__()
        self.grid_hw = tuple(grid_hw)
        self.table = nn.Parameter(torch.zeros(1, grid_hw[0] * grid_hw[1], embed_dim))
        trunc_normal_(self.table, std=0.02)

    def forward(self, grid_hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(1, H * W, C) embedding for a (H, W) grid."""
        if tuple(grid_hw) == self.grid_hw:
            return self.table
        return resample_abs_pos_embed(
            self.table, new_size=list(grid_hw), old_size=list(self.grid_hw),
            num_prefix_tokens=0, interpolation="bicubic", antialias=True,
        )


class SinCosPosEmbed(nn.Module):
    """Fixed 2D sin-cos absolute embedding, computed for whatever grid comes in."""

    def __init__(self, embed_dim: int, temperature: float = 10000.0):
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"2D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
        self.embed_dim = embed_dim
        self.temperature = temperature

    def forward(self, grid_hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(1, H * W, C) embedding for a (H, W) grid."""
        table = build_sincos2d_pos_embed(list(grid_hw), dim=self.embed_dim, temperature=self.temperature, device=device)
        return rearrange(table, "n c -> 1 n c")
