"""timm RoPE-ViT (naver-ai/rope-vit ports in timm's `models/eva.py`) -> `lib.models.VisionTransformer`.

timm 1.0.31 carries Heo et al.'s models as `vit_{small,base,large}_patch16_rope{,_ape,_mixed,_mixed_ape}_224`:
an `Eva` with `attn_type='rope'` (timm's `AttentionRope`: fused qkv with a full bias), LayerScale
(`gamma_1`, `gamma_2`, init 1e-5), token pooling with the final `norm` (no `fc_norm`), LayerNorm eps 1e-6,
`rope_grid_indexing='xy'`, RoPE temperature 100 (axial, `RotaryEmbeddingCat`) or 10 (mixed,
`RotaryEmbeddingMixed`), and for the APE variants `no_embed_class=True` (the table has no CLS entry).

Mapping (timm Eva -> lib VisionTransformer):

    patch_embed.proj.{weight,bias}        -> patch_embed.proj.{weight,bias}
    cls_token                             -> cls_token (+ pos_embed[:, :1] when no_embed_class=False)
    pos_embed (1, H*W, C)                 -> abs_pos.table (pos_embed[:, 1:] when no_embed_class=False)
    rope.freqs (2, depth, heads, D/2)     -> rope.freqs, same layout ('xy'); swapped fx <-> fy for 'ij'
    rope.bands (RotaryEmbeddingCat)       -> checked equal to lib's fixed RopeAxial frequencies (theta = temperature)
    blocks.i.norm1 / norm2                -> blocks.i.norm1 / norm2
    blocks.i.attn.qkv.{weight,bias}       -> blocks.i.attn.qkv.{weight,bias}; EvaAttention's q_bias, k_bias (= 0),
                                             v_bias are concatenated; unfused q/k/v_proj are concatenated;
                                             q and k rows permuted per head when the RoPE layout differs
    blocks.i.attn.proj                    -> blocks.i.attn.proj
    blocks.i.gamma_1 / gamma_2            -> blocks.i.ls1.gamma / ls2.gamma (ones when timm has gamma_1 only)
    blocks.i.mlp.fc1 / fc2                -> blocks.i.mlp.fc1 / fc2
    norm (token pool) or fc_norm          -> norm (LayerNorm is per token, so norm-then-CLS == CLS-then-norm)
    head                                  -> head

Channel layouts. lib rotates interleaved pairs (2p, 2p+1), the first P/2 pairs of an axial head with x, the
last P/2 with y. timm's 'xy' grids, interleaved layout, match this exactly; 'ij' grids put y first (axial:
pairs are permuted by half a head; mixed: fx and fy swap), and `rope_rotate_half` pairs channels (p, p + D/2)
(q and k channels are re-ordered). A permutation applied to both q and k leaves every score q.k unchanged, so
the converted model gives the same logits without changing lib's layers.

Non-square grids: the height/width mix-up reported for timm's 'xy' grids is absent in timm 1.0.31 (`_build_grid`
swaps only the coordinate channels and keeps the (H, W) row-major token order), so with `dynamic_img_size=True`
the converted model agrees with timm at non-square resolutions too (tested at 160x192 and 112x240).

LayerNorm eps: timm's RoPE-ViTs use 1e-6 (lib's default is 1e-5); the converted model is built with timm's
(`norm_eps`).
Training-time regularisers (dropouts, drop path, patch dropout, RoPE coordinate augmentation) are not
carried over: the converted model is meant for evaluation and fine-tuning from the converted weights.

Not supported (a clear `UnsupportedTimmModelError`): register tokens, no class token, 'avg' pooling with
`fc_norm`, 'map' pooling, pre-transformer norm, post-norm blocks, SwiGLU / scaled MLPs, qk-norm, inner
attention norm, gated attention, grouped-query attention, RoPE types other than 'cat' / 'mixed', pixel-
or reference-shape-scaled RoPE grids, grid offsets, dynamic image padding.

References: Heo et al. 2024 (arXiv 2403.13298), naver-ai/rope-vit; timm 1.0.31 `timm/models/eva.py`,
`timm/layers/pos_embed_sincos.py`, `timm/layers/attention.py`.
"""
import warnings

import timm
import torch
from timm.layers import AttentionRope, LayerScale, Mlp
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingMixed
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

from lib.models.vit import VisionTransformer

__all__ = ["UnsupportedTimmModelError", "convert_timm_rope_vit", "from_timm_rope_vit", "qk_channel_order"]


_LAYER_NORMS = (nn.LayerNorm, timm.layers.LayerNorm)


class UnsupportedTimmModelError(ValueError):
    """The timm model uses something lib's VisionTransformer cannot reproduce exactly."""


def _unsupported(what: str) -> UnsupportedTimmModelError:
    return UnsupportedTimmModelError(f"cannot convert to lib.models.VisionTransformer: {what}")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise _unsupported(what)


def _is_identity(module) -> bool:
    return module is None or isinstance(module, nn.Identity)


def qk_channel_order(head_dim: int, swap_axes: bool, rotate_half: bool) -> torch.Tensor:
    """(head_dim,) source channel, in timm's head layout, of every channel in lib's head layout.

    lib pair p is channels (2p, 2p + 1); the first half of the pairs follows x. timm's pair t is channels
    (2t, 2t + 1), or (t, t + D/2) with rotate_half; with 'ij' axial grids its first half of pairs follows y.
    """
    num_pairs = head_dim // 2
    order = []
    for p in range(num_pairs):
        t = (p + num_pairs // 2) % num_pairs if swap_axes else p
        order += [t, t + num_pairs] if rotate_half else [2 * t, 2 * t + 1]
    return torch.tensor(order)


def _qkv_weight_bias(attn: nn.Module, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused (3C, C) weight and (3C,) bias (or None) of timm's AttentionRope or EvaAttention."""
    if attn.qkv is not None:
        weight = attn.qkv.weight
        if isinstance(attn, EvaAttention):
            bias = None if attn.q_bias is None else torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        else:
            bias = attn.qkv.bias
        return weight.detach(), None if bias is None else bias.detach()
    projections = [attn.q_proj, attn.k_proj, attn.v_proj]
    weight = torch.cat([p.weight for p in projections])
    if all(p.bias is None for p in projections):
        return weight.detach(), None
    bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections])
    return weight.detach(), bias.detach()


def _check_block(block: nn.Module, index: int, dim: int, num_heads: int) -> None:
    where = f"blocks.{index}"
    _require(type(block) is EvaBlock, f"{where} is {type(block).__name__}; only pre-norm EvaBlock is supported")
    attn = block.attn
    _require(isinstance(attn, (AttentionRope, EvaAttention)), f"{where}.attn is {type(attn).__name__}")
    _require(attn.num_heads == num_heads, f"{where} has {attn.num_heads} heads, blocks.0 has {num_heads}")
    _require(attn.head_dim * attn.num_heads == dim, f"{where}.attn head_dim * num_heads != embed_dim (attn_head_dim)")
    _require(getattr(attn, "num_kv_groups", 1) == 1, f"{where}.attn uses grouped-query attention")
    _require(_is_identity(attn.q_norm) and _is_identity(attn.k_norm), f"{where}.attn uses qk_norm")
    _require(_is_identity(attn.norm), f"{where}.attn uses an inner (scale) norm")
    _require(getattr(attn, "gate", None) is None, f"{where}.attn is gated")
    _require(attn.proj.bias is not None, f"{where}.attn.proj has no bias")
    for name in ("norm1", "norm2"):
        _require(type(getattr(block, name)) in _LAYER_NORMS, f"{where}.{name} is not a LayerNorm")
    mlp = block.mlp
    _require(type(mlp) is Mlp, f"{where}.mlp is {type(mlp).__name__} (SwiGLU / GLU MLPs are not supported)")
    _require(_is_identity(mlp.norm), f"{where}.mlp has an inner norm (scale_mlp)")
    _require(type(mlp.act) is nn.GELU and mlp.act.approximate == "none", f"{where}.mlp activation is {mlp.act}")
    _require(mlp.fc1.bias is not None and mlp.fc2.bias is not None, f"{where}.mlp has no bias")
    _require(mlp.fc1.in_features == dim, f"{where}.mlp input width differs from embed_dim")


def _rope_spec(model: Eva) -> tuple[str | None, float | None, bool]:
    """(lib rotary kind 'axial' / 'mixed' / None, theta, swap_axes) of the timm model's RoPE."""
    rope = model.rope
    if rope is None:
        return None, None, False
    if isinstance(rope, RotaryEmbeddingCat):
        _require(not rope.in_pixels and rope.grid_type == "index", "RoPE 'cat' with pixel-normalized bands or grid")
        _require(rope.ref_feat_shape is None, "RoPE with ref_feat_shape (EVA-style rescaled grid)")
        _require(rope.grid_offset == 0, f"RoPE grid_offset={rope.grid_offset}")
        _require(rope.grid_indexing in ("xy", "ij"), f"RoPE grid_indexing={rope.grid_indexing!r}")
        kind, theta = "axial", float(rope.temperature)
    elif isinstance(rope, RotaryEmbeddingMixed):
        _require(rope.grid_indexing in ("xy", "ij"), f"RoPE grid_indexing={rope.grid_indexing!r}")
        kind, theta = "mixed", float(rope.temperature)
    else:
        raise _unsupported(f"RoPE type {type(rope).__name__} "
                           "(only RotaryEmbeddingCat / RoPE-Axial and RotaryEmbeddingMixed / RoPE-Mixed)")
    if getattr(rope, "aug_active", False):
        warnings.warn("the timm model's train-time RoPE coordinate augmentation is not carried over; "
                      "logits agree in eval mode", stacklevel=3)
    return kind, theta, rope.grid_indexing == "ij"


def from_timm_rope_vit(timm_model: nn.Module) -> VisionTransformer:
    """A `lib.models.VisionTransformer` computing the same logits as a timm RoPE-ViT (`Eva`) model.

    Args:
        timm_model: a timm `Eva`, e.g. `timm.create_model("vit_small_patch16_rope_mixed_224")`; the four
            RoPE-ViT families (rope, rope_ape, rope_mixed, rope_mixed_ape) at any size or depth, and Eva
            configurations that differ from them only in layout ('ij' grids, rotate_half, unfused qkv,
            EvaAttention's q/v biases, class-embedded APE, fc_norm instead of norm with token pooling).
    Returns:
        The lib model in eval mode, `attention="softmax"`, `pos_embed` one of "rope_axial", "rope_mixed",
        "rope_axial_ape", "rope_mixed_ape" (or "ape" / "none" without RoPE), with the timm weights copied and
        built with timm's LayerNorm eps. The lib model reads the grid off each input, so it runs at any
        resolution as the timm model does with `dynamic_img_size=True` (APE resampled bicubically, RoPE
        tables rebuilt for the grid).
    Raises:
        UnsupportedTimmModelError (a ValueError): the model is not an Eva or uses a feature lib's ViT lacks.
    """
    _require(isinstance(timm_model, Eva), f"expected a timm Eva (RoPE-ViT) model, got {type(timm_model).__name__}")
    m = timm_model
    dim, depth = m.embed_dim, len(m.blocks)
    _require(depth > 0, "the model has no blocks")
    num_heads = m.blocks[0].attn.num_heads
    head_dim = dim // num_heads

    # --- structure checks -----------------------------------------------------------------------------------------
    _require(m.cls_token is not None and m.reg_token is None and m.num_prefix_tokens == 1,
             "exactly one class token and no register tokens are supported")
    _require(m.attn_pool is None, f"global_pool={m.global_pool!r} (attention pooling)")
    _require(_is_identity(m.norm_pre), "pre-transformer norm (use_pre_transformer_norm)")
    pe = m.patch_embed
    _require(_is_identity(pe.norm) and pe.proj.bias is not None, "patch embedding with a norm or without bias")
    _require(not getattr(pe, "dynamic_img_pad", False), "dynamic_img_pad")
    for i, block in enumerate(m.blocks):
        _check_block(block, i, dim, num_heads)
    has_norm, has_fc_norm = not _is_identity(m.norm), not _is_identity(m.fc_norm)
    if m.global_pool == "token":
        _require(has_norm != has_fc_norm, "token pooling needs exactly one of norm / fc_norm (lib has one final norm)")
        final_norm = m.norm if has_norm else m.fc_norm
    elif m.global_pool == "avg":
        _require(has_norm and not has_fc_norm, "'avg' pooling with fc_norm (norm after pooling, lib's norm is before)")
        final_norm = m.norm
    else:
        raise _unsupported(f"global_pool={m.global_pool!r}")
    norms = [final_norm] + [b.norm1 for b in m.blocks] + [b.norm2 for b in m.blocks]
    _require(all(type(n) in _LAYER_NORMS and n.elementwise_affine for n in norms),
             "norms other than affine LayerNorm (e.g. RmsNorm)")
    eps = {float(n.eps) for n in norms}
    _require(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")

    rotary, theta, swap_axes = _rope_spec(m)
    rotate_half = {bool(getattr(b.attn, "rotate_half", False)) for b in m.blocks}
    _require(len(rotate_half) == 1, "blocks disagree on rotate_half")
    rotate_half = rotate_half.pop()
    if rotary == "axial":
        _require(bool(m.rope.rotate_half) == rotate_half, "RoPE table layout and attention disagree on rotate_half")
    if rotary == "mixed":
        _require(not rotate_half, "RoPE-Mixed with rotate_half")
    absolute = m.pos_embed is not None
    pos_embed = {None: "ape" if absolute else "none", "axial": "rope_axial", "mixed": "rope_mixed"}[rotary]
    if rotary and absolute:
        pos_embed += "_ape"

    gammas = [(b.gamma_1, b.gamma_2) for b in m.blocks]
    has_ls = {g1 is not None for g1, _ in gammas}
    _require(len(has_ls) == 1, "LayerScale in some blocks only")
    has_ls = has_ls.pop()
    _require(has_ls or all(g2 is None for _, g2 in gammas), "LayerScale on the MLP branch only")
    hidden = m.blocks[0].mlp.fc1.out_features
    _require(all(b.mlp.fc1.out_features == hidden for b in m.blocks), "blocks with different MLP widths")
    mlp_ratio = hidden / dim
    _require(int(dim * mlp_ratio) == hidden, f"MLP width {hidden} is not int(embed_dim * ratio)")
    qkv_bias = _qkv_weight_bias(m.blocks[0].attn, dim)[1] is not None
    num_classes = m.head.out_features if isinstance(m.head, nn.Linear) else 0
    _require(num_classes > 0 or _is_identity(m.head), f"head is {type(m.head).__name__}")

    # --- build ----------------------------------------------------------------------------------------------------
    model = VisionTransformer(
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=pe.proj.in_channels,
        num_classes=num_classes, embed_dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias, attention="softmax", pos_embed=pos_embed, rope_theta=theta,
        init_values=1.0 if has_ls else None, global_pool=m.global_pool, norm_eps=eps.pop(),
    )

    # --- weights --------------------------------------------------------------------------------------------------
    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": pe.proj.weight, "patch_embed.proj.bias": pe.proj.bias,
        "norm.weight": final_norm.weight, "norm.bias": final_norm.bias,
    }
    cls_token = m.cls_token.detach()
    if absolute:
        table = m.pos_embed.detach()
        if not m.no_embed_class:  # the CLS entry is a constant added to the CLS token at every resolution
            cls_token, table = cls_token + table[:, :1], table[:, 1:]
        _require(table.shape[1] == pe.grid_size[0] * pe.grid_size[1], "pos_embed size differs from the patch grid")
        state["abs_pos.table"] = table
    state["cls_token"] = cls_token
    if num_classes:
        state["head.weight"], state["head.bias"] = m.head.weight, m.head.bias
    if rotary == "mixed":
        freqs = m.rope.freqs.detach()
        _require(freqs.shape == (2, depth, num_heads, head_dim // 2), f"rope.freqs shape {tuple(freqs.shape)}")
        state["rope.freqs"] = freqs.flip(0) if swap_axes else freqs

    order = qk_channel_order(head_dim, swap_axes=swap_axes and rotary == "axial", rotate_half=rotate_half)
    rows = torch.cat([
        torch.cat([h * head_dim + order for h in range(num_heads)]),  # q
        dim + torch.cat([h * head_dim + order for h in range(num_heads)]),  # k
        2 * dim + torch.arange(dim),  # v: unrotated, unchanged
    ]) if rotary else torch.arange(3 * dim)
    for i, block in enumerate(m.blocks):
        p = f"blocks.{i}."
        weight, bias = _qkv_weight_bias(block.attn, dim)
        state[p + "attn.qkv.weight"] = weight[rows]
        if qkv_bias:
            _require(bias is not None, f"blocks.{i} has no qkv bias while blocks.0 has one")
            state[p + "attn.qkv.bias"] = bias[rows]
        state[p + "attn.proj.weight"], state[p + "attn.proj.bias"] = block.attn.proj.weight, block.attn.proj.bias
        for ours, theirs in [("norm1", block.norm1), ("norm2", block.norm2), ("mlp.fc1", block.mlp.fc1),
                             ("mlp.fc2", block.mlp.fc2)]:
            state[p + ours + ".weight"], state[p + ours + ".bias"] = theirs.weight, theirs.bias
        if has_ls:
            state[p + "ls1.gamma"] = block.gamma_1
            state[p + "ls2.gamma"] = block.gamma_2 if block.gamma_2 is not None else torch.ones(dim)
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)

    if rotary == "axial":  # lib's axial frequencies are fixed buffers computed from theta: check they are timm's
        ours = model.rope.freqs.flatten(1)  # (2, P)
        bands = m.rope.bands.float().cpu()
        zeros = torch.zeros_like(bands)
        expected = torch.stack([torch.cat([bands, zeros]), torch.cat([zeros, bands])])
        _require(torch.allclose(ours, expected, rtol=1e-6, atol=0), "lib's RoPE-Axial frequencies differ from timm's")
    assert all(isinstance(b.ls1, LayerScale) == has_ls for b in model.blocks)
    return model.eval()


def convert_timm_rope_vit(name: str, pretrained: bool = False, **timm_kwargs) -> VisionTransformer:
    """`from_timm_rope_vit(timm.create_model(name, pretrained=pretrained, **timm_kwargs))`.

    E.g. `convert_timm_rope_vit("vit_small_patch16_rope_mixed_224", pretrained=True)` for Heo et al.'s
    ImageNet weights (`.naver_in1k`, downloaded by timm from the Hugging Face hub). Any Eva configuration that
    `from_timm_rope_vit` supports works; others raise `UnsupportedTimmModelError`.
    """
    return from_timm_rope_vit(timm.create_model(name, pretrained=pretrained, **timm_kwargs))
