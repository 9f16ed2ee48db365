"""Data sets: embedded MNIST subset, synthetic shapes and signs (materialized into data/), plus real-data adapters."""

from lib.data.adapters import ImageFolderSet, load_cifar, load_image_folder
from lib.data.imageset import ImageSet, collate
from lib.data.materialize import DATASETS, SPLITS, dataset_info, load_split, materialize

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageFolderSet",
    "ImageSet",
    "collate",
    "dataset_info",
    "load_cifar",
    "load_image_folder",
    "load_split",
    "materialize",
]
