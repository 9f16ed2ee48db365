"""Logits and explanation maps of a trained model in one pass, batch by batch, for the safety evaluation.

The maps come from lib.analysis (one forward through the explicit attention path of every block):
- cls_attention: the last block's CLS-to-patch attention, mean over heads (lib.analysis.explain.cls_attention);
- rollout: attention rollout with mean head fusion and no discarding (lib.analysis.explain.rollout).
Both are (B, H, W) on the patch grid. The inputs are the [0, 1] images; the model's input scaling
(lib.run.study.normalize) is applied here.
"""

from typing import NamedTuple

import torch
from torch import nn

from lib.analysis.explain import cls_attention, rollout
from lib.analysis.extract import attention_maps
from lib.run.study import normalize

MAP_METHODS: tuple[str, ...] = ("cls_attention", "rollout")


class Outputs(NamedTuple):
    """logits (N, K) and maps: method name -> (N, H, W)."""

    logits: torch.Tensor
    maps: dict[str, torch.Tensor]


def explanation_maps(model: nn.Module, images: torch.Tensor) -> Outputs:
    """Logits and every MAP_METHODS map for one batch of [0, 1] images (B, C, height, width)."""
    record = attention_maps(model, normalize(images))
    maps = {
        "cls_attention": cls_attention(record.maps, record.grid_hw, model.num_prefix_tokens)[:, -1].mean(dim=1),
        "rollout": rollout(record.maps, record.grid_hw, model.num_prefix_tokens),
    }
    return Outputs(record.logits, maps)


@torch.no_grad()
def run_model(model: nn.Module, images: torch.Tensor, batch_size: int = 500, with_maps: bool = True) -> Outputs:
    """`explanation_maps` over all images in batches (with_maps=False: the plain, fused forward only)."""
    model.eval()
    logits, maps = [], {method: [] for method in MAP_METHODS}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if not with_maps:
            logits.append(model(normalize(batch)))
            continue
        out = explanation_maps(model, batch)
        logits.append(out.logits)
        for method, values in out.maps.items():
            maps[method].append(values)
    return Outputs(torch.cat(logits), {m: torch.cat(v) for m, v in maps.items() if v})
