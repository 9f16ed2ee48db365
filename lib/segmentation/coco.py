"""COCO-format instance annotations as per-pixel class labels, for dense heads on real photographs.

    <root>/<images>/<file_name>            the images a COCO JSON lists (e.g. val2017/000000000139.jpg)
    <root>/annotations/instances_<split>.json

The annotations are read with pycocotools (the format's reference reader): polygons, and run-length encodings
(compressed or not, as crowd regions are written) are decoded by `COCO.annToMask`. Pixel labels are 0 for
background and k + 1 for the k-th category in ascending category id (COCO's 80 ids run 1-90 with gaps; the labels
are contiguous). Where instances overlap, larger ones are painted first, so a small object on a large one keeps its
label; crowd regions are labelled with their category (COCO's semantic conversions do the same).

Each item is resized and centre-cropped like `lib.data.adapters.ImageFolderSet` (shorter side to max(H, W), then the
centre H x W): the image bilinearly (antialiased), the labels by nearest neighbour, in one torchvision transform so
that they stay aligned. Nothing is downloaded: the user places COCO (or any data set written in its format) under
data_root; the tests write a tiny one in the real format.
"""
import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

BACKGROUND = 0


class CocoSegmentation(Dataset):
    """Images of a COCO-format data set with their per-pixel category labels.

    Items are (float32 image (3, H, W) in [0, 1], int64 labels (H, W)); `classes[label]` names a label
    ("background" first).

    Args:
        images_dir: the folder that the JSON's `file_name`s are relative to.
        annotation_file: a COCO instances JSON.
        size: (H, W) of every item.
        limit: the first `limit` images in ascending image id (None: all).
    """

    def __init__(self, images_dir: Path, annotation_file: Path, size: tuple[int, int], limit: int | None = None):
        self.images_dir, annotation_file = Path(images_dir), Path(annotation_file)
        if not annotation_file.is_file():
            raise FileNotFoundError(f"{annotation_file} does not exist; expected a COCO instances JSON "
                                    f"(e.g. annotations/instances_val2017.json; nothing is downloaded)")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir} does not exist; expected the images {annotation_file.name} lists")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
            self.coco = COCO(str(annotation_file))
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {category: k + 1 for k, category in enumerate(self.category_ids)}
        self.classes = ["background"] + [self.coco.cats[c]["name"] for c in self.category_ids]
        self.image_ids = sorted(self.coco.getImgIds())[:limit]
        self.transform = v2.Compose([v2.Resize(max(size), antialias=True), v2.CenterCrop(size),
                                     v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])

    def __len__(self) -> int:
        return len(self.image_ids)

    def pixel_labels(self, image_id: int) -> np.ndarray:
        """int32 (height, width) labels of one image at its own size."""
        info = self.coco.imgs[image_id]
        labels = np.full((info["height"], info["width"]), BACKGROUND, dtype=np.int32)
        annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=None))
        for annotation in sorted(annotations, key=lambda a: -a["area"]):  # small objects end up on top
            labels[self.coco.annToMask(annotation).astype(bool)] = self.label_of[annotation["category_id"]]
        return labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.image_ids[index]
        path = self.images_dir / self.coco.imgs[image_id]["file_name"]
        with Image.open(path) as file:
            image = tv_tensors.Image(v2.functional.pil_to_tensor(file.convert("RGB")))
        if tuple(image.shape[-2:]) != (self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]):
            raise ValueError(f"{path}: {tuple(image.shape[-2:])} pixels, but its annotation says "
                             f"{self.coco.imgs[image_id]['height']} x {self.coco.imgs[image_id]['width']}")
        labels = tv_tensors.Mask(torch.from_numpy(self.pixel_labels(image_id)))
        image, labels = self.transform(image, labels)
        return image.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor).long()
