"""AttnLRP (lib/analysis/lrp.py): the Gradient×Input form against the paper's explicit rules, conservation where the
rules conserve, and which models it applies to."""
import pytest
import torch
from timm.layers import Mlp
from torch import nn

from lib.analysis.explain import explain
from lib.analysis.lrp import attnlrp, attnlrp_applies, attnlrp_rules
from lib.layers.attention.softmax import SoftmaxAttention
from lib.models.vit import VisionTransformer


def explicit_attnlrp(x, w_q, w_k, w_v, w_proj, scale, c):
    """The paper's rules written out for f = c · proj(softmax(q kᵀ scale) v), q = x W_qᵀ etc., one head, no biases:
    LRP-0 through the linear maps (relevance split by each term's share z / sum), the uniform rule on A v and on
    q kᵀ (each factor half of every term), and the softmax rule R_s = s ⊙ (R_A - A Σ_j R_A)."""
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    s = scale * q @ k.T
    a = s.softmax(-1)
    o = a @ v
    r_o = o * (c @ w_proj)                                  # LRP-0 through proj, from R_out = out ⊙ c
    terms = a[:, :, None] * v[None, :, :]                   # o_id = Σ_j A_ij v_jd
    share = terms / o[:, None, :] * r_o[:, None, :]
    r_a, r_v = 0.5 * share.sum(-1), 0.5 * share.sum(0)      # uniform rule on A v
    r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))        # softmax rule (the paper's eq. for softmax), input s
    pair = scale * q[:, None, :] * k[None, :, :]            # s_ij = Σ_d scale q_id k_jd
    pair_share = pair / s[:, :, None] * r_s[:, :, None]
    r_q, r_k = 0.5 * pair_share.sum(1), 0.5 * pair_share.sum(0)  # uniform rule on q kᵀ

    def back(r_out, w, out):                                # LRP-0 through out = x Wᵀ
        return (x[:, None, :] * w[None, :, :] / out[:, :, None] * r_out[:, :, None]).sum(1)
    return back(r_q, w_q, q) + back(r_k, w_k, k) + back(r_v, w_v, v)


def test_attention_relevance_equals_the_papers_explicit_rules():
    torch.manual_seed(3)
    attention = SoftmaxAttention(dim=4, num_heads=1, qkv_bias=False).double()
    nn.init.zeros_(attention.proj.bias)
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64)
    with attnlrp_rules(attention):
        out = attention(x, (2, 2), 1)
        (grad,) = torch.autograd.grad((out @ c).sum(), x)
    w_q, w_k, w_v = attention.qkv.weight.chunk(3, dim=0)
    expected = explicit_attnlrp(x[0].detach(), w_q.detach(), w_k.detach(), w_v.detach(), attention.proj.weight.detach(),
                                attention.scale, c)
    assert torch.allclose((x * grad)[0], expected, atol=1e-10)
    # the plain gradient differs: the rules change the backward
    (plain,) = torch.autograd.grad((attention(x, (2, 2), 1) @ c).sum(), x)
    assert not torch.allclose(plain, grad)


def test_layer_norm_and_activation_rules_conserve_relevance():
    """Without biases, LayerNorm (constant std), GELU (identity rule) and linear layers pass on exactly what they
    receive: the input relevances sum to the output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(6), Mlp(6, hidden_features=12)).double()
    for module in net.modules():
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    with attnlrp_rules(net):
        out = net(x).sum(-1)
        (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose((x * grad).sum(-1), out.detach(), atol=1e-10)
    (plain,) = torch.autograd.grad(net(x).sum(), x)
    assert not torch.allclose((x * plain).sum(-1), out.detach(), atol=1e-3)  # plain Gradient×Input does not


def test_rules_leave_the_forward_and_are_removed_afterwards():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=(20, 36), in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2).eval()
    inputs = torch.randn(2, 1, 20, 36)
    before = model(inputs)
    with attnlrp_rules(model):
        assert torch.allclose(model(inputs), before, atol=1e-5)
    assert not any({"forward", "mix"} & set(vars(module)) for module in model.modules())
    relevance = attnlrp(model, inputs, torch.tensor([0, 2]))
    assert relevance.shape == (2, 5, 9) and torch.isfinite(relevance).all()
    assert torch.equal(model(inputs), before)


@pytest.mark.parametrize("attention, applies", [("softmax", True), ("sparse_strided", True), ("linear", False),
                                                ("gaussian_adaptive", False), ("symmetric", False)])
def test_attnlrp_applies_to_softmax_attention_only(attention, applies):
    model = VisionTransformer(img_size=16, in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2,
                              attention=attention).eval()
    assert attnlrp_applies(model) is applies
    inputs = torch.randn(2, 1, 16, 16)
    maps = explain(model, inputs, torch.tensor([0, 1]), torch.zeros(1, 1, 16, 16), torch.Generator().manual_seed(0),
                   ig_steps=2).maps
    assert ("attnlrp" in maps) is applies
    if not applies:
        with pytest.raises(ValueError, match="softmax attention only"):
            attnlrp(model, inputs, torch.tensor([0, 1]))
