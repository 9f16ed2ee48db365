"""Batch augmentation: light random translation and isotropic scaling (the default), RandomResizedCrop-style
zoom (the scale augmentation of Heo et al.'s DeiT-III recipe, for the resolution study), and optional
horizontal flips.

Flips are off by default: the procedural `shapes` labels are spatial relations (left of, above), which a
flip would change; natural images (CIFAR, ImageNet) keep their label. Everything runs on whole batches with
an explicit generator, so a run is reproducible from (seed, epoch) alone.
"""
import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor, translate: float, scale: float, generator: torch.Generator,
    batch: int | None = None, rows: slice = slice(None),
) -> torch.Tensor:
    """Shift each image by up to `translate` of its size and rescale it by a factor in [1 - scale, 1 + scale].

    Args:
        images: (B, C, H, W) batch.
        translate: largest shift as a fraction of the image side.
        scale: largest relative change of size.
        generator: source of randomness (CPU generator).
        batch, rows: `images` are only `rows` of a batch of `batch` images (one process's share under
            DistributedDataParallel): the draws are made for the whole batch and `rows` of them are used, so
            the shares together are augmented exactly as the whole batch would be. Default: the whole batch.
    """
    if translate == 0 and scale == 0:
        return images
    b = images.shape[0] if batch is None else batch
    zoom = 1 + (torch.rand(b, generator=generator)[rows] * 2 - 1) * scale
    # affine_grid coordinates span [-1, 1], so a shift of `translate` image sides is 2 * translate
    shift = (torch.rand(b, 2, generator=generator)[rows] * 2 - 1) * 2 * translate
    theta = torch.zeros(images.shape[0], 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_hflip(images: torch.Tensor, generator: torch.Generator, batch: int | None = None,
                 rows: slice = slice(None)) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (`batch`, `rows` as in `random_affine`)."""
    b = images.shape[0] if batch is None else batch
    flip = (torch.rand(b, generator=generator)[rows] < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_resized_crop(
    images: torch.Tensor, area: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator,
    batch: int | None = None, rows: slice = slice(None),
) -> torch.Tensor:
    """RandomResizedCrop on a batch: a box of a random share of the image area and aspect ratio, at a random
    place, resampled back to the full size (bilinear), one box per image.

    The box covers a fraction in [area[0], area[1]] of the image (uniform) with width / height log-uniform in
    `ratio`, clipped to the image; its centre is uniform over the places where it fits. An object therefore
    appears at 1 / sqrt(area) of its size, up to 2x at area 0.25. Unlike torchvision's, one batched draw per
    image without rejection sampling, so a run is reproducible from the generator alone and the draws do
    not depend on the image content. A crop can cut an object out of view, as on ImageNet.
    `batch`, `rows` as in `random_affine`.

    References: Szegedy et al. 2015 (Inception's crops); torchvision.transforms.RandomResizedCrop.
    """
    b = images.shape[0] if batch is None else batch
    share = area[0] + torch.rand(b, generator=generator)[rows] * (area[1] - area[0])
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float32))
    aspect = torch.exp(log_ratio[0] + torch.rand(b, generator=generator)[rows] * (log_ratio[1] - log_ratio[0]))
    # box sides as fractions of the image side: width * height = share, width / height = aspect
    width = torch.sqrt(share * aspect).clamp(max=1.0)
    height = torch.sqrt(share / aspect).clamp(max=1.0)
    place = torch.rand(b, 2, generator=generator)[rows]
    # affine_grid spans [-1, 1]: a box of side w is scaled by w and its centre can move by up to 1 - w
    theta = torch.zeros(images.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = width, height
    theta[:, 0, 2] = (place[:, 0] * 2 - 1) * (1 - width)
    theta[:, 1, 2] = (place[:, 1] * 2 - 1) * (1 - height)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
