"""What attention costs (research question 2): `benchmark` times every variant against the token count and
the study's RoPE ViT against timm's (`python -m lib.efficiency.benchmark`)."""
