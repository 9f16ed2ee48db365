"""AttnLRP (Achtibat et al., ICML 2024, arXiv 2402.05602): layer-wise relevance propagation for softmax
attention, in its Gradient×Input form.

LRP propagates the target logit's value back to the input so that each layer's relevances sum to what it
received. For linear layers Gradient×Input *is* LRP-0, so the paper's rules become modified backward passes of
the ordinary model, after which relevance = input ⊙ gradient:

- LayerNorm: the identity rule on the normalisation. The standard deviation is treated as a constant (no
  gradient through it), which leaves a linear map of x - mean(x).
- Element-wise activations (GELU): the identity rule, R_in = R_out, i.e. the backward multiplies by f(x) / x
  instead of f'(x) (`IdentityRule`).
- The two bilinear products of attention, A V and q kᵀ: the uniform rule, half of the product's relevance to
  each factor. A V halves the gradient reaching v and A; softmax's own rule, R_s = s ⊙ (R_A - A Σ R_A), equals
  Gradient×Input through the softmax; q kᵀ halves again. So the gradients at q and k are divided by 4 and at v
  by 2 (`divide_gradient`), applied to q, k, v as they enter the variant's `mix`.

The rules exist for softmax attention (dense or masked). RoPE rotates q and k linearly, so it needs no rule; a
logit bias (FIRE) is a constant of the input, its relevance absorbed like any bias. Variants whose token mixing
has other non-linearities (linear attention's feature map, Gaussian recalibration, routing, complex angles) have
no rule in the paper; `attnlrp_applies` says no and `attnlrp` refuses them.

The map: relevance at the (normalised) input pixels, summed over channels and over each patch's pixels.
Biases absorb relevance, so the map sums to the target logit only approximately.
"""
from contextlib import contextmanager

import torch
from einops import reduce
from torch import nn

from lib.layers.attention.base import QKVAttention
from lib.layers.attention.softmax import SoftmaxAttention
from lib.layers.attention.sparse import MaskedAttention

# the attention classes whose mix is exactly softmax(q kᵀ · scale + bias [masked]) v (subclasses with their own
# non-linearities, e.g. Gaussian adaptive attention, are not listed)
SOFTMAX_MIXERS = (SoftmaxAttention, MaskedAttention)
ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh)


class IdentityRule(torch.autograd.Function):
    """y = fn(x); the backward passes grad ⊙ fn(x) / x (0 where x = 0), so x ⊙ grad_in = y ⊙ grad_out."""

    @staticmethod
    def forward(ctx, x, fn):
        y = fn(x)
        ctx.save_for_backward(torch.where(x == 0, torch.zeros_like(y), y / torch.where(x == 0, torch.ones_like(x), x)))
        return y

    @staticmethod
    def backward(ctx, grad):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class DivideGradient(torch.autograd.Function):
    """The identity forward; the backward divides the gradient by `factor` (the uniform rule's share)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.factor, None


def divide_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return DivideGradient.apply(x, factor)


def _is_softmax_mixer(module: nn.Module) -> bool:
    return (isinstance(module, SOFTMAX_MIXERS) and type(module).forward is QKVAttention.forward
            and type(module).mix in {cls.mix for cls in SOFTMAX_MIXERS})


def attnlrp_applies(model: nn.Module) -> bool:
    """Whether every block's attention is a softmax mixer, the attention AttnLRP has rules for."""
    return all(_is_softmax_mixer(block.attn) for block in model.blocks)


def _layer_norm_rule(module: nn.LayerNorm):
    def forward(x):
        centred = x - x.mean(dim=-1, keepdim=True)
        std = (centred.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
        y = centred / std.detach()
        if module.weight is not None:
            y = y * module.weight
        return y + module.bias if module.bias is not None else y
    return forward


def _activation_rule(module: nn.Module):
    original = type(module).forward
    return lambda x: IdentityRule.apply(x, lambda t: original(module, t))


def _attention_rule(module: nn.Module):
    original = type(module).mix
    def mix(q, k, v, *args, **kwargs):
        return original(module, divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2), *args, **kwargs)
    return mix


@contextmanager
def attnlrp_rules(model: nn.Module):
    """Within the block, `model`'s backward follows AttnLRP's rules (its forward is unchanged up to rounding);
    every patched method is restored on exit."""
    patched = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            patched.append((module, "forward", _layer_norm_rule(module)))
        elif isinstance(module, ACTIVATIONS):
            patched.append((module, "forward", _activation_rule(module)))
        elif _is_softmax_mixer(module):
            patched.append((module, "mix", _attention_rule(module)))
    try:
        for module, name, method in patched:
            setattr(module, name, method)  # an instance attribute shadows the class's method
        yield model
    finally:
        for module, name, _ in patched:
            delattr(module, name)


def attnlrp(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AttnLRP relevance of each image's `targets` logit per patch, (B, H, W); a ValueError for a model with an
    attention that AttnLRP has no rule for."""
    if not attnlrp_applies(model):
        names = sorted({type(block.attn).__name__ for block in model.blocks if not _is_softmax_mixer(block.attn)})
        raise ValueError(f"AttnLRP has rules for softmax attention only; this model's blocks use {', '.join(names)}")
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad(), attnlrp_rules(model):
        score = model(inputs).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    pixels = (inputs.detach() * grad).sum(dim=1)
    patch_h, patch_w = model.patch_embed.patch_size
    return reduce(pixels, "b (h p) (w q) -> b h w", "sum", p=patch_h, q=patch_w)
