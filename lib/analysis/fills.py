"""Reference images: what deletion / insertion puts where a patch is removed (the *fill*), and where Integrated
Gradients integrates from (its *baseline*).

A faithfulness score depends on the fill (Hooker et al. 2019; Tomsett et al. 2020), and Integrated Gradients is
favoured by deletion whenever it integrates from the very image that deletion fills in: the attributions then
sum to the change of the output along the path that deletion walks (Sundararajan et al. 2017, completeness).
So the study scores every method under several fills and integrates IG from an image that is none of them, and
reports how much IG gains when it integrates from the fill instead.

Kinds (images in [0, 1], (B, C, H, W); the result has the same shape):
- mean: the split's per-channel mean colour, one constant image (the study's headline fill);
- blur: each image blurred by a Gaussian of one patch's width (RISE inserts onto a blurred image), so a
  removed patch keeps the local colour but loses its shape;
- other_image: another image of the batch (image i gets image i - 1's pixels; the first gets the last's),
  content of the same kind that the model reads as such;
- black: zeros, Integrated Gradients' usual baseline.
"""
import math

import torch
from torchvision.transforms.functional import gaussian_blur

FILLS = ("mean", "blur", "other_image")
IG_BASELINES = ("black", "mean", "blur")


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation `sigma` px, kernel 3 sigma each side, cut to the image (reflect padding
    needs a kernel no wider than the image)."""
    height, width = images.shape[-2:]
    size = [min(2 * math.ceil(3 * sigma) + 1, side - 1 + side % 2) for side in (height, width)]  # odd, <= side
    return gaussian_blur(images, kernel_size=size[::-1], sigma=[sigma, sigma])


def reference_images(kind: str, images: torch.Tensor, mean_colour: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The `kind` reference of each image (see the module docstring); mean_colour: (1, C, 1, 1)."""
    if kind == "mean":
        return mean_colour.expand_as(images).clone()
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "blur":
        return blurred(images, float(patch_size))
    if kind == "other_image":
        return images.roll(1, dims=0)
    raise ValueError(f"unknown reference image {kind!r}: expected one of {sorted(set(FILLS) | set(IG_BASELINES))}")
