"""Attention and position-encoding layers (one concept per module)."""
