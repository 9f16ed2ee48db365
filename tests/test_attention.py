"""Attention variants: the shared interface at any grid, and each variant's defining property."""
import warnings

import pytest
import torch
from timm.models.maxxvit import grid_partition, window_partition
from torch.utils.flop_counter import FlopCounterMode

from lib.layers.attention import ATTENTION_LAYERS, create_attention
from lib.layers.attention.axial import axial_masks
from lib.layers.attention.moh import load_balance_loss
from lib.layers.attention.multi_axis import padded_grid
from lib.layers.rope import RopeMixed
from lib.models import VisionTransformer

GRIDS = [(7, 7), (5, 9), (3, 12), (14, 14), (1, 1)]
DIM, HEADS = 32, 4
HEAD_DIM = DIM // HEADS


def make(name: str, **kwargs):
    torch.manual_seed(0)
    return create_attention(name, dim=DIM, num_heads=HEADS, **kwargs).eval()


def rope_tables(grid, x, num_prefix_tokens=1):
    torch.manual_seed(1)
    rotation = RopeMixed(HEAD_DIM, HEADS, depth=1)(grid, x, num_prefix_tokens).rotation(0).detach()
    return rotation.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)


def tokens(grid, batch=2, num_prefix_tokens=1, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_prefix_tokens + grid[0] * grid[1], DIM, generator=generator, dtype=dtype)


def rows_are_stochastic(name: str, with_rope: bool) -> bool:
    """Linear attention with RoPE gives a signed mixing matrix, not probabilities (documented)."""
    return not (name == "linear" and with_rope)


# ---------------------------------------------------------------- the interface, for every variant

@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_any_grid_with_and_without_rope_fused_equals_explicit(name):
    module = make(name)
    for grid in GRIDS:
        x = tokens(grid)
        n = x.shape[1]
        for rope in (None, rope_tables(grid, x)):
            with torch.no_grad():
                fused = module(x, grid, 1, rope=rope)
                explicit, attn = module(x, grid, 1, rope=rope, return_attn=True)
            assert fused.shape == x.shape and attn.shape == (2, HEADS, n, n), (grid, rope is None)
            assert torch.allclose(fused, explicit, atol=1e-5), (grid, rope is None, (fused - explicit).abs().max())
            assert torch.isfinite(attn).all()
            if rows_are_stochastic(name, rope is not None):
                assert (attn >= 0).all()
                assert torch.allclose(attn.sum(-1), torch.ones(2, HEADS, n), atol=1e-5), grid


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_backward_gives_finite_gradients(name):
    module = make(name).train()
    for grid in [(5, 9), (1, 1)]:
        x = tokens(grid).requires_grad_()
        for rope in (None, rope_tables(grid, x)):
            module.zero_grad()
            for return_attn in (False, True):
                out = module(x, grid, 1, rope=rope, return_attn=return_attn)
                out = out[0] if return_attn else out
                loss = out.square().mean() + (module.aux_loss if name == "moh" else 0)
                loss.backward()
            assert torch.isfinite(x.grad).all()
            grads = [p.grad for p in module.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            projection = module.qkv if hasattr(module, "qkv") else module.qk  # symmetric: one query-key projection
            assert projection.weight.grad.abs().sum() > 0


def test_the_prefix_token_sees_everything_and_is_seen_by_everyone():
    """CLS attends to all tokens and every token attends to CLS, in every variant (composed maps)."""
    grid = (5, 9)
    x = tokens(grid)
    for name in sorted(ATTENTION_LAYERS):
        rope = rope_tables(grid, x)
        with torch.no_grad():
            _, attn = make(name)(x, grid, 1, rope=rope, return_attn=True)
        assert (attn[..., 0, :] != 0).all() and (attn[..., :, 0] != 0).all(), name


def test_masks_are_cached_per_grid():
    module = make("local")
    x = tokens((5, 9))
    module(x, (5, 9), 1)
    mask = module.mask((5, 9), 1, x.device)
    module(x, (5, 9), 1, return_attn=True)
    assert module.mask((5, 9), 1, x.device) is mask and len(module._masks) == 1
    module(tokens((3, 4)), (3, 4), 1)
    assert len(module._masks) == 2


# ---------------------------------------------------------------- linear attention

def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """RoPE written independently, in real arithmetic: pair (a, b) -> (a c - b s, b c + a s).

    rotation: the model's per-pair e^{i angle} = c + i s."""
    c, s = rotation.real, rotation.imag
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)


@pytest.mark.parametrize("with_rope", [False, True])
def test_linear_attention_equals_its_quadratic_formula(with_rope):
    module = make("linear").double()
    grid = (5, 9)
    x = tokens(grid, dtype=torch.float64)
    rope = rope_tables(grid, x) if with_rope else None
    with torch.no_grad():
        out = module(x, grid, 1, rope=rope)
        q, k, v = (module.qkv(x).reshape(2, x.shape[1], 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4))
        phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        num_q, num_k = (rotate_pairs(phi_q, rope), rotate_pairs(phi_k, rope)) if with_rope else (phi_q, phi_k)
        scores = torch.einsum("bhid,bhjd->bhij", num_q, num_k)
        denominator = torch.einsum("bhid,bhjd->bhij", phi_q, phi_k).sum(-1, keepdim=True) + module.eps
        heads = (scores / denominator) @ v
        expected = module.proj(heads.permute(0, 2, 1, 3).reshape(2, x.shape[1], DIM))
    assert torch.allclose(out, expected, atol=1e-10)
    if with_rope:  # RoPE changes the result: the test above is not vacuous
        assert not torch.allclose(out, module(x, grid, 1), atol=1e-6)


def module_flops(module, grid, return_attn=False, op=None) -> int:
    x = tokens(grid, batch=1, num_prefix_tokens=0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x, grid, 0, return_attn=return_attn)
    if op is None:
        return counter.get_total_flops()
    return sum(count for key, count in counter.get_flop_counts()["Global"].items() if str(key).endswith(op))


def test_linear_attention_cost_is_linear_in_tokens():
    """16x the tokens (64 -> 1024): 16x the FLOPs for linear attention, 256x for softmax's attention part."""
    linear = make("linear")
    ratio = module_flops(linear, (32, 32)) / module_flops(linear, (8, 8))
    assert 16 * 0.9 <= ratio <= 16 * 1.1, ratio
    # FlopCounterMode does not count the fused CPU SDPA kernel, so count softmax's explicit matmuls (q k^T, A v)
    softmax = make("softmax")
    ratio = module_flops(softmax, (32, 32), True, "bmm") / module_flops(softmax, (8, 8), True, "bmm")
    assert 256 * 0.9 <= ratio <= 256 * 1.1, ratio


def test_linear_attention_never_builds_an_n_by_n_matrix():
    """At N = 1024 tokens, no intermediate of the fast path has N^2 elements."""
    module = make("linear")
    grid = (32, 32)
    sizes = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if isinstance(result, torch.Tensor):
                sizes.append(result.numel())
            return result

    x = tokens(grid, batch=1, num_prefix_tokens=0)
    with Spy(), torch.no_grad():
        module(x, grid, 0, rope=rope_tables(grid, x, 0))
    assert sizes and max(sizes) < 1024 * 1024
    with Spy(), torch.no_grad():
        module(x, grid, 0, return_attn=True)
    assert max(sizes) >= HEADS * 1024 * 1024  # the spy does see an explicit map


# ---------------------------------------------------------------- sparse and local masks

def picture(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row.replace(" ", "")] for row in rows])


def test_local_mask_by_hand():
    expected = picture([  # 3x3 grid, radius 1; each row: keys for rows y' = 0, 1, 2
        "110 110 000", "111 111 000", "011 011 000",
        "110 110 110", "111 111 111", "011 011 011",
        "000 110 110", "000 111 111", "000 011 011",
    ])
    mask = make("local", window_radius=1).mask((3, 3), 1, "cpu")
    assert mask[0].all() and mask[:, 0].all()
    assert torch.equal(mask[1:, 1:], expected)


def test_strided_mask_by_hand():
    expected = picture([  # 4x4 grid, stride 2: (|dx| < 2 and |dy| < 2) or (dx, dy even)
        "1110 1100 1010 0000", "1111 1110 0101 0000", "1111 0111 1010 0000", "0111 0011 0101 0000",
        "1100 1110 1100 1010", "1110 1111 1110 0101", "0111 1111 0111 1010", "0011 0111 0011 0101",
        "1010 1100 1110 1100", "0101 1110 1111 1110", "1010 0111 1111 0111", "0101 0011 0111 0011",
        "0000 1010 1100 1110", "0000 0101 1110 1111", "0000 1010 0111 1111", "0000 0101 0011 0111",
    ])
    mask = make("sparse_strided", stride=2).mask((4, 4), 1, "cpu")
    assert mask[0].all() and mask[:, 0].all()
    assert torch.equal(mask[1:, 1:], expected)
    # the head factorization splits the same union into a local and a strided head group
    heads = make("sparse_strided", stride=2, factorization="heads").mask((4, 4), 1, "cpu")
    assert heads.shape == (HEADS, 17, 17)
    assert torch.equal(heads[0] | heads[-1], mask) and not torch.equal(heads[0], heads[-1])
    assert heads[0, 1, 3] == False and heads[-1, 1, 3] == True  # noqa: E712  (dx = 2: strided only)


def test_fixed_mask_by_hand():
    """5x5 grid, blocks 3 (border blocks of 2), summary 1: last row/column of each block is x, y in {2, 4}."""
    block_rows = {  # keys, rows y' = 0..4, for a query in block (bx, by)
        (0, 0): "11101 11101 11111 00101 11111", (1, 0): "00111 00111 11111 00101 11111",
        (0, 1): "00101 00101 11111 11101 11111", (1, 1): "00101 00101 11111 00111 11111",
    }
    block_of = ["00011", "00011", "00011", "22233", "22233"]  # query block id 2 * by + bx, per row y
    ids = {0: (0, 0), 1: (1, 0), 2: (0, 1), 3: (1, 1)}
    expected = picture([block_rows[ids[int(c)]] for row in block_of for c in row])
    mask = make("sparse_fixed", block_size=3, summary=1).mask((5, 5), 1, "cpu")
    assert mask[0].all() and mask[:, 0].all()
    assert torch.equal(mask[1:, 1:], expected)


@pytest.mark.parametrize("name, kwargs", [
    ("local", {"window_radius": 13}), ("sparse_strided", {"stride": 1}), ("sparse_fixed", {"block_size": 14}),
])
def test_all_true_patterns_are_softmax_attention(name, kwargs):
    module, softmax = make(name, **kwargs), make("softmax")
    softmax.load_state_dict(module.state_dict())
    grid = (14, 14)
    x = tokens(grid)
    rope = rope_tables(grid, x)
    assert module.mask(grid, 1, "cpu").all()
    with torch.no_grad():
        _, attn = module(x, grid, 1, rope=rope, return_attn=True)
        _, reference = softmax(x, grid, 1, rope=rope, return_attn=True)
        assert torch.equal(attn, reference)
        assert torch.allclose(module(x, grid, 1, rope=rope), softmax(x, grid, 1, rope=rope), atol=1e-6)


@pytest.mark.parametrize("name", ["local", "sparse_strided", "sparse_fixed", "axial", "multi_axis"])
def test_masked_positions_get_exactly_zero_probability(name):
    grid = (5, 9)
    x = tokens(grid)
    module = make(name)
    with torch.no_grad():
        _, attn = module(x, grid, 1, rope=rope_tables(grid, x), return_attn=True)
    if name in ("axial", "multi_axis"):
        return  # composed maps are dense (two hops reach every token); their steps are tested below
    mask = module.mask(grid, 1, "cpu").expand_as(attn)
    assert (~mask).any()
    assert (attn[~mask] == 0.0).all() and (attn[mask] > 0).all()


def test_flex_attention_matches_the_dense_mask_on_cpu_forward():
    grid = (5, 9)
    x = tokens(grid)
    rope = rope_tables(grid, x)
    for kwargs in ({}, {"factorization": "heads"}):
        dense, flex = make("sparse_strided", **kwargs), make("sparse_strided", use_flex=True, **kwargs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
            assert torch.allclose(flex(x, grid, 1, rope=rope), dense(x, grid, 1, rope=rope), atol=1e-5)
        assert len(flex._block_masks) == 1  # the flex path really ran
    # with grad on CPU flex_attention has no backward: the module falls back to SDPA
    flex.train()
    xg = x.clone().requires_grad_()
    flex(xg, grid, 1, rope=rope).sum().backward()
    assert torch.isfinite(xg.grad).all()


# ---------------------------------------------------------------- axial

def qkv_for(grid, num_prefix_tokens=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = num_prefix_tokens + grid[0] * grid[1]
    return [torch.randn(2, HEADS, n, HEAD_DIM, generator=generator) for _ in range(3)]


def test_axial_row_step_mixes_only_within_rows():
    module = make("axial")
    grid = (4, 5)
    q, k, v = qkv_for(grid)
    rows = module.axis_step(q, k, v, grid, 1, "row")
    token = 1 + 2 * 5 + 3  # row 2, column 3
    v2 = v.clone()
    v2[:, :, token] += 1.0
    changed = (module.axis_step(q, k, v2, grid, 1, "row") - rows).abs().amax(dim=(0, 1, 3)) > 0
    row_of = torch.tensor([-1] + [y for y in range(4) for _ in range(5)])
    assert torch.equal(changed[1:], row_of[1:] == 2)  # exactly the token's own row changes
    assert changed[0]  # and CLS, which sees everything
    # the fused step equals masked softmax with the "same row" mask
    row_mask, col_mask = module.masks(grid, 1, "cpu")
    explicit = torch.softmax((q @ k.transpose(-2, -1) * module.scale).masked_fill(~row_mask, float("-inf")), -1) @ v
    assert torch.allclose(rows, explicit, atol=1e-6)
    same_column = torch.tensor([[i % 5 == j % 5 for j in range(20)] for i in range(20)])
    assert torch.equal(col_mask[1:, 1:], same_column) and col_mask[0].all() and col_mask[:, 0].all()


def test_axial_composed_map_is_the_two_hop_product():
    module = make("axial")
    grid = (3, 4)
    x = tokens(grid)
    with torch.no_grad():
        _, composed = module(x, grid, 1, return_attn=True)
        q, k, _ = module.qkv(x).reshape(2, 13, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * module.scale
    for num_prefix_tokens in (1, 0):  # without CLS the composition is still global: (row of j, column of i)
        row_mask, col_mask = axial_masks(grid, num_prefix_tokens)
        two_hop = (col_mask.float() @ row_mask.float()) > 0
        assert two_hop.all() and not row_mask.all() and not col_mask.all()
    row_mask, col_mask = axial_masks(grid, 1)
    a_row = scores.masked_fill(~row_mask, float("-inf")).softmax(-1)
    a_col = scores.masked_fill(~col_mask, float("-inf")).softmax(-1)
    assert torch.allclose(composed, a_col @ a_row, atol=1e-6)
    assert torch.equal(composed > 0, ((col_mask.float() @ row_mask.float()) > 0).expand_as(composed))
    assert (a_row[..., ~row_mask] == 0).all()


# ---------------------------------------------------------------- multi-axis (MaxViT)

def timm_groups(grid, size, partition) -> list[set[int]]:
    """Token groups (patch indices) of timm's window/grid partition on the zero-padded grid."""
    h, w = grid
    hp, wp = padded_grid(grid, size)
    index = torch.full((1, hp, wp, 1), -1.0)
    index[0, :h, :w, 0] = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    windows = partition(index, list(size)).reshape(-1, size[0] * size[1])
    return [{int(i) for i in window if i >= 0} for window in windows]


@pytest.mark.parametrize("grid", [(5, 9), (6, 6), (1, 1)])
def test_multi_axis_steps_mix_only_within_timm_partitions(grid):
    module = make("multi_axis", window_size=3, grid_size=2)
    h, w = grid
    q, k, v = qkv_for(grid)
    for kind, partition in (("block", window_partition), ("grid", grid_partition)):
        size = module.window_size if kind == "block" else module.grid_size
        groups = timm_groups(grid, size, partition)
        assert sorted(i for g in groups for i in g) == list(range(h * w))
        out = module.partition_step(q, k, v, grid, 1, kind)
        for token in {0, h * w // 2, h * w - 1}:
            v2 = v.clone()
            v2[:, :, 1 + token] += 1.0
            changed = (module.partition_step(q, k, v2, grid, 1, kind) - out).abs().amax(dim=(0, 1, 3)) > 0
            group = next(g for g in groups if token in g)
            assert {i for i in range(h * w) if changed[1 + i]} == group, (kind, token)
            assert changed[0]  # CLS sees everything
        # and the closed-form explicit mask describes the same partition
        block_mask, grid_mask = module.masks(grid, 1, "cpu")
        mask = (block_mask if kind == "block" else grid_mask)[1:, 1:]
        expected = torch.tensor([[any(i in g and j in g for g in groups) for j in range(h * w)] for i in range(h * w)])
        assert torch.equal(mask, expected), kind


def test_multi_axis_grid_step_is_dilated():
    """On an 8x8 grid with G = 2 the grid groups are tokens 4 apart (stride ceil(8 / 2))."""
    _, grid_mask = make("multi_axis", window_size=4, grid_size=2).masks((8, 8), 0, "cpu")
    assert grid_mask[0].nonzero().flatten().tolist() == [0, 4, 32, 36]


# ---------------------------------------------------------------- mixture of heads

@pytest.mark.parametrize("shared_heads", [0, 1, 2])
def test_moh_with_uniform_routing_and_all_heads_is_multi_head_attention(shared_heads):
    """Zero router weights and k = all routed heads make every gate exactly 1 (official-code scaling)."""
    moh = make("moh", shared_heads=shared_heads, top_k=HEADS - shared_heads)
    softmax = make("softmax")
    softmax.load_state_dict(moh.state_dict(), strict=False)
    with torch.no_grad():
        for router in (moh.router, moh.type_router, moh.shared_router):
            if router is not None:
                router.weight.zero_()
    grid = (5, 9)
    x = tokens(grid)
    rope = rope_tables(grid, x)
    with torch.no_grad():
        out, attn = moh(x, grid, 1, rope=rope, return_attn=True)
        reference, reference_attn = softmax(x, grid, 1, rope=rope, return_attn=True)
    assert torch.allclose(moh.last_routing, torch.ones(2, x.shape[1], HEADS))
    assert torch.allclose(out, reference, atol=1e-6) and torch.equal(attn, reference_attn)
    # the load-balance loss at uniform router probabilities is beta * k
    assert torch.isclose(moh.aux_loss, torch.tensor(moh.aux_loss_coef * moh.top_k))


def test_moh_activates_exactly_k_routed_heads_per_token():
    moh = make("moh", shared_heads=1, top_k=2)
    with torch.no_grad():
        moh.router.weight.normal_(0, 1.0)
    grid = (7, 7)
    x = tokens(grid)
    moh(x, grid, 1)
    gates = moh.last_routing
    assert gates.shape == (2, 50, HEADS)
    assert ((gates[..., 1:] > 0).sum(-1) == 2).all()  # k routed heads per token
    assert (gates[..., :1] > 0).all()  # the shared head is always on
    assert len({tuple(row) for row in (gates[..., 1:] > 0).reshape(-1, 3).tolist()}) > 1  # routing varies by token
    # a different k changes the count: the assertion above can fail
    moh.top_k = 1
    moh(x, grid, 1)
    assert ((moh.last_routing[..., 1:] > 0).sum(-1) == 1).all()


def test_moh_load_balance_loss():
    moh = make("moh", shared_heads=1, top_k=2)
    grid = (7, 7)
    x = tokens(grid)
    moh(x, grid, 1)
    assert moh.aux_loss.ndim == 0 and torch.isfinite(moh.aux_loss)
    uniform = moh.aux_loss_coef * moh.top_k
    # collapse: every token sends almost all probability to routed head 0
    with torch.no_grad():
        moh.router.weight.zero_()
        moh.router.weight[0] = 50.0
    moh(x.abs(), grid, 1)
    num_routed = HEADS - 1
    assert moh.aux_loss > 1.4 * uniform
    assert torch.isclose(moh.aux_loss, torch.tensor(moh.aux_loss_coef * num_routed), rtol=1e-3)  # E * 1 * 1
    # for a single token the loss is E * (top-k probability mass) >= k, with equality only at uniform
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        probs = torch.randn(1, num_routed, generator=generator).softmax(-1)
        selected = torch.zeros_like(probs).scatter(-1, probs.topk(2).indices, 1.0)
        assert load_balance_loss(probs, selected) >= 2 - 1e-6
    # the loss has a gradient for the router
    moh.router.weight.data.normal_()
    moh(x, grid, 1)
    moh.aux_loss.backward()
    assert moh.router.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- in the model

@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_every_variant_trains_in_the_vit_at_any_resolution(name):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                              num_heads=2, attention=name, pos_embed="rope_mixed")
    for h, w in [(28, 28), (20, 44)]:
        model.zero_grad()
        images = torch.randn(2, 1, h, w)
        model(images).logsumexp(-1).mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert model.rope.freqs.grad.abs().sum() > 0
        model.eval()
        with torch.no_grad():
            logits, attns = model.forward_with_attention(images)
            fused = model(images)
        model.train()
        n = 1 + (h // 4) * (w // 4)
        assert logits.shape == (2, 10)
        assert [a.shape for a in attns] == [(2, 2, n, n)] * 2
        assert torch.allclose(logits, fused, atol=1e-5)
        if name == "moh":
            assert all(torch.isfinite(block.attn.aux_loss) for block in model.blocks)
