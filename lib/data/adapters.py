"""Adapters for real data sets that the user has placed on disk. Nothing here downloads.

- CIFAR-10 / CIFAR-100 in the official "python version" pickle format -> ImageSet.
- ImageNet-style class folders (root/<split>/<class>/<image>) -> ImageFolderSet, a lazy
  torch Dataset with the same (image, label) item contract as ImageSet.

References: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009
(file format: https://www.cs.toronto.edu/~kriz/cifar.html); Deng et al., "ImageNet: A
Large-Scale Hierarchical Image Database", CVPR 2009.
"""

import copy
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from lib.data.imageset import ImageSet, resolution_to_size

# Per data set: folder, batch files per split, meta file, and the pickle keys of labels and class names.
# torchvision's CIFAR10/CIFAR100 classes would read the same files, but they insist on the MD5 sums
# of the official archive, so they reject any other copy (including small test fixtures).
_CIFAR_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": "batches.meta",
        "label_key": b"labels",
        "names_key": b"label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "files": {"train": ["train"], "test": ["test"]},
        "meta": "meta",
        "label_key": b"fine_labels",
        "names_key": b"fine_label_names",
    },
}


def _unpickle(path: Path) -> dict:
    """Read one CIFAR pickle (written by Python 2: encoding="bytes" keeps its keys as bytes).

    Unpickling runs code from the file, so only load CIFAR files from a trusted source.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; place the extracted CIFAR python-version files there")
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar(root: Path, name: Literal["cifar10", "cifar100"], split: Literal["train", "test"]) -> ImageSet:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from root/cifar-10-batches-py or root/cifar-100-python.

    Each batch file holds b"data", uint8 (N, 3072) rows of red, green and blue 32 x 32 planes in
    row-major order, plus the labels; the meta file holds the class names.
    """
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR name {name!r}; expected one of {', '.join(_CIFAR_LAYOUT)}")
    layout = _CIFAR_LAYOUT[name]
    if split not in layout["files"]:
        raise ValueError(f"unknown CIFAR split {split!r}; expected one of {', '.join(layout['files'])}")
    folder = Path(root) / layout["folder"]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist; place the extracted {name} python-version archive there "
            "(https://www.cs.toronto.edu/~kriz/cifar.html); this code never downloads"
        )
    batches = [_unpickle(folder / file) for file in layout["files"][split]]
    data = np.concatenate([batch[b"data"] for batch in batches])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{folder}: expected b'data' as uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = np.concatenate([np.asarray(batch[layout["label_key"]], dtype=np.int64) for batch in batches])
    classes = [label.decode() for label in _unpickle(folder / layout["meta"])[layout["names_key"]]]
    images = rearrange(torch.from_numpy(data), "n (c h w) -> n c h w", c=3, h=32, w=32).float() / 255
    return ImageSet(images, torch.from_numpy(labels), classes)


class ImageFolderSet(Dataset):
    """Lazy image-folder data set: decodes, resizes and crops one image per item.

    Items are (float32 image (3, H, W) in [0, 1], int64 label), like ImageSet; `classes` are
    the sorted class-folder names. The shorter image side is resized to max(H, W) (antialiased
    bilinear), then the centre H x W is cropped.
    """

    def __init__(self, folder: Path, size: tuple[int, int]) -> None:
        transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(max(size), antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
        self.image_folder = ImageFolder(folder, transform=transform)  # loads every file as RGB
        self.classes: list[str] = self.image_folder.classes
        self.indices = list(range(len(self.image_folder)))  # which of the folder's images this set holds

    def restricted(self, indices: Sequence[int]) -> "ImageFolderSet":
        """Items `indices` of this set only (in that order), e.g. a held-out split; the folder is not scanned again."""
        part = copy.copy(self)
        part.indices = [self.indices[int(i)] for i in indices]
        return part

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.image_folder[self.indices[index]]
        return image.as_subclass(torch.Tensor), torch.tensor(label, dtype=torch.int64)


def load_image_folder(root: Path, split: str, resolution: int | tuple[int, int]) -> ImageFolderSet:
    """ImageNet-style images under root/<split>/<class>/<image> as a lazy ImageFolderSet."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist; expected class folders of images at {folder}/<class>/<image>; "
            "place the data there (this code never downloads)"
        )
    return ImageFolderSet(folder, resolution_to_size(resolution))
