"""The ViT backbone: any resolution, every position encoding, APE resampling, timm registration."""
import inspect

import pytest
import timm
import torch

import lib  # noqa: F401  (registers the models with timm)
from lib.layers.pos_embed import LearnedPosEmbed, SinCosPosEmbed
from lib.layers.position import POSITION_ENCODINGS
from lib.models import VisionTransformer

RESOLUTIONS = [(28, 28), (16, 16), (56, 56), (20, 44), (44, 12)]


def tiny(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2, **kwargs).eval()


@pytest.mark.parametrize("pos_embed", sorted(POSITION_ENCODINGS))
def test_every_position_encoding_runs_at_any_resolution(pos_embed):
    model = tiny(pos_embed=pos_embed)
    for h, w in RESOLUTIONS:
        logits, attns = model.forward_with_attention(torch.randn(2, 1, h, w))
        tokens = 1 + (h // 4) * (w // 4)
        assert logits.shape == (2, 10)
        assert [a.shape for a in attns] == [(2, 2, tokens, tokens)] * 2
        assert torch.allclose(attns[0].sum(-1), torch.ones(2, 2, tokens), atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["ape", "rope_mixed", "rope_axial_ape", "rope_mixed_norm", "fire"])
def test_fused_and_explicit_attention_agree(pos_embed):
    model = tiny(pos_embed=pos_embed)
    x = torch.randn(3, 1, 20, 36)
    with torch.no_grad():
        fused = model(x)
        explicit, _ = model.forward_with_attention(x)
    assert torch.allclose(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["rope_mixed", "fire", "ape"])
def test_blocks_one_at_a_time_equal_the_forward_pass(pos_embed):
    """position_tables + forward_block (how analysis code reruns blocks) give forward_features' tokens."""
    model = tiny(pos_embed=pos_embed)
    images = torch.randn(2, 1, 20, 36)
    with torch.no_grad():
        x, grid_hw = model.embed(images)
        tables = model.position_tables(x, grid_hw)
        assert (tables.rotary is None) == (model.rope is None) and (tables.bias is None) == (model.pos_bias is None)
        for index in range(len(model.blocks)):
            x, _ = model.forward_block(index, x, grid_hw, tables)
        assert torch.allclose(model.norm(x), model.forward_features(images), atol=1e-6)
        if model.rope is not None:  # bare rotary tables would drop a bias silently: refused
            with pytest.raises(TypeError, match="position_tables"):
                model.forward_block(0, x, grid_hw, model.rotary_tables(x, grid_hw))


def test_position_encoding_makes_the_model_position_aware():
    """Without position encoding, permuting patches leaves the CLS output unchanged; with one it does not."""
    x = torch.randn(1, 1, 28, 28)
    # swap two 4x4 patches: a permutation of tokens
    swapped = x.clone()
    swapped[..., 0:4, 0:4], swapped[..., 8:12, 12:16] = x[..., 8:12, 12:16], x[..., 0:4, 0:4]
    with torch.no_grad():
        for pos_embed, invariant in [("none", True), ("rope_axial", False), ("rope_mixed", False), ("ape", False),
                                     ("rope_mixed_norm", False), ("fire", False)]:
            model = tiny(pos_embed=pos_embed)
            if model.pos_bias is not None:
                # FIRE starts with a small bias, and CLS (bias 0) sees positions only from block 2 on: make it matter
                model.pos_bias.fc2_weight.mul_(100)
            same = torch.allclose(model(x), model(swapped), atol=1e-5)
            assert same == invariant, pos_embed


def test_learned_ape_is_resampled_only_off_the_training_grid():
    ape = LearnedPosEmbed(8, (7, 7))
    assert ape((7, 7)) is ape.table
    assert ape((14, 10)).shape == (1, 140, 8)
    with torch.no_grad():
        ape.table.fill_(0.3)
    assert torch.allclose(ape((14, 10)), torch.full((1, 140, 8), 0.3), atol=1e-5)  # constant stays constant


def test_learned_ape_resampling_keeps_a_column_pattern():
    """A table varying only along x still varies only along x after resampling to another grid."""
    ape = LearnedPosEmbed(4, (6, 6))
    with torch.no_grad():
        ape.table.copy_(torch.arange(6.0).repeat(6)[None, :, None].expand(1, 36, 4))
    resampled = ape((9, 12)).reshape(9, 12, 4)
    assert torch.allclose(resampled, resampled[:1].expand_as(resampled), atol=1e-5)
    assert (resampled[0, 1:, 0] >= resampled[0, :-1, 0] - 1e-5).all()  # still increasing along x


def test_sincos_matches_definition():
    table = SinCosPosEmbed(8)((2, 3))[0]  # (6, 8): [sin(y f), sin(x f)...] as timm builds it
    assert table.shape == (6, 8)
    assert torch.allclose(table[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))  # position (0, 0)


def test_rope_frequencies_have_no_weight_decay():
    names = tiny(pos_embed="rope_mixed_ape").no_weight_decay()
    assert {"rope.freqs", "abs_pos.table", "cls_token"} <= names


@pytest.mark.parametrize("name", ["lib_vit_tiny_patch4", "lib_vit_small_patch16"])
def test_models_are_registered_with_timm(name):
    assert name in timm.list_models("lib_vit*")
    model = timm.create_model(name, pos_embed="rope_axial", num_classes=3, depth=1)
    size = model.patch_embed.img_size
    assert model(torch.randn(1, model.patch_embed.proj.in_channels, *size)).shape == (1, 3)


def test_bad_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown position encoding 'rope_mix'"):
        tiny(pos_embed="rope_mix")
    with pytest.raises(ValueError, match="unknown attention 'soft'"):
        tiny(attention="soft")


def test_image_not_divisible_by_patch_is_an_error():
    with pytest.raises(Exception, match="divisible|patch"):
        tiny(pos_embed="ape")(torch.randn(1, 1, 30, 28))


def test_pos_embed_kwargs_reach_the_encodings_constructor(tiny_params):
    """model.rope_theta and pos_embed_kwargs.theta build the same RoPE; an encoding's other arguments (FIRE's MLP
    width) reach its module; params.yaml's variants.<name>.pos_embed_kwargs pass through build_model."""
    def built(**kwargs):
        torch.manual_seed(0)
        return VisionTransformer(img_size=24, patch_size=4, in_chans=1, num_classes=4, **kwargs)
    by_theta = built(pos_embed="rope_mixed", rope_theta=50.0)
    by_kwargs = built(pos_embed="rope_mixed", pos_embed_kwargs={"theta": 50.0})
    default = built(pos_embed="rope_mixed")
    assert torch.equal(by_theta.rope.freqs, by_kwargs.rope.freqs)
    assert not torch.equal(by_kwargs.rope.freqs, default.rope.freqs)
    fire = built(pos_embed="fire", attention="softmax", pos_embed_kwargs={"hidden_dim": 8})
    assert fire.pos_bias.hidden_dim == 8 and fire.pos_bias.fc1_weight.shape[-1] == 8
    from lib.run.study import build_model  # params.yaml -> model
    fire_variant = tiny_params.variants["fire"].model_copy(update={"pos_embed_kwargs": {"hidden_dim": 8}})
    ablated = tiny_params.model_copy(update={"variants": {**tiny_params.variants, "fire": fire_variant}})
    assert build_model(ablated, "shapes", "fire").pos_bias.hidden_dim == 8
    with pytest.raises(ValueError, match="theta given twice"):
        built(pos_embed="rope_mixed", rope_theta=50.0, pos_embed_kwargs={"theta": 20.0})
    with pytest.raises(ValueError, match="'ape' takes no argument 'theta'"):
        built(pos_embed="ape", pos_embed_kwargs={"theta": 20.0})


@pytest.mark.parametrize("name", sorted(POSITION_ENCODINGS))
def test_every_encoding_lists_the_arguments_it_takes(name):
    """Every argument an encoding accepts builds (at its class default) and nothing else is accepted."""
    part = POSITION_ENCODINGS[name].configurable
    accepted = part.accepted_kwargs() if part else []
    assert not {"embed_dim", "head_dim", "num_heads", "depth", "grid_hw", "train_grid_hw"} & set(accepted)
    if part is not None:
        defaults = {k: v.default for k, v in inspect.signature(part.module.__init__).parameters.items() if k in accepted}
        assert set(defaults) == set(accepted) and all(v is not inspect.Parameter.empty for v in defaults.values())
        VisionTransformer(img_size=24, patch_size=4, in_chans=1, num_classes=4, pos_embed=name, attention="softmax",
                          pos_embed_kwargs=defaults)


@pytest.mark.parametrize("pos_embed", ["ape", "rope_mixed", "fire"])
def test_registers_are_prefix_tokens_without_position(pos_embed):
    model = tiny(pos_embed=pos_embed, reg_tokens=3)
    assert model.num_prefix_tokens == 4 and model.reg_token.shape == (1, 3, 32)
    assert "reg_token" in model.no_weight_decay()
    for h, w in RESOLUTIONS[:3]:
        images = torch.randn(2, 1, h, w)
        logits, attns = model.forward_with_attention(images)
        tokens = 4 + (h // 4) * (w // 4)
        assert logits.shape == (2, 10) and [a.shape for a in attns] == [(2, 2, tokens, tokens)] * 2
        assert torch.allclose(attns[-1].sum(-1), torch.ones(2, 2, tokens), atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(model(images), logits, atol=1e-5)  # fused = explicit
    # the registers enter as learned, position-free tokens: CLS then the registers, unchanged by the grid
    x, _ = model.embed(torch.randn(1, 1, 28, 28))
    y, _ = model.embed(torch.randn(1, 1, 44, 12))
    assert torch.equal(x[:, 1:4], model.reg_token) and torch.equal(y[:, :4], x[:, :4])
    # and they matter: the same weights without them give other logits
    images = torch.randn(2, 1, 28, 28)
    without = tiny(pos_embed=pos_embed)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if k != "reg_token"})
    with torch.no_grad():
        assert not torch.allclose(without(images), model(images), atol=1e-4)


def test_no_registers_is_the_model_as_before(tiny_params):
    """reg_tokens = 0 adds no parameter and draws no random number: every trained run stays bit-identical."""
    plain, zero = tiny(), tiny(reg_tokens=0)
    assert plain.reg_token is None and plain.num_prefix_tokens == 1
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    assert list(plain.state_dict()) == list(zero.state_dict())
    with pytest.raises(ValueError, match="reg_tokens must be >= 0"):
        tiny(reg_tokens=-1)
    from lib.run.study import build_model  # params.yaml's model.num_registers, or a variant's override
    with_registers = tiny_params.model_copy(update={"model": tiny_params.model.model_copy(update={"num_registers": 2})})
    assert build_model(with_registers, "shapes", "rope_mixed").num_prefix_tokens == 3
    assert build_model(tiny_params, "shapes", "rope_mixed").num_prefix_tokens == 1


def test_mlp_ratio_zero_gives_attention_only_blocks():
    """Bermeitinger et al.'s minimal block: x + attn(norm(x)) and nothing else; every other block is unchanged."""
    model, full = tiny(mlp_ratio=0), tiny(mlp_ratio=2.0)
    block = model.blocks[0]
    assert not any(hasattr(block, name) for name in ("mlp", "norm2", "ls2"))
    mlp_params = sum(p.numel() for n, p in full.named_parameters() if ".mlp." in n or ".norm2." in n)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in full.parameters()) - mlp_params
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, _ = block(x, (2, 2), 1)
        assert torch.allclose(out, x + block.attn(block.norm1(x), (2, 2), 1), atol=1e-6)
    images = torch.randn(2, 1, 20, 44)
    model.train()
    model(images).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="mlp_ratio must be >= 0"):
        tiny(mlp_ratio=-1)


def test_parameter_counts_of_the_study_models_as_the_readme_states():
    """The default study's RoPE-Mixed ViT and Bermeitinger et al.'s minimum (symmetric attention without value and
    output projections, no MLP) on shapes: the counts README.md quotes."""
    from pathlib import Path

    from lib.config import load_params
    from lib.run.study import build_model
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    counts = {v: sum(p.numel() for p in build_model(params, "shapes", v).parameters()) for v in ("rope_mixed", "symmetric")}
    assert counts == {"rope_mixed": 137_732, "symmetric": 20_996}
