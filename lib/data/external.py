"""Real data sets the user places under data/ (the paper profile): the study's splits over their files.

    data/cifar10/cifar-10-batches-py/...     CIFAR-10, python version (as extracted from the official archive)
    data/cifar100/cifar-100-python/...       CIFAR-100, python version (fine labels)
    data/imagenet/train/<class>/<image>      ImageNet-style class folders (ImageNet-1k, ImageNet-100, Imagenette...)
    data/imagenet/val/<class>/<image>

Nothing is downloaded. These folders are not part of data.dvc's pin (`.dvcignore`: DVC does not hash
them; a hundred gigabytes would be copied into its cache), so the stages see a changed data set only
through its parameters: re-run with `dvc repro --force` after replacing the files. Training never resumes
a checkpoint across such a change (its fingerprint holds a manifest of the files, lib/data/pin.py).

Splits: `test` is the official test split (CIFAR's test batch; ImageNet's labelled `val/` folder); `val`
is a fixed held-out share of the official training split (a seeded permutation, the same on every
machine), `train` the rest. CIFAR is held in memory (at most 60,000 32 x 32 images) and resized like
MNIST; image folders are decoded lazily, one image per item (shorter side resized, centre crop), so
training streams them through a DataLoader with `data_workers` processes.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.data.adapters import ImageFolderSet, load_cifar
from lib.data.imageset import ImageSet, resolution_to_size

EXTERNAL_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR_VAL_SIZE = 5_000           # of the 50,000 training images
FOLDER_VAL_FRACTION = 0.01       # of the training images (12,812 of ImageNet-1k's)
HOLDOUT_SEED = 20_240_320        # the permutation that picks the held-out validation images


def holdout(count: int, held: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) of `count` items with `held` of them held out, both sorted."""
    if not 0 < held < count:
        raise ValueError(f"cannot hold out {held} of {count} training images for validation (need 0 < held < count)")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return order[held:].sort().values, order[:held].sort().values


def image_folder_classes(root: Path) -> list[str]:
    """The class names of an image-folder data set: the sorted subfolders of root/train."""
    folder = Path(root) / "train"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; expected ImageNet-style class folders "
                                f"{folder}/<class>/<image> (this code never downloads)")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def external_info(dataset: str, root: Path) -> dict:
    """Static facts about a user-provided data set (`root`: its folder under data/), as `dataset_info`."""
    if dataset in CIFAR_CLASSES:
        classes, native = None, (32, 32)
        num_classes = CIFAR_CLASSES[dataset]
    elif dataset == "imagenet":
        classes, native = image_folder_classes(root), None
        num_classes = len(classes)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(EXTERNAL_DATASETS)}")
    return {"in_chans": 3, "num_classes": num_classes, "native_resolution": native, "classes": classes,
            "has_masks": False, "objects": [], "synthetic": False}


def load_external(root: Path, dataset: str, split: str, resolution: int | tuple[int, int] | None) -> ImageSet | ImageFolderSet:
    """One study split of a user-provided data set (`root`: its folder under data/) at `resolution`."""
    if dataset in CIFAR_CLASSES:
        return _cifar_split(Path(root), dataset, split, resolution)
    if dataset == "imagenet":
        return _folder_split(Path(root), split, resolution)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(EXTERNAL_DATASETS)}")


def _cifar_split(root: Path, dataset: str, split: str, resolution) -> ImageSet:
    if split == "test":
        data = load_cifar(root, dataset, "test")
    else:
        data = load_cifar(root, dataset, "train")
        train, val = holdout(len(data), min(CIFAR_VAL_SIZE, len(data) // 10 or 1))
        data = data.subset(train if split == "train" else val)
    size = (32, 32) if resolution is None else resolution_to_size(resolution)
    if size != (32, 32):
        images = F.interpolate(data.images, size=size, mode="bilinear", antialias=True, align_corners=False)
        data = ImageSet(images.clamp(0, 1), data.labels, data.classes)
    return data


def _folder_split(root: Path, split: str, resolution) -> ImageFolderSet:
    if resolution is None:
        raise ValueError("image-folder data sets have no native resolution: give one")
    size = resolution_to_size(resolution)
    classes = image_folder_classes(root)
    if split == "test":
        folder = root / "val"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist; expected the labelled validation images as class "
                                    f"folders {folder}/<class>/<image> (the study's test split)")
        data = ImageFolderSet(folder, size)
        if data.classes != classes:
            raise ValueError(f"{folder}: class folders differ from {root / 'train'}'s "
                             f"({len(data.classes)} vs {len(classes)}); both must hold the same classes")
        return data
    data = ImageFolderSet(root / "train", size)
    train, val = holdout(len(data), max(1, round(FOLDER_VAL_FRACTION * len(data))))
    return data.restricted(train if split == "train" else val)
