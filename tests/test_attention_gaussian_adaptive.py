"""Gaussian Adaptive Attention: the Gaussian weights, the reduction to softmax attention, the Importance Factor."""
import math

import pytest
import torch

from lib.layers.attention import GaussianAdaptiveAttention, SoftmaxAttention
from lib.layers.rope import RopeMixed

DIM, HEADS = 32, 4
HEAD_DIM = DIM // HEADS


def make(**kwargs) -> GaussianAdaptiveAttention:
    torch.manual_seed(0)
    return GaussianAdaptiveAttention(DIM, HEADS, **kwargs).eval()


def tokens(grid, batch=2, num_prefix_tokens=1, seed=0, dim=DIM):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_prefix_tokens + grid[0] * grid[1], dim, generator=generator)


def rope_tables(grid, x, num_prefix_tokens=1):
    torch.manual_seed(1)
    return RopeMixed(HEAD_DIM, HEADS, depth=1)(grid, x, num_prefix_tokens).rotation(0).detach()


def set_gaussians(module, offsets, scales):
    """offsets, scales: nested lists [head][gaussian]."""
    with torch.no_grad():
        module.mean_offsets.copy_(torch.tensor(offsets).flatten())
        module.std_scales.copy_(torch.tensor(scales).flatten())


def weights_by_loops(x, offsets, scales, eps):
    """G[b, n, h, j] = prod_g exp(-((x - mu - delta_hg) / sqrt(var + eps))^2 / (2 c_hg^2)), written out."""
    batch, n, dim = x.shape
    heads = len(offsets)
    d = dim // heads
    out = torch.empty(batch, n, heads, d, dtype=torch.float64)
    for b in range(batch):
        for t in range(n):
            for h in range(heads):
                values = [float(x[b, t, h * d + j]) for j in range(d)]
                mu = sum(values) / d
                var = sum((v - mu) ** 2 for v in values) / d
                for j, v in enumerate(values):
                    w = 1.0
                    for delta, c in zip(offsets[h], scales[h]):
                        z = (v - (mu + delta)) / math.sqrt(var + eps)
                        w *= math.exp(-z * z / (2 * c * c))
                    out[b, t, h, j] = w
    return out


# ---------------------------------------------------------------- the Gaussian weights

def test_gaussian_weights_on_a_hand_computed_case():
    # one token, 2 heads of 2 channels: head 0 = [1, 3] (mu 2, var 1), head 1 = [0, 4] (mu 2, var 4)
    module = GaussianAdaptiveAttention(4, 2, eps=0.0)
    set_gaussians(module, offsets=[[0.0], [2.0]], scales=[[1.0], [2.0]])
    x = torch.tensor([[[1.0, 3.0, 0.0, 4.0]]])
    weights = module.gaussian_weights(x)[0, 0]
    # head 0: z = -1, +1 -> exp(-1/2) twice; head 1: phi = 4, z = (0 - 4) / 2 = -2, (4 - 4) / 2 = 0, c^2 = 4
    expected = torch.tensor([[math.exp(-0.5), math.exp(-0.5)], [math.exp(-4 / 8), 1.0]])
    assert torch.allclose(weights, expected, atol=1e-6)


def test_gaussian_weights_equal_the_formula_with_several_gaussians_per_head():
    module = GaussianAdaptiveAttention(12, 3, num_gaussians=2)
    offsets = [[0.3, -0.5], [0.0, 1.2], [-0.7, 0.1]]
    scales = [[0.8, 1.5], [2.0, 0.6], [1.1, 3.0]]
    set_gaussians(module, offsets, scales)
    x = tokens((2, 2), batch=2, dim=12)
    got = module.gaussian_weights(x).double()
    want = weights_by_loops(x, offsets, scales, module.eps)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert (got > 0).all() and (got <= 1).all()


def test_the_default_initialization_is_the_paper_codes():
    module = make()
    assert torch.all(module.mean_offsets == 0)
    assert torch.allclose(module.std_scales.square(), torch.full((HEADS,), 2.0))  # xi = c^2 = 2
    assert module.mean_offsets.ndim == module.std_scales.ndim == 1  # not weight-decayed by timm
    softmax_params = sum(p.numel() for p in SoftmaxAttention(DIM, HEADS).parameters())
    assert sum(p.numel() for p in module.parameters()) - softmax_params == 2 * HEADS


def test_weights_are_per_token_and_per_head():
    """A token's weights in a head depend only on that token's channels in that head."""
    module = make()
    set_gaussians(module, [[0.2]] * HEADS, [[0.9]] * HEADS)
    x = tokens((3, 3))
    base = module.gaussian_weights(x)
    other_token = x.clone()
    other_token[:, 4] += torch.randn(2, DIM)
    changed = module.gaussian_weights(other_token)
    keep = [t for t in range(x.shape[1]) if t != 4]
    assert torch.equal(changed[:, keep], base[:, keep]) and not torch.allclose(changed[:, 4], base[:, 4])
    other_head = x.clone()
    other_head[..., HEAD_DIM:2 * HEAD_DIM] *= 3.0  # head 1 only
    changed = module.gaussian_weights(other_head)
    others = [0, 2, 3]
    assert torch.equal(changed[:, :, others], base[:, :, others])
    assert not torch.allclose(changed[:, :, 1], base[:, :, 1])


# ---------------------------------------------------------------- reduction to softmax attention

def softmax_twin(module: GaussianAdaptiveAttention) -> SoftmaxAttention:
    twin = SoftmaxAttention(DIM, HEADS).eval()
    shared = {k: v for k, v in module.state_dict().items() if k not in ("mean_offsets", "std_scales")}
    twin.load_state_dict(shared)
    return twin


@pytest.mark.parametrize("with_rope", [False, True])
def test_flat_gaussians_are_softmax_attention_with_the_same_weights(with_rope):
    module = make()
    twin = softmax_twin(module)
    grid = (4, 5)
    x = tokens(grid)
    rope = rope_tables(grid, x) if with_rope else None
    with torch.no_grad():
        module.std_scales.fill_(math.inf)  # c -> inf: G = 1 exactly
        y, attn = module(x, grid, 1, rope=rope, return_attn=True)
        y_ref, attn_ref = twin(x, grid, 1, rope=rope, return_attn=True)
        assert torch.all(module.last_gaussian_weights == 1)
        assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(attn, attn_ref, atol=1e-6)
        module.std_scales.fill_(1e4)  # the limit is approached continuously
        assert torch.allclose(module(x, grid, 1, rope=rope), y_ref, atol=1e-5)
        module.std_scales.fill_(1.0)  # and a real Gaussian does change the output
        assert not torch.allclose(module(x, grid, 1, rope=rope), y_ref, atol=1e-3)


def test_attention_runs_on_the_recalibrated_tokens():
    module = make()
    set_gaussians(module, [[0.5], [-0.3], [0.0], [1.0]], [[0.7], [1.3], [0.9], [2.0]])
    twin = softmax_twin(module)
    grid = (3, 4)
    x = tokens(grid)
    with torch.no_grad():
        y, attn = module(x, grid, 1, return_attn=True)
        weights = module.gaussian_weights(x).flatten(2)
        y_ref, attn_ref = twin(x * weights, grid, 1, return_attn=True)
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(attn, attn_ref, atol=1e-6)


# ---------------------------------------------------------------- learning the Gaussians

def test_mean_offsets_and_variance_scales_get_gradients():
    module = make(num_gaussians=2).train()
    grid = (3, 3)
    x = tokens(grid)
    module(x, grid, 1, rope=rope_tables(grid, x)).square().mean().backward()
    for p in (module.mean_offsets, module.std_scales):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad.abs() > 0).all()
    # the grad of delta matches a central difference of the loss (float64)
    module = module.double()
    x = x.double()

    def loss(offsets):
        with torch.no_grad():
            module.mean_offsets.copy_(offsets)
            return float(module(x, grid, 1).square().mean())

    base = module.mean_offsets.detach().clone()
    module.zero_grad()
    module(x, grid, 1).square().mean().backward()
    for i in range(base.numel()):
        step = torch.zeros_like(base)
        step[i] = 1e-5
        numeric = (loss(base + step) - loss(base - step)) / 2e-5
        assert math.isclose(numeric, float(module.mean_offsets.grad[i]), rel_tol=1e-4, abs_tol=1e-9)


# ---------------------------------------------------------------- the Importance Factor

def test_importance_factor_on_a_hand_computed_case():
    module = GaussianAdaptiveAttention(4, 2, eps=0.0)
    set_gaussians(module, offsets=[[0.0], [2.0]], scales=[[1.0], [2.0]])
    # two tokens: the one above and its mirror (head 0 = [3, 1], head 1 = [4, 0])
    x = torch.tensor([[[1.0, 3.0, 0.0, 4.0], [3.0, 1.0, 4.0, 0.0]]])
    a, b = math.exp(-0.5), math.exp(-0.5)  # head 0: both channels exp(-1/2) in both tokens
    c0 = (math.exp(-0.5) + 1.0) / 2  # head 1: each channel once exp(-4/8), once 1
    mean_weights = torch.tensor([[a, b], [c0, c0]])
    low, high = mean_weights.min(), mean_weights.max()
    expected = (mean_weights - low) / (high - low)
    got = module.importance_factor(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got, torch.tensor([[0.0, 0.0], [1.0, 1.0]]), atol=1e-6)


def test_importance_factor_is_the_min_max_normalized_mean_weight_and_uses_the_last_forward():
    module = make()
    set_gaussians(module, [[0.5], [-0.3], [0.0], [1.0]], [[0.7], [1.3], [0.9], [2.0]])
    grid = (5, 4)
    x = tokens(grid)
    with pytest.raises(ValueError):
        module.importance_factor()
    module(x, grid, 1)
    mean_weights = torch.stack([
        torch.stack([module.last_gaussian_weights[:, :, h, j].mean() for j in range(HEAD_DIM)]) for h in range(HEADS)
    ])
    expected = (mean_weights - mean_weights.min()) / (mean_weights.max() - mean_weights.min())
    assert torch.allclose(module.importance_factor(), expected, atol=1e-6)
    assert torch.allclose(module.importance_factor(x), expected, atol=1e-6)
    assert module.importance_factor().min() == 0 and module.importance_factor().max() == 1


# ---------------------------------------------------------------- the interface

@pytest.mark.parametrize("grid", [(1, 1), (3, 12), (6, 6), (7, 5)])
@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 2])
def test_shapes_at_any_grid(grid, num_prefix_tokens):
    module = make(num_gaussians=3)
    x = tokens(grid, num_prefix_tokens=num_prefix_tokens)
    n = x.shape[1]
    with torch.no_grad():
        y = module(x, grid, num_prefix_tokens)
        y_explicit, attn = module(x, grid, num_prefix_tokens, return_attn=True)
    assert y.shape == x.shape and attn.shape == (2, HEADS, n, n)
    assert torch.allclose(y, y_explicit, atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(2, HEADS, n), atol=1e-5) and (attn >= 0).all()
    assert module.last_gaussian_weights.shape == (2, n, HEADS, HEAD_DIM)
    assert not module.last_gaussian_weights.requires_grad
    assert module.importance_factor().shape == (HEADS, HEAD_DIM)


def test_refuses_a_logit_bias():
    module = make()
    x = tokens((2, 2))
    with pytest.raises(ValueError):
        module(x, (2, 2), 1, bias=torch.zeros(1, HEADS, 5, 5))
