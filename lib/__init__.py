"""Attention and RoPE study: layers, models, data and the code the notebooks share.

Importing `lib` registers the study's models with timm (`timm.create_model("lib_vit_tiny_patch4")`).
"""
from lib import models  # noqa: F401  (registers timm entrypoints)
