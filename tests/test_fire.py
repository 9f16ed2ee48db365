"""2D FIRE: a bias of offsets only, its inputs by hand, softmax attention's logit-bias path, the model."""
import math

import pytest
import torch

from lib.layers.attention import ATTENTION_LAYERS, SoftmaxAttention, create_attention
from lib.layers.attention.base import softmax_attention
from lib.layers.fire import FireBias, relative_index
from lib.layers.position import POSITION_ENCODINGS, create_position_encoding
from lib.models import VisionTransformer

HEADS, DEPTH, DIM = 2, 3, 16
GRIDS = [(7, 7), (5, 9), (12, 3), (1, 1), (14, 14)]


def fire(train_grid=(7, 7), seed: int = 0, **kwargs) -> FireBias:
    """A FIRE module moved off its initialisation (the output layer starts small)."""
    torch.manual_seed(seed)
    module = FireBias(HEADS, DEPTH, train_grid, **kwargs)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        module.fc2_weight.normal_(generator=generator)
        module.fc2_bias.normal_(generator=generator)
        module.c.mul_(1 + 0.3 * torch.rand(module.c.shape, generator=generator))
    return module


def tiny(pos_embed: str = "fire", seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                             pos_embed=pos_embed, **kwargs)


def offset_groups(grid):
    """(H*W, H*W) integer id of the key-minus-query offset (dy, dx), independent of relative_index."""
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x, y = x.flatten(), y.flatten()
    return (y[None, :] - y[:, None]) * 1000 + (x[None, :] - x[:, None])


def test_registered():
    spec = POSITION_ENCODINGS["fire"]
    assert spec.bias.module is FireBias and spec.rotary is None and spec.absolute is None
    absolute, rotary, bias = create_position_encoding("fire", 32, HEADS, DEPTH, (6, 8))
    assert absolute is None and rotary is None and type(bias) is FireBias
    assert bias.train_grid_hw == (6, 8) and torch.equal(bias.threshold, torch.tensor([[8.0, 6.0]] * DEPTH))
    model = tiny()
    assert type(model.pos_bias) is FireBias and model.rope is None and model.abs_pos is None


@pytest.mark.parametrize("grid", GRIDS)
def test_shapes_and_zero_prefix_rows_and_columns(grid):
    n = grid[0] * grid[1]
    bias = fire()(grid, num_prefix_tokens=1)
    assert bias.shape == (DEPTH, 1, HEADS, 1 + n, 1 + n) and torch.isfinite(bias).all()
    assert torch.equal(bias[..., 0, :], torch.zeros_like(bias[..., 0, :]))
    assert torch.equal(bias[..., :, 0], torch.zeros_like(bias[..., :, 0]))
    assert fire()(grid, num_prefix_tokens=0).shape == (DEPTH, 1, HEADS, n, n)


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (12, 3), (14, 14)])
def test_bias_depends_only_on_the_offset(grid):
    """Every (query, key) pair with the same (dx, dy) gets the same bias, per layer and head; offsets differ."""
    bias = fire()(grid, num_prefix_tokens=0)[:, 0]  # (depth, heads, N, N)
    groups = offset_groups(grid)
    means = []
    for value in groups.unique():
        members = bias[..., groups == value]
        assert torch.equal(members.amax(-1), members.amin(-1)), value
        means.append(members[..., 0])
    per_offset = torch.stack(means, -1)  # (depth, heads, offsets)
    assert per_offset.shape[-1] == (2 * grid[0] - 1) * (2 * grid[1] - 1)
    # not a constant: the bias varies with the offset, and differs between layers and heads
    assert (per_offset.std(-1) > 1e-2).all()
    assert not torch.allclose(per_offset[0], per_offset[1]) and not torch.allclose(per_offset[:, 0], per_offset[:, 1])


def test_relative_index_by_hand():
    index = relative_index((2, 3))  # table (3, 5): row dy + 1, column dx + 2
    assert index[0, 0] == 1 * 5 + 2  # (0, 0)
    assert index[0, 5] == 2 * 5 + 4  # query (0, 0) -> key (1, 2): dy = 1, dx = 2
    assert index[5, 0] == 0 * 5 + 0  # query (1, 2) -> key (0, 0): dy = -1, dx = -2
    assert index[1, 0] == 1 * 5 + 1  # dx = -1


def test_inputs_by_hand():
    """u = sign(dx) log(c |dx| + 1) / log(c max(L, W - 1) + 1): offsets keep their meaning up to the threshold,
    and are interpolated into [-1, 1] beyond it."""
    module = FireBias(HEADS, DEPTH, (7, 5), init_c=1.0, eps=0.0)  # L = (W0, H0) = (5, 7)
    with torch.no_grad():
        at_training = module.inputs((7, 5))[0]  # (2H - 1, 2W - 1, 2) = (13, 9, 2)
        smaller = module.inputs((3, 3))[0]
        larger = module.inputs((21, 20))[0]
    assert at_training.shape == (13, 9, 2)
    assert math.isclose(at_training[6, 4 + 3, 0].item(), math.log(4) / math.log(6), rel_tol=1e-6)  # dx = 3
    assert math.isclose(at_training[6, 4 - 3, 0].item(), -math.log(4) / math.log(6), rel_tol=1e-6)  # dx = -3
    assert math.isclose(at_training[6 + 2, 4, 1].item(), math.log(3) / math.log(8), rel_tol=1e-6)  # dy = 2
    assert at_training[6, 4].abs().max() == 0  # the zero offset
    # at or below the threshold an offset has its training input; above it the grid's extent normalises
    assert math.isclose(smaller[2, 2 + 2, 0].item(), math.log(3) / math.log(6), rel_tol=1e-6)
    assert math.isclose(larger[20, 19 + 3, 0].item(), math.log(4) / math.log(20), rel_tol=1e-6)
    assert math.isclose(larger[20, 19 + 19, 0].item(), 1.0, rel_tol=1e-6)  # the largest offset maps to 1
    assert larger.abs().max() <= 1


def test_the_model_adds_the_bias_to_the_logits_so_scores_depend_only_on_offsets():
    """End to end: with identical patch tokens (a constant image, no absolute embedding), the first block's logits
    between patches are a constant plus FIRE's bias, recovered as log attn[i, j] - log attn[i, CLS]."""
    model = tiny().eval()
    with torch.no_grad():
        model.pos_bias.fc2_weight.normal_(generator=torch.Generator().manual_seed(1))
        _, attns = model.forward_with_attention(torch.full((1, 1, 20, 36), 0.3))
        bias = model.pos_bias((5, 9), 1)[0, 0]  # first block, (heads, N, N)
    logits = attns[0][0].log()
    relative = logits[:, 1:, 1:] - logits[:, 1:, :1]  # (heads, HW, HW): bias + a constant per head
    expected = bias[:, 1:, 1:] - bias[:, 1:, :1]
    assert torch.allclose(relative - relative[:, :1, :1], expected - expected[:, :1, :1], atol=1e-4)
    groups = offset_groups((5, 9))
    for value in groups.unique():
        members = relative[:, groups == value]
        assert (members.amax(-1) - members.amin(-1)).max() < 1e-4
    assert relative.std() > 0.1


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (1, 1)])
def test_softmax_attention_with_bias_fused_equals_explicit_values_and_gradients(grid):
    torch.manual_seed(0)
    module = create_attention("softmax", dim=DIM * HEADS, num_heads=HEADS).eval()
    n = 1 + grid[0] * grid[1]
    x = torch.randn(2, n, DIM * HEADS)
    bias = fire()(grid, 1)[0].detach().requires_grad_(True)  # (1, heads, N, N)
    fused = module(x, grid, 1, bias=bias)
    explicit, attn = module(x, grid, 1, bias=bias, return_attn=True)
    assert torch.allclose(fused, explicit, atol=1e-5)
    # the explicit map is softmax(q k^T * scale + bias)
    q, k, _ = module.qkv(x).reshape(2, n, 3, HEADS, DIM).permute(2, 0, 3, 1, 4)
    assert torch.allclose(attn, ((q @ k.transpose(-2, -1)) * DIM ** -0.5 + bias).softmax(-1), atol=1e-6)
    g = torch.randn_like(fused)
    grad_fused, = torch.autograd.grad(fused, bias, g)
    grad_explicit, = torch.autograd.grad(explicit, bias, g)
    assert torch.allclose(grad_fused, grad_explicit, atol=1e-5) and grad_fused.abs().sum() > 0
    without, _ = module(x, grid, 1, return_attn=True)
    assert not torch.allclose(without, explicit, atol=1e-4) or n == 2  # the bias changes the output


def test_softmax_attention_combines_a_bias_with_a_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, HEADS, 6, DIM).unbind(0)
    bias = torch.randn(1, HEADS, 6, 6)
    mask = torch.rand(6, 6) > 0.4
    mask.fill_diagonal_(True)
    fused, _ = softmax_attention(q, k, v, 0.25, mask, 0.0, False, bias=bias)
    explicit, attn = softmax_attention(q, k, v, 0.25, mask, 0.0, True, bias=bias)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert torch.equal(attn[..., ~mask], torch.zeros_like(attn[..., ~mask]))


@pytest.mark.parametrize("size", [(28, 28), (20, 36), (48, 12), (4, 4)])
def test_model_fused_and_explicit_paths_agree(size):
    model = tiny().eval()
    with torch.no_grad():
        model.pos_bias.fc2_weight.mul_(50)  # a bias large enough to matter
        images = torch.randn(3, 1, *size)
        fused = model(images)
        explicit, attns = model.forward_with_attention(images)
        without = tiny("none").eval()
        without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pos_bias.")})
    assert torch.allclose(fused, explicit, atol=1e-5)
    n = 1 + (size[0] // 4) * (size[1] // 4)
    assert [a.shape for a in attns] == [(3, 2, n, n)] * 2
    assert torch.allclose(attns[0].sum(-1), torch.ones(3, 2, n), atol=1e-5)
    if n > 2:
        assert not torch.allclose(fused, without(images), atol=1e-4)  # FIRE's bias reaches the logits


def test_model_trains_a_step_and_its_logits_follow_the_mlp():
    model = tiny().train()
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {name: p.detach().clone() for name, p in model.pos_bias.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    for name, p in model.pos_bias.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    optimizer.step()
    assert all(not torch.equal(before[name], p) for name, p in model.pos_bias.named_parameters())
    model.eval()
    with torch.no_grad():
        reference = model(images)
        model.pos_bias.fc2_weight.add_(torch.randn_like(model.pos_bias.fc2_weight))
        assert not torch.allclose(model(images), reference, atol=1e-4)
        model.pos_bias.fc2_weight.zero_()
        model.pos_bias.fc2_bias.zero_()
        # a zero MLP output is a zero bias: the model is then the same network without position encoding
        without = tiny("none").eval()
        without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pos_bias.")})
        assert torch.allclose(model(images), without(images), atol=1e-6)


def test_weight_decay_spares_c_threshold_and_biases_only():
    names = tiny().no_weight_decay()
    assert {"pos_bias.c", "pos_bias.threshold", "pos_bias.fc1_bias", "pos_bias.fc2_bias"} <= names
    assert not {"pos_bias.fc1_weight", "pos_bias.fc2_weight"} & names


@pytest.mark.parametrize("attention", sorted(set(ATTENTION_LAYERS) - {"softmax"}))
def test_non_softmax_attention_refuses_a_bias(attention):
    with pytest.raises(ValueError, match=f"'fire'.*'{attention}'"):
        tiny(attention=attention)
    module = create_attention(attention, dim=DIM * HEADS, num_heads=HEADS)
    x = torch.randn(1, 1 + 9, DIM * HEADS)
    with pytest.raises(ValueError, match="does not take an attention-logit bias"):
        module(x, (3, 3), 1, bias=torch.zeros(1, HEADS, 10, 10))
    assert module(x, (3, 3), 1).shape == x.shape  # without a bias it works as before
    assert SoftmaxAttention.supports_bias and not type(module).supports_bias
