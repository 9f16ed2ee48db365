"""How often does a RandomResizedCrop cut the object that decides the label out of view?

A crop of a quarter of the image can miss an object; on shapes (the label is where one object lies relative to
the other) or MNIST (the digit) the cropped image then no longer shows its label: label noise that the
augmentation adds. `crop_visibility` applies the training crops (`lib.data.augment.random_resized_crop`, the same
draws for a given generator) to the objects' masks and measures the share of each object's area left in view.
MNIST has no masks; its digit's ink (pixels above 0.5) serves as the one object.
"""
from pathlib import Path

import pandas as pd
import torch

from lib.data import load_split
from lib.data.augment import random_resized_crop

VISIBLE_ENOUGH = 0.5  # an object with less than half of its area in view is counted as cut


def object_masks(root: Path, dataset: str, resolution: int, limit: int) -> torch.Tensor:
    """Float masks (N, objects, H, W) of the first `limit` training images: the data set's object masks, or the
    ink of an image without masks (MNIST: one object, the digit)."""
    data = load_split(Path(root), dataset, "train", resolution, limit=limit)
    if data.masks is not None:
        return data.masks.float()
    return (data.images.mean(dim=1, keepdim=True) > 0.5).float()


def crop_visibility(masks: torch.Tensor, area: tuple[float, float], ratio: tuple[float, float], seed: int = 0) -> torch.Tensor:
    """Share (N, objects) of each object's area that stays in view under one RandomResizedCrop per image.

    The crop resamples its box to the full image, magnifying areas by 1 / (box area share); the visible share
    is the cropped mask's area times the box's share over the original area. The box's sides are read off two
    coordinate ramps cropped with the masks (bilinear resampling keeps a linear ramp linear), so the boxes are
    exactly the ones `random_resized_crop` draws. NaN where an object is empty."""
    n, _, h, w = masks.shape
    x = ((torch.arange(w) + 0.5) / w).expand(n, 1, h, w)
    y = ((torch.arange(h) + 0.5) / h).view(h, 1).expand(n, 1, h, w)
    cropped = random_resized_crop(torch.cat([masks, x, y], dim=1), area, ratio, torch.Generator().manual_seed(seed))
    masks_in_view, x_in_view, y_in_view = cropped[:, :-2], cropped[:, -2], cropped[:, -1]
    # pixel centres of the output sample the box from half an output pixel inside each edge
    width = (x_in_view.amax(dim=(-2, -1)) - x_in_view.amin(dim=(-2, -1))) / (1 - 1 / w)
    height = (y_in_view.amax(dim=(-2, -1)) - y_in_view.amin(dim=(-2, -1))) / (1 - 1 / h)
    before = masks.sum(dim=(-2, -1))
    after = masks_in_view.sum(dim=(-2, -1)) * (width * height).view(n, 1)
    return (after / before).clamp(max=1.0).where(before > 0, torch.tensor(float("nan")))


def crop_label_noise(root: Path, cells: list[tuple[str, str, int]], augmentations: dict, limit: int = 2000) -> pd.DataFrame:
    """Per (dataset, augmentation with crops, training resolution): the share of training crops that leave some
    object less than VISIBLE_ENOUGH in view, and that remove one entirely."""
    rows = []
    for dataset, augmentation, resolution in dict.fromkeys(cells):
        settings = augmentations[augmentation]
        if settings.crop_area is None:
            continue
        visible = crop_visibility(object_masks(root, dataset, resolution, limit), tuple(settings.crop_area),
                                  tuple(settings.crop_ratio))
        worst = visible.nan_to_num(1.0).min(dim=1).values  # the least visible object of each image
        rows.append({"dataset": dataset, "augmentation": augmentation, "resolution": resolution, "images": len(worst),
                     "cut": float((worst < VISIBLE_ENOUGH).float().mean()), "removed": float((worst == 0).float().mean()),
                     "median_least_visible": float(worst.median())})
    return pd.DataFrame(rows)


def cell_crops(params) -> list[tuple[str, str, int]]:
    """(dataset, augmentation, training resolution) of every RQ1 cell, in cell order, without repeats."""
    triples = [(*params.rq1.parse(cell)[:2], params.rq1_train_resolution(cell)) for cell in params.rq1.cells]
    return list(dict.fromkeys(triples))


def crop_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per row of `crop_label_noise` for findings.md."""
    return [f"{r['dataset']} at {r['resolution']} px, {r['augmentation']} crops: {100 * r['cut']:.1f}% of training crops "
            f"leave an object less than {100 * VISIBLE_ENOUGH:.0f}% in view and {100 * r['removed']:.1f}% remove one "
            f"entirely (first {r['images']} training images, one crop each): label noise the augmentation adds."
            for _, r in table.iterrows()]
