"""Data sets: embedded MNIST subset, synthetic shapes and signs (materialized into data/), and real data sets
the user places under data/ (CIFAR, ImageNet-style folders; lib/data/external.py), and the training
augmentations (lib/data/augment.py)."""

from lib.data.adapters import ImageFolderSet, load_cifar, load_image_folder
from lib.data.external import EXTERNAL_DATASETS
from lib.data.imageset import ImageSet, collate, take, to_image_set
from lib.data.materialize import DATASETS, SPLITS, dataset_info, load_scenes, load_split, materialize, scene_image_set

__all__ = [
    "DATASETS",
    "EXTERNAL_DATASETS",
    "SPLITS",
    "ImageFolderSet",
    "ImageSet",
    "collate",
    "dataset_info",
    "load_cifar",
    "load_image_folder",
    "load_scenes",
    "load_split",
    "materialize",
    "scene_image_set",
    "take",
    "to_image_set",
]
