"""Bi-level routing attention (BiFormer): region routing, the routed-region mask, LCE, padding, and its reductions."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from lib.layers.attention import BiLevelRoutingAttention, SoftmaxAttention
from lib.layers.attention.bilevel_routing import region_layout
from tests.test_attention import DIM, HEADS, rope_tables, tokens

GRIDS = [(6, 6), (5, 9), (3, 12), (7, 7), (1, 1)]


def make(**kwargs) -> BiLevelRoutingAttention:
    torch.manual_seed(0)
    return BiLevelRoutingAttention(DIM, HEADS, **kwargs).double().eval()


def split_qkv(module, x):
    """Per-head q, k, v (B, heads, N, d) from the module's own projection."""
    return (rearrange(t, "b n (h d) -> b h n d", h=HEADS) for t in module.qkv(x).chunk(3, dim=-1))


def regions_by_hand(grid, regions_per_side):
    """Token lists of the regions, row-major: blocks of ceil(H/S) x ceil(W/S) tokens cut at the grid border."""
    h, w = grid
    size_h, size_w = -(-h // regions_per_side), -(-w // regions_per_side)
    return [[y * w + x for y in range(top, min(top + size_h, h)) for x in range(left, min(left + size_w, w))]
            for top in range(0, h, size_h) for left in range(0, w, size_w)]


def routing_by_hand(q, k, regions, topk):
    """For one image (q, k: (heads, HW, d), patches only): the set of top-k regions of every region."""
    def mean(t, members):  # the region's mean token, heads concatenated
        return torch.cat([t[head, members].mean(dim=0) for head in range(t.shape[0])])

    routed = []
    for members in regions:
        query = mean(q, members)
        scores = [float(query @ mean(k, other)) for other in regions]
        order = sorted(range(len(regions)), key=lambda n: -scores[n])
        routed.append(set(order[:min(topk, len(regions))]))
    return routed


def allowed_by_hand(grid, regions, routed, num_prefix_tokens=1):
    """(N, N) bool: CLS row and column all True; a patch sees the tokens of its region's routed regions."""
    p = num_prefix_tokens
    n = p + grid[0] * grid[1]
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:p, :] = True
    allowed[:, :p] = True
    for m, members in enumerate(regions):
        for i in members:
            for r in routed[m]:
                for j in regions[r]:
                    allowed[p + i, p + j] = True
    return allowed


def test_region_layout_by_hand():
    """Regions of ceil(H/S) x ceil(W/S) tokens; tiny grids get fewer than S per side."""
    assert region_layout((6, 6), 3) == ((2, 2), (3, 3))
    assert region_layout((5, 9), 3) == ((2, 3), (3, 3))  # last region row: 1 real token row
    assert region_layout((3, 12), 3) == ((1, 4), (3, 3))
    assert region_layout((14, 14), 3) == ((5, 5), (3, 3))
    assert region_layout((2, 4), 3) == ((1, 2), (2, 2))
    assert region_layout((1, 1), 3) == ((1, 1), (1, 1))
    assert region_layout((56, 56), 7) == ((8, 8), (7, 7))  # the paper's stage 1


@pytest.mark.parametrize("grid", GRIDS)
def test_routing_equals_a_per_region_top_k_by_loops(grid):
    module = make(topk=3)
    x = tokens(grid, dtype=torch.float64)
    with torch.no_grad():
        q, k, _ = split_qkv(module, x)
        region_of, averaging = module.regions(grid, x.device)
        routed_index = module.route(q[:, :, 1:], k[:, :, 1:], averaging)
    regions = regions_by_hand(grid, 3)
    assert [[p for p in range(grid[0] * grid[1]) if region_of[p] == m] for m in range(len(regions))] == regions
    assert routed_index.shape == (2, len(regions), min(3, len(regions)))
    for b in range(2):
        expected = routing_by_hand(q[b, :, 1:], k[b, :, 1:], regions, topk=3)
        assert [set(row.tolist()) for row in routed_index[b]] == expected, (grid, b)


@pytest.mark.parametrize("grid", [(6, 6), (5, 9), (3, 12)])
def test_a_query_attends_to_exactly_the_tokens_of_its_routed_regions_and_cls(grid):
    """Zero outside the routed regions (plus CLS), positive on every token inside them; RoPE does not
    change the routing (it is computed on the un-rotated q, k) but does change the weights."""
    module = make()
    x = tokens(grid, dtype=torch.float64)
    regions = regions_by_hand(grid, 3)
    with torch.no_grad():
        q, k, _ = split_qkv(module, x)
        _, attn = module(x, grid, 1, return_attn=True)
        _, attn_rope = module(x, grid, 1, rope=rope_tables(grid, x), return_attn=True)
    for b in range(2):
        allowed = allowed_by_hand(grid, regions, routing_by_hand(q[b, :, 1:], k[b, :, 1:], regions, topk=4))
        for weights in (attn[b], attn_rope[b]):
            assert torch.equal(weights > 0, allowed.expand_as(weights)), (grid, b)
    assert not torch.allclose(attn, attn_rope, atol=1e-3)


def test_default_routing_on_the_6x6_grid_sees_16_patches_and_cls():
    """S = 3, top-k = 4: 2x2-token regions, so each patch attends to 4 x 4 = 16 of 36 patches, plus CLS."""
    module = make()
    x = tokens((6, 6), dtype=torch.float64)
    with torch.no_grad():
        _, attn = module(x, (6, 6), 1, return_attn=True)
    nonzero = (attn > 0).sum(-1)
    assert (nonzero[:, :, 1:] == 17).all() and (nonzero[:, :, 0] == 37).all()
    assert (attn[..., :, 0] > 0).all() and (attn[..., 0, :] > 0).all()


@pytest.mark.parametrize("topk", [9, 100])
def test_all_regions_without_lce_equals_softmax_attention_with_the_same_weights(topk):
    module = make(topk=topk, lce_kernel=0)
    softmax = SoftmaxAttention(DIM, HEADS).double().eval()
    softmax.load_state_dict(module.state_dict())  # strict: the same qkv and proj, nothing else
    for grid in [(6, 6), (5, 9), (1, 1)]:
        x = tokens(grid, dtype=torch.float64)
        for rope in (None, rope_tables(grid, x)):
            with torch.no_grad():
                out, attn = module(x, grid, 1, rope=rope, return_attn=True)
                expected, expected_attn = softmax(x, grid, 1, rope=rope, return_attn=True)
                fused = module(x, grid, 1, rope=rope)
            assert torch.allclose(out, expected, atol=1e-10) and torch.allclose(fused, expected, atol=1e-10)
            assert torch.allclose(attn, expected_attn, atol=1e-12)
    with torch.no_grad():  # not vacuous: routing to fewer regions changes the result
        x = tokens((6, 6), dtype=torch.float64)
        routed = make(topk=4, lce_kernel=0)
        assert not torch.allclose(routed(x, (6, 6), 1), softmax(x, (6, 6), 1), atol=1e-4)


def depthwise_conv_by_hand(grid_values, weight, bias):
    """Zero-padded 'same' depthwise conv written as loops; grid_values (B, C, H, W), weight (C, 1, k, k)."""
    _, _, h, w = grid_values.shape
    kernel = weight.shape[-1]
    radius = kernel // 2
    out = bias[None, :, None, None].expand_as(grid_values).clone()
    for y, x, i, j in itertools.product(range(h), range(w), range(kernel), range(kernel)):
        source_y, source_x = y + i - radius, x + j - radius
        if 0 <= source_y < h and 0 <= source_x < w:
            out[:, :, y, x] += weight[:, 0, i, j] * grid_values[:, :, source_y, source_x]
    return out


@pytest.mark.parametrize("lce_kernel, grid", [(5, (5, 9)), (3, (3, 12)), (5, (1, 1))])
def test_lce_equals_an_independent_depthwise_conv_of_v(lce_kernel, grid):
    """With all regions routed, y = softmax attention's y + proj_W (LCE(v)) on patch tokens; CLS gets no LCE."""
    module = make(topk=9, lce_kernel=lce_kernel)
    with torch.no_grad():
        module.lce.bias.normal_()
    softmax = SoftmaxAttention(DIM, HEADS).double().eval()
    softmax.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("lce.")})
    h, w = grid
    x = tokens(grid, dtype=torch.float64)
    rope = rope_tables(grid, x)
    with torch.no_grad():
        v = module.qkv(x).chunk(3, dim=-1)[2]
        v_grid = rearrange(v[:, 1:], "b (y x) c -> b c y x", y=h, x=w)
        context = rearrange(depthwise_conv_by_hand(v_grid, module.lce.weight, module.lce.bias), "b c y x -> b (y x) c")
        expected = softmax(x, grid, 1, rope=rope)
        expected[:, 1:] += context @ module.proj.weight.T
        out = module(x, grid, 1, rope=rope)
        explicit, attn = module(x, grid, 1, rope=rope, return_attn=True)
        _, softmax_attn = softmax(x, grid, 1, rope=rope, return_attn=True)
    assert torch.allclose(out, expected, atol=1e-10) and torch.allclose(explicit, expected, atol=1e-10)
    assert torch.allclose(attn, softmax_attn, atol=1e-12)  # LCE is not in the maps


def gather_reference(q, k, v, grid, regions_per_side, topk, scale, mask_padded_keys=True):
    """BiFormer's pad -> partition -> route -> gather -> attend, written independently (no prefix tokens).

    q, k, v: (B, heads, HW, d). Returns the patch outputs (B, heads, HW, d) and the probabilities over the
    gathered keys (B, heads, R, T, k * T) with their validity (B, R, k * T), T = tokens per padded region."""
    h, w = grid
    (size_h, size_w), (count_h, count_w) = region_layout(grid, regions_per_side)
    pad = (0, count_w * size_w - w, 0, count_h * size_h - h)

    def to_regions(t):  # (..., HW, d) -> (..., R, T, d), zero-padded bottom/right
        t = F.pad(rearrange(t, "b n (y x) d -> b n d y x", y=h), pad)
        return rearrange(t, "b n d (ry sy) (rx sx) -> b n (ry rx) (sy sx) d", sy=size_h, sx=size_w)

    valid = rearrange(F.pad(torch.ones(h, w, dtype=torch.bool), pad), "(ry sy) (rx sx) -> (ry rx) (sy sx)",
                      sy=size_h, sx=size_w)  # (R, T)
    q_r, k_r, v_r = map(to_regions, (q, k, v))
    counts = valid.sum(-1)[:, None]  # real tokens per region: padded zeros add nothing to the sums
    q_mean, k_mean = (rearrange(t.sum(3) / counts, "b n r d -> b r (n d)") for t in (q_r, k_r))
    index = (q_mean @ k_mean.transpose(-2, -1)).topk(min(topk, valid.shape[0]), dim=-1).indices  # (B, R, k)
    batch = torch.arange(q.shape[0])[:, None, None]
    k_sel, v_sel = (rearrange(t.transpose(1, 2)[batch, index], "b r k n t d -> b n r (k t) d") for t in (k_r, v_r))
    key_valid = rearrange(valid[index], "b r k t -> b r (k t)")
    scores = torch.einsum("bnrtd,bnrsd->bnrts", q_r * scale, k_sel)
    if mask_padded_keys:
        scores = scores.masked_fill(~key_valid[:, None, :, None, :], float("-inf"))
    probs = scores.softmax(-1)
    out = rearrange(probs @ v_sel, "b n (ry rx) (sy sx) d -> b n d (ry sy) (rx sx)", rx=count_w, sx=size_w)
    return rearrange(out[..., :h, :w], "b n d y x -> b n (y x) d"), probs, key_valid


@pytest.mark.parametrize("grid", [(5, 9), (7, 7), (3, 12), (6, 6)])
def test_padded_tokens_get_zero_probability_and_the_mask_equals_the_gather(grid):
    """At grids not divisible by the region size the official layout pads: padded keys get probability 0, the
    region means average the real tokens only, and the module's masked SDPA equals this gather exactly."""
    module = make(lce_kernel=0)
    x = tokens(grid, num_prefix_tokens=0, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = split_qkv(module, x)
        out, _ = module.mix(q, k, v, grid, 0, None, False)
        explicit, attn = module.mix(q, k, v, grid, 0, None, True)
        expected, probs, key_valid = gather_reference(q, k, v, grid, 3, 4, module.scale)
    assert torch.allclose(out, expected, atol=1e-12) and torch.allclose(explicit, expected, atol=1e-12)
    padded = ~key_valid[:, None, :, None, :].expand_as(probs)
    assert (probs[padded] == 0).all() and (probs[~padded] > 0).all()
    # each query's mass is on real tokens of its routed regions: as many nonzeros as real routed keys
    region_of = module.regions(grid, x.device)[0]
    real_keys = key_valid.sum(-1)[:, region_of]  # (B, HW)
    assert torch.equal((attn > 0).sum(-1), real_keys[:, None].expand(-1, HEADS, -1))
    if padded.any():  # not vacuous: attending to the zero-padded keys (the official auto_pad) gives another output
        unmasked, _, _ = gather_reference(q, k, v, grid, 3, 4, module.scale, mask_padded_keys=False)
        assert not torch.allclose(out, unmasked, atol=1e-4)


def test_parameters_are_softmax_attention_plus_the_depthwise_lce_conv():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    softmax = count(SoftmaxAttention(64, 4))
    assert softmax == 16640
    assert count(BiLevelRoutingAttention(64, 4)) == softmax + 64 * 5 * 5 + 64 == 18304
    assert count(BiLevelRoutingAttention(64, 4, lce_kernel=0)) == softmax


def test_invalid_arguments_are_refused():
    for kwargs in ({"regions_per_side": 0}, {"topk": 0}, {"lce_kernel": 4}, {"lce_kernel": -1}):
        with pytest.raises(ValueError):
            BiLevelRoutingAttention(DIM, HEADS, **kwargs)
    with pytest.raises(ValueError, match="does not take an attention-logit bias"):
        make()(tokens((3, 3), dtype=torch.float64), (3, 3), 1, bias=torch.zeros(1, HEADS, 10, 10))
