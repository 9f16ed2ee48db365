"""Per-patch segmentation heads on a trained ViT, scored by pixel mIoU at any resolution.

Two dense tasks on the object masks (`segmentation.task`): "objects", background and each object of the data set
(shapes: circle, square; decidable from a patch's colour alone), and "relation", background, the object that comes
first along the image label's axis (left or upper) and the other one (decidable only with where the other object
is: context and position, what the position encodings differ in). A head predicts one class
distribution per patch token; its logits are upsampled bilinearly to the pixels and the argmax is scored against
the pixel labels (the linear-segmentation protocol of DINOv2 and of Heo et al.'s ADE20k probes, on a grid of
patches). Two heads, both trained at the training resolution only:

- `LinearProbe`: multinomial logistic regression (scikit-learn, L2) on the frozen final tokens, standardised. The
  same probe on each patch's raw pixels (`raw_patches`) is the control: what is decidable from a patch alone, with no
  context and no position (on shapes, colour tells circle from square from background).
- `finetune_segmenter`: the backbone and a linear per-patch head trained together for a few epochs, the head
  starting from the linear probe (LP-FT, Kumar et al. 2022: a random head would distort the features first). A light
  fine-tune: the position encoding and attention can adapt to the dense task.

Heads learn from each patch's majority class (`patch_targets`); scoring is per pixel (`mean_iou`: intersection
over union summed over all test pixels, then averaged over classes, as ADE20k's mIoU).
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torchmetrics.functional.classification import multiclass_jaccard_index

from lib.run.study import normalize

BACKGROUND = 0  # pixel label of background; object k of the masks is label k + 1


def pixel_labels(masks: torch.Tensor) -> torch.Tensor:
    """Bool object masks (N, objects, H, W) -> int64 labels (N, H, W): 0 background, k + 1 inside object k
    (objects do not overlap in the procedural scenes; where they would, the later object wins)."""
    labels = torch.zeros(masks.shape[0], *masks.shape[2:], dtype=torch.int64)
    for k in range(masks.shape[1]):
        labels[masks[:, k]] = k + 1
    return labels


RELATIONS = {"left_of": True, "above": True, "right_of": False, "below": False}  # relation -> its subject comes first


def first_objects(labels: torch.Tensor, classes: list[str], objects: list[str]) -> torch.Tensor:
    """For images labelled '<a>_<relation>_<b>' (shapes: 'circle_left_of_square'), the mask channel (N,) of the object
    that comes first along the label's axis: the left one, or the upper one."""
    first = []
    for name in classes:
        relation = next((r for r in RELATIONS if f"_{r}_" in name), None)
        if relation is None:
            raise ValueError(f"class {name!r} names no relation of {sorted(RELATIONS)}: the relation task needs "
                             f"'<object>_<relation>_<object>' classes")
        subject, other = name.split(f"_{relation}_")
        first.append(objects.index(subject if RELATIONS[relation] else other))
    return torch.tensor(first)[labels]


def relation_pixel_labels(masks: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Two-object masks (N, 2, H, W) -> labels (N, H, W): 0 background, 1 the object that comes first (`first_objects`),
    2 the other. A patch alone cannot tell which it is: it needs where the other object lies."""
    if masks.shape[1] != 2:
        raise ValueError(f"the relation task needs exactly two objects per image, got {masks.shape[1]} mask channels")
    index = torch.arange(len(masks))
    ordered = torch.stack([masks[index, first], masks[index, 1 - first]], dim=1)
    return pixel_labels(ordered)


def patch_targets(labels: torch.Tensor, patch_size: int, num_classes: int) -> torch.Tensor:
    """Pixel labels (N, H, W) -> each patch's majority class (N, H / p, W / p); ties go to the lower class."""
    one_hot = rearrange(F.one_hot(labels, num_classes).float(), "n h w k -> n k h w")
    return F.avg_pool2d(one_hot, patch_size).argmax(dim=1)


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The final normalised patch tokens (N, H / p, W / p, C) of images (N, C, H, W) in [0, 1]."""
    model.eval()
    p = model.patch_embed.patch_size[0]
    grid_h, grid_w = images.shape[-2] // p, images.shape[-1] // p
    tokens = torch.cat([model.forward_features(normalize(images[i:i + batch_size]))
                        for i in range(0, len(images), batch_size)])
    return rearrange(tokens[:, model.num_prefix_tokens:], "n (h w) c -> n h w c", h=grid_h, w=grid_w)


def raw_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each patch's own pixels as its features (N, H / p, W / p, C p p): what a head sees without any backbone."""
    return rearrange(images, "n c (h p) (w q) -> n h w (c p q)", p=patch_size, q=patch_size)


def predict_pixels(patch_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-patch logits (N, K, h, w) -> pixel labels (N, H, W): bilinear upsampling, then argmax."""
    return F.interpolate(patch_logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """mIoU over all pixels of the set: per class |P & T| / |P | T| summed over images, then the class mean."""
    return float(multiclass_jaccard_index(predicted.flatten(), target.flatten(), num_classes, average="macro"))


class LinearProbe:
    """L2-regularised multinomial logistic regression on standardised frozen patch tokens.

    Args:
        num_classes: background plus the objects.
        inverse_regularisation: scikit-learn's C (larger: weaker L2 penalty).
        max_iter: L-BFGS iterations at most.
    """

    def __init__(self, num_classes: int, inverse_regularisation: float = 1.0, max_iter: int = 500):
        self.num_classes = num_classes
        self.scaler = StandardScaler()
        self.model = LogisticRegression(C=inverse_regularisation, max_iter=max_iter)

    def fit(self, features: torch.Tensor, targets: torch.Tensor) -> "LinearProbe":
        """features (N, h, w, C), targets (N, h, w) class per patch."""
        x = self.scaler.fit_transform(rearrange(features, "n h w c -> (n h w) c").double().numpy())
        y = targets.flatten().numpy()
        missing = sorted(set(range(self.num_classes)) - set(np.unique(y).tolist()))
        if missing:
            raise ValueError(f"no training patch of class {missing}: train on more images")
        self.model.fit(x, y)
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-patch class scores (N, K, h, w) for features (N, h, w, C)."""
        n, h, w, _ = features.shape
        x = self.scaler.transform(rearrange(features, "n h w c -> (n h w) c").double().numpy())
        scores = torch.from_numpy(self.model.decision_function(x)).float()
        return rearrange(scores, "(n h w) k -> n k h w", n=n, h=h, w=w)

    def as_linear(self) -> nn.Linear:
        """The probe as one nn.Linear on raw (unstandardised) tokens: W x' + b with x' = (x - mean) / scale."""
        weight = torch.from_numpy(self.model.coef_ / self.scaler.scale_).float()
        bias = torch.from_numpy(self.model.intercept_).float() - weight @ torch.from_numpy(self.scaler.mean_).float()
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear


class PatchSegmenter(nn.Module):
    """A ViT backbone with a linear head on every patch token: images -> per-patch logits (N, K, h, w)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.backbone.patch_embed.patch_size[0]
        tokens = self.backbone.forward_features(normalize(images))[:, self.backbone.num_prefix_tokens:]
        logits = self.head(tokens)
        return rearrange(logits, "n (h w) k -> n k h w", h=images.shape[-2] // p, w=images.shape[-1] // p)


def finetune_segmenter(backbone: nn.Module, probe: LinearProbe, images: torch.Tensor, targets: torch.Tensor,
                       epochs: int, lr: float, batch_size: int, seed: int) -> PatchSegmenter:
    """Train copies of `backbone` and of the probe's linear head together on (images, patch targets) with AdamW; the
    originals are left untouched. Deterministic for a seed: the shuffling, and the global generator that training-only
    randomness draws from (normalised RoPE's box jitter), seeded here and restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _finetune(PatchSegmenter(copy.deepcopy(backbone), probe.as_linear()), images, targets, epochs, lr,
                         batch_size, torch.Generator().manual_seed(seed))


def _finetune(segmenter: PatchSegmenter, images: torch.Tensor, targets: torch.Tensor, epochs: int, lr: float,
              batch_size: int, generator: torch.Generator) -> PatchSegmenter:
    segmenter.train()
    optimizer = torch.optim.AdamW(segmenter.parameters(), lr=lr, weight_decay=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(segmenter(images[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return segmenter.eval()
