"""Shared fixtures: materialized data in a temporary folder and tiny study parameters (the smoke profile)."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lib.config import Params
from lib.config.profiles import applied
from lib.data import materialize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are tiny: one intra-op thread is as fast, and far faster on a busy machine.
    (Pipeline runs in subprocesses use the default.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """data/ materialized once per test session (about 5 s), outside the repo."""
    root = tmp_path_factory.mktemp("data")
    materialize(root)
    return root


def tiny_params_dict(data_root: Path | str = "data") -> dict:
    """The repo's params.yaml at its `smoke` profile (small model, 2 epochs on 256 images, 3 test sizes), reading
    data from `data_root`."""
    params = applied(yaml.safe_load((REPO / "params.yaml").read_text()), "smoke", REPO / "profiles")
    params["data_root"] = str(data_root)
    return params


@pytest.fixture
def tiny_params(data_root) -> Params:
    return Params.model_validate(tiny_params_dict(data_root))


def write_cifar100(data_root: Path, train: int = 60, test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-100 in the official python-version format at data_root/cifar100/cifar-100-python."""
    folder = Path(data_root) / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        content = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                   b"fine_labels": rng.integers(0, 100, count).tolist(), b"coarse_labels": [0] * count}
        with (folder / split).open("wb") as f:
            pickle.dump(content, f, protocol=2)  # the official files are Python 2 pickles
    with (folder / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"c"] * 20}, f, protocol=2)
    return folder.parent


def write_image_folder(data_root: Path, classes: int = 3, train: int = 10, val: int = 3, seed: int = 0) -> Path:
    """A tiny ImageNet-style set at data_root/imagenet/{train,val}/<class>/<image>: JPEG and PNG files of
    several sizes, greyscale among them, each class a different mean colour."""
    root = Path(data_root) / "imagenet"
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = int(rng.integers(24, 60)), int(rng.integers(24, 60))
                pixels = np.clip(rng.normal(60 + 60 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels if i % 4 else pixels[..., 0])  # every 4th image greyscale
                image.save(folder / f"{split}_{i}.{'JPEG' if i % 2 else 'png'}")
    return root
