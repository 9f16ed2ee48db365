"""SymmetricAttention (Bermeitinger et al. 2024): symmetric scores, the collapsed W's reduction to softmax
attention, the value-free output, RoPE's relative positions, parameter counts, and the options in the model."""
import pytest
import torch
from einops import rearrange

from lib.layers.attention import SoftmaxAttention, SymmetricAttention
from lib.layers.rope import RotaryTables, mixed_frequencies, patch_coords, rotation_angles
from lib.models import VisionTransformer

DIM, HEADS = 32, 4
HEAD_DIM = DIM // HEADS
OPTIONS = [{"similarity": s, "value_projection": v} for s in ("symmetric", "collapsed") for v in (False, True)]


def make(dtype=torch.float32, seed=0, **kwargs) -> SymmetricAttention:
    torch.manual_seed(seed)
    return SymmetricAttention(DIM, HEADS, **kwargs).to(dtype).eval()


def tokens(grid, batch=2, num_prefix_tokens=1, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_prefix_tokens + grid[0] * grid[1], DIM, generator=generator, dtype=dtype)


def frequencies(seed=1) -> torch.Tensor:
    """RoPE-Mixed frequencies (2, heads, P) of one layer."""
    return mixed_frequencies(HEAD_DIM, HEADS, depth=1, theta=10.0, generator=torch.Generator().manual_seed(seed))[:, 0]


def rope_for(grid, shift=(0.0, 0.0), stretch=1.0, num_prefix_tokens=1, dtype=torch.float32):
    """Phasors (1, heads, N, P) for the grid's patch coordinates stretched by `stretch`, then shifted by `shift`."""
    x, y = patch_coords(grid)
    angles = rotation_angles(frequencies(), stretch * x + shift[0], stretch * y + shift[1])  # (heads, N_patches, P)
    rope = RotaryTables.from_angles(angles[None, None], num_prefix_tokens).rotation(0)
    return rope.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def reversible(attn: torch.Tensor, atol: float) -> bool:
    """Whether row-stochastic attn satisfies detailed balance Z_i A_ij = Z_j A_ji for some Z > 0.

    A = softmax_rows(S) gives log A_ij - log A_ji = S_ij - S_ji + log Z_j - log Z_i: balanced exactly when the logits
    are symmetric up to terms that depend on the row alone (which the softmax ignores). With c_j = m_0j (c_0 = 0),
    balance means m_ij = c_j - c_i."""
    log = attn.log()
    m = log - log.transpose(-2, -1)
    c = m[..., 0, :]
    return torch.allclose(m, c[..., None, :] - c[..., :, None], atol=atol)


def shared_queries(module: SymmetricAttention, x: torch.Tensor) -> torch.Tensor:
    """q = k = W_qk x + b by hand: (B, heads, N, d)."""
    q = x @ module.qk.weight.T + module.qk.bias
    return rearrange(q, "b n (h d) -> b h n d", h=HEADS)


# ---------------------------------------------------------------- the symmetric similarity

def test_scores_are_symmetric_and_the_module_uses_them():
    module = make(torch.float64)
    grid = (3, 4)
    x = tokens(grid, dtype=torch.float64)
    with torch.no_grad():
        _, attn = module(x, grid, 1, return_attn=True)
        q = shared_queries(module, x)
        scores = torch.einsum("bhid,bhjd->bhij", q, q) * HEAD_DIM ** -0.5
    assert torch.allclose(scores, scores.transpose(-2, -1), rtol=0, atol=1e-14)
    assert torch.allclose(attn, scores.softmax(-1), atol=1e-12)
    # the maps themselves are not symmetric (each row has its own normalizer) but balanced, unlike softmax attention
    assert not torch.allclose(attn, attn.transpose(-2, -1), atol=1e-3)
    assert reversible(attn, atol=1e-9)
    softmax = SoftmaxAttention(DIM, HEADS).double().eval()
    with torch.no_grad():
        _, softmax_attn = softmax(x, grid, 1, return_attn=True)
    assert not reversible(softmax_attn, atol=1e-3)
    # so is the collapsed form's, whose W_h is not symmetric
    with torch.no_grad():
        _, collapsed_attn = make(torch.float64, similarity="collapsed")(x, grid, 1, return_attn=True)
    assert not reversible(collapsed_attn, atol=1e-3)


def test_rope_keeps_scores_symmetric_and_relative():
    """s_ij = q_i^T R(phi_j - phi_i) q_j: a function of the offset, and s_ji = s_ij since q = k per token."""
    module = make()
    grid = (3, 4)
    x = tokens(grid, num_prefix_tokens=0)
    rope = rope_for(grid, num_prefix_tokens=0)
    with torch.no_grad():
        _, attn = module(x, grid, 0, rope=rope, return_attn=True)
        _, shifted = module(x, grid, 0, rope=rope_for(grid, shift=(2.5, -1.0), num_prefix_tokens=0), return_attn=True)
        _, stretched = module(x, grid, 0, rope=rope_for(grid, stretch=2.0, num_prefix_tokens=0), return_attn=True)
        _, plain = module(x, grid, 0, return_attn=True)
        # by hand: rotate q_j by the offset angles f . (p_j - p_i), pair (a, b) -> (a c - b s, b c + a s)
        q = rearrange(shared_queries(module, x), "b h n (p two) -> b h n p two", two=2)
        px, py = patch_coords(grid)
        freqs = frequencies()
        offset = (freqs[0][:, None, None, :] * (px[None, None, :] - px[None, :, None])[..., None]
                  + freqs[1][:, None, None, :] * (py[None, None, :] - py[None, :, None])[..., None])  # (h, i, j, p)
        c, s = offset.cos(), offset.sin()
        a_i, b_i = q[:, :, :, None, :, 0], q[:, :, :, None, :, 1]
        a_j, b_j = q[:, :, None, :, :, 0], q[:, :, None, :, :, 1]
        scores = (a_i * (a_j * c - b_j * s) + b_i * (b_j * c + a_j * s)).sum(-1) * HEAD_DIM ** -0.5
    assert torch.allclose(scores, scores.transpose(-2, -1), atol=1e-5)
    assert torch.allclose(attn, scores.softmax(-1), atol=1e-5)
    assert reversible(attn, atol=1e-3)
    assert torch.allclose(shifted, attn, atol=1e-5)  # same offsets: same scores
    assert not torch.allclose(stretched, attn, atol=1e-3) and not torch.allclose(plain, attn, atol=1e-3)


def test_collapsed_rope_scores_depend_only_on_offsets():
    module = make(similarity="collapsed", value_projection=True)
    grid = (3, 4)
    x = tokens(grid, num_prefix_tokens=0)
    with torch.no_grad():
        out, attn = module(x, grid, 0, rope=rope_for(grid, num_prefix_tokens=0), return_attn=True)
        shifted_out, shifted = module(x, grid, 0, rope=rope_for(grid, shift=(-3.0, 1.5), num_prefix_tokens=0),
                                      return_attn=True)
        _, stretched = module(x, grid, 0, rope=rope_for(grid, stretch=2.0, num_prefix_tokens=0), return_attn=True)
    assert torch.allclose(shifted, attn, atol=1e-5) and torch.allclose(shifted_out, out, atol=1e-5)
    assert not torch.allclose(stretched, attn, atol=1e-3)


# ---------------------------------------------------------------- reductions to softmax attention

def test_collapsed_equals_softmax_attention_whose_product_matrix_is_w():
    """W_h = W_q,h^T W_k,h and u_h = W_k,h^T b_q,h give standard attention's maps and outputs (its key bias cancels)."""
    torch.manual_seed(2)
    softmax = SoftmaxAttention(DIM, HEADS).double().eval()
    with torch.no_grad():
        softmax.qkv.bias.normal_()  # nonzero query and key biases: both must be accounted for
    module = make(torch.float64, similarity="collapsed", value_projection=True)
    w_q, w_k, w_v = rearrange(softmax.qkv.weight, "(three h d) c -> three h d c", three=3, h=HEADS)
    b_q, b_k, b_v = rearrange(softmax.qkv.bias, "(three h d) -> three h d", three=3, h=HEADS)
    assert b_k.abs().min() > 0
    with torch.no_grad():
        initial_rank = torch.linalg.matrix_rank(module.qk.weight[:DIM])
        # qk computes a_h = A_h x + u_h and scores a_h,i . x_j = x_i^T A_h^T x_j: A_h = W_k,h^T W_q,h
        module.qk.weight.copy_(rearrange(w_k.transpose(-2, -1) @ w_q, "h c e -> (h c) e"))
        module.qk.bias.copy_(rearrange(torch.einsum("hdc,hd->hc", w_k, b_q), "h c -> (h c)"))
        module.v.weight.copy_(rearrange(w_v, "h d c -> (h d) c"))
        module.v.bias.copy_(rearrange(b_v, "h d -> (h d)"))
        module.proj.load_state_dict(softmax.proj.state_dict())
    grid = (5, 9)
    x = tokens(grid, dtype=torch.float64)
    with torch.no_grad():
        out, attn = module(x, grid, 1, return_attn=True)
        expected, expected_attn = softmax(x, grid, 1, return_attn=True)
        fused = module(x, grid, 1)
    assert torch.allclose(attn, expected_attn, atol=1e-12)
    assert torch.allclose(out, expected, atol=1e-12) and torch.allclose(fused, expected, atol=1e-12)
    # standard attention's similarity has rank d per head; the collapsed W starts at full rank C
    assert torch.linalg.matrix_rank(module.qk.weight[:DIM]) == HEAD_DIM and initial_rank == DIM


@pytest.mark.parametrize("with_rope", [False, True])
def test_symmetric_with_values_equals_softmax_attention_with_shared_query_key_weights(with_rope):
    module = make(torch.float64, value_projection=True)
    softmax = SoftmaxAttention(DIM, HEADS).double().eval()
    with torch.no_grad():
        softmax.qkv.weight.copy_(torch.cat([module.qk.weight, module.qk.weight, module.v.weight]))
        softmax.qkv.bias.copy_(torch.cat([module.qk.bias, module.qk.bias, module.v.bias]))
        softmax.proj.load_state_dict(module.proj.state_dict())
    grid = (5, 9)
    x = tokens(grid, dtype=torch.float64)
    rope = rope_for(grid, dtype=torch.float64) if with_rope else None
    with torch.no_grad():
        out, attn = module(x, grid, 1, rope=rope, return_attn=True)
        expected, expected_attn = softmax(x, grid, 1, rope=rope, return_attn=True)
    assert torch.allclose(attn, expected_attn, atol=1e-12) and torch.allclose(out, expected, atol=1e-12)


# ---------------------------------------------------------------- the value-free minimum

def test_without_values_the_output_is_attention_times_the_input_per_head():
    module = make(torch.float64)
    assert module.v is None and isinstance(module.proj, torch.nn.Identity)
    grid = (3, 4)
    x = tokens(grid, dtype=torch.float64)
    with torch.no_grad():
        out, attn = module(x, grid, 1, return_attn=True)
        fused = module(x, grid, 1)
        n = x.shape[1]
        expected = torch.zeros_like(x)
        for h in range(HEADS):
            channels = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            q = x @ module.qk.weight[channels].T + module.qk.bias[channels]  # (B, N, d)
            for b in range(2):
                for i in range(n):
                    logits = torch.stack([q[b, i] @ q[b, j] for j in range(n)]) * HEAD_DIM ** -0.5
                    weights = logits.softmax(0)
                    assert torch.allclose(attn[b, h, i], weights, atol=1e-12)
                    expected[b, i, channels] = sum(weights[j] * x[b, j, channels] for j in range(n))
    assert torch.allclose(out, expected, atol=1e-12) and torch.allclose(fused, expected, atol=1e-12)
    # every output channel is a convex combination of that channel over the tokens: inside its range
    assert (out >= x.amin(dim=1, keepdim=True) - 1e-12).all() and (out <= x.amax(dim=1, keepdim=True) + 1e-12).all()
    # values are the inputs themselves: scaling a head's channels scales that head's output only when the scores
    # do not change, which is the case when the scaled channels have no weight in W_qk
    with torch.no_grad():
        module.qk.weight[:, :HEAD_DIM] = 0.0
        scaled = x.clone()
        scaled[..., :HEAD_DIM] *= 3.0
        base, changed = module(x, grid, 1), module(scaled, grid, 1)
    assert torch.allclose(changed[..., :HEAD_DIM], 3.0 * base[..., :HEAD_DIM], atol=1e-12)
    assert torch.allclose(changed[..., HEAD_DIM:], base[..., HEAD_DIM:], atol=1e-12)


# ---------------------------------------------------------------- parameters

def test_parameter_counts_at_dim_64_and_4_heads():
    dim, heads = 64, 4

    def count(module):
        return sum(p.numel() for p in module.parameters())

    softmax = count(SoftmaxAttention(dim, heads))
    assert softmax == (3 * dim * dim + 3 * dim) + (dim * dim + dim) == 16640
    expected = {  # (similarity, value_projection): W_qk (+ bias) [+ W_v + b_v + W_o + b_o]
        ("symmetric", False): dim * dim + dim,  # 4160: 25% of softmax attention
        ("symmetric", True): (dim * dim + dim) + 2 * (dim * dim + dim),  # 12480
        ("collapsed", False): heads * dim * dim + heads * dim,  # 16640
        ("collapsed", True): (heads * dim * dim + heads * dim) + 2 * (dim * dim + dim),  # 24960
    }
    assert list(expected.values()) == [4160, 12480, 16640, 24960]
    for (similarity, value_projection), n in expected.items():
        assert count(SymmetricAttention(dim, heads, similarity=similarity, value_projection=value_projection)) == n
    assert count(SymmetricAttention(dim, heads, qkv_bias=False)) == dim * dim == 4096
    assert count(SymmetricAttention(dim, 1, similarity="collapsed")) == dim * dim + dim  # one head: no extra cost


def test_unknown_similarity_and_indivisible_heads_are_refused():
    with pytest.raises(ValueError, match="unknown similarity"):
        SymmetricAttention(DIM, HEADS, similarity="cosine")
    with pytest.raises(ValueError, match="not divisible"):
        SymmetricAttention(30, HEADS)


# ---------------------------------------------------------------- every option in the model

@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o['similarity']}-values{int(o['value_projection'])}")
def test_every_option_trains_in_the_vit(options):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=24, patch_size=4, in_chans=1, num_classes=4, embed_dim=DIM, depth=2,
                              num_heads=2, attention="symmetric", attention_kwargs=options, pos_embed="rope_mixed")
    images = torch.randn(2, 1, 24, 32, generator=torch.Generator().manual_seed(0))
    model(images).logsumexp(-1).mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(grads[f"blocks.{i}.attn.qk.weight"].abs().sum() > 0 for i in range(2))
    assert model.rope.freqs.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits, attns = model.forward_with_attention(images)
        fused = model(images)
    assert torch.allclose(logits, fused, atol=1e-5) and [a.shape for a in attns] == [(2, 2, 49, 49)] * 2


def test_collapsed_rope_compiles_whole_with_the_real_tables():
    """The tiled tables in their real (cos, sin) form, as under torch.compile, give the eager complex result.
    (The shared compile tests cover the default options in the whole model.)"""
    module = make(similarity="collapsed", value_projection=True)
    grid = (3, 4)
    x = tokens(grid)
    angles = rotation_angles(frequencies(), *patch_coords(grid))[None, None]
    complex_rope = RotaryTables.from_angles(angles, 1).rotation(0)
    real_rope = RotaryTables.from_angles(angles, 1, real=True).rotation(0)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    with torch.no_grad():
        eager = module(x, grid, 1, rope=complex_rope)
        assert torch.allclose(module(x, grid, 1, rope=real_rope), eager, atol=1e-5)
        assert torch.allclose(compiled(x, grid, 1, rope=real_rope), eager, atol=1e-5)
