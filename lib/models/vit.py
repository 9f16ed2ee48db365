"""A Vision Transformer with pluggable attention and position encoding, built from timm layers.

    image -> PatchEmbed -> (+ absolute position) -> [CLS] + patches -> Blocks (attention with optional
    RoPE and logit bias, MLP) -> norm -> CLS token -> linear head

Any image size works at test time, square or not, as long as it divides into patches: the patch grid
is read off the input, the absolute embedding is resampled to it, and RoPE tables and relative logit
biases are built for it, once per forward pass for all blocks (`position_tables`).

Models are registered with timm (`timm.create_model("lib_vit_tiny_patch4", attention="linear",
pos_embed="rope_mixed")` after `import lib`).
"""
from functools import partial

import torch
from einops import rearrange
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lib.layers.attention import create_attention
from lib.layers.position import PositionTables, create_position_encoding
from lib.layers.rope import RotaryTables


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), optional LayerScale.

    mlp_ratio = 0 drops the MLP sub-block (norm, MLP, LayerScale): the attention-only block of Bermeitinger et al.
    2024, "Reducing the Transformer Architecture to a Minimum"."""

    def __init__(
        self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0,
        init_values: float | None = None, norm_layer=nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0: no MLP), got {mlp_ratio}")
        self.has_mlp = mlp_ratio > 0
        if self.has_mlp:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
            self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, grid_hw, num_prefix_tokens, rope=None, return_attn=False, bias=None):
        mixed = self.attn(self.norm1(x), grid_hw, num_prefix_tokens, rope=rope, return_attn=return_attn, bias=bias)
        attn = None
        if return_attn:
            mixed, attn = mixed
        x = x + self.drop_path1(self.ls1(mixed))
        if self.has_mlp:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, attn


class VisionTransformer(nn.Module):
    """ViT classifier whose attention and position encoding are chosen by name.

    Args:
        img_size: training image size; sets the grid the learned APE table is trained at.
        attention: a key of `lib.layers.attention.ATTENTION_LAYERS`.
        pos_embed: a key of `lib.layers.position.POSITION_ENCODINGS`; one with a logit bias ('fire') needs an
            attention variant that takes one (softmax).
        attention_kwargs: extra constructor arguments for the attention variant.
        rope_theta: RoPE base; None keeps the paper's (100 axial, 10 mixed).
        init_values: LayerScale init; None disables LayerScale.
        norm_eps: LayerNorm epsilon (timm's RoPE-ViT ports use 1e-6).
        mlp_ratio: MLP width / embed_dim; 0 removes the MLP from every block (attention-only blocks).
        reg_tokens: register tokens (Darcet et al. 2024, "Vision Transformers Need Registers"; timm's name):
            learned prefix tokens after CLS, with no position and no rotation, that the classifier never reads.
            They give attention a place to park global information other than background patches.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 28,
        patch_size: int = 4,
        in_chans: int = 1,
        num_classes: int = 10,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        attention: str = "softmax",
        attention_kwargs: dict | None = None,
        pos_embed: str = "rope_mixed",
        pos_embed_kwargs: dict | None = None,
        rope_theta: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        global_pool: str = "token",
        norm_eps: float = 1e-5,
        reg_tokens: int = 0,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.global_pool = global_pool
        if reg_tokens < 0:
            raise ValueError(f"reg_tokens must be >= 0, got {reg_tokens}")
        self.num_prefix_tokens = 1 + reg_tokens  # CLS, then the registers
        self.attention_name, self.pos_embed_name = attention, pos_embed

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            output_fmt="NHWC", strict_img_size=False, dynamic_img_pad=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.abs_pos, self.rope, self.pos_bias = create_position_encoding(
            pos_embed, embed_dim, num_heads, depth, self.patch_embed.grid_size, rope_theta=rope_theta,
            pos_embed_kwargs=pos_embed_kwargs,
        )
        make_attention = partial(
            create_attention, attention, dim=embed_dim, num_heads=num_heads, qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate, **(attention_kwargs or {}),
        )
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, make_attention(), mlp_ratio=mlp_ratio, drop_path=dp, init_values=init_values,
                  norm_layer=partial(nn.LayerNorm, eps=norm_eps))
            for dp in drop_paths
        ])
        if self.pos_bias is not None and not getattr(self.blocks[0].attn, "supports_bias", False):
            raise ValueError(f"position encoding {pos_embed!r} adds a bias to the attention logits, which attention "
                             f"{attention!r} does not take; use attention='softmax'")
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.apply(_init_weights)
        trunc_normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            trunc_normal_(self.reg_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW should not decay (timm optimizer factory convention)."""
        names = {"cls_token", "reg_token"} if self.reg_token is not None else {"cls_token"}
        for prefix, module in (("abs_pos", self.abs_pos), ("rope", self.rope), ("pos_bias", self.pos_bias)):
            if module is None:
                continue
            # a module may keep some of its weights decayed (e.g. a content network); default: none
            own = module.no_weight_decay() if hasattr(module, "no_weight_decay") else [n for n, _ in module.named_parameters()]
            names |= {f"{prefix}.{n}" for n in own}
        return names

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with absolute position added and CLS (then the registers) prepended, and the grid (H, W)."""
        patches = self.patch_embed(images)
        grid_hw = tuple(patches.shape[1:3])
        x = rearrange(patches, "b h w c -> b (h w) c")
        if self.abs_pos is not None:
            x = x + self.abs_pos(grid_hw, device=x.device)
        prefix = [self.cls_token] + ([self.reg_token] if self.reg_token is not None else [])
        x = torch.cat([token.expand(x.shape[0], -1, -1) for token in prefix] + [x], dim=1)
        return x, grid_hw

    def rotary_tables(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> RotaryTables | None:
        """RoPE rotations for the tokens `x` (B, N, C) of one forward pass; None without RoPE."""
        return None if self.rope is None else self.rope(grid_hw, x, self.num_prefix_tokens)

    def position_tables(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> PositionTables:
        """Everything the blocks need from the position encoding for tokens `x` (B, N, C), for all blocks at once."""
        bias = None if self.pos_bias is None else self.pos_bias(grid_hw, self.num_prefix_tokens, device=x.device)
        return PositionTables(self.rotary_tables(x, grid_hw), bias)

    def forward_features(self, images: torch.Tensor, return_attn: bool = False):
        """Final normalized tokens (B, prefix + H*W, C); with return_attn also each block's attention."""
        x, grid_hw = self.embed(images)
        tables = self.position_tables(x, grid_hw)
        attns = []
        for index in range(len(self.blocks)):
            x, attn = self.forward_block(index, x, grid_hw, tables, return_attn=return_attn)
            attns.append(attn)
        x = self.norm(x)
        return (x, attns) if return_attn else x

    def forward_block(self, index: int, x: torch.Tensor, grid_hw: tuple[int, int], tables: PositionTables,
                      return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block `index` on tokens `x`; `tables` come from `position_tables`, once per forward for all blocks."""
        if not isinstance(tables, PositionTables):  # e.g. bare RotaryTables: a logit bias would be silently lost
            raise TypeError(f"forward_block takes the model's position_tables(x, grid_hw), got {type(tables).__name__}")
        return self.blocks[index](x, grid_hw, self.num_prefix_tokens, rope=tables.rope(index),
                                  bias=tables.attn_bias(index), return_attn=return_attn)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_with_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Logits and the per-block attention weights (B, heads, N, N), via the explicit path."""
        x, attns = self.forward_features(images, return_attn=True)
        return self.forward_head(x), attns


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 10, "input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,),
            "first_conv": "patch_embed.proj", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({
    "lib_vit_tiny_patch4.untrained": _cfg(),
    "lib_vit_small_patch16.untrained": _cfg(num_classes=1000, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "lib_vit_base_patch16.untrained": _cfg(num_classes=1000, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; see lib.models.convert for timm RoPE-ViT weights")
    return build_model_with_cfg(VisionTransformer, variant, pretrained=False, **kwargs)


@register_model
def lib_vit_tiny_patch4(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The study's CPU-sized ViT: 28x28 input, 7x7 patches grid, width 64, depth 4, 4 heads."""
    args = dict(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    return _create("lib_vit_tiny_patch4", pretrained, **{**args, **kwargs})


@register_model
def lib_vit_small_patch16(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 (DeiT-S shape), the size of Heo et al.'s ViT-S."""
    args = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)
    return _create("lib_vit_small_patch16", pretrained, **{**args, **kwargs})


@register_model
def lib_vit_base_patch16(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16."""
    args = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
    return _create("lib_vit_base_patch16", pretrained, **{**args, **kwargs})
