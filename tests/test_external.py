"""User-provided data sets (lib/data/external.py) on tiny fixtures in the real on-disk formats: the study's
splits over them, the streaming path through training and evaluation, and their place outside data.dvc's pin."""
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lib.config import load_params
from lib.config.profiles import applied
from lib.data import ImageFolderSet, ImageSet, dataset_info, load_split, take, to_image_set
from lib.data.external import CIFAR_VAL_SIZE, holdout
from lib.data.pin import check_external, directory_hash
from lib.resolution.accuracy import accuracy_vs_resolution
from lib.run.train import train
from tests.conftest import REPO, tiny_params_dict, write_cifar100, write_image_folder


@pytest.fixture(scope="module")
def external_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("external")
    write_cifar100(root, train=60, test=20)
    write_image_folder(root, classes=3, train=10, val=3)
    return root


def test_holdout_is_a_fixed_disjoint_partition():
    train, val = holdout(100, 7)
    assert len(val) == 7 and len(train) == 93
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.equal(holdout(100, 7)[1], val)  # the same on every call and machine
    with pytest.raises(ValueError, match="hold out 100 of 100"):
        holdout(100, 100)


def test_cifar_splits(external_root):
    train = load_split(external_root, "cifar100", "train")
    val = load_split(external_root, "cifar100", "val")
    test = load_split(external_root, "cifar100", "test")
    assert isinstance(train, ImageSet) and (len(train), len(val), len(test)) == (54, 6, 20)  # val: a tenth, <= 5,000
    assert CIFAR_VAL_SIZE == 5000 and train.images.shape[1:] == (3, 32, 32) and len(train.classes) == 100
    rows = {image.numpy().tobytes() for image in torch.cat([train.images, val.images])}
    assert len(rows) == 60  # train and val partition the official training images
    small = load_split(external_root, "cifar100", "test", 16)
    assert small.images.shape == (20, 3, 16, 16) and 0 <= small.images.min() and small.images.max() <= 1
    assert torch.equal(small.labels, test.labels)


def test_image_folder_splits_stream_lazily_and_load_in_memory(external_root):
    info = dataset_info("imagenet", external_root)
    assert info["num_classes"] == 3 and info["in_chans"] == 3 and not info["has_masks"]
    train = load_split(external_root, "imagenet", "train", 32)
    val = load_split(external_root, "imagenet", "val", 32)
    test = load_split(external_root, "imagenet", "test", (24, 40))
    assert isinstance(train, ImageFolderSet) and (len(train), len(val), len(test)) == (29, 1, 9)  # val: 1%, >= 1
    assert set(train.indices).isdisjoint(val.indices)
    image, label = test[0]
    assert image.shape == (3, 24, 40) and label.dtype == torch.int64
    in_memory = load_split(external_root, "imagenet", "test", (24, 40), limit=5, workers=2)  # decoded by 2 processes
    assert isinstance(in_memory, ImageSet) and in_memory.images.shape == (5, 3, 24, 40)
    assert torch.equal(in_memory.images[3], test[3][0]) and in_memory.classes == test.classes
    assert torch.equal(to_image_set(take(test, [4, 1])).images, torch.stack([test[4][0], test[1][0]]))


def test_image_folder_errors_name_the_folder(external_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imagenet/train does not exist.*never downloads"):
        load_split(tmp_path, "imagenet", "train", 32)
    shutil.copytree(external_root / "imagenet" / "train", tmp_path / "imagenet" / "train")
    with pytest.raises(FileNotFoundError, match=r"imagenet/val does not exist.*test split"):
        load_split(tmp_path, "imagenet", "test", 32)
    shutil.copytree(external_root / "imagenet" / "val", tmp_path / "imagenet" / "val")
    shutil.rmtree(tmp_path / "imagenet" / "val" / "n00000002")
    with pytest.raises(ValueError, match="class folders differ"):
        load_split(tmp_path, "imagenet", "test", 32)
    with pytest.raises(ValueError, match="no native resolution"):
        load_split(external_root, "imagenet", "test")


def test_user_data_is_outside_the_pin(data_root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_root, copy)
    before = directory_hash(copy)
    write_cifar100(copy)
    write_image_folder(copy)
    assert directory_hash(copy) == before  # .dvcignore hides them from DVC too
    assert {"/data/cifar100/", "/data/imagenet/"} <= set((REPO / ".dvcignore").read_text().split())


def paper_params(data_root: Path, **changes) -> dict:
    """The paper profile, scaled down to seconds on this CPU (as `dvc exp run -S` ablations would)."""
    params = applied(yaml.safe_load((REPO / "params.yaml").read_text()), "paper", REPO / "profiles")
    smoke = tiny_params_dict(data_root)
    params.update(data_root=str(data_root), device="cpu", data_workers=0, model=smoke["model"], evaluate=smoke["evaluate"])
    params["train"].update(epochs=2, warmup_epochs=1, batch_size=16)
    params["datasets"]["cifar100"].update(eval_resolutions=[16, 32], train={})
    params["datasets"]["imagenet"].update(train_resolution=32, eval_resolutions=[32, 48], train={})
    params["variants"]["moh"]["attention_kwargs"]["top_k"] = 1
    smoke_profile = yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text())
    params["convex"].update(layer=2, **{k: v for k, v in smoke_profile["convex"].items()
                                        if k != "settings"})  # the paper's settings: its own rq1 cells
    for key, value in changes.items():
        params[key] = value
    return params


def test_check_external_names_missing_user_data(tmp_path, external_root):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(paper_params(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python does not exist.*never downloads"):
        check_external(path)
    path.write_text(yaml.safe_dump(paper_params(external_root)))
    assert check_external(path) == ["cifar100", "imagenet"]


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
def test_training_streams_user_data_in_bf16_and_evaluates_at_every_resolution(external_root, tmp_path, dataset):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(paper_params(external_root)))
    params = load_params(path)
    assert params.train.precision == "bf16" and params.train.augment.hflip  # the paper profile's recipe
    result = train(params, dataset, "rope_mixed", tmp_path / "live", tmp_path / "run.pt", progress=False)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history)
    table = accuracy_vs_resolution(result.model, params, dataset, "rope_mixed")
    assert list(table["resolution"]) == sorted({params.datasets[dataset].train_resolution,
                                                *params.datasets[dataset].eval_resolutions})
    assert table["accuracy"].between(0, 1).all() and (table["n"] == (20 if dataset == "cifar100" else 9)).all()
    again = train(params, dataset, "rope_mixed", tmp_path / "live2", tmp_path / "run2.pt", progress=False)
    timeless = lambda history: [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]  # noqa: E731
    assert timeless(again.history) == timeless(result.history)  # same params and seed, same metrics
