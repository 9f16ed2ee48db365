"""ComplexRotationAttention (ComplexFormer's CMHA): the polar score formula, its RoPE reduction, relative positions."""
import pytest
import torch
from einops import rearrange

from lib.layers.attention import ComplexRotationAttention, SoftmaxAttention
from lib.layers.rope import RotaryTables, mixed_frequencies, patch_coords, rotation_angles

DIM, HEADS = 32, 4
HEAD_DIM = DIM // HEADS
PAIRS = HEAD_DIM // 2


def make(**kwargs) -> ComplexRotationAttention:
    torch.manual_seed(0)
    return ComplexRotationAttention(DIM, HEADS, **kwargs).eval()


def randomize_rotation(module: ComplexRotationAttention, seed: int = 3) -> None:
    """alpha in [-1.5, 2.5] (non-integer, some negative), b in [-pi, pi]."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.semantic_scale.copy_(torch.rand(module.semantic_scale.shape, generator=generator) * 4 - 1.5)
        module.semantic_offset.copy_((torch.rand(module.semantic_offset.shape, generator=generator) * 2 - 1) * torch.pi)


def tokens(grid, batch=2, seed=0, num_prefix_tokens=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_prefix_tokens + grid[0] * grid[1], DIM, generator=generator)


def rope_for(grid, shift=(0.0, 0.0), seed=1, num_prefix_tokens=1):
    """RoPE-Mixed phasors (1, heads, N, P) for a grid whose patch coordinates are shifted by `shift`."""
    generator = torch.Generator().manual_seed(seed)
    freqs = mixed_frequencies(HEAD_DIM, HEADS, depth=1, theta=10.0, generator=generator)[:, 0]  # (2, heads, P)
    x, y = patch_coords(grid)
    angles = rotation_angles(freqs, x + shift[0], y + shift[1])  # (heads, N_patches, P)
    return RotaryTables.from_angles(angles[None, None], num_prefix_tokens).rotation(0)


def polar_attention(module: ComplexRotationAttention, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
    """softmax_j(scale * sum_p r_q r_k cos(alpha_h (theta_q - theta_k) + b_h + phi_i - phi_j)), by the formula.

    Everything explicit: moduli and phases of the (channel 2p, channel 2p + 1) pairs, all (i, j, p) phase terms
    materialized, the RoPE angle read off the phasor, alpha and b broadcast per head (or per head and pair)."""
    q, k, _ = rearrange(module.qkv(x), "b n (three h p two) -> three b h n p two", three=3, h=HEADS, two=2)
    r_q, r_k = q.norm(dim=-1), k.norm(dim=-1)
    theta_q, theta_k = torch.atan2(q[..., 1], q[..., 0]), torch.atan2(k[..., 1], k[..., 0])
    n = x.shape[1]
    phi = torch.zeros(1, HEADS, n, PAIRS) if rope is None else torch.angle(rope).expand(1, HEADS, n, PAIRS)
    alpha = module.semantic_scale.reshape(HEADS, -1)[:, None, None, :]  # (h, 1, 1, 1 | P)
    b = module.semantic_offset.reshape(HEADS, -1)[:, None, None, :]
    phase = (alpha * (theta_q[:, :, :, None, :] - theta_k[:, :, None, :, :]) + b
             + (phi[:, :, :, None, :] - phi[:, :, None, :, :]))  # (b, h, i, j, p)
    scores = module.scale * torch.einsum("bhip,bhjp,bhijp->bhij", r_q, r_k, torch.cos(phase))
    return scores.softmax(dim=-1)


@pytest.mark.parametrize("with_rope", [True, False])
def test_at_alpha_one_and_zero_offset_it_is_rope_softmax_attention(with_rope):
    module, softmax = make(), SoftmaxAttention(DIM, HEADS).eval()
    missing, unexpected = softmax.load_state_dict(module.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["semantic_offset", "semantic_scale"]
    grid = (5, 6)
    x = tokens(grid)
    rope = rope_for(grid) if with_rope else None
    with torch.no_grad():
        out, attn = module(x, grid, 1, rope=rope, return_attn=True)
        reference, reference_attn = softmax(x, grid, 1, rope=rope, return_attn=True)
        assert torch.allclose(module(x, grid, 1, rope=rope), softmax(x, grid, 1, rope=rope), atol=1e-5)
        assert torch.allclose(out, reference, atol=1e-5) and torch.allclose(attn, reference_attn, atol=1e-5)
        randomize_rotation(module)  # not vacuous: the adaptation changes the maps
        assert (module(x, grid, 1, rope=rope, return_attn=True)[1] - reference_attn).abs().max() > 1e-2


@pytest.mark.parametrize("per_pair", [False, True])
@pytest.mark.parametrize("with_rope", [True, False])
def test_attention_equals_the_polar_formula_for_random_alpha_and_offset(per_pair, with_rope):
    module = make(per_pair=per_pair)
    randomize_rotation(module)
    grid = (4, 5)
    x = tokens(grid)
    rope = rope_for(grid) if with_rope else None
    with torch.no_grad():
        _, attn = module(x, grid, 1, rope=rope, return_attn=True)
        assert torch.allclose(attn, polar_attention(module, x, rope), atol=1e-5)
        module.semantic_scale.fill_(1.0)
        module.semantic_offset.zero_()
        assert (polar_attention(module, x, rope) - attn).abs().max() > 1e-2  # the random alpha, b mattered


def test_alpha_zero_ignores_the_semantic_phase():
    """alpha = 0, b = 0, no RoPE: the score is scale * <r_q, r_k>, blind to each pair's phase."""
    module = make()
    with torch.no_grad():
        module.semantic_scale.zero_()
    grid = (3, 4)
    x = tokens(grid)
    with torch.no_grad():
        _, attn = module(x, grid, 1, return_attn=True)
        q, k, _ = rearrange(module.qkv(x), "b n (three h p two) -> three b h n p two", three=3, h=HEADS, two=2)
        moduli = (module.scale * q.norm(dim=-1) @ k.norm(dim=-1).transpose(-2, -1)).softmax(-1)
    assert torch.allclose(attn, moduli, atol=1e-5)


@pytest.mark.parametrize("shift", [(9.0, -6.0), (41.0, 17.0)])
def test_attention_depends_on_positions_only_through_offsets(shift):
    """Shifting every patch coordinate leaves the maps unchanged, also when the RoPE angles wrap past 2 pi.

    Patches only (no CLS): CLS has no position (identity rotation), so its scores with patches do change."""
    module = make()
    randomize_rotation(module)
    grid = (4, 6)
    x = tokens(grid, num_prefix_tokens=0)
    with torch.no_grad():
        out, attn = module(x, grid, 0, rope=rope_for(grid, num_prefix_tokens=0), return_attn=True)
        shifted = rope_for(grid, shift, num_prefix_tokens=0)
        shifted_out, shifted_attn = module(x, grid, 0, rope=shifted, return_attn=True)
        assert torch.allclose(attn, shifted_attn, atol=1e-5) and torch.allclose(out, shifted_out, atol=1e-5)
        assert torch.allclose(attn, polar_attention(module, x, shifted), atol=1e-5)
        # not vacuous: the positions do matter, and the shift moves phases by more than a turn
        assert (module(x, grid, 0, return_attn=True)[1] - attn).abs().max() > 1e-2
    fx, fy = mixed_frequencies(HEAD_DIM, HEADS, 1, 10.0, torch.Generator().manual_seed(1))[:, 0]
    assert (fx * shift[0] + fy * shift[1]).abs().max() > 2 * torch.pi


def test_each_head_has_its_own_rotation():
    """Changing alpha and b of head 1 changes head 1's map and no other."""
    module = make()
    grid = (4, 4)
    x = tokens(grid)
    rope = rope_for(grid)
    with torch.no_grad():
        _, before = module(x, grid, 1, rope=rope, return_attn=True)
        module.semantic_scale[1] = 0.3
        module.semantic_offset[1] = 1.0
        _, after = module(x, grid, 1, rope=rope, return_attn=True)
    changed = (after - before).abs().amax(dim=(0, 2, 3))
    assert changed[1] > 1e-2 and torch.all(changed[[0, 2, 3]] == 0)


@pytest.mark.parametrize("with_rope", [True, False])
def test_alpha_and_offset_get_gradients(with_rope):
    module = make().train()
    grid = (3, 5)
    x = tokens(grid)
    rope = rope_for(grid) if with_rope else None
    module(x, grid, 1, rope=rope).square().mean().backward()
    for param in (module.semantic_scale, module.semantic_offset):
        assert param.grad is not None and torch.isfinite(param.grad).all() and (param.grad.abs() > 0).all()


def test_a_pair_at_the_origin_gives_finite_gradients():
    """atan2 has a 0/0 gradient at (0, 0): a zero qkv output (zero weights and bias) must still train."""
    module = make().train()
    randomize_rotation(module)
    with torch.no_grad():
        module.qkv.weight[:2 * DIM].zero_()
        module.qkv.bias[:2 * DIM].zero_()  # every query and key pair is exactly 0
    grid = (2, 3)
    x = tokens(grid).requires_grad_()
    module(x, grid, 1, rope=rope_for(grid)).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_parameter_count_and_no_weight_decay():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    softmax = count(SoftmaxAttention(64, 4))
    assert count(ComplexRotationAttention(64, 4)) == softmax + 2 * 4 == 16648
    assert count(ComplexRotationAttention(64, 4, per_pair=True)) == softmax + 2 * 4 * 8
    module = ComplexRotationAttention(64, 4)
    assert module.semantic_scale.ndim == module.semantic_offset.ndim == 1  # timm's factory: 1-D params undecayed


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even head_dim"):
        ComplexRotationAttention(12, 4)
