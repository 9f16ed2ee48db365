"""Heo et al.'s pretrained ImageNet RoPE-ViTs at many resolutions (the paper profile's `pretrained` stage).

timm 1.0.31 carries naver-ai/rope-vit's ImageNet-1k weights as `vit_{small,base,large}_patch16_rope{,_ape,_mixed,
_mixed_ape}_224.naver_in1k`. This machine cannot download them, so a model's weights come from a local file the
user places (`pretrained.models.<name>.checkpoint`, a path under data_root; timm loads it through
`pretrained_cfg_overlay={'file': ...}`); `checkpoint: null` builds the architecture with random weights, for a dry
run of the pipeline (the tests do this on the image-folder fixture) and is labelled so in every row.

The timm model is converted to `lib.models.VisionTransformer` (`lib.models.convert`, tested logit-equal to timm),
so the test-time RoPE rescalings of RQ1 (`lib.layers.rope_rescale`: pi, ntk, yarn) apply unchanged to the RoPE-Mixed
models. Every resolution is tested on the same validation images with timm's evaluation transform for the model
(resize the shorter side to resolution / crop_pct, bicubic; centre crop; ImageNet mean and std), as Heo et al.
evaluate zero-shot at 128-512 px (rope-vit issue #23).

Labels: a folder of ImageNet class folders named by WordNet id (n01440764, ...) is scored against the model's
1000-way head through timm's ImageNet class order, so a subset of the classes works too (top-1 over all 1000
logits); folders not named by wnid are taken in sorted order and must number exactly the model's classes.
"""
from pathlib import Path

import pandas as pd
import timm
import torch
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from lib.layers.rope import RopeMixed
from lib.layers.rope_rescale import RopeRescaled
from lib.models.convert import from_timm_rope_vit
from lib.run.study import top1_correct
from lib.stats import wilson_interval

TRAINED = "trained"  # the method of the model as trained (no test-time rescaling), as in RQ1's tables

# Heo et al.'s published ImageNet-1k top-1 (%) of these weights, as trained (../shared/REFERENCES.md): 224 and 384 px
# from the rope-vit README (DeiT-III, 400 epochs); 320 and 512 px read off the paper's accuracy-vs-resolution
# figure (+-0.2).
PUBLISHED_TOP1 = {
    "vit_small_patch16_rope_224": {224: 80.9, 320: 81.5, 384: 80.0, 512: 76.1},
    "vit_small_patch16_rope_mixed_224": {224: 80.9, 320: 82.2, 384: 81.8, 512: 79.1},
    "vit_small_patch16_rope_ape_224": {224: 80.7, 384: 81.2},
    "vit_small_patch16_rope_mixed_ape_224": {224: 80.9, 384: 81.7},
    "vit_base_patch16_rope_224": {224: 83.6, 384: 83.9, 512: 82.0},
    "vit_base_patch16_rope_mixed_224": {224: 83.8, 384: 84.4, 512: 82.9},
    "vit_large_patch16_rope_mixed_224": {224: 84.8, 384: 85.6},
}


def load_pretrained(timm_model: str, checkpoint: Path | None, seed: int = 0, **timm_kwargs) -> tuple[torch.nn.Module, dict]:
    """(lib VisionTransformer, timm data config) of timm model `timm_model` with the weights of `checkpoint`.

    checkpoint: a local .safetensors/.pth file of that model (never downloaded); None: random weights, drawn with
        `seed` (a dry run gives the same numbers every time).
    timm_kwargs: passed to `timm.create_model` (e.g. a smaller depth for a dry run).
    """
    pretrained = {}
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no such weights file for {timm_model}; place timm's "
                                    f"{timm_model}.naver_in1k weights there (nothing is downloaded)")
        pretrained = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(checkpoint)}}
    with torch.random.fork_rng():  # the initialisation (overwritten by the file's weights, if any) leaves the caller's RNG
        torch.manual_seed(seed)
        model = timm.create_model(timm_model, dynamic_img_size=True, **pretrained, **timm_kwargs)
    return from_timm_rope_vit(model.eval()), resolve_data_config({}, model=model)


def folder_label_map(classes: list[str], num_classes: int) -> torch.Tensor:
    """Model class index of each class folder (in `classes` order): ImageNet wnids through timm's class order,
    else the sorted folders themselves, which must then be exactly the model's classes."""
    info = ImageNetInfo()
    wnids = info.label_names()
    if num_classes == len(wnids) and all(name in wnids for name in classes):
        return torch.tensor([wnids.index(name) for name in classes])
    if len(classes) != num_classes:
        raise ValueError(f"class folders {classes[:3]}... are not ImageNet wnids and number {len(classes)}, but the "
                         f"model has {num_classes} classes: name them by wnid (n01440764, ...) or give all classes")
    return torch.arange(num_classes)


def validation_loader(folder: Path, resolution: int, data_config: dict, test_images: int | None, batch_size: int,
                workers: int) -> DataLoader:
    """The first `test_images` images of an image folder (None: all) through timm's eval transform at `resolution`."""
    transform = create_transform(**{**data_config, "input_size": (3, resolution, resolution)}, is_training=False)
    data = ImageFolder(folder, transform=transform)
    if test_images is not None:
        data = torch.utils.data.Subset(data, range(min(test_images, len(data))))
    return DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)


@torch.inference_mode()
def correct_at(model: torch.nn.Module, loader: DataLoader, label_map: torch.Tensor) -> torch.Tensor:
    """Bool (N,): whether each image's top-1 prediction is its class; the model runs on the device it is on."""
    return top1_correct(model, ((images, label_map[labels]) for images, labels in loader))


def methods_for(model: torch.nn.Module, rescalings: list[str]) -> list[str]:
    """The trained model, plus each rescaling where the model has learned RoPE-Mixed frequencies to rescale."""
    return [TRAINED] + (list(rescalings) if isinstance(model.rope, RopeMixed) else [])


def evaluate_resolutions(model: torch.nn.Module, data_config: dict, folder: Path, resolutions: list[int],
                         rescalings: list[str], test_images: int | None, batch_size: int, workers: int = 0,
                         timm_model: str = "", log=print) -> pd.DataFrame:
    """Top-1 accuracy with its Wilson 95% interval at every resolution, as trained and with each test-time rescaling;
    `published_top1`: Heo et al.'s number (%) for timm model `timm_model` at that resolution, where published."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; expected ImageNet class folders {folder}/<wnid>/<image>")
    patch = model.patch_embed.patch_size[0]
    train_grid = model.patch_embed.grid_size
    trained_rope = model.rope
    label_map = folder_label_map(ImageFolder(folder).classes, model.head.out_features)
    published = PUBLISHED_TOP1.get(timm_model, {})
    rows = []
    for resolution in resolutions:
        loader = validation_loader(folder, resolution, data_config, test_images, batch_size, workers)
        for method in methods_for(model, rescalings):
            model.rope = trained_rope if method == TRAINED else RopeRescaled(trained_rope, train_grid, method)
            correct = correct_at(model, loader, label_map)
            low, high = wilson_interval(int(correct.sum()), len(correct))
            rows.append({"method": method, "resolution": resolution, "grid": resolution // patch,
                         "grid_ratio": resolution / (train_grid[0] * patch), "accuracy": float(correct.float().mean()),
                         "correct": int(correct.sum()), "n": len(correct), "wilson_low": low, "wilson_high": high,
                         "published_top1": published.get(resolution) if method == TRAINED else None})
            log(f"{resolution} px, {method}: {rows[-1]['accuracy']:.4f} on {len(correct)} images")
        model.rope = trained_rope
    return pd.DataFrame(rows)
