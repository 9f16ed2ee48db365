"""RoPE: the relative-position property, norm preservation, and equality with timm's implementations."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingMixed, apply_rot_embed_cat

from lib.layers.rope import (
    RopeAxial, RopeMixed, RotaryTables, apply_rotary, axial_frequencies, mixed_frequencies, rotate, rotation_angles,
)


def rotate_at(vector: torch.Tensor, freqs: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Rotate one head vector (D,) as a token at patch (x, y) with frequencies (2, P)."""
    angles = rotation_angles(freqs, torch.tensor([float(x)]), torch.tensor([float(y)]))  # (1, P)
    return apply_rotary(vector[None].double(), angles.cos().double(), angles.sin().double())[0]


coords = st.integers(min_value=-40, max_value=40)


@settings(max_examples=60, deadline=None)
@given(x1=coords, y1=coords, x2=coords, y2=coords, dx=coords, dy=coords, seed=st.integers(0, 2**16), kind=st.sampled_from(["axial", "mixed"]))
def test_scores_depend_only_on_offset(x1, y1, x2, y2, dx, dy, seed, kind):
    generator = torch.Generator().manual_seed(seed)
    head_dim = 16
    if kind == "axial":
        freqs = axial_frequencies(head_dim, theta=100.0)
    else:
        freqs = mixed_frequencies(head_dim, num_heads=1, depth=1, theta=10.0, generator=generator)[:, 0, 0]
    q, k = torch.randn(2, head_dim, generator=generator, dtype=torch.float64)
    score = rotate_at(q, freqs, x1, y1) @ rotate_at(k, freqs, x2, y2)
    shifted = rotate_at(q, freqs, x1 + dx, y1 + dy) @ rotate_at(k, freqs, x2 + dx, y2 + dy)
    assert torch.allclose(score, shifted, atol=1e-4, rtol=1e-4)


def test_scores_change_with_offset():
    """The property above is not vacuous: a different offset gives a different score."""
    freqs = axial_frequencies(16, theta=100.0)
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not torch.allclose(rotate_at(q, freqs, 0, 0) @ rotate_at(k, freqs, 1, 0),
                              rotate_at(q, freqs, 0, 0) @ rotate_at(k, freqs, 3, 0))


@settings(max_examples=30, deadline=None)
@given(x=coords, y=coords, seed=st.integers(0, 2**16))
def test_rotation_preserves_norm(x, y, seed):
    generator = torch.Generator().manual_seed(seed)
    freqs = mixed_frequencies(32, 1, 1, 10.0, generator=generator)[:, 0, 0]
    v = torch.randn(32, generator=generator, dtype=torch.float64)
    assert torch.allclose(rotate_at(v, freqs, x, y).norm(), v.norm(), rtol=1e-6)


def test_axial_pairs_follow_one_axis_each():
    freqs = axial_frequencies(16, theta=100.0)
    fx, fy = freqs
    assert torch.equal(fy[:4], torch.zeros(4)) and torch.equal(fx[4:], torch.zeros(4))
    # magnitudes 1 / theta^(4i/D), i < D/4 (Heo et al. 2024, compute_axial_cis)
    expected = torch.tensor([1 / 100 ** (4 * i / 16) for i in range(4)])
    assert torch.allclose(fx[:4], expected) and torch.allclose(fy[4:], expected)


def test_mixed_init_turns_axial_magnitudes_by_one_angle_per_head():
    freqs = mixed_frequencies(16, num_heads=3, depth=2, theta=10.0, generator=torch.Generator().manual_seed(0))
    assert freqs.shape == (2, 2, 3, 8)
    magnitudes = freqs.norm(dim=0)  # |(fx, fy)| per pair
    expected = torch.tensor([1 / 10 ** (4 * i / 16) for i in range(4)]).repeat(2)
    assert torch.allclose(magnitudes, expected.expand_as(magnitudes), atol=1e-6)
    first, second = freqs[..., 0], freqs[..., 4]  # same magnitude, directions a and a + pi/2
    assert torch.allclose((first * second).sum(0), torch.zeros(2, 3), atol=1e-6)


def test_prefix_tokens_are_not_rotated():
    rope = RopeAxial(16)
    tables = rope((3, 4), torch.zeros(1), num_prefix_tokens=1)
    cos, sin = tables.layer(0)
    assert cos.shape == (1, 1, 13, 16)
    assert torch.equal(cos[..., 0, :], torch.ones(1, 1, 16)) and torch.equal(sin[..., 0, :].abs(), torch.zeros(1, 1, 16))


def test_tables_per_layer_for_mixed_shared_for_axial():
    mixed = RopeMixed(16, num_heads=2, depth=3)((2, 2), torch.zeros(1), 1)
    axial = RopeAxial(16)((2, 2), torch.zeros(1), 1)
    assert mixed.cos.shape == (3, 1, 2, 5, 16) and axial.cos.shape == (1, 1, 1, 5, 16)
    assert not torch.equal(mixed.layer(0)[0], mixed.layer(1)[0])
    assert torch.equal(axial.layer(0)[0], axial.layer(2)[0])


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (12, 3)])
def test_axial_equals_timm_rotary_embedding_cat(grid):
    head_dim = 32
    ours = RopeAxial(head_dim, theta=100.0)(grid, torch.zeros(1), num_prefix_tokens=0)
    # timm's RoPE-ViT ports use RotaryEmbeddingCat(in_pixels=False, temperature=100, grid_indexing='xy')
    timm_rope = RotaryEmbeddingCat(head_dim, temperature=100.0, in_pixels=False, grid_indexing="xy")
    x = torch.randn(2, 3, grid[0] * grid[1], head_dim)
    cos, sin = ours.layer(0)
    assert torch.allclose(rotate(x, cos, sin), apply_rot_embed_cat(x, timm_rope.get_embed(list(grid))), atol=1e-6)


@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
def test_mixed_equals_timm_rotary_embedding_mixed(grid):
    depth, heads, head_dim = 3, 2, 16
    timm_rope = RotaryEmbeddingMixed(heads * head_dim, depth=depth, num_heads=heads, temperature=10.0, grid_indexing="xy")
    ours = RopeMixed(head_dim, heads, depth)
    with torch.no_grad():
        ours.freqs.copy_(timm_rope.freqs)
    tables = ours(grid, torch.zeros(1), num_prefix_tokens=0)
    embeds = timm_rope.get_embed(list(grid))  # (depth, heads, N, 2 * head_dim)
    x = torch.randn(2, heads, grid[0] * grid[1], head_dim)
    for layer in range(depth):
        cos, sin = tables.layer(layer)
        assert torch.allclose(rotate(x, cos, sin), apply_rot_embed_cat(x, embeds[layer]), atol=1e-6)


def test_rotation_by_quarter_turn():
    """A hand-computed case: pair (1, 0) turned by pi/2 becomes (0, 1)."""
    x = torch.tensor([[1.0, 0.0]])
    out = apply_rotary(x, torch.tensor([[math.cos(math.pi / 2)]]), torch.tensor([[math.sin(math.pi / 2)]]))
    assert torch.allclose(out, torch.tensor([[0.0, 1.0]]), atol=1e-7)


def test_full_width_rotation_equals_pairwise_definition():
    """rotate() with full-width tables is the pairwise (a c - b s, b c + a s), values and gradients."""
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = angles.cos(), angles.sin()
    reference = torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)
    ours = apply_rotary(x, angles.cos(), angles.sin())
    assert torch.allclose(ours, reference)
    g = torch.randn_like(reference)
    assert all(torch.allclose(u, v) for u, v in zip(torch.autograd.grad(ours, [x, angles], g),
                                                    torch.autograd.grad(reference, [x, angles], g)))


def test_head_dim_must_divide_by_four():
    with pytest.raises(ValueError, match="head_dim=6"):
        RopeAxial(6)


def test_from_angles_shapes():
    tables = RotaryTables.from_angles(torch.zeros(2, 1, 3, 4, 5), num_prefix_tokens=2)
    assert tables.cos.shape == (2, 1, 3, 6, 10)
