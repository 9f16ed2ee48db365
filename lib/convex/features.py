"""Frozen token features for the convex heads: a trained ViT's tokens at any layer, projected to d dims.

The convex programs grow as d^3 (attention) or s*d (mixer) per sample, so the backbone's C-dim tokens
are first projected to a small d (Sahiner et al. 2022 project pretrained features the same way):

    x_tokens (n, s, C) --(tokens after `layer` blocks)--> (x - mu) P / sigma  (n, s, d) [, 1]

P holds the top-d principal directions of the training tokens (or a random orthonormal basis), mu and
sigma are the training mean and the per-direction standard deviation: everything is fitted on the
training split only and then applied unchanged to validation and test. An optional constant channel
(the last one, equal to 1) lets every head express lower-order terms (a bias, linear terms) through
the same weights, since a head's outputs are polynomials in the token entries.

The backbones are RQ1's trained seeds (`load_backbone`: seed k of an rq1 cell), so the heads' seeds are
training seeds of the features too. A backbone may be fed another data set than its own (transfer, the
paper's setting): grey images are repeated to colour or colour averaged to grey (`match_channels`), and
`leaked_images` checks that none of the heads' test images is in the backbone's training split.

References: Sahiner et al. 2022, "Unraveling Attention via Convex Duality" (arXiv 2205.08078).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from lib.config import Params
from lib.data import DATASETS, load_split
from lib.extrapolation.study import cell_params
from lib.models import VisionTransformer
from lib.run.study import load_trained_model, normalize


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
    images = match_channels(images, model.patch_embed.proj.in_channels)  # transfer between grey and colour sets
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


def backbone_weights(weights_root: Path, cell: str, seed: int) -> Path:
    """Where RQ1's matrix stage `rq1` keeps seed `seed` of `cell`: <weights_root>/<cell>/seed<seed>.pt."""
    path = Path(weights_root) / cell / f"seed{seed}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights for seed {seed} of rq1 cell {cell} (run `dvc repro rq1`)")
    return path


def load_backbone(params: Params, cell: str, seed: int, weights_root: Path = Path("results/rq1/weights")) -> VisionTransformer:
    """Seed `seed` of the RQ1 cell `cell`, rebuilt with the cell's architecture and frozen (eval mode)."""
    dataset, _, variant, _ = params.rq1.parse(cell)
    return load_trained_model(cell_params(params, cell, seed), dataset, variant, backbone_weights(weights_root, cell, seed))


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images (n, C, H, W) for a backbone with `channels` input channels: grey -> RGB by repetition, RGB -> grey
    by the channel mean (transfer between data sets of different colour)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        return images.mean(1, keepdim=True)
    raise ValueError(f"cannot feed {images.shape[1]}-channel images to a {channels}-channel backbone")


def backbone_leaks(params: Params, backbone_dataset: str, head_test: torch.Tensor, resolution: int) -> float:
    """`leaked_images` of the heads' test images against the backbone data set's training split (nan: not checked,
    for a user's image folder, whose training split is too large to hold in memory)."""
    if backbone_dataset not in DATASETS:
        return float("nan")
    train = load_split(Path(params.data_root), backbone_dataset, "train", resolution)
    return float(leaked_images(train.images, head_test))


def leaked_images(backbone_train: torch.Tensor, head_images: torch.Tensor) -> int:
    """How many of `head_images` occur among the backbone's training images, compared as 8-bit pictures at the
    smaller of the two resolutions and the backbone's channels (0: the heads are tested on unseen images)."""
    size = min(backbone_train.shape[-1], head_images.shape[-1])

    def keys(images: torch.Tensor) -> list[bytes]:
        images = F.interpolate(images.float(), size=(size, size), mode="area") if images.shape[-1] != size else images
        pixels = (match_channels(images, backbone_train.shape[1]).clamp(0, 1) * 255).round().to(torch.uint8)
        return [image.numpy().tobytes() for image in pixels]

    seen = set(keys(backbone_train))
    return sum(key in seen for key in keys(head_images))
