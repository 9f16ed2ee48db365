"""Position encodings by name: each name gives an additive absolute part, a rotary part, an attention-logit bias,
or a combination."""
import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from lib.layers.fire import FireBias
from lib.layers.pos_embed import LearnedPosEmbed, SinCosPosEmbed
from lib.layers.rope import RopeAxial, RopeMixed, RotaryTables
from lib.layers.rope_adaptive import RopeContentAdaptive, RopeGatedBank, RopeResolutionAdaptive
from lib.layers.rope_normalized import RopeMixedNormalized


class EncodingContext(NamedTuple):
    """What a position encoding's modules are built from: the model's shape and its training grid."""

    embed_dim: int
    num_heads: int
    depth: int
    grid_hw: tuple[int, int]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


class Part(NamedTuple):
    """One module of an encoding: its class and the leading constructor arguments the model supplies. Every
    further constructor argument is a `pos_embed_kwargs` key (params.yaml), at the class's default otherwise."""

    module: type[nn.Module]
    model_args: Callable[[EncodingContext], tuple]

    def accepted_kwargs(self) -> list[str]:
        names = [n for n in inspect.signature(self.module.__init__).parameters if n != "self"]
        return names[len(self.model_args(EncodingContext(4, 1, 1, (1, 1)))):]

    def build(self, context: EncodingContext, kwargs: dict) -> nn.Module:
        return self.module(*self.model_args(context), **kwargs)


LEARNED = Part(LearnedPosEmbed, lambda c: (c.embed_dim, c.grid_hw))
SINCOS = Part(SinCosPosEmbed, lambda c: (c.embed_dim,))
AXIAL = Part(RopeAxial, lambda c: (c.head_dim,))
MIXED = Part(RopeMixed, lambda c: (c.head_dim, c.num_heads, c.depth))


@dataclass(frozen=True)
class PositionSpec:
    """An encoding: an additive absolute part, a rotary part, an attention-logit bias part, or a combination.

    bias: a relative position bias added to the attention logits; needs an attention variant that takes a bias
    (softmax attention).
    test_time_of: the encoding this one is at the training grid, with the same parameters, so a model trained
    with that encoding runs with this one unchanged (a test-time change; None: it must be trained itself).
    `pos_embed_kwargs` go to the encoding's configurable part: the rotary one, else the bias, else the absolute.
    """

    absolute: Part | None = None
    rotary: Part | None = None
    bias: Part | None = None
    test_time_of: str | None = None

    @property
    def configurable(self) -> Part | None:
        return self.rotary or self.bias or self.absolute


# one entry per encoding (a new one needs only its entry here)
POSITION_ENCODINGS: dict[str, PositionSpec] = {
    "none": PositionSpec(),
    "ape": PositionSpec(absolute=LEARNED),
    "sincos": PositionSpec(absolute=SINCOS),
    "rope_axial": PositionSpec(rotary=AXIAL),
    "rope_mixed": PositionSpec(rotary=MIXED),
    "rope_axial_ape": PositionSpec(absolute=LEARNED, rotary=AXIAL),
    "rope_mixed_ape": PositionSpec(absolute=LEARNED, rotary=MIXED),
    # the study's adaptive-frequency variants (lib.layers.rope_adaptive)
    "rope_adaptive_res": PositionSpec(
        rotary=Part(RopeResolutionAdaptive, lambda c: (c.head_dim, c.num_heads, c.depth, c.grid_hw)),
        test_time_of="rope_mixed"),
    "rope_adaptive_content": PositionSpec(
        rotary=Part(RopeContentAdaptive, lambda c: (c.embed_dim, c.head_dim, c.num_heads, c.depth))),
    "rope_gated_bank": PositionSpec(rotary=Part(RopeGatedBank, lambda c: (c.head_dim, c.num_heads, c.depth))),
    # RQ1's coordinate conventions: RoPE-Mixed on DINOv3's [-1, 1] coordinates (lib.layers.rope_normalized),
    # and a relative logit bias of normalised offsets (lib.layers.fire)
    "rope_mixed_norm": PositionSpec(
        rotary=Part(RopeMixedNormalized, lambda c: (c.head_dim, c.num_heads, c.depth, c.grid_hw))),
    "fire": PositionSpec(bias=Part(FireBias, lambda c: (c.num_heads, c.depth, c.grid_hw))),
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
    rope_theta: float | None = None, pos_embed_kwargs: dict | None = None,
) -> PositionModules:
    """(absolute, rotary, bias) modules for the encoding `name`; any may be None.

    rope_theta overrides the rotary part's base (the paper's defaults: 100 for axial, 10 for mixed and the
    adaptive variants); pos_embed_kwargs are further constructor arguments of the configurable part
    (`PositionSpec.configurable`). grid_hw is the training grid: the learned APE's table size, and the reference
    grid of the resolution-adaptive RoPE, the normalised-coordinate RoPE's frequency scale and FIRE's initial
    threshold.
    """
    if name not in POSITION_ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; expected one of {sorted(POSITION_ENCODINGS)}")
    spec = POSITION_ENCODINGS[name]
    kwargs = dict(pos_embed_kwargs or {})
    unknown = sorted(set(kwargs) - set(spec.configurable.accepted_kwargs() if spec.configurable else ()))
    if unknown:
        accepted = spec.configurable.accepted_kwargs() if spec.configurable else []
        raise ValueError(f"position encoding {name!r} takes no argument {unknown[0]!r}; expected one of {accepted}")
    if rope_theta is not None and spec.rotary is not None:
        if "theta" in kwargs:
            raise ValueError(f"position encoding {name!r}: theta given twice (model.rope_theta and pos_embed_kwargs)")
        kwargs["theta"] = rope_theta
    context = EncodingContext(embed_dim, num_heads, depth, tuple(grid_hw))
    # built in this order (absolute, rotary, bias): their initialisation draws from the global RNG in turn
    return PositionModules(*(part.build(context, kwargs if part is spec.configurable else {}) if part else None
                             for part in (spec.absolute, spec.rotary, spec.bias)))
