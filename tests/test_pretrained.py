"""The `pretrained` stage's library: local weights files, ImageNet labels, accuracy at every resolution."""
import pytest
import timm
import torch
from timm.data import ImageNetInfo

from lib.extrapolation.pretrained import (PUBLISHED_TOP1, TRAINED, correct_at, evaluate_resolutions, folder_label_map,
                                          load_pretrained, methods_for)
from tests.conftest import write_image_folder

MIXED = "vit_small_patch16_rope_mixed_224"
AXIAL = "vit_small_patch16_rope_224"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}  # a 4 x 4 patch grid, ImageNet's 1000 classes


@pytest.mark.parametrize("name", [MIXED, AXIAL])
def test_weights_come_from_the_file_and_the_converted_model_matches_timm(tmp_path, name):
    torch.manual_seed(2)  # neither seed 0 (the dry run's) nor 1
    source = timm.create_model(name, dynamic_img_size=True, **TINY).eval()
    torch.nn.init.normal_(source.head.weight)  # logits of order 1 (timm's head starts near zero)
    checkpoint = tmp_path / "weights.pth"
    torch.save(source.state_dict(), checkpoint)
    model, config = load_pretrained(name, checkpoint, seed=1, **TINY)  # another initialisation: only the file can match
    images = torch.randn(2, 3, 96, 80)  # off the training grid, not square
    with torch.no_grad():
        assert torch.allclose(model(images), source(images), atol=1e-4)
    assert config["crop_pct"] == 0.9 and config["mean"] == (0.485, 0.456, 0.406)  # timm's eval transform for it
    random_model, _ = load_pretrained(name, None, **TINY)
    again, _ = load_pretrained(name, None, **TINY)
    other, _ = load_pretrained(name, None, seed=1, **TINY)
    with torch.no_grad():
        assert not torch.allclose(random_model(images), source(images), atol=1e-2)
        assert torch.equal(random_model(images), again(images))  # a dry run is reproducible
        assert not torch.equal(random_model.patch_embed.proj.weight, other.patch_embed.proj.weight)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors.*nothing is downloaded"):
        load_pretrained(MIXED, tmp_path / "nowhere.safetensors", **TINY)


def test_wnid_folders_map_to_imagenet_indices_and_others_must_be_every_class():
    wnids = ImageNetInfo().label_names()
    assert folder_label_map([wnids[5], wnids[999], wnids[0]], 1000).tolist() == [5, 999, 0]
    assert folder_label_map(["cat", "dog", "emu"], 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="not ImageNet wnids and number 2"):
        folder_label_map(["cat", "dog"], 1000)


class ConstantModel(torch.nn.Module):
    """Predicts class `index` for every image."""

    def __init__(self, index: int, classes: int = 1000):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(index), classes).float())

    def forward(self, images):
        return self.logits.expand(len(images), -1)


def test_correct_predictions_compare_in_the_models_label_space():
    loader = [(torch.zeros(3, 3, 8, 8), torch.tensor([0, 1, 0]))]
    label_map = torch.tensor([7, 3])  # folder class 0 is model class 7
    assert correct_at(ConstantModel(7), loader, label_map).tolist() == [True, False, True]
    assert correct_at(ConstantModel(0), loader, label_map).tolist() == [False, False, False]


def test_every_resolution_and_rescaling_on_the_image_folder(tmp_path):
    folder = write_image_folder(tmp_path, classes=3, train=1, val=4) / "val"
    mixed, config = load_pretrained(MIXED, None, **TINY, num_classes=3)  # the fixture's 3 classes, not wnids
    axial, _ = load_pretrained(AXIAL, None, **TINY)
    assert methods_for(mixed, ["pi", "yarn"]) == [TRAINED, "pi", "yarn"] and methods_for(axial, ["pi"]) == [TRAINED]
    rope = mixed.rope
    table = evaluate_resolutions(mixed, config, folder, [48, 64, 96], ["pi", "ntk", "yarn"], test_images=10,
                                 batch_size=4, timm_model=MIXED, log=lambda _: None)
    assert mixed.rope is rope  # the trained encoding is back after the rescaled ones
    assert len(table) == 3 * 4 and (table["n"] == 10).all() and table["accuracy"].between(0, 1).all()
    assert table["grid"].tolist() == [3] * 4 + [4] * 4 + [6] * 4
    assert (table["wilson_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["wilson_high"]).all()
    at_training_grid = table[table["resolution"] == 64]
    assert at_training_grid["correct"].nunique() == 1  # every rescaling is the identity on the training grid
    assert table["published_top1"].isna().all()  # Heo et al. publish no 48-96 px numbers
    table = evaluate_resolutions(mixed, config, folder, [224], [], test_images=2, batch_size=2, timm_model=MIXED,
                                 log=lambda _: None)
    assert table["published_top1"].tolist() == [PUBLISHED_TOP1[MIXED][224]]

