"""Models built from `lib.layers`, registered with timm on import; `convert` loads timm's RoPE-ViT weights."""
from lib.models.vit import Block, VisionTransformer

__all__ = ["Block", "VisionTransformer"]
