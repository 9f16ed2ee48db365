"""Position encodings by name: each name gives an additive absolute part, a rotary part, or both."""
from dataclasses import dataclass

from torch import nn

from lib.layers.pos_embed import LearnedPosEmbed, SinCosPosEmbed
from lib.layers.rope import RopeAxial, RopeMixed
from lib.layers.rope_adaptive import RopeContentAdaptive, RopeGatedBank, RopeResolutionAdaptive


@dataclass(frozen=True)
class PositionSpec:
    """Which absolute embedding ('learned', 'sincos' or None) and which RoPE a name stands for.

    test_time_of: the encoding this one is at the training grid, with the same parameters, so a model trained
    with that encoding runs with this one unchanged (a test-time change; None: it must be trained itself).
    """

    absolute: str | None
    rotary: str | None
    test_time_of: str | None = None


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
}


def create_position_encoding(
    name: str, embed_dim: int, num_heads: int, depth: int, grid_hw: tuple[int, int],
    rope_theta: float | None = None,
) -> tuple[nn.Module | None, nn.Module | None]:
    """(absolute, rotary) modules for the encoding `name`; either may be None.

    rope_theta overrides the paper's defaults (100 for axial, 10 for mixed and the adaptive variants).
    grid_hw is the training grid: the learned APE's table size and the resolution-adaptive RoPE's reference.
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
    }[spec.rotary]
    return (absolute() if absolute else None), (rotary() if rotary else None)
