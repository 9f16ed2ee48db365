"""The COCO-format adapter on a tiny data set written in the real format (images + instances JSON)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.segmentation.coco import CocoSegmentation

RED, GREEN = (255, 0, 0), (0, 255, 0)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed run-length encoding (as crowd regions are stored): run lengths in column-major order,
    starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"counts": np.diff(np.concatenate([[0], changes])).tolist(), "size": list(mask.shape)}


def rectangle(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_root(tmp_path) -> Path:
    """Two images, three categories with gapped, unordered ids, a bottle over a dog (listed first, so the painting
    order must come from the areas), and a crowd person as an uncompressed RLE."""
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    scene = np.zeros((40, 60, 3), np.uint8)
    scene[0:40, 0:30] = RED     # the dog
    scene[10:20, 10:20] = GREEN  # the bottle on it
    Image.fromarray(scene).save(tmp_path / "val" / "a.png")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "val" / "b.jpg")
    crowd = np.zeros((32, 32), bool)
    crowd[8:16, 4:12] = True
    annotations = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 3, "file_name": "b.jpg", "height": 32, "width": 32}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 44, "name": "bottle"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 44, "segmentation": rectangle(10, 10, 20, 20), "area": 100.0,
             "bbox": [10, 10, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 18, "segmentation": rectangle(0, 0, 30, 40), "area": 1200.0,
             "bbox": [0, 0, 30, 40], "iscrowd": 0},
            {"id": 3, "image_id": 3, "category_id": 1, "segmentation": uncompressed_rle(crowd),
             "area": float(crowd.sum()), "bbox": [4, 8, 8, 8], "iscrowd": 1},
        ],
    }
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(annotations))
    np.save(tmp_path / "crowd.npy", crowd)
    return tmp_path


def make(root: Path, size=(40, 40), limit=None) -> CocoSegmentation:
    return CocoSegmentation(root / "val", root / "annotations" / "instances_val.json", size, limit)


def test_categories_get_contiguous_labels_in_id_order(coco_root):
    assert make(coco_root).classes == ["background", "person", "dog", "bottle"]  # ids 1, 18, 44
    assert make(coco_root).image_ids == [3, 7] and make(coco_root, limit=1).image_ids == [3]


def test_polygons_fill_their_regions_and_small_objects_stay_on_top(coco_root):
    labels = make(coco_root).pixel_labels(7)
    assert labels.shape == (40, 60)
    assert labels[15, 15] == 3 and labels[5, 5] == 2 and labels[30, 25] == 2 and labels[20, 45] == 0
    assert abs(int((labels == 3).sum()) - 100) <= 25  # the 10 x 10 bottle, up to pycocotools' boundary pixels
    assert abs(int((labels > 0).sum()) - 1200) <= 80  # the dog's 30 x 40, the bottle inside it


def test_crowd_run_length_encodings_decode_exactly(coco_root):
    crowd = np.load(coco_root / "crowd.npy")
    assert np.array_equal(make(coco_root).pixel_labels(3), np.where(crowd, 1, 0))


def test_items_resize_and_crop_image_and_labels_together(coco_root):
    data = make(coco_root, size=(20, 20))
    image, labels = data[1]  # image 7, 40 x 60: shorter side to 20 (20 x 30), centre 20 x 20 (native x 10..50)
    assert image.shape == (3, 20, 20) and image.dtype.is_floating_point and 0 <= image.min() <= image.max() <= 1
    assert labels.shape == (20, 20) and labels.dtype.is_signed and set(labels.unique().tolist()) <= {0, 2, 3}
    # crop column c is native x = 10 + 2c: the dog up to x = 30 (c = 10), the bottle at y, x in 10..20 (c < 5)
    assert labels[:, 6:9].eq(2).all() and labels[6:9, 1:4].eq(3).all() and labels[:, 12:].eq(0).all()
    red, green = image[0], image[1]  # the pixels under the labels, away from the blended edges
    assert red[:, 6:9].min() > 0.8 and green[6:9, 1:4].min() > 0.8 and red[:, 12:].max() < 0.1


def test_missing_files_and_wrong_sizes_are_named(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train.json does not exist"):
        CocoSegmentation(coco_root / "val", coco_root / "annotations" / "instances_train.json", (8, 8))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(coco_root / "val" / "b.jpg")  # the JSON says 32 x 32
    with pytest.raises(ValueError, match=r"b.jpg: \(10, 10\) pixels, but its annotation says 32 x 32"):
        make(coco_root)[0]
