"""Explanation maps over the patch grid, (B, H, W) per image: which patches does the decision rest on?

Methods (all explain a given target class per image, usually the predicted one):

- Raw CLS attention: A_l[h][CLS, patches] of block l, head h; the summary map is the head mean of the last
  block. Range [0, 1] for probability maps.
- Attention rollout (Abnar & Zuidema 2020): per block fuse heads (mean, max or min) into A_l, optionally zero
  the lowest `discard_ratio` fraction of A_l's entries (never A_l[CLS, CLS]), add the residual
  Â_l = (A_l + I) / 2, renormalize rows Â_l / Â_l.sum(-1, keepdim=True); R = Â_L ... Â_1, map = R[CLS, patches].
  Class-agnostic.
- Gradient-weighted rollout (Chefer et al. 2021, "Generic attention-model explainability"): with
  Ā_l = mean_h clamp(∇A_l ⊙ A_l, min=0), ∇A_l the gradient of the target-class logit with respect to block l's
  map, R = I and for l = 1..L in forward order R ← R + Ā_l R; map = R[CLS, patches]. Each gradient is paired
  with its own block's map.
- Grad-CAM (Selvaraju et al. 2017) on the patch tokens leaving the last block's norm1, via pytorch-grad-cam:
  weights w_c = mean over patches of ∂y/∂F_c, map = relu(sum_c w_c F_c), min-max scaled per image to [0, 1].
- Integrated Gradients (Sundararajan et al. 2017) via captum: (x - x') ⊙ ∫ ∂y/∂x(x' + a (x - x')) da, with x'
  the perturbation baseline image; summed over channels (pixel map) and over each patch's pixels (patch map).
  Signed; sums to y(x) - y(x') up to the quadrature error.
- AttnLRP (Achtibat et al. 2024), for models whose every block is softmax attention: layer-wise relevance of the
  target logit at the input pixels, summed per patch; see lib/analysis/lrp.py. Signed.
- Random: i.i.d. uniform [0, 1) per patch from a seeded generator, the chance reference.

Linear attention: its map is the implied, possibly signed operator (see lib/analysis/extract.py). Rollout
uses |A| with rows renormalized, i.e. it rolls out the magnitude of the mixing; for every probability map
|A| = A and nothing changes. Gradient rollout uses the signed map as is (Chefer's clamp keeps the positive
part of ∇A ⊙ A). Axial and multi-axis return the composed operator, which is not itself on the autograd
path; its gradient is the exact ∂y/∂A = (∂y/∂out) vᵀ per head, since out = A v (the output of the head
before the output projection).

References: Abnar & Zuidema 2020 (arXiv 2005.00928); Chefer, Gur & Wolf 2021 (arXiv 2103.15679);
Selvaraju et al. 2017 (arXiv 1610.02391), pytorch-grad-cam (jacobgil); Sundararajan et al. 2017
(arXiv 1703.01365), captum; Achtibat et al. 2024 (arXiv 2402.05602).
"""
from typing import NamedTuple

import numpy as np
import torch
from captum.attr import IntegratedGradients
from einops import rearrange, reduce
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lib.analysis.extract import patch_grid
from lib.analysis.lrp import attnlrp, attnlrp_applies

HEAD_FUSIONS = ("mean", "max", "min")


def to_grid(patch_values: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(..., H * W) row-major patch values -> (..., H, W)."""
    return rearrange(patch_values, "... (h w) -> ... h w", h=grid_hw[0], w=grid_hw[1])


def cls_attention(maps: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """CLS-to-patch attention of every block and head: maps (B, L, h, N, N) -> (B, L, h, H, W)."""
    return to_grid(maps[..., 0, num_prefix_tokens:], grid_hw)


def fuse_heads(maps: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Fuse the head axis (dim -3) of (..., h, N, N) maps by mean, max or min."""
    if how not in HEAD_FUSIONS:
        raise ValueError(f"head fusion must be one of {HEAD_FUSIONS}, got {how!r}")
    if how == "mean":
        return maps.mean(dim=-3)
    return maps.amax(dim=-3) if how == "max" else maps.amin(dim=-3)


def discard_lowest(attn: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the lowest `ratio` fraction of each (N, N) map's entries, never entry [0, 0] (CLS to CLS)."""
    flat = attn.flatten(-2)
    count = int(flat.shape[-1] * ratio)
    if count == 0:
        return attn
    scores = flat.clone()
    scores[..., 0] = torch.inf
    lowest = scores.topk(count, dim=-1, largest=False).indices
    return flat.scatter(-1, lowest, 0.0).view_as(attn)


def rollout(maps: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1, head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout R = Â_L ... Â_1 of maps (B, L, h, N, N); returns R[CLS, patches] as (B, H, W)."""
    fused = discard_lowest(fuse_heads(maps.abs(), head_fusion), discard_ratio)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    with_residual = (fused + eye) / 2
    with_residual = with_residual / with_residual.sum(dim=-1, keepdim=True)
    relevance = eye.expand(fused.shape[0], -1, -1)
    for layer in range(fused.shape[1]):
        relevance = with_residual[:, layer] @ relevance
    return to_grid(relevance[:, 0, num_prefix_tokens:], grid_hw)


def gradient_rollout(maps: torch.Tensor, grads: torch.Tensor, grid_hw: tuple[int, int],
                     num_prefix_tokens: int = 1) -> torch.Tensor:
    """Chefer et al.'s R ← R + mean_h(clamp(∇A ⊙ A, 0)) R in forward order; maps, grads (B, L, h, N, N) -> (B, H, W)."""
    weighted = (grads * maps).clamp(min=0).mean(dim=2)
    relevance = torch.eye(maps.shape[-1], dtype=maps.dtype, device=maps.device).expand(maps.shape[0], -1, -1)
    for layer in range(maps.shape[1]):
        relevance = relevance + weighted[:, layer] @ relevance
    return to_grid(relevance[:, 0, num_prefix_tokens:], grid_hw)


class AttentionGradients(NamedTuple):
    """logits (B, classes); maps and grads (B, L, h, N, N): each block's map and ∂(target logit)/∂map."""

    logits: torch.Tensor
    maps: torch.Tensor
    grads: torch.Tensor


def attention_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> AttentionGradients:
    """Every block's attention map and the gradient of the target-class logit with respect to it.

    A map on the autograd path gets its gradient from autograd. A composed map (axial, multi_axis) is not on
    the path; it is the operator with out = A v, so its gradient is (∂y/∂out) vᵀ per head, read from the
    values (qkv output) and the gradient at the output projection's input (the heads' outputs).
    """
    values, head_outputs, handles = [], [], []
    for block in model.blocks:
        heads = block.attn.num_heads
        if hasattr(block.attn, "qkv"):  # a variant without a fused qkv (symmetric) keeps its maps on the autograd path
            handles.append(block.attn.qkv.register_forward_hook(
                lambda module, args, out, heads=heads: values.append(
                    rearrange(out, "b n (three h d) -> three b h n d", three=3, h=heads)[2])))
        handles.append(block.attn.proj.register_forward_pre_hook(lambda module, args: head_outputs.append(args[0])))
    try:
        with torch.enable_grad():
            logits, maps = model.forward_with_attention(inputs)
            score = logits.gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(score, maps + head_outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    depth = len(maps)
    map_grads = list(grads[:depth])
    for layer, grad in enumerate(map_grads):
        if grad is None:
            if len(values) != depth:
                raise ValueError(f"block {layer}'s attention map is not on the autograd path and "
                                 f"{type(model.blocks[layer].attn).__name__} has no qkv projection to read values from")
            heads = maps[layer].shape[1]
            out_grad = rearrange(grads[depth + layer], "b n (h d) -> b h n d", h=heads)
            map_grads[layer] = out_grad @ values[layer].detach().transpose(-2, -1)
    return AttentionGradients(logits.detach(), torch.stack([m.detach() for m in maps], 1), torch.stack(map_grads, 1))


def tokens_to_grid(tokens: torch.Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """pytorch-grad-cam reshape_transform for any grid: (B, N, C) tokens -> (B, C, H, W) patch features."""
    return rearrange(tokens[:, num_prefix_tokens:], "b (h w) c -> b c h w", h=grid_hw[0], w=grid_hw[1])


class GridGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM whose map stays on the (H, W) patch grid.

    The library resizes every map to the input image with cv2 (bilinear); asking for the grid size makes that
    resize the identity, so patch boundaries are not blurred. Everything else is the library's Grad-CAM.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module, grid_hw: tuple[int, int], num_prefix_tokens: int = 1):
        super().__init__(model, [target_layer],
                         reshape_transform=lambda tokens: tokens_to_grid(tokens, grid_hw, num_prefix_tokens))
        self.grid_hw = grid_hw

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        return self.grid_hw[1], self.grid_hw[0]


def grad_cam(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, target_layer: nn.Module | None = None,
             num_prefix_tokens: int | None = None) -> torch.Tensor:
    """Grad-CAM (B, H, W) in [0, 1] on the patch tokens of `target_layer` (default: the last block's norm1);
    `num_prefix_tokens` defaults to the model's (CLS and any registers)."""
    target_layer = model.blocks[-1].norm1 if target_layer is None else target_layer
    num_prefix_tokens = model.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
    cam = GridGradCAM(model, target_layer, patch_grid(model, inputs), num_prefix_tokens)
    try:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:  # not `with cam`: BaseCAM.__exit__ swallows IndexError
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # the library backpropagates into the weights' .grad
    return torch.from_numpy(np.ascontiguousarray(maps))


class IntegratedGradientMaps(NamedTuple):
    """patches (B, H, W): attribution summed over each patch; pixels (B, height, width): summed over channels."""

    patches: torch.Tensor
    pixels: torch.Tensor


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                         steps: int = 16, internal_batch_size: int | None = None) -> IntegratedGradientMaps:
    """captum Integrated Gradients from `baseline` (broadcastable to inputs) with `steps` Gauss-Legendre nodes."""
    attributions = IntegratedGradients(model).attribute(
        inputs, baselines=baseline.expand_as(inputs), target=targets, n_steps=steps,
        internal_batch_size=internal_batch_size)
    pixels = attributions.detach().sum(dim=1)
    patch_h, patch_w = model.patch_embed.patch_size
    patches = reduce(pixels, "b (h p) (w q) -> b h w", "sum", p=patch_h, q=patch_w)
    return IntegratedGradientMaps(patches, pixels)


def random_maps(batch: int, grid_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) relevance per patch, (B, H, W): the chance baseline."""
    return torch.rand(batch, *grid_hw, generator=generator)


class Explanations(NamedTuple):
    """maps: method name -> (B, H, W) patch maps; ig_pixels: (B, height, width); cls_layers: (B, L, h, H, W);
    logits: (B, classes) of the clean inputs."""

    maps: dict[str, torch.Tensor]
    ig_pixels: torch.Tensor
    cls_layers: torch.Tensor
    logits: torch.Tensor


def explain(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
            generator: torch.Generator, ig_steps: int = 16, head_fusion: str = "mean",
            discard_ratio: float = 0.0, num_prefix_tokens: int | None = None) -> Explanations:
    """Every method's map for `targets` (one class index per image); one forward-backward serves the
    three attention methods. Method order: random, cls_attention, rollout, grad_rollout, grad_cam,
    integrated_gradients, then attnlrp where the model's attention has AttnLRP rules (softmax attention).
    `num_prefix_tokens` defaults to the model's (CLS and any registers)."""
    num_prefix_tokens = model.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
    grid_hw = patch_grid(model, inputs)
    attention = attention_gradients(model, inputs, targets)
    cls_layers = cls_attention(attention.maps, grid_hw, num_prefix_tokens)
    ig = integrated_gradients(model, inputs, targets, baseline, steps=ig_steps, internal_batch_size=len(inputs))
    maps = {
        "random": random_maps(len(inputs), grid_hw, generator),
        "cls_attention": cls_layers[:, -1].mean(dim=1),
        "rollout": rollout(attention.maps, grid_hw, num_prefix_tokens, head_fusion, discard_ratio),
        "grad_rollout": gradient_rollout(attention.maps, attention.grads, grid_hw, num_prefix_tokens),
        "grad_cam": grad_cam(model, inputs, targets, num_prefix_tokens=num_prefix_tokens),
        "integrated_gradients": ig.patches,
    }
    if attnlrp_applies(model):
        maps["attnlrp"] = attnlrp(model, inputs, targets)
    return Explanations(maps, ig.pixels, cls_layers, attention.logits)
