"""Logits and explanation maps of a trained model in one pass, batch by batch, for the safety evaluation.

The maps come from lib.analysis (one forward through the explicit attention path of every block):
- cls_attention: the last block's CLS-to-patch attention, mean over heads (lib.analysis.explain.cls_attention);
- rollout: attention rollout with mean head fusion and no discarding (lib.analysis.explain.rollout).
Both are (B, H, W) on the patch grid. Per image, two numbers about the attention itself:
- sink: the last block's CLS attention to the prefix tokens (itself and any registers), mean over heads: the share
  of attention that looks at no patch;
- stability (when asked for, `stability_noise` > 0): the Spearman rank correlation between the rollout map of the
  image and that of the image with Gaussian pixel noise of std `stability_noise` added (one seeded draw per call;
  0 where a map is constant): how much a small perturbation moves the map.
The inputs are the [0, 1] images; the model's input scaling (lib.run.study.normalize) is applied here.
"""

from typing import NamedTuple

import torch
from torch import nn

from lib.analysis.explain import cls_attention, rollout
from lib.analysis.extract import attention_maps
from lib.run.study import normalize
from lib.safety.reliability import spearman

MAP_METHODS: tuple[str, ...] = ("cls_attention", "rollout")
STABILITY_NOISE = 0.02  # pixel noise std (images in [0, 1], ~5 of 255 levels) of the stability signal


class Outputs(NamedTuple):
    """logits (N, K), maps: method name -> (N, H, W), and per image the sink mass and the stability (N,) (module
    docstring; None where not computed)."""

    logits: torch.Tensor
    maps: dict[str, torch.Tensor]
    sink: torch.Tensor | None = None
    stability: torch.Tensor | None = None


def explanation_maps(model: nn.Module, images: torch.Tensor) -> Outputs:
    """Logits and every MAP_METHODS map for one batch of [0, 1] images (B, C, height, width)."""
    record = attention_maps(model, normalize(images))
    maps = {
        "cls_attention": cls_attention(record.maps, record.grid_hw, model.num_prefix_tokens)[:, -1].mean(dim=1),
        "rollout": rollout(record.maps, record.grid_hw, model.num_prefix_tokens),
    }
    sink = record.maps[:, -1, :, 0, : model.num_prefix_tokens].sum(dim=-1).mean(dim=1)
    return Outputs(record.logits, maps, sink)


@torch.no_grad()
def run_model(model: nn.Module, images: torch.Tensor, batch_size: int = 500, with_maps: bool = True,
              stability_noise: float = 0.0, seed: int = 0) -> Outputs:
    """`explanation_maps` over all images in batches (with_maps=False: the plain, fused forward only), with the
    stability of every rollout map under pixel noise of std `stability_noise` (drawn from `seed`) when it is > 0."""
    model.eval()
    noise = (stability_noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
             if with_maps and stability_noise > 0 else None)  # one draw for all images: independent of batch_size
    logits, maps, sink, stability = [], {method: [] for method in MAP_METHODS}, [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if not with_maps:
            logits.append(model(normalize(batch)))
            continue
        out = explanation_maps(model, batch)
        logits.append(out.logits)
        sink.append(out.sink)
        for method, values in out.maps.items():
            maps[method].append(values)
        if noise is not None:
            noisy = explanation_maps(model, (batch + noise[start : start + batch_size]).clamp(0, 1))
            stability.append(torch.nan_to_num(spearman(out.maps["rollout"], noisy.maps["rollout"]), nan=0.0))
    return Outputs(torch.cat(logits), {m: torch.cat(v) for m, v in maps.items() if v},
                   torch.cat(sink) if sink else None, torch.cat(stability) if stability else None)
