"""Frozen token features for the convex heads: a trained ViT's tokens at any layer, projected to d dims.

The convex programs grow as d^3 (attention) or s*d (mixer) per sample, so the backbone's C-dim tokens
are first projected to a small d (Sahiner et al. 2022 project pretrained features the same way):

    x_tokens (n, s, C) --(tokens after `layer` blocks)--> (x - mu) P / sigma  (n, s, d) [, 1]

P holds the top-d principal directions of the training tokens (or a random orthonormal basis), mu and
sigma are the training mean and the per-direction standard deviation: everything is fitted on the
training split only and then applied unchanged to validation and test. An optional constant channel
(the last one, equal to 1) lets every head express lower-order terms (a bias, linear terms) through
the same weights, since a head's outputs are polynomials in the token entries.

References: Sahiner et al. 2022, "Unraveling Attention via Convex Duality" (arXiv 2205.08078).
"""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

from lib.checkpoint import load_checkpoint, save_atomic
from lib.models import VisionTransformer
from lib.study import normalize


@torch.no_grad()
def token_features(
    model: VisionTransformer, images: torch.Tensor, layer: int | None = None, include_cls: bool = False,
    batch_size: int = 256,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens (n, [1 +] H*W, C) after `layer` blocks, and the patch grid (H, W).

    layer: number of transformer blocks applied (0: embeddings); None or the model's depth gives the
    final normalized tokens of `forward_features`. Intermediate layers are taken before any norm.
    images: (n, C, H, W) in [0, 1], normalized here as in training.
    """
    depth = len(model.blocks)
    layer = depth if layer is None else layer
    if not 0 <= layer <= depth:
        raise ValueError(f"layer must lie in [0, {depth}] for a model of depth {depth}, got {layer}")
    model.eval()
    chunks, grid_hw = [], None
    for batch in images.split(batch_size):
        x, grid_hw = model.embed(normalize(batch))
        tables = model.position_tables(x, grid_hw)
        for i in range(layer):
            x, _ = model.forward_block(i, x, grid_hw, tables)
        if layer == depth:
            x = model.norm(x)
        chunks.append(x if include_cls else x[:, model.num_prefix_tokens:])
    return torch.cat(chunks), grid_hw


@dataclass(frozen=True)
class Projection:
    """tokens -> (tokens - mean) @ components / scale, then a constant channel if `constant`."""

    mean: torch.Tensor  # (C,)
    components: torch.Tensor  # (C, d), orthonormal columns
    scale: torch.Tensor  # (d,)
    constant: bool = True

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        projected = (tokens - self.mean) @ self.components / self.scale
        if not self.constant:
            return projected
        return torch.cat([projected, torch.ones_like(projected[..., :1])], dim=-1)


def fit_projection(
    tokens: torch.Tensor, dim: int, method: str = "pca", seed: int = 0, max_tokens: int = 50_000,
    constant: bool = True,
) -> Projection:
    """PCA (top-`dim` principal directions) or a random orthonormal projection, fitted on `tokens`.

    tokens: (n, s, C) training tokens; at most `max_tokens` of them (a seeded random subset) are used.
    """
    flat = rearrange(tokens, "n s c -> (n s) c").double()
    if dim > flat.shape[1]:
        raise ValueError(f"cannot project {flat.shape[1]}-dim tokens to dim={dim}")
    generator = torch.Generator().manual_seed(seed)
    if len(flat) > max_tokens:
        flat = flat[torch.randperm(len(flat), generator=generator)[:max_tokens]]
    mean = flat.mean(0)
    if method == "pca":
        components = torch.linalg.svd(flat - mean, full_matrices=False).Vh[:dim].T
    elif method == "random":
        components = torch.linalg.qr(torch.randn(flat.shape[1], dim, generator=generator, dtype=flat.dtype)).Q
    else:
        raise ValueError(f"method must be 'pca' or 'random', got {method!r}")
    scale = ((flat - mean) @ components).std(0).clamp_min(1e-8)
    return Projection(mean, components, scale, constant)


def project_splits(
    tokens: dict[str, torch.Tensor], dim: int, method: str = "pca", seed: int = 0, constant: bool = True,
) -> tuple[dict[str, torch.Tensor], Projection]:
    """Fit the projection on tokens['train'] only and apply it to every split (float64)."""
    projection = fit_projection(tokens["train"], dim, method, seed, constant=constant)
    return {split: projection(x.double()) for split, x in tokens.items()}, projection


def cached(path: Path | None, compute: Callable[[], dict]) -> dict:
    """compute() once and keep its dict of tensors at `path` (None: no cache); name `path` by content."""
    if path is not None and Path(path).is_file():
        return load_checkpoint(path)
    result = compute()
    if path is not None:
        save_atomic(result, Path(path))
    return result
