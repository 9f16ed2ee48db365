"""Adaptive-frequency RoPE: any grid in the full model, relative positions, reduction to RoPE-Mixed, the ramp."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.layers.position import POSITION_ENCODINGS, create_position_encoding
from lib.layers.rope import RopeMixed, RotaryTables, patch_coords, rotate
from lib.layers.rope_adaptive import (
    RopeContentAdaptive, RopeGatedBank, RopeResolutionAdaptive, frequency_bank, yarn_ramp,
)
from lib.models import VisionTransformer

VARIANTS = ["rope_adaptive_res", "rope_adaptive_content", "rope_gated_bank"]
NEW_PARAMETERS = {"rope_adaptive_res": ["freqs"], "rope_adaptive_content": ["freqs", "scale_weight", "scale_bias"],
                  "rope_gated_bank": ["logits"]}
HEAD_DIM, HEADS, DEPTH, EMBED = 16, 2, 3, 32
TRAIN_GRID = (7, 7)


def tiny(pos_embed: str, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                             pos_embed=pos_embed)


def perturb(module: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    """Move every parameter off its initialisation (the content net starts at exactly zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)


def make(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = {
        "rope_adaptive_res": lambda: RopeResolutionAdaptive(HEAD_DIM, HEADS, DEPTH, TRAIN_GRID),
        "rope_adaptive_content": lambda: RopeContentAdaptive(EMBED, HEAD_DIM, HEADS, DEPTH),
        "rope_gated_bank": lambda: RopeGatedBank(HEAD_DIM, HEADS, DEPTH),
    }[kind]()
    perturb(module, seed, std=0.3)
    return module


@pytest.mark.parametrize("pos_embed", VARIANTS)
def test_registered(pos_embed):
    assert pos_embed in POSITION_ENCODINGS
    absolute, rotary, bias = create_position_encoding(pos_embed, EMBED, HEADS, DEPTH, TRAIN_GRID)
    assert absolute is None and bias is None
    assert type(rotary) is {"rope_adaptive_res": RopeResolutionAdaptive, "rope_adaptive_content": RopeContentAdaptive,
                            "rope_gated_bank": RopeGatedBank}[pos_embed]


@pytest.mark.parametrize("pos_embed", VARIANTS)
def test_full_model_any_grid_forward_backward(pos_embed):
    model = tiny(pos_embed)
    perturb(model.rope, seed=1, std=0.1)  # so the content net's LayerNorm gets gradient too
    for grid in [(7, 7), (5, 9), (14, 14), (3, 12)]:
        model.zero_grad()
        images = torch.randn(2, 1, 4 * grid[0], 4 * grid[1])
        logits, attns = model.forward_with_attention(images)
        assert logits.shape == (2, 10) and attns[0].shape == (2, 2, 1 + grid[0] * grid[1], 1 + grid[0] * grid[1])
        logits.square().sum().backward()
        for name, p in model.rope.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (grid, name)
            assert p.grad.abs().sum() > 0, (grid, name)


@pytest.mark.parametrize("pos_embed", VARIANTS)
def test_gradients_reach_new_parameters_at_init(pos_embed):
    model = tiny(pos_embed)
    model(torch.randn(2, 1, 28, 28)).square().sum().backward()
    for name in NEW_PARAMETERS[pos_embed]:
        grad = model.rope.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("pos_embed", VARIANTS)
def test_fused_and_explicit_attention_agree(pos_embed):
    model = tiny(pos_embed).eval()
    perturb(model.rope, seed=2, std=0.1)
    x = torch.randn(3, 1, 20, 36)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_with_attention(x)[0], atol=1e-5)


def rotated_score(tables: RotaryTables, q, k, layer: int, batch: int, head: int, i: int, j: int) -> torch.Tensor:
    """q rotated as token i, k rotated as token j (token indices include the prefix), in float64."""
    cos, sin = tables.layer(layer)
    b = batch if cos.shape[0] > 1 else 0
    h = head if cos.shape[1] > 1 else 0
    c, s = cos[b, h].double(), sin[b, h].double()
    return rotate(q[None], c[i:i + 1], s[i:i + 1])[0] @ rotate(k[None], c[j:j + 1], s[j:j + 1])[0]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(VARIANTS), h=st.integers(1, 16), w=st.integers(1, 16), seed=st.integers(0, 2**16),
       data=st.data())
def test_scores_depend_only_on_offset_within_an_image(kind, h, w, seed, data):
    module = make(kind, seed)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(3, 1 + h * w, EMBED, generator=generator)
    tables = module((h, w), tokens, num_prefix_tokens=1)
    ys = st.integers(0, h - 1)
    xs = st.integers(0, w - 1)
    y1, x1, y2, x2 = data.draw(ys), data.draw(xs), data.draw(ys), data.draw(xs)
    dy = data.draw(st.integers(-min(y1, y2), h - 1 - max(y1, y2)))
    dx = data.draw(st.integers(-min(x1, x2), w - 1 - max(x1, x2)))
    token = lambda y, x: 1 + y * w + x  # noqa: E731  (row-major after one prefix token)
    q, k = torch.randn(2, HEAD_DIM, generator=generator, dtype=torch.float64)
    for layer in range(DEPTH):
        for batch in range(3):
            for head in range(HEADS):
                score = rotated_score(tables, q, k, layer, batch, head, token(y1, x1), token(y2, x2))
                shifted = rotated_score(
                    tables, q, k, layer, batch, head, token(y1 + dy, x1 + dx), token(y2 + dy, x2 + dx))
                assert torch.allclose(score, shifted, atol=1e-4, rtol=1e-4), (layer, batch, head)


def test_offset_property_is_not_vacuous():
    module = make("rope_adaptive_content", 0)
    tables = module((6, 6), torch.randn(1, 37, EMBED), 1)
    q, k = torch.randn(2, HEAD_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(rotated_score(tables, q, k, 0, 0, 0, 1, 2), rotated_score(tables, q, k, 0, 0, 0, 1, 4))


# --- resolution-adaptive -------------------------------------------------------------------------------------------

def mixed_twin(module: RopeResolutionAdaptive | RopeContentAdaptive) -> RopeMixed:
    twin = RopeMixed(HEAD_DIM, HEADS, DEPTH)
    with torch.no_grad():
        twin.freqs.copy_(module.freqs)
    return twin


@pytest.mark.parametrize("grid", [TRAIN_GRID, (5, 7), (3, 2), (7, 1)])
def test_resolution_adaptive_is_rope_mixed_up_to_the_training_grid(grid):
    module = make("rope_adaptive_res", 3)
    ours, mixed = module(grid, torch.zeros(1), 1), mixed_twin(module)(grid, torch.zeros(1), 1)
    assert torch.equal(ours.cos, mixed.cos) and torch.equal(ours.sin, mixed.sin)


@pytest.mark.parametrize("grid", [(14, 14), (7, 12), (9, 7)])
def test_resolution_adaptive_differs_beyond_the_training_grid(grid):
    module = make("rope_adaptive_res", 3)
    ours, mixed = module(grid, torch.zeros(1), 1), mixed_twin(module)(grid, torch.zeros(1), 1)
    assert not torch.allclose(ours.cos, mixed.cos, atol=1e-3)


def test_resolution_adaptive_model_equals_rope_mixed_model_at_training_resolution_only():
    adaptive, mixed = tiny("rope_adaptive_res").eval(), tiny("rope_mixed").eval()
    mixed.load_state_dict(adaptive.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(adaptive(x), mixed(x))
        big = torch.randn(2, 1, 56, 44)
        assert not torch.allclose(adaptive(big), mixed(big), atol=1e-4)


@pytest.mark.parametrize("name", [name for name, spec in POSITION_ENCODINGS.items() if spec.test_time_of])
def test_test_time_encodings_run_on_the_weights_of_their_trained_encoding(name):
    """What `weights_from` relies on: the trained model's state dict loads strictly, and the logits at the
    training resolution are the trained model's, bit for bit."""
    trained = tiny(POSITION_ENCODINGS[name].test_time_of, seed=3).eval()
    perturb(trained, 1)
    test_time = tiny(name, seed=4).eval()
    test_time.load_state_dict(trained.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 1, 28, 28)
        assert torch.equal(test_time(x), trained(x))


def test_ramp_matches_hand_computed_case():
    """Training grid 4 x 4, test grid 4 x 8 (wider only), ramp alpha = 1, beta = 2 periods.

    x components completing r = 0.5, 1.5 and 3 periods over the 4 training columns, f = 2 pi r / 4:
    s_x = 4 / 8 = 0.5, gamma = 0, 0.5, 1, so the factors are 0.5, 0.5 + 0.5 * 0.5 = 0.75 and 1.
    y is not larger than in training (s_y = 1), so fy is kept whatever its ramp.
    """
    module = RopeResolutionAdaptive(head_dim=8, num_heads=1, depth=1, train_grid_hw=(4, 4), alpha=1.0, beta=2.0)
    fx = torch.tensor([2 * math.pi * r / 4 for r in (0.5, 1.5, 3.0)] + [-2 * math.pi * 1.5 / 4])  # sign is irrelevant
    fy = torch.tensor([0.3, -1.0, 0.05, 2.0])
    with torch.no_grad():
        module.freqs.copy_(torch.stack([fx, fy]).view(2, 1, 1, 4))
    expected_fx = fx * torch.tensor([0.5, 0.75, 1.0, 0.75])
    got = module.frequencies_at((4, 8))[:, 0, 0]
    assert torch.allclose(got[0], expected_fx, atol=1e-6) and torch.equal(got[1], fy)
    # the tables use these frequencies: pair 1 at column 5, row 2 is turned by 0.75 * fx * 5 + fy * 2
    tables = module((4, 8), torch.zeros(1), num_prefix_tokens=0)
    angle = 0.75 * float(fx[1]) * 5 + float(fy[1]) * 2
    assert math.isclose(tables.cos[0, 0, 0, 2 * 8 + 5, 2 * 1].item(), math.cos(angle), abs_tol=1e-5)  # full width: pair p at 2p, 2p+1
    # both axes grown to 4 x 4 -> 8 x 12: s_y = 0.5; fy components of 0.3 -> r = 0.19 and 2.0 -> r = 1.27
    factors_y = module.axis_factors((8, 12))[1, 0, 0]
    r = 4 * fy.abs() / (2 * math.pi)
    assert torch.allclose(factors_y, 0.5 + 0.5 * ((r - 1) / (2 - 1)).clamp(0, 1), atol=1e-6)
    assert torch.allclose(module.axis_factors((8, 12))[0, 0, 0], 1 / 3 + 2 / 3 * torch.tensor([0.0, 0.5, 1.0, 0.5]))


def test_yarn_ramp():
    r = torch.tensor([0.0, 1.0, 1.25, 1.5, 2.0, 10.0])
    assert torch.allclose(yarn_ramp(r, 1.0, 2.0), torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="beta > alpha"):
        RopeResolutionAdaptive(8, 1, 1, (4, 4), alpha=2.0, beta=2.0)


# --- content-adaptive ----------------------------------------------------------------------------------------------

def test_content_adaptive_is_rope_mixed_at_init():
    torch.manual_seed(0)
    module = RopeContentAdaptive(EMBED, HEAD_DIM, HEADS, DEPTH)
    tokens = torch.randn(4, 1 + 30, EMBED)
    ours, mixed = module((5, 6), tokens, 1), mixed_twin(module)((5, 6), tokens, 1)
    assert ours.cos.shape == (DEPTH, 4, HEADS, 31, HEAD_DIM)
    assert torch.equal(ours.cos, mixed.cos.expand_as(ours.cos)) and torch.equal(ours.sin, mixed.sin.expand_as(ours.sin))
    assert torch.equal(module.scales(tokens, 1), torch.ones(DEPTH, 4, HEADS))


def test_content_adaptive_model_equals_rope_mixed_model_at_init():
    adaptive, mixed = tiny("rope_adaptive_content").eval(), tiny("rope_mixed").eval()
    mixed.load_state_dict({k: v for k, v in adaptive.state_dict().items() if k in mixed.state_dict()})
    x = torch.randn(2, 1, 36, 20)
    with torch.no_grad():
        assert torch.equal(adaptive(x), mixed(x))


def test_content_adaptive_tables_differ_between_images_after_training():
    module = make("rope_adaptive_content", 5)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1 + 20, EMBED, generator=generator)
    other = torch.randn(1, 1 + 20, EMBED, generator=generator) * 3 + 1
    tables = module((4, 5), torch.cat([image, other, image]), 1)
    assert not torch.allclose(tables.cos[:, 0], tables.cos[:, 1], atol=1e-3)
    assert torch.equal(tables.cos[:, 0], tables.cos[:, 2])  # same image, same tables
    assert torch.equal(tables.cos[:, :, :, 0], torch.ones_like(tables.cos[:, :, :, 0]))  # CLS not rotated
    scales = module.scales(torch.cat([image, other]), 1)
    assert ((scales >= 0.25 - 1e-6) & (scales <= 4 + 1e-6)).all() and not torch.allclose(scales[:, 0], scales[:, 1])


def test_content_adaptive_scales_angles_by_one_factor_per_image_layer_head():
    module = make("rope_adaptive_content", 6)
    tokens = torch.randn(2, 1 + 12, EMBED)
    x, y = patch_coords((3, 4))
    scales = module.scales(tokens, 1)  # (L, B, H)
    angles = (module.freqs[0][..., None, :] * x[:, None] + module.freqs[1][..., None, :] * y[:, None])  # (L, H, N, P)
    expected = torch.cos(angles[:, None] * scales[..., None, None])
    assert torch.allclose(module((3, 4), tokens, 1).cos[..., 1:, 0::2], expected, atol=1e-5)  # pair p at 2p


# --- gated bank ----------------------------------------------------------------------------------------------------

def test_gated_bank_layout_and_init():
    bank = frequency_bank(16, 10.0, num_directions=8, magnitude_scales=(0.5, 1.0, 2.0))
    assert bank.shape == (2, 8, 25) and torch.equal(bank[..., -1], torch.zeros(2, 8))
    magnitudes = torch.tensor([1 / 10 ** (4 * i / 16) for i in range(4)]).repeat(2)
    assert torch.allclose(bank[:, :, 8 + 2], torch.stack([torch.zeros(8), magnitudes]), atol=1e-6)  # sigma 1, 90 deg
    torch.manual_seed(0)
    module = RopeGatedBank(16, num_heads=3, depth=2)
    freqs = module.effective_frequencies()
    assert freqs.shape == (2, 2, 3, 8)
    w0 = math.exp(5) / (math.exp(5) + 24)
    assert torch.allclose(freqs.norm(dim=0), (w0 - (1 - w0) / 24) * magnitudes.expand(2, 3, 8), atol=1e-5)
    assert torch.allclose((freqs[..., 0] * freqs[..., 4]).sum(0), torch.zeros(2, 3), atol=1e-6)  # perpendicular halves
    assert torch.allclose(module.gates().sum(-1), torch.ones(2, 3, 8))


def test_gated_bank_uniform_gate_is_off_and_zero_entry_turns_pairs_off():
    module = RopeGatedBank(16, num_heads=1, depth=1)
    with torch.no_grad():
        module.logits.zero_()
    assert torch.allclose(module.effective_frequencies(), torch.zeros(2, 1, 1, 8), atol=1e-6)
    with torch.no_grad():
        module.logits[..., -1] = 50.0  # every pair picks the zero frequency: identity rotation everywhere
    cos, sin = module((4, 4), torch.zeros(1), 1).layer(0)
    assert torch.allclose(cos, torch.ones_like(cos)) and torch.allclose(sin, torch.zeros_like(sin), atol=1e-6)


def test_no_weight_decay_lists():
    assert RopeResolutionAdaptive(8, 1, 1, (4, 4)).no_weight_decay() == {"freqs"}
    assert RopeGatedBank(8, 1, 1).no_weight_decay() == {"logits"}
    content = RopeContentAdaptive(EMBED, 8, 1, 1)
    assert "scale_weight" not in content.no_weight_decay()
    assert content.no_weight_decay() | {"scale_weight"} == {n for n, _ in content.named_parameters()}
    # the model excludes at least these (today it excludes every rope parameter, scale_weight included)
    assert {f"rope.{n}" for n in content.no_weight_decay()} <= tiny("rope_adaptive_content").no_weight_decay()
