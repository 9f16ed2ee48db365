"""The data/ store: `materialize` writes the embedded data sets, `load_split` reads them back.

Layout under `root` (the data/ folder, written by `make data`):

    <dataset>/meta.json                     classes, split sizes, generator version and seeds
    <dataset>/<split>_labels.npy            int64 (N,)
    <dataset>/<split>_images.npy            uint8: mnist (N, 28, 28), shapes and signs (N, 32, 32, 3)
    shapes/<split>_masks.npy                bool (N, 2, 32, 32): circle, square
    signs/<split>_masks.npy                 bool (N, 1, 32, 32): the visible sign
    <rendered>/<split>_scenes.npy           float64 (N, K): scene vectors (shapes/signs.SCENE_COLUMNS)

Everything is generated from fixed seeds and written with np.save / sorted-key JSON, so the
files are byte-identical on every run.

Usage: python -m lib.data.materialize [--root data]
"""

import argparse
import io
import json
import os
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from torch.utils.data import Dataset

from lib.data import mnist, shapes, signs
from lib.data.external import EXTERNAL_DATASETS, external_info, load_external
from lib.data.imageset import ImageSet, resolution_to_size, to_image_set

DATASETS: tuple[str, ...] = ("mnist", "shapes", "signs")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_MODULES: dict[str, ModuleType] = {"mnist": mnist, "shapes": shapes, "signs": signs}


def _check_choice(argument: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {argument} {value!r}; expected one of {', '.join(choices)}")


def dataset_info(dataset: str, root: Path | None = None) -> dict:
    """Static facts about a data set: an embedded one (no disk access), or a user-provided one
    (lib/data/external.py; `root` is the data/ folder, an image folder's classes are read from it)."""
    if dataset in EXTERNAL_DATASETS:
        return external_info(dataset, Path("data" if root is None else root) / dataset)
    _check_choice("dataset", dataset, DATASETS + EXTERNAL_DATASETS)
    module = _MODULES[dataset]
    return {
        "in_chans": module.IN_CHANS,
        "num_classes": len(module.CLASSES),
        "native_resolution": module.NATIVE_RESOLUTION,
        "classes": list(module.CLASSES),
        "has_masks": module.HAS_MASKS,
        "objects": list(getattr(module, "OBJECTS", ())),  # mask channels, in order
        "synthetic": module.SYNTHETIC,
    }


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write via a temporary sibling and os.replace, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def materialize(root: Path) -> list[Path]:
    """Write every embedded data set under `root` (the data/ folder); returns the files written."""
    written = []
    for dataset in DATASETS:
        module = _MODULES[dataset]
        folder = Path(root) / dataset
        for split, arrays in module.build_splits().items():
            for name, array in arrays.items():
                written.append(_write_atomic(folder / f"{split}_{name}.npy", _npy_bytes(array)))
        meta = {
            "dataset": dataset,
            **dataset_info(dataset),
            "split_sizes": module.SPLIT_SIZES,
            "generator_version": module.GENERATOR_VERSION,
            "seeds": module.SEEDS,
        }
        meta_json = json.dumps(meta, sort_keys=True, indent=2) + "\n"
        written.append(_write_atomic(folder / "meta.json", meta_json.encode()))
    return written


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{path} does not exist; run `make data` to materialize the data sets")


def _load_npy(path: Path, dtype: type) -> np.ndarray:
    """np.load with a clear error for a missing file or an unexpected dtype."""
    if not path.is_file():
        raise _missing(path)
    array = np.load(path, allow_pickle=False)
    if array.dtype != dtype:
        raise ValueError(f"{path} holds {array.dtype}, expected {np.dtype(dtype)}; re-run `make data`")
    return array


def _check_version(meta_path: Path, module: ModuleType) -> None:
    """Refuse data written by another generator version (stale data/ after a code change)."""
    if not meta_path.is_file():
        raise _missing(meta_path)
    version = json.loads(meta_path.read_text()).get("generator_version")
    if version != module.GENERATOR_VERSION:
        raise ValueError(
            f"{meta_path} was written by generator {version!r}, this code expects {module.GENERATOR_VERSION!r}; "
            "re-run `make data`"
        )


def load_split(
    root: Path, dataset: str, split: str, resolution: int | tuple[int, int] | None = None,
    limit: int | None = None, workers: int = 0,
) -> ImageSet | Dataset:
    """Load one split as float32 images in [0, 1] at `resolution` (None: native; int: square; (h, w)).

    mnist is resized with antialiased bilinear interpolation; shapes and signs are re-rendered from their
    stored scene vectors, so a higher resolution shows genuinely finer detail and the masks
    are re-rendered too. A user-provided data set (lib/data/external.py) is read from root/<dataset>;
    an image folder comes back as a lazy Dataset, unless `limit` is given.
    limit: an in-memory ImageSet of the split's first `limit` images (decoded by `workers` processes).
    """
    _check_choice("dataset", dataset, DATASETS + EXTERNAL_DATASETS)
    _check_choice("split", split, SPLITS)
    data = (load_external(Path(root) / dataset, dataset, split, resolution) if dataset in EXTERNAL_DATASETS
            else _load_embedded(Path(root), dataset, split, resolution))
    return data if limit is None else to_image_set(data, limit, workers)


def load_scenes(root: Path, dataset: str, split: str) -> tuple[np.ndarray, torch.Tensor]:
    """The stored scene vectors (N, K) and labels of a procedural data set's split (shapes, signs)."""
    if dataset not in ("shapes", "signs"):
        raise ValueError(f"{dataset!r} has no scene vectors; only the procedural data sets (shapes, signs) do")
    folder = Path(root) / dataset
    _check_version(folder / "meta.json", _MODULES[dataset])
    return (_load_npy(folder / f"{split}_scenes.npy", np.float64),
            torch.from_numpy(_load_npy(folder / f"{split}_labels.npy", np.int64)))


def scene_image_set(dataset: str, scenes: np.ndarray, labels: torch.Tensor, resolution) -> ImageSet:
    """Render scene vectors of a procedural data set at `resolution` into an ImageSet (masks included)."""
    module = _MODULES[dataset]
    pixels, object_masks = module.render(scenes, *resolution_to_size(resolution))
    images = rearrange(torch.from_numpy(pixels), "n h w c -> n c h w").float() / 255
    return ImageSet(images, labels, list(module.CLASSES), torch.from_numpy(object_masks))


def _load_embedded(root: Path, dataset: str, split: str, resolution) -> ImageSet:
    """One split of an embedded data set, from the files `materialize` wrote under root/<dataset>."""
    module = _MODULES[dataset]
    size = module.NATIVE_RESOLUTION if resolution is None else resolution_to_size(resolution)
    folder = Path(root) / dataset
    _check_version(folder / "meta.json", module)
    labels = torch.from_numpy(_load_npy(folder / f"{split}_labels.npy", np.int64))
    masks = None
    if dataset == "mnist":
        pixels = torch.from_numpy(_load_npy(folder / f"{split}_images.npy", np.uint8))
        images = rearrange(pixels, "n h w -> n 1 h w").float() / 255
        if size != module.NATIVE_RESOLUTION:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
            images = images.clamp(0, 1)  # bilinear weights are convex; clamp only float round-off
    else:
        if size == module.NATIVE_RESOLUTION:
            pixels = _load_npy(folder / f"{split}_images.npy", np.uint8)
            object_masks = _load_npy(folder / f"{split}_masks.npy", np.bool_)
        else:
            pixels, object_masks = module.render(_load_npy(folder / f"{split}_scenes.npy", np.float64), *size)
        images = rearrange(torch.from_numpy(pixels), "n h w c -> n c h w").float() / 255
        masks = torch.from_numpy(object_masks)
    return ImageSet(images, labels, list(module.CLASSES), masks)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the embedded data sets (mnist, shapes, signs) as .npy files.")
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder to write into (default: data)")
    args = parser.parse_args()
    start = time.perf_counter()
    written = materialize(args.root)
    for path in written:
        print(f"{path}  {path.stat().st_size:,} bytes")
    print(f"wrote {len(written)} files in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
