"""ImageSet: an in-memory labelled image set that doubles as a fast torch Dataset."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate


@dataclass(eq=False)
class ImageSet:
    """Images, labels and optional per-object masks, all held as tensors.

    Indexing gives one (image, label) sample. `__getitems__` gives a whole batch with a single
    gather; torch's DataLoader calls it when present and passes its result to `collate_fn`, so
    load with `DataLoader(image_set, batch_size=..., collate_fn=collate)`: the default collate
    would try to stack the images tensor with the labels tensor and fail.
    """

    images: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    masks: torch.Tensor | None = None  # bool (N, num_objects, H, W), None if the set has none

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(f"images must be float32 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) and not (0 <= self.images.min() and self.images.max() <= 1):
            raise ValueError("images must lie in [0, 1]")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            n, shape = len(self.images), tuple(self.labels.shape)
            raise ValueError(f"labels must be int64 ({n},), got {self.labels.dtype} {shape}")
        if len(self.labels) and not (0 <= self.labels.min() and self.labels.max() < len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) to index classes")
        if self.masks is not None:
            n, _, h, w = self.images.shape
            shape = tuple(self.masks.shape)
            if self.masks.dtype != torch.bool or len(shape) != 4 or (shape[0], *shape[2:]) != (n, h, w):
                raise ValueError(f"masks must be bool ({n}, num_objects, {h}, {w}), got {self.masks.dtype} {shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[index], self.labels[index]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ImageSet":
        """A new ImageSet holding the given samples (masks included), in the given order."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        masks = None if self.masks is None else self.masks[index]
        return ImageSet(self.images[index], self.labels[index], list(self.classes), masks)

    def __repr__(self) -> str:
        masks = None if self.masks is None else tuple(self.masks.shape)
        return f"ImageSet(images={tuple(self.images.shape)}, classes={len(self.classes)}, masks={masks})"


def collate(batch: tuple[torch.Tensor, torch.Tensor] | list) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader `collate_fn` for ImageSet.

    A tuple is an (images, labels) batch already stacked by `ImageSet.__getitems__` (also when
    reached through torch's Subset) and passes through; a list of (image, label) samples, from
    datasets without `__getitems__` such as ConcatDataset, is stacked by torch's default collate.
    """
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


def resolution_to_size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a square size `res` or an explicit (height, width); rejects anything else."""
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        size = (resolution, resolution)
    elif isinstance(resolution, tuple) and len(resolution) == 2 and all(type(r) is int for r in resolution):
        size = resolution
    else:
        raise ValueError(f"resolution must be an int or a (height, width) tuple of ints, got {resolution!r}")
    if min(size) < 1:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return size


def take(data: "ImageSet | Dataset", indices: Sequence[int]) -> "ImageSet | Dataset":
    """Items `indices` of `data`, as the same kind of set where it can say (ImageSet.subset, or a lazy set's
    `restricted`), else a torch Subset."""
    if isinstance(data, ImageSet):
        return data.subset(indices)
    if hasattr(data, "restricted"):
        return data.restricted(indices)
    return Subset(data, list(indices))


def to_image_set(data: "ImageSet | Dataset", limit: int | None = None, workers: int = 0) -> ImageSet:
    """The first `limit` items of `data` (None: all) as an in-memory ImageSet, masks kept; a lazy Dataset
    (one with a `classes` list, e.g. an image folder) is decoded in batches by `workers` processes."""
    count = len(data) if limit is None else min(limit, len(data))
    if isinstance(data, ImageSet):
        return data if count == len(data) else data.subset(range(count))
    batches = list(DataLoader(Subset(data, range(count)), batch_size=256, num_workers=workers, collate_fn=collate))
    images = torch.cat([images for images, _ in batches]) if batches else torch.empty(0, 3, 1, 1)
    labels = torch.cat([labels for _, labels in batches]) if batches else torch.empty(0, dtype=torch.int64)
    return ImageSet(images, labels, list(data.classes))
