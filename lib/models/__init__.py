"""Models built from `lib.layers`, registered with timm on import."""
from lib.models.vit import Block, VisionTransformer

__all__ = ["Block", "VisionTransformer"]
