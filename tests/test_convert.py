"""timm RoPE-ViT -> lib ViT conversion: identical logits for the four families, at 224 and other resolutions."""
import pytest
import timm
import torch
from timm.layers.pos_embed_sincos import get_mixed_grid

from lib.models import VisionTransformer
from lib.models.convert import UnsupportedTimmModelError, convert_timm_rope_vit, from_timm_rope_vit, qk_channel_order

FAMILIES = {  # timm family suffix -> lib pos_embed
    "rope": "rope_axial", "rope_ape": "rope_axial_ape", "rope_mixed": "rope_mixed", "rope_mixed_ape": "rope_mixed_ape",
}
SMALL = dict(depth=2, embed_dim=64, num_heads=2, num_classes=10)  # head_dim 32, like ViT-S's 64 divisible by 4
RESOLUTIONS = [(224, 224), (160, 192), (288, 288), (112, 240)]
ATOL = 1e-5


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from timm's init, so every part matters: LayerScale 0.5-1, O(1) RoPE-Mixed freqs and APE."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith(("gamma_1", "gamma_2")):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=generator))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name == "rope.freqs":
                p.copy_(0.7 * noise)
            elif p.ndim >= 2 and name not in ("cls_token", "pos_embed"):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.5 * noise)


def timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False, **{**SMALL, "dynamic_img_size": True, **kwargs})
    randomize(model, seed)
    return model.eval()


def max_logit_difference(timm_net, lib_net, resolution, seed: int = 1) -> float:
    images = torch.randn(2, timm_net.in_chans, *resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = timm_net(images)
        assert reference.abs().max() > 0.1 and not torch.allclose(reference[0], reference[1], atol=1e-3)
        return (lib_net(images) - reference).abs().max().item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_four_families_give_identical_logits(family):
    reference = timm_model(f"vit_small_patch16_{family}_224")
    model = from_timm_rope_vit(reference)
    assert isinstance(model, VisionTransformer) and not model.training
    assert model.pos_embed_name == FAMILIES[family] and model.attention_name == "softmax"
    for resolution in RESOLUTIONS:  # 224 (the training grid), non-square and larger grids
        assert max_logit_difference(reference, model, resolution) <= ATOL, resolution


@pytest.mark.parametrize("family", ["rope", "rope_mixed_ape"])
def test_fixed_size_timm_model(family):
    """Without dynamic_img_size timm caches the RoPE grid and runs at 224 only; same logits."""
    reference = timm_model(f"vit_small_patch16_{family}_224", dynamic_img_size=False)
    assert max_logit_difference(reference, from_timm_rope_vit(reference), (224, 224)) <= ATOL


def test_full_width_vit_small_rope_mixed_ape():
    """The registered ViT-S config (width 384, 6 heads of 64, mlp 4x, 1000 classes), 2 of its 12 blocks for speed."""
    reference = timm.create_model(
        "vit_small_patch16_rope_mixed_ape_224", pretrained=False, depth=2, dynamic_img_size=True)
    randomize(reference)
    reference.eval()
    model = from_timm_rope_vit(reference)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert max_logit_difference(reference, model, (224, 224)) <= ATOL
    assert max_logit_difference(reference, model, (160, 192)) <= ATOL


@pytest.mark.parametrize(("family", "kwargs"), [
    ("rope", dict(rope_grid_indexing="ij")),  # axial pairs permuted by half a head
    ("rope_mixed", dict(rope_grid_indexing="ij")),  # fx <-> fy
    ("rope", dict(rope_rotate_half=True)),  # channels (p, p + D/2) -> (2p, 2p + 1)
    ("rope_ape", dict(rope_rotate_half=True, rope_grid_indexing="ij")),
    ("rope_ape", dict(qkv_fused=False)),
    ("rope_mixed_ape", dict(attn_type="eva")),  # EvaAttention: q_bias, zero k_bias, v_bias
    ("rope_mixed", dict(attn_type="eva", qkv_fused=False)),
    ("rope_ape", dict(no_embed_class=False)),  # CLS entry of the table folded into the CLS token
    ("rope", dict(use_fc_norm=True)),  # fc_norm on the CLS token == norm on every token, then CLS
    ("rope", dict(attn_only_layer_scale=True)),
    ("rope", dict(init_values=None)),
    ("rope_mixed", dict(global_pool="avg", use_fc_norm=False)),
    ("rope_mixed", dict(qkv_bias=False)),
    ("rope_ape", dict(use_rot_pos_emb=False)),  # plain APE ViT
])
def test_layout_variants_give_identical_logits(family, kwargs):
    reference = timm_model(f"vit_small_patch16_{family}_224", **kwargs)
    model = from_timm_rope_vit(reference)
    for resolution in [(224, 224), (160, 192)]:
        assert max_logit_difference(reference, model, resolution) <= ATOL, resolution


def test_layer_norm_eps_and_axial_frequencies_follow_timm():
    reference = timm_model("vit_small_patch16_rope_224")
    model = from_timm_rope_vit(reference)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    bands = reference.rope.bands  # 1 / 100^(i / (D/4)), the first half of the pairs along x
    expected = torch.stack([torch.cat([bands, 0 * bands]), torch.cat([0 * bands, bands])])
    assert torch.equal(model.rope.freqs.flatten(1), expected)
    assert torch.equal(model.blocks[1].ls2.gamma, reference.blocks[1].gamma_2)


def test_mixed_frequencies_are_copied_in_timm_layout():
    reference = timm_model("vit_small_patch16_rope_mixed_224")
    assert torch.equal(from_timm_rope_vit(reference).rope.freqs, reference.rope.freqs)


def test_timm_xy_grid_follows_height_then_width():
    """timm 1.0.31's 'xy' grids keep the (H, W) row-major token order, x = column: no height/width mix-up."""
    t_x, t_y = get_mixed_grid([2, 3], grid_indexing="xy")
    assert t_x.tolist() == [0, 1, 2, 0, 1, 2] and t_y.tolist() == [0, 0, 0, 1, 1, 1]


def test_qk_channel_order():
    assert qk_channel_order(8, swap_axes=False, rotate_half=False).tolist() == list(range(8))
    assert qk_channel_order(8, swap_axes=True, rotate_half=False).tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert qk_channel_order(8, swap_axes=False, rotate_half=True).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert qk_channel_order(8, swap_axes=True, rotate_half=True).tolist() == [2, 6, 3, 7, 0, 4, 1, 5]


def test_convert_by_name():
    model = convert_timm_rope_vit("vit_base_patch16_rope_mixed_224", depth=1, embed_dim=32, num_heads=2, num_classes=3)
    assert model.pos_embed_name == "rope_mixed" and model.num_classes == 3 and len(model.blocks) == 1
    assert model.patch_embed.patch_size == (16, 16) and model.patch_embed.img_size == (224, 224)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("vit_tiny_patch16_224", dict(depth=1), "expected a timm Eva"),
    ("eva02_tiny_patch14_224", dict(depth=1), "SwiGLU"),
    ("vit_small_patch16_rope_224", dict(SMALL, qk_norm=True), "qk_norm"),
    ("vit_small_patch16_rope_224", dict(SMALL, num_reg_tokens=1), "register tokens"),
    ("vit_small_patch16_rope_224", dict(SMALL, rope_type="dinov3"), "RotaryEmbeddingDinoV3"),
    ("vit_small_patch16_rope_224", dict(SMALL, global_pool="avg"), "fc_norm"),
    ("vit_small_patch16_rope_224", dict(SMALL, rope_grid_offset=0.5), "grid_offset"),
    ("vit_small_patch16_rope_224", dict(SMALL, ref_feat_shape=(7, 7)), "ref_feat_shape"),
    ("vit_small_patch16_rope_224", dict(SMALL, use_post_norm=True), "EvaBlockPostNorm"),
])
def test_unsupported_models_raise_a_clear_error(name, kwargs, message):
    with pytest.raises(UnsupportedTimmModelError, match=message):
        convert_timm_rope_vit(name, **kwargs)
    assert issubclass(UnsupportedTimmModelError, ValueError)
