"""Position encodings by name: each name gives an additive absolute part, a rotary part, an attention-logit bias,
or a combination."""
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from lib.layers.fire import FireBias
from lib.layers.pos_embed import LearnedPosEmbed, SinCosPosEmbed
from lib.layers.rope import RopeAxial, RopeMixed, RotaryTables
from lib.layers.rope_adaptive import RopeContentAdaptive, RopeGatedBank, RopeResolutionAdaptive
from lib.layers.rope_normalized import RopeMixedNormalized


@dataclass(frozen=True)
class PositionSpec:
    """Which absolute embedding ('learned', 'sincos' or None), which RoPE and which logit bias a name stands for.

    bias: a relative position bias added to the attention logits ('fire' or None); needs an attention variant that
    takes a bias (softmax attention).
    test_time_of: the encoding this one is at the training grid, with the same parameters, so a model trained
    with that encoding runs with this one unchanged (a test-time change; None: it must be trained itself).
    """

    absolute: str | None
    rotary: str | None
    test_time_of: str | None = None
    bias: str | None = None


POSITION_ENCODINGS: dict[str, PositionSpec] = {
    "none": PositionSpec(None, None),
    "ape": PositionSpec("learned", None),
    "sincos": PositionSpec("sincos", None),
    "rope_axial": PositionSpec(None, "axial"),
    "rope_mixed": PositionSpec(None, "mixed"),
    "rope_axial_ape": PositionSpec("learned", "axial"),
    "rope_mixed_ape": PositionSpec("learned", "mixed"),
    # the study's adaptive-frequency variants (lib.layers.rope_adaptive)
    "rope_adaptive_res": PositionSpec(None, "mixed_resolution", test_time_of="rope_mixed"),
    "rope_adaptive_content": PositionSpec(None, "mixed_content"),
    "rope_gated_bank": PositionSpec(None, "gated_bank"),
    # RQ1's coordinate conventions: RoPE-Mixed on DINOv3's [-1, 1] coordinates (lib.layers.rope_normalized),
    # and a relative logit bias of normalised offsets (lib.layers.fire)
    "rope_mixed_norm": PositionSpec(None, "mixed_normalized"),
    "fire": PositionSpec(None, None, bias="fire"),
}


class PositionModules(NamedTuple):
    """The modules an encoding is made of; any may be None.

    absolute: `(grid_hw, device) -> (1, H*W, C)`, added to the patch tokens.
    rotary: `(grid_hw, tokens, num_prefix_tokens) -> RotaryTables`, rotating queries and keys.
    bias: `(grid_hw, num_prefix_tokens, device) -> (L, 1, heads, N, N)`, added to the attention logits.
    """

    absolute: nn.Module | None
    rotary: nn.Module | None
    bias: nn.Module | None


class PositionTables(NamedTuple):
    """What the blocks of one forward pass get from the position encoding, built once for all blocks."""

    rotary: RotaryTables | None = None
    bias: torch.Tensor | None = None  # (L, 1|B, heads, N, N); L = 1 when all blocks share it

    def rope(self, index: int) -> torch.Tensor | None:
        """Complex rotations (B|1, heads|1, N, P) of block `index`, or None."""
        return None if self.rotary is None else self.rotary.rotation(index)

    def attn_bias(self, index: int) -> torch.Tensor | None:
        """Logit bias (B|1, heads, N, N) of block `index`, or None."""
        if self.bias is None:
            return None
        return self.bias[index if self.bias.shape[0] > 1 else 0]


def create_position_encoding(
    name: str, embed_dim: int, num_heads: int, depth: int, grid_hw: tuple[int, int],
    rope_theta: float | None = None,
) -> PositionModules:
    """(absolute, rotary, bias) modules for the encoding `name`; any may be None.

    rope_theta overrides the paper's defaults (100 for axial, 10 for mixed and the adaptive variants).
    grid_hw is the training grid: the learned APE's table size, and the reference grid of the resolution-adaptive
    RoPE, the normalised-coordinate RoPE's frequency scale and FIRE's initial threshold.
    """
    if name not in POSITION_ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; expected one of {sorted(POSITION_ENCODINGS)}")
    spec = POSITION_ENCODINGS[name]
    head_dim = embed_dim // num_heads
    absolute = {
        None: None,
        "learned": lambda: LearnedPosEmbed(embed_dim, grid_hw),
        "sincos": lambda: SinCosPosEmbed(embed_dim),
    }[spec.absolute]
    rotary = {
        None: None,
        "axial": lambda: RopeAxial(head_dim, theta=rope_theta or 100.0),
        "mixed": lambda: RopeMixed(head_dim, num_heads, depth, theta=rope_theta or 10.0),
        "mixed_resolution": lambda: RopeResolutionAdaptive(
            head_dim, num_heads, depth, grid_hw, theta=rope_theta or 10.0),
        "mixed_content": lambda: RopeContentAdaptive(embed_dim, head_dim, num_heads, depth, theta=rope_theta or 10.0),
        "gated_bank": lambda: RopeGatedBank(head_dim, num_heads, depth, theta=rope_theta or 10.0),
        "mixed_normalized": lambda: RopeMixedNormalized(head_dim, num_heads, depth, grid_hw, theta=rope_theta or 10.0),
    }[spec.rotary]
    bias = {
        None: None,
        "fire": lambda: FireBias(num_heads, depth, grid_hw),
    }[spec.bias]
    return PositionModules(*(make() if make else None for make in (absolute, rotary, bias)))
