"""RoPE-Mixed on normalised coordinates: equal to RoPE-Mixed at the training grid, the box augmentation, any grid."""
import math

import pytest
import torch
from einops import rearrange

from lib.layers.position import POSITION_ENCODINGS, create_position_encoding
from lib.layers.rope import RopeMixed, RotaryTables, rotate_complex, rotation_angles
from lib.layers.rope_normalized import RopeMixedNormalized, normalized_coords
from lib.models import VisionTransformer

HEAD_DIM, HEADS, DEPTH = 16, 2, 3


def pair(train_grid, seed: int = 0, **kwargs) -> tuple[RopeMixed, RopeMixedNormalized]:
    """RoPE-Mixed and the normalised variant with the same (perturbed, so not just the init) frequencies, eval mode."""
    torch.manual_seed(seed)
    mixed = RopeMixed(HEAD_DIM, HEADS, DEPTH)
    with torch.no_grad():
        mixed.freqs.add_(0.2 * torch.randn_like(mixed.freqs))
    normalized = RopeMixedNormalized(HEAD_DIM, HEADS, DEPTH, train_grid, **kwargs)
    with torch.no_grad():
        normalized.freqs.copy_(mixed.freqs)
    return mixed.eval(), normalized.eval()


def scores(rope, grid, q, k, num_prefix_tokens=1) -> torch.Tensor:
    """(depth, B, heads, N, N) rotated q . rotated k for every layer's tables."""
    tables = rope(grid, q, num_prefix_tokens)
    return torch.stack([rotate_complex(q, tables.rotation(i)) @ rotate_complex(k, tables.rotation(i)).transpose(-2, -1)
                        for i in range(DEPTH)])


def qk(grid, batch=2, num_prefix_tokens=1, seed=1, unit=False):
    """Queries and keys (B, heads, N, D); with unit=True unit vectors (scores in [-1, 1]: absolute tolerances)."""
    generator = torch.Generator().manual_seed(seed)
    n = num_prefix_tokens + grid[0] * grid[1]
    q, k = torch.randn(2, batch, HEADS, n, HEAD_DIM, generator=generator).unbind(0)
    return (q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)) if unit else (q, k)


def tiny(pos_embed: str, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                             pos_embed=pos_embed)


def test_registered_with_the_training_grid():
    assert POSITION_ENCODINGS["rope_mixed_norm"].rotary and not POSITION_ENCODINGS["rope_mixed_norm"].test_time_of
    absolute, rotary, bias = create_position_encoding("rope_mixed_norm", 32, HEADS, DEPTH, (6, 9))
    assert absolute is None and bias is None and type(rotary) is RopeMixedNormalized
    assert rotary.train_grid_hw == (6, 9) and (rotary.rescale, rotary.jitter, rotary.shift) == (2.0, None, None)
    assert type(tiny("rope_mixed_norm").rope) is RopeMixedNormalized


def test_patch_centres_fill_the_box():
    x, y = normalized_coords((2, 4))
    assert torch.allclose(x[:4], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(y, torch.tensor([-0.5] * 4 + [0.5] * 4))
    x_dense, _ = normalized_coords((2, 8))
    assert x_dense.min() > -1 and x_dense.max() < 1 and x_dense[:8].diff().allclose(torch.tensor(0.25))


def test_frequencies_are_the_integer_ones_times_the_half_extent():
    _, normalized = pair((6, 10))
    expected = torch.stack([normalized.freqs[0] * 5, normalized.freqs[1] * 3])
    assert torch.allclose(normalized.normalized_frequencies(), expected)


@pytest.mark.parametrize("train_grid", [(7, 7), (5, 9), (12, 3)])
def test_scores_equal_rope_mixed_at_the_training_grid(train_grid):
    """x_int = (x_n + 1) W0 / 2 - 0.5, measured from the anchor: the scores (CLS included) are RoPE-Mixed's."""
    mixed, normalized = pair(train_grid)
    q, k = qk(train_grid, unit=True)
    with torch.no_grad():
        ours, reference = scores(normalized, train_grid, q, k), scores(mixed, train_grid, q, k)
    assert (ours - reference).abs().max() < 1e-5
    # measured without the anchor, the angles are RoPE-Mixed's plus a constant phase per pair: patch-patch scores
    # still agree (it cancels in q . k), the CLS-patch ones do not (why the prefix tokens sit at the anchor)
    x, y = normalized.coordinates(train_grid)
    angles = rotation_angles(normalized.normalized_frequencies(), x, y)
    unanchored = RotaryTables.from_angles(rearrange(angles, "l h n p -> l 1 h n p"), 1)
    rotated = [(rotate_complex(q, unanchored.rotation(i)), rotate_complex(k, unanchored.rotation(i))) for i in range(DEPTH)]
    plain = torch.stack([a @ b.transpose(-2, -1) for a, b in rotated])
    assert (plain[..., 1:, 1:] - reference[..., 1:, 1:]).abs().max() < 1e-5
    assert not torch.allclose(plain[..., 0, 1:], reference[..., 0, 1:], atol=1e-2)


@pytest.mark.parametrize("test_grid", [(14, 14), (4, 4), (7, 12)])
def test_other_grids_interpolate_positions(test_grid):
    """Off the training grid the patch-patch scores are RoPE-Mixed's at positions scaled by W0 / W (and H0 / H)."""
    train_grid = (7, 7)
    mixed, normalized = pair(train_grid)
    q, k = qk(test_grid, unit=True)
    with torch.no_grad():
        ours = scores(normalized, test_grid, q, k)
        assert not torch.allclose(ours[..., 1:, 1:], scores(mixed, test_grid, q, k)[..., 1:, 1:], atol=1e-3)
        # RoPE-Mixed with each axis's frequency scaled by the interpolation factor gives the same scores
        interpolated = RopeMixed(HEAD_DIM, HEADS, DEPTH).eval()
        factors = torch.tensor([train_grid[1] / test_grid[1], train_grid[0] / test_grid[0]]).view(2, 1, 1, 1)
        interpolated.freqs.copy_(mixed.freqs * factors)
        assert (ours[..., 1:, 1:] - scores(interpolated, test_grid, q, k)[..., 1:, 1:]).abs().max() < 1e-5


def test_full_model_equals_rope_mixed_at_the_training_grid_with_its_weights():
    """A RoPE-Mixed model's weights load unchanged (same parameters) and give its logits at the training grid."""
    mixed, normalized = tiny("rope_mixed", seed=3).eval(), tiny("rope_mixed_norm", seed=4).eval()
    normalized.load_state_dict(mixed.state_dict())
    with torch.no_grad():
        images = torch.randn(4, 1, 28, 28)
        assert (normalized(images) - mixed(images)).abs().max() < 1e-5
        larger = torch.randn(4, 1, 56, 40)
        assert not torch.allclose(normalized(larger), mixed(larger), atol=1e-4)


def relative_property_holds(rope, grid) -> None:
    """With one q and one k vector at every position, the score depends on the offset only."""
    h, w = grid
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(HEAD_DIM, generator=generator).expand(1, HEADS, h * w, HEAD_DIM)
    k = torch.randn(HEAD_DIM, generator=generator).expand(1, HEADS, h * w, HEAD_DIM)
    s = scores(rope, grid, q.contiguous(), k.contiguous(), num_prefix_tokens=0)[:, 0]  # (depth, heads, N, N)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x, y = x.flatten(), y.flatten()
    offset = (y[None, :] - y[:, None]) * (2 * w) + (x[None, :] - x[:, None])
    groups = 0
    for value in offset.unique():
        members = s[..., offset == value]
        groups += members.shape[-1] > 1
        assert (members.amax(-1) - members.amin(-1)).max() < 1e-4, value
    assert groups > 0 and s.std() > 0.1  # the check compared something, and scores do vary with the offset


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (3, 12)])
def test_relative_position_property_within_a_grid_also_while_training(grid):
    _, normalized = pair((7, 7), rescale=2.0, jitter=1.5, shift=0.3)
    relative_property_holds(normalized.eval(), grid)
    torch.manual_seed(0)
    relative_property_holds(normalized.train(), grid)


def test_augmentation_is_deterministic_per_seed_new_per_pass_and_off_in_eval():
    _, normalized = pair((7, 7), rescale=2.0, jitter=1.3, shift=0.2)
    x = torch.zeros(1)

    def tables(seed):
        torch.manual_seed(seed)
        return normalized((7, 7), x, 1).phasors

    normalized.train()
    assert torch.equal(tables(0), tables(0))
    assert not torch.allclose(tables(0), tables(1), atol=1e-3)
    torch.manual_seed(0)
    first, second = normalized((7, 7), x, 1).phasors, normalized((7, 7), x, 1).phasors
    assert not torch.allclose(first, second, atol=1e-3)  # one draw per forward pass
    normalized.eval()
    assert torch.equal(tables(0), tables(1))
    x_n, y_n = normalized.coordinates((7, 7))
    reference_x, reference_y = normalized_coords((7, 7))
    assert torch.equal(x_n, reference_x) and torch.equal(y_n, reference_y)


def test_rescale_is_one_shared_log_uniform_factor_within_range():
    _, normalized = pair((7, 7), rescale=2.0)
    normalized.train()
    reference_x, reference_y = normalized_coords((5, 9))
    torch.manual_seed(0)
    factors = []
    for _ in range(200):
        x, y = normalized.coordinates((5, 9))
        sx, sy = x[0] / reference_x[0], y[0] / reference_y[0]  # the corner patch: no zero coordinate
        assert torch.allclose(x, sx * reference_x) and torch.allclose(y, sy * reference_y)
        assert torch.isclose(sx, sy)  # shared by both axes (no jitter)
        factors.append(sx.log())
    logs = torch.stack(factors) / math.log(2.0)  # U(-1, 1) if log-uniform in [1/2, 2]
    assert logs.abs().max() <= 1 + 1e-6 and logs.min() < -0.8 and logs.max() > 0.8 and abs(logs.mean()) < 0.15


def test_jitter_scales_the_axes_independently():
    _, normalized = pair((7, 7), rescale=None, jitter=1.5)
    normalized.train()
    torch.manual_seed(0)
    scale, offset = zip(*(normalized.sample_box() for _ in range(50)))
    scale = torch.stack(scale)
    assert torch.equal(torch.stack(offset), torch.zeros(50, 2))
    assert (scale.log().abs() <= math.log(1.5) + 1e-6).all() and not torch.allclose(scale[:, 0], scale[:, 1])


def test_shift_moves_the_box_against_the_prefix_tokens_only_rescale_changes_patch_scores():
    q, k = qk((5, 9))
    _, shifted = pair((5, 9), rescale=None, shift=0.5)
    reference = scores(shifted.eval(), (5, 9), q, k)
    torch.manual_seed(0)
    moved = scores(shifted.train(), (5, 9), q, k)
    assert (moved[..., 1:, 1:] - reference[..., 1:, 1:]).abs().max() < 1e-4  # a constant phase between patches
    assert not torch.allclose(moved[..., 0, 1:], reference[..., 0, 1:], atol=1e-3)  # CLS-patch scores move
    _, rescaled = pair((5, 9), rescale=2.0)
    torch.manual_seed(0)
    assert not torch.allclose(scores(rescaled.train(), (5, 9), q, k)[..., 1:, 1:], reference[..., 1:, 1:], atol=1e-3)


def test_identity_without_augmentation_and_bad_arguments():
    _, plain = pair((7, 7), rescale=None)
    plain.train()
    torch.manual_seed(0)
    trained = plain((7, 7), torch.zeros(1), 1).phasors
    assert torch.equal(trained, plain.eval()((7, 7), torch.zeros(1), 1).phasors)
    for kwargs in ({"rescale": 0.5}, {"jitter": 0.9}, {"shift": -0.1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            RopeMixedNormalized(HEAD_DIM, HEADS, DEPTH, (7, 7), **kwargs)


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (14, 14), (3, 12), (1, 5)])
def test_full_model_any_grid_trains(grid):
    model = tiny("rope_mixed_norm").train()
    torch.manual_seed(0)
    logits = model(torch.randn(2, 1, 4 * grid[0], 4 * grid[1]))
    logits.square().sum().backward()
    grad = model.rope.freqs.grad
    assert logits.shape == (2, 10) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert "rope.freqs" in model.no_weight_decay()
