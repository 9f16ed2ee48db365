"""Test sets at another resolution, under two protocols that differ in what a larger image means.

- `zoom` (the usual protocol, and Heo et al.'s): the same picture at more pixels. Objects grow in pixels and
  in patches; a model with integer patch coordinates sees offsets it never saw in training.
- `field_of_view`: the canvas grows and objects keep their size in pixels: a procedural scene is rendered
  through a wider window (`lib.data.shapes.widen_field_of_view`), an MNIST digit is placed in the centre of a
  larger black canvas. Offsets between the parts of an object stay what they were in training; only the
  canvas (and the number of tokens) grows. Defined for scales >= 1 only (a smaller canvas would cut objects).

The scale of a test is a patch-grid ratio: scale s on a training grid of g0 patches is the grid round(s * g0),
so every test image divides into whole patches; the scale reported is the grid ratio actually tested.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.data import ImageSet, load_scenes, load_split, scene_image_set
from lib.data.shapes import widen_field_of_view

PROTOCOLS = ("zoom", "field_of_view")
FIELD_OF_VIEW_DATASETS = ("mnist", "shapes")


def scaled_grid(train_grid: int, scale: float) -> int:
    """The patch grid tested at `scale` times the training grid (at least 1 patch)."""
    return max(1, round(train_grid * scale))


def load_scaled_set(root: Path, dataset: str, train_resolution: int, resolution: int, protocol: str,
                  limit: int, split: str = "test") -> ImageSet:
    """The first `limit` images of `split` at `resolution` pixels under `protocol` (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if protocol == "zoom":
        if dataset in ("shapes", "signs"):  # render only the images used, not the whole split
            scenes, labels = load_scenes(root, dataset, split)
            return scene_image_set(dataset, scenes[:limit], labels[:limit], resolution)
        return load_split(Path(root), dataset, split, resolution, limit=limit)  # in memory, also for image folders
    if dataset not in FIELD_OF_VIEW_DATASETS:
        raise ValueError(f"field_of_view: defined for {FIELD_OF_VIEW_DATASETS}, not {dataset!r}")
    if resolution < train_resolution:
        raise ValueError(f"field_of_view: {resolution} px is smaller than the training resolution {train_resolution} px "
                         f"(a smaller canvas cuts objects); test smaller images with the zoom protocol")
    if dataset == "shapes":
        scenes, labels = load_scenes(root, dataset, split)
        wide = widen_field_of_view(scenes[:limit], resolution / train_resolution)
        return scene_image_set(dataset, wide, labels[:limit], resolution)
    data = load_split(Path(root), dataset, split, train_resolution)
    data = data.subset(range(min(limit, len(data))))
    return ImageSet(centre_on_canvas(data.images, resolution), data.labels, data.classes)


def centre_on_canvas(images: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Images (N, C, h, w) in the centre of a size x size canvas of `fill` (MNIST's background is 0)."""
    h, w = images.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"canvas of {size} px is smaller than the images ({h} x {w})")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top), value=fill)
