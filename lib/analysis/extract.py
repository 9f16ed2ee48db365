"""Reading a lib ViT's internals: attention maps, residual-stream tokens, and head masks.

Attention maps come from `VisionTransformer.forward_with_attention` (the explicit path of every attention
variant); the plain forward, with its fused kernels, is never switched globally. Everything that needs a
hook (the residual stream entering each block, a head mask) registers it only for the duration of one
call and removes it in a `finally`, so an exception can never leave a hook behind.

Shapes: B images, L blocks, h heads, N = prefix + H * W tokens (CLS first), C channels.

What the returned map is depends on the attention variant (see lib/layers/attention):
- softmax, local, sparse_*: the softmax weights; rows are probabilities.
- axial, multi_axis: the composed operator (A_col A_row, A_grid A_block) applied to the values; rows are
  probabilities.
- moh: the per-head softmax weights before the per-token head gates (`attn.last_routing`).
- linear: the implied map A_ij = (R_i phi(q_i))^T (R_j phi(k_j)) / (phi(q_i)^T sum_j phi(k_j) + eps); with RoPE
  it can be negative and rows need not sum to 1, so it is a signed mixing matrix, not a distribution.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn


class AttentionRecord(NamedTuple):
    """One forward pass seen from inside.

    logits: (B, classes). maps: (B, L, h, N, N) attention of every block. tokens: (B, L, N, C), the residual
    stream entering every block. grid_hw: the patch grid (H, W) of this input.
    """

    logits: torch.Tensor
    maps: torch.Tensor
    tokens: torch.Tensor
    grid_hw: tuple[int, int]


def patch_grid(model: nn.Module, inputs: torch.Tensor) -> tuple[int, int]:
    """The patch grid (H, W) that `model` reads off `inputs` (B, C, height, width)."""
    patch_h, patch_w = model.patch_embed.patch_size
    return inputs.shape[-2] // patch_h, inputs.shape[-1] // patch_w


@contextmanager
def recorded_block_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the tokens (B, N, C) entering each block during the forward passes run inside the block."""
    tokens: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda module, args: tokens.append(args[0])) for block in model.blocks]
    try:
        yield tokens
    finally:
        for handle in handles:
            handle.remove()


def attention_maps(model: nn.Module, inputs: torch.Tensor) -> AttentionRecord:
    """Logits, every block's attention maps and input tokens for `inputs` at any resolution (no grad)."""
    with torch.no_grad(), recorded_block_inputs(model) as tokens:
        logits, maps = model.forward_with_attention(inputs)
    return AttentionRecord(logits, torch.stack(maps, dim=1), torch.stack(tokens, dim=1), patch_grid(model, inputs))


def _scale_head_outputs(module: nn.Module, args: tuple, head_scale: torch.Tensor) -> tuple[torch.Tensor]:
    """Forward pre-hook of `attn.proj`: multiply each head's slice of the (B, N, h * d) input by its scale."""
    (x,) = args
    pattern = "h -> 1 1 h 1" if head_scale.dim() == 1 else "b h -> b 1 h 1"
    heads = rearrange(x, "b n (h d) -> b n h d", h=head_scale.shape[-1])
    return (rearrange(heads * rearrange(head_scale, pattern), "b n h d -> b n (h d)"),)


@contextmanager
def masked_heads(model: nn.Module, head_mask: torch.Tensor) -> Iterator[nn.Module]:
    """Scale every head's output by `head_mask` while inside the block; hooks are always removed.

    head_mask: (L, h), or (B, L, h) for one mask per image. 1 keeps a head, 0 removes it; any value (and a
    tensor that requires grad: the Michel et al. head-importance gate xi) is allowed. The scale is applied to
    the input of `blocks[l].attn.proj`, where the heads sit side by side, so it works for every attention
    variant and for the fused as well as the explicit path.
    """
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    if tuple(head_mask.shape[-2:]) != (depth, heads) or head_mask.dim() not in (2, 3):
        raise ValueError(f"head_mask must be ({depth}, {heads}) or (B, {depth}, {heads}), got {tuple(head_mask.shape)}")
    handles = []
    try:
        for layer, block in enumerate(model.blocks):
            hook = partial(_scale_head_outputs, head_scale=head_mask[..., layer, :])
            handles.append(block.attn.proj.register_forward_pre_hook(hook))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def forward_with_head_mask(model: nn.Module, inputs: torch.Tensor, head_mask: torch.Tensor) -> torch.Tensor:
    """Logits of the plain (fused) forward with heads scaled by `head_mask` (see `masked_heads`)."""
    with masked_heads(model, head_mask):
        return model(inputs)
