"""Tests for lib.data: materialized data sets, shapes rendering, ImageSet loading and real-data adapters."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange, reduce
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Subset

from lib.data import (
    DATASETS,
    SPLITS,
    ImageSet,
    collate,
    dataset_info,
    load_cifar,
    load_image_folder,
    load_split,
    materialize,
    mnist,
    shapes,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One materialized data/ folder shared by the tests of this module."""
    root = tmp_path_factory.mktemp("data")
    materialize(root)
    return root


def _column(scenes: np.ndarray, name: str) -> np.ndarray:
    return scenes[:, shapes.SCENE_COLUMNS.index(name)]


def _centroids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask centroids in normalized coordinates: x, y each (N, num_objects)."""
    h, w = masks.shape[-2:]
    y = (np.arange(h) + 0.5) / h
    x = (np.arange(w) + 0.5) / w
    area = masks.sum(axis=(2, 3))
    return (masks * x).sum(axis=(2, 3)) / area, (masks * y[:, None]).sum(axis=(2, 3)) / area


# --- materialize ---


def test_materialize_is_byte_identical(data_root: Path, tmp_path: Path) -> None:
    written = materialize(tmp_path)
    expected = {f"{d}/meta.json" for d in DATASETS}
    expected |= {f"mnist/{s}_{a}.npy" for s in SPLITS for a in ("images", "labels")}
    expected |= {f"{d}/{s}_{a}.npy" for d in ("shapes", "signs") for s in SPLITS
                 for a in ("images", "labels", "masks", "scenes")}
    assert {p.relative_to(tmp_path).as_posix() for p in written} == expected
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == expected  # no temporary files left behind
    for name in sorted(expected):
        assert (tmp_path / name).read_bytes() == (data_root / name).read_bytes(), name


def test_meta_json(data_root: Path) -> None:
    meta = json.loads((data_root / "shapes" / "meta.json").read_text())
    assert meta["classes"] == list(shapes.CLASSES)
    assert meta["split_sizes"] == {"train": 4000, "val": 500, "test": 1000}
    assert meta["generator_version"] == shapes.GENERATOR_VERSION
    assert meta["seeds"] == shapes.SEEDS and meta["synthetic"] is True


# --- MNIST ---


def test_mnist_files_sizes_dtype_range(data_root: Path) -> None:
    for split, size in {"train": 3500, "val": 500, "test": 1000}.items():
        images = np.load(data_root / "mnist" / f"{split}_images.npy")
        labels = np.load(data_root / "mnist" / f"{split}_labels.npy")
        assert images.shape == (size, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.int64
        assert images.min() == 0 and images.max() == 255  # real digits use the full grey range


def test_mnist_split_disjoint_stratified_and_from_source(data_root: Path) -> None:
    source_images, source_labels = mnist.load_source()
    indices = mnist.split_indices(source_labels)
    everything = np.concatenate([indices[split] for split in SPLITS])
    assert len(everything) == len(np.unique(everything)) == 5000  # disjoint and complete
    for split in SPLITS:
        stored = np.load(data_root / "mnist" / f"{split}_images.npy")
        labels = np.load(data_root / "mnist" / f"{split}_labels.npy")
        np.testing.assert_array_equal(stored, source_images[indices[split]])
        np.testing.assert_array_equal(labels, source_labels[indices[split]])
        assert np.all(np.bincount(labels, minlength=10) == len(labels) // 10)  # stratified
        assert np.any(labels[:50] != labels[0])  # classes are interleaved, not sorted


# --- shapes ---


@pytest.mark.parametrize("split", SPLITS)
def test_shapes_labels_match_geometry_and_are_balanced(data_root: Path, split: str) -> None:
    scenes = np.load(data_root / "shapes" / f"{split}_scenes.npy")
    labels = np.load(data_root / "shapes" / f"{split}_labels.npy")
    dx = _column(scenes, "circle_x") - _column(scenes, "square_x")
    dy = _column(scenes, "circle_y") - _column(scenes, "square_y")
    expected = np.select(
        [np.abs(dx) > np.abs(dy), True],
        [np.where(dx < 0, 0, 1), np.where(dy < 0, 2, 3)],  # left, right, above, below
    )
    np.testing.assert_array_equal(labels, expected)
    assert np.all(np.abs(np.abs(dx) - np.abs(dy)) >= shapes.LABEL_MARGIN)
    assert np.all(np.bincount(labels, minlength=4) == len(labels) // 4)
    assert scenes.dtype == np.float64 and scenes.shape == (len(labels), len(shapes.SCENE_COLUMNS))


def test_shapes_masks_nonempty_disjoint_and_placed_by_class(data_root: Path) -> None:
    masks = np.load(data_root / "shapes" / "train_masks.npy")
    labels = np.load(data_root / "shapes" / "train_labels.npy")
    assert masks.shape == (4000, 2, 32, 32) and masks.dtype == np.bool_
    assert np.all(masks.sum(axis=(2, 3)) > 0)
    assert not np.any(masks[:, 0] & masks[:, 1])
    x, y = _centroids(masks)  # column 0: circle, column 1: square
    by_class = {
        "circle_left_of_square": x[:, 0] < x[:, 1],
        "circle_right_of_square": x[:, 0] > x[:, 1],
        "circle_above_square": y[:, 0] < y[:, 1],
        "circle_below_square": y[:, 0] > y[:, 1],
    }
    for name, holds in by_class.items():
        assert np.all(holds[labels == shapes.CLASSES.index(name)]), name


def test_render_reproduces_stored_images_and_is_deterministic(data_root: Path) -> None:
    scenes = np.load(data_root / "shapes" / "val_scenes.npy")
    images, masks = shapes.render(scenes, 32, 32)
    np.testing.assert_array_equal(images, np.load(data_root / "shapes" / "val_images.npy"))
    np.testing.assert_array_equal(masks, np.load(data_root / "shapes" / "val_masks.npy"))
    again, again_masks = shapes.render(scenes[:50], 32, 32)
    np.testing.assert_array_equal(again, images[:50])
    np.testing.assert_array_equal(again_masks, masks[:50])


@pytest.mark.parametrize("height, width", [(24, 40), (8, 8), (128, 128)])
def test_render_any_resolution_keeps_relative_positions(data_root: Path, height: int, width: int) -> None:
    scenes = np.load(data_root / "shapes" / "test_scenes.npy")[:16]
    images, masks = shapes.render(scenes, height, width)
    assert images.shape == (16, height, width, 3) and images.dtype == np.uint8
    assert masks.shape == (16, 2, height, width) and masks.dtype == np.bool_
    assert not np.any(masks[:, 0] & masks[:, 1])
    visible = masks.sum(axis=(2, 3)) > 0  # tiny objects may vanish at 8 x 8
    x, y = _centroids(masks)
    for k, obj in enumerate(shapes.OBJECTS):
        seen = visible[:, k]
        tolerance = 1.5 / min(height, width)  # normalized coordinates stay put at any aspect ratio
        assert np.all(np.abs(x[seen, k] - _column(scenes, f"{obj}_x")[seen]) < tolerance)
        assert np.all(np.abs(y[seen, k] - _column(scenes, f"{obj}_y")[seen]) < tolerance)


def test_masks_agree_across_resolutions(data_root: Path) -> None:
    scenes = np.load(data_root / "shapes" / "val_scenes.npy")
    _, masks32 = shapes.render(scenes, 32, 32)
    _, masks64 = shapes.render(scenes, 64, 64)
    down = reduce(masks64.astype(np.float32), "n o (h a) (w b) -> n o h w", "mean", a=2, b=2) >= 0.5
    iou = (down & masks32).sum(axis=(2, 3)) / (down | masks32).sum(axis=(2, 3))
    assert iou.mean() > 0.9 and iou.min() > 0.7


@settings(max_examples=15, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40))
def test_render_property_any_size(height: int, width: int) -> None:
    scenes, _ = shapes.generate_scenes(8, seed=7)
    images, masks = shapes.render(scenes, height, width)
    assert images.shape == (8, height, width, 3) and masks.shape == (8, 2, height, width)
    assert not np.any(masks[:, 0] & masks[:, 1])


def test_render_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="SCENE_COLUMNS"):
        shapes.render(np.zeros((3, 5)), 32, 32)
    scenes, _ = shapes.generate_scenes(4, seed=0)
    with pytest.raises(ValueError, match="height"):
        shapes.render(scenes, 0, 32)


# --- load_split and dataset_info ---


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("resolution, size", [(None, None), (16, (16, 16)), ((24, 40), (24, 40))])
def test_load_split_shapes_and_range(data_root: Path, dataset: str, resolution, size) -> None:
    info = dataset_info(dataset)
    h, w = size or info["native_resolution"]
    data = load_split(data_root, dataset, "val", resolution)
    assert data.images.shape == (500, info["in_chans"], h, w) and data.images.dtype == torch.float32
    assert 0 <= data.images.min() and data.images.max() <= 1 and data.images.max() > 0.9
    np.testing.assert_array_equal(data.labels.numpy(), np.load(data_root / dataset / "val_labels.npy"))
    assert data.classes == info["classes"]
    if info["has_masks"]:
        assert data.masks.shape == (500, len(info["objects"]), h, w) and data.masks.dtype == torch.bool
    else:
        assert data.masks is None


def test_load_split_native_resolution_is_the_stored_data(data_root: Path) -> None:
    stored = torch.from_numpy(np.load(data_root / "mnist" / "val_images.npy")).float() / 255
    assert torch.equal(load_split(data_root, "mnist", "val").images[:, 0], stored)
    assert torch.equal(load_split(data_root, "mnist", "val", (28, 28)).images[:, 0], stored)
    assert torch.equal(load_split(data_root, "shapes", "val", 32).images, load_split(data_root, "shapes", "val").images)


def test_load_split_mnist_resize_preserves_content(data_root: Path) -> None:
    native = load_split(data_root, "mnist", "val").images
    up = load_split(data_root, "mnist", "val", 56).images
    back = reduce(up, "n c (h a) (w b) -> n c h w", "mean", a=2, b=2)
    assert (back - native).abs().mean() < 0.03


def test_load_split_shapes_rerenders_scenes(data_root: Path) -> None:
    data = load_split(data_root, "shapes", "val", (64, 48))
    images, masks = shapes.render(np.load(data_root / "shapes" / "val_scenes.npy"), 64, 48)
    assert torch.equal(data.images, rearrange(torch.from_numpy(images), "n h w c -> n c h w").float() / 255)
    assert torch.equal(data.masks, torch.from_numpy(masks))


def test_load_split_rejects_unknown_names(data_root: Path) -> None:
    with pytest.raises(ValueError, match=r"'cifar'.*mnist, shapes"):
        load_split(data_root, "cifar", "train")
    with pytest.raises(ValueError, match=r"'validation'.*train, val, test"):
        load_split(data_root, "mnist", "validation")
    for resolution in (0, (32,), 32.0, "32", True):
        with pytest.raises(ValueError, match="resolution"):
            load_split(data_root, "mnist", "val", resolution)


def test_load_split_missing_or_stale_files(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mnist/meta\.json.*make data"):
        load_split(tmp_path, "mnist", "train")
    (tmp_path / "shapes").mkdir()
    shutil.copy(data_root / "shapes" / "meta.json", tmp_path / "shapes" / "meta.json")
    with pytest.raises(FileNotFoundError, match=r"shapes/train_labels\.npy.*make data"):
        load_split(tmp_path, "shapes", "train")
    shutil.copy(data_root / "shapes" / "train_labels.npy", tmp_path / "shapes" / "train_labels.npy")
    with pytest.raises(FileNotFoundError, match=r"shapes/train_scenes\.npy"):
        load_split(tmp_path, "shapes", "train", 64)
    (tmp_path / "shapes" / "meta.json").write_text(json.dumps({"generator_version": "shapes-v0"}))
    with pytest.raises(ValueError, match="shapes-v0"):
        load_split(tmp_path, "shapes", "train")


def test_dataset_info() -> None:
    assert dataset_info("mnist") == {
        "in_chans": 1,
        "num_classes": 10,
        "native_resolution": (28, 28),
        "classes": [str(d) for d in range(10)],
        "has_masks": False,
        "objects": [],
        "synthetic": False,
    }
    info = dataset_info("shapes")
    assert (info["in_chans"], info["num_classes"], info["native_resolution"]) == (3, 4, (32, 32))
    assert info["has_masks"] and info["synthetic"] and info["objects"] == ["circle", "square"]
    info = dataset_info("signs")
    assert (info["in_chans"], info["num_classes"], info["objects"]) == (3, 8, ["sign"])
    assert info["has_masks"] and info["synthetic"]
    assert dataset_info("cifar100")["num_classes"] == 100 and not dataset_info("cifar100")["has_masks"]
    with pytest.raises(ValueError, match=r"'imagenet21k'.*cifar100"):
        dataset_info("imagenet21k")
    with pytest.raises(FileNotFoundError, match=r"nowhere/imagenet/train does not exist.*never downloads"):
        dataset_info("imagenet", Path("nowhere"))  # an image folder's classes come from its files


# --- ImageSet ---


def test_dataloader_yields_the_indexed_samples(data_root: Path) -> None:
    data = load_split(data_root, "shapes", "val")
    index_of = {image.numpy().tobytes(): i for i, image in enumerate(data.images)}
    assert len(index_of) == len(data)  # every image is unique, so a batch reveals its indices

    def epoch(seed: int) -> list[int]:
        loader = DataLoader(
            data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed), collate_fn=collate
        )
        order = []
        for images, labels in loader:
            indices = [index_of[image.numpy().tobytes()] for image in images]
            assert images.shape[1:] == (3, 32, 32) and len(images) == len(labels) <= 64
            assert torch.equal(labels, data.labels[indices])
            assert torch.equal(torch.stack([data[i][0] for i in indices]), images)
            order += indices
        return order

    order = epoch(seed=0)
    assert sorted(order) == list(range(len(data))) and order != sorted(order)
    assert epoch(seed=0) == order and epoch(seed=1) != order


def test_collate_handles_subset_and_sample_lists(data_root: Path) -> None:
    data = load_split(data_root, "mnist", "val")
    picked = [5, 3, 400, 7]
    images, labels = next(iter(DataLoader(Subset(data, picked), batch_size=4, collate_fn=collate)))
    assert torch.equal(images, data.images[picked]) and torch.equal(labels, data.labels[picked])
    images, labels = next(iter(DataLoader(ConcatDataset([data, data]), batch_size=8, collate_fn=collate)))
    assert torch.equal(images, data.images[:8]) and torch.equal(labels, data.labels[:8])


def test_imageset_subset_and_validation(data_root: Path) -> None:
    data = load_split(data_root, "shapes", "val")
    part = data.subset([3, 1])
    assert len(part) == 2 and part.classes == data.classes
    assert torch.equal(part.images, data.images[[3, 1]]) and torch.equal(part.masks, data.masks[[3, 1]])
    with pytest.raises(ValueError, match="float32"):
        ImageSet(data.images.double(), data.labels, data.classes)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageSet(data.images * 2, data.labels, data.classes)
    with pytest.raises(ValueError, match="labels"):
        ImageSet(data.images, data.labels[:-1], data.classes)
    with pytest.raises(ValueError, match="labels must lie"):
        ImageSet(data.images, data.labels, data.classes[:2])
    with pytest.raises(ValueError, match="masks"):
        ImageSet(data.images, data.labels, data.classes, data.masks[:, :, :16])


# --- adapters (tiny fixtures in the real on-disk formats) ---


def _write_pickle(path: Path, content: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=2)  # the official files are Python 2 pickles


def test_load_cifar10(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = {name: rng.integers(0, 256, (3, 3072), dtype=np.uint8) for name in [f"data_batch_{i}" for i in range(1, 6)]}
    data["test_batch"] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    labels = {name: rng.integers(0, 10, len(rows)).tolist() for name, rows in data.items()}
    for name in data:
        _write_pickle(folder / name, {b"batch_label": name.encode(), b"data": data[name], b"labels": labels[name]})
    names = [f"class{i}".encode() for i in range(10)]
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 3, b"num_vis": 3072})

    train = load_cifar(tmp_path, "cifar10", "train")
    rows = np.concatenate([data[f"data_batch_{i}"] for i in range(1, 6)])
    assert train.images.shape == (15, 3, 32, 32) and train.classes == [n.decode() for n in names]
    assert train.labels.tolist() == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    np.testing.assert_array_equal((train.images * 255).round().to(torch.uint8).numpy().reshape(15, 3072), rows)
    assert train.images[2, 1, 5, 7] * 255 == rows[2, 1 * 1024 + 5 * 32 + 7]  # green plane, row 5, column 7
    test = load_cifar(tmp_path, "cifar10", "test")
    assert len(test) == 4 and test.labels.tolist() == labels["test_batch"]

    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(tmp_path, "cifar10", "train")


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = np.random.default_rng(1).integers(0, 256, (5, 3072), dtype=np.uint8)
    fine, coarse = [99, 0, 42, 7, 13], [19, 0, 3, 1, 2]
    for split in ("train", "test"):
        _write_pickle(folder / split, {b"data": rows, b"fine_labels": fine, b"coarse_labels": coarse})
    fine_names = [f"fine{i}".encode() for i in range(100)]
    _write_pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": [b"c"] * 20})
    data = load_cifar(tmp_path, "cifar100", "test")
    assert data.labels.tolist() == fine and len(data.classes) == 100 and data.classes[99] == "fine99"
    np.testing.assert_array_equal((data.images * 255).round().to(torch.uint8).numpy().reshape(5, 3072), rows)


def test_load_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*never downloads"):
        load_cifar(tmp_path, "cifar10", "train")
    with pytest.raises(ValueError, match="cifar1000"):
        load_cifar(tmp_path, "cifar1000", "train")
    with pytest.raises(ValueError, match="val"):
        load_cifar(tmp_path, "cifar10", "val")


def test_load_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    exact = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n02").mkdir(parents=True)
    Image.fromarray(exact).save(tmp_path / "train" / "n01" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "train" / "n01" / "b.JPEG")
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(tmp_path / "train" / "n02" / "c.png")

    data = load_image_folder(tmp_path, "train", 16)
    assert len(data) == 3 and data.classes == ["n01", "n02"]
    image, label = data[0]
    assert image.dtype == torch.float32 and label.dtype == torch.int64 and label.item() == 0
    pixels = (image * 255).round().to(torch.uint8)
    assert torch.equal(pixels, rearrange(torch.from_numpy(exact), "h w c -> c h w"))  # already 16 x 16: no resampling
    grey_image, grey_label = data[2]
    assert grey_image.shape == (3, 16, 16) and grey_label.item() == 1  # greyscale loaded as RGB
    images, labels = next(iter(DataLoader(load_image_folder(tmp_path, "train", (12, 20)), batch_size=3)))
    assert images.shape == (3, 3, 12, 20) and labels.tolist() == [0, 0, 1]
    assert 0 <= images.min() and images.max() <= 1

    with pytest.raises(FileNotFoundError, match="val"):
        load_image_folder(tmp_path, "val", 16)
