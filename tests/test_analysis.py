"""Attention analysis: rollout, gradient rollout, Grad-CAM, metrics, head masks, faithfulness, localisation."""
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lib.analysis.compare import compare_methods, top_group
from lib.analysis.explain import (
    attention_gradients, discard_lowest, explain, grad_cam, gradient_rollout, integrated_gradients, rollout,
)
from lib.analysis.extract import attention_maps, forward_with_head_mask, masked_heads
from lib.analysis.faithfulness import (
    curve_auc, localisation, patch_ranking, perturbation_curves, remove_patches,
)
from lib.analysis.metrics import (
    attention_entropy, cls_distribution, gini, head_importance, high_norm_tokens, mean_attention_distance,
    offset_profile, patch_distribution, pruning_curve, top_mass,
)
from lib.analysis.fills import reference_images
from lib.analysis.sanity import cascade, cascading_randomisation, redraw
from lib.analysis.tables import (
    IG_FROM_FILL, accuracy_vs_chance, attention_tables, faithfulness_by_fill, faithfulness_tables, fill_sensitivity,
    localisation_per_image, localisation_table, without_method,
)
from lib.layers.attention import ATTENTION_LAYERS
from lib.models import VisionTransformer
from lib.stats import bootstrap_ci, wilson_interval


def tiny_vit(attention: str = "softmax", pos_embed: str = "rope_mixed", seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                              num_heads=2, attention=attention, pos_embed=pos_embed, **kwargs)
    return model.eval()


def images(batch: int = 4, size: tuple[int, int] = (28, 28), seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(seed))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------- rollout

def test_rollout_equals_hand_computed_product():
    # 2 blocks, 1 head, tokens (CLS, p1, p2) on a 1 x 2 grid; rows already stochastic
    a1 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    maps = torch.stack([a1, a2])[None, :, None]  # (B=1, L=2, h=1, 3, 3)
    # Â1 = [[.75, .25, 0], [0, 1, 0], [0, 0, 1]], Â2 = [[.75, 0, .25], [.25, .75, 0], [0, 0, 1]]
    # (Â2 Â1)[CLS] = .75 * [.75, .25, 0] + .25 * [0, 0, 1] = [.5625, .1875, .25]
    assert torch.allclose(rollout(maps, (1, 2)), torch.tensor([[[0.1875, 0.25]]]))


def test_rollout_discard_spares_cls_and_renormalizes_rows():
    a = torch.tensor([[0.05, 0.55, 0.40], [0.10, 0.60, 0.30], [0.35, 0.45, 0.20]])
    maps = torch.stack([a, a])[None, :, None]
    # discard 3 of 9: the lowest are 0.05 (CLS->CLS, spared), then 0.10, 0.20, 0.30
    assert torch.equal(discard_lowest(a, 0.34), torch.tensor([[0.05, 0.55, 0.40], [0, 0.60, 0], [0.35, 0.45, 0]]))
    # Â rows: [.525, .275, .2], [0, .8, 0] -> [0, 1, 0], [.175, .225, .5] / .9
    # R[CLS] = .525 Â[0] + .275 Â[1] + .2 Â[2] -> patches [.469375, .105 + .2 * .5 / .9]
    expected = torch.tensor([[[0.469375, 0.105 + 0.2 * 0.5 / 0.9]]])
    assert torch.allclose(rollout(maps, (1, 2), discard_ratio=0.34), expected)


# ------------------------------------------------------------------------- maps of every variant

@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_maps_of_every_variant_are_distributions_where_they_should_be(name):
    for pos_embed in ("rope_mixed", "ape"):
        record = attention_maps(tiny_vit(name, pos_embed), images(2))
        assert record.maps.shape == (2, 2, 2, 50, 50) and record.tokens.shape == (2, 2, 50, 32)
        assert record.grid_hw == (7, 7) and torch.isfinite(record.maps).all()
        if name == "linear" and pos_embed == "rope_mixed":
            assert (record.maps < 0).any()  # the signed implied map (documented); metrics use |A|
        else:
            assert (record.maps >= 0).all()
            assert torch.allclose(record.maps.sum(-1), torch.ones(2, 2, 2, 50), atol=1e-5)
        assert torch.allclose(patch_distribution(record.maps).sum(-1), torch.ones(2, 2, 2, 49), atol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_every_explanation_runs_for_every_variant_at_a_non_square_grid(name):
    model = tiny_vit(name)
    inputs = images(2, (20, 36))
    result = explain(model, inputs, torch.tensor([1, 2]), torch.zeros(1, 1, 20, 36), torch.Generator().manual_seed(0),
                     ig_steps=4)
    for method, saliency in result.maps.items():
        assert saliency.shape == (2, 5, 9) and torch.isfinite(saliency).all(), method
    assert result.ig_pixels.shape == (2, 20, 36) and result.cls_layers.shape == (2, 2, 2, 5, 9)
    assert hook_count(model) == 0


def test_explanations_and_attention_tables_skip_the_registers():
    """With registers the prefix is CLS plus the registers: maps cover the patches only, and the analysis takes the
    prefix count from the model (the registers are never mistaken for patches)."""
    model = tiny_vit("softmax", reg_tokens=3)
    inputs = images(2, (20, 36))
    result = explain(model, inputs, torch.tensor([1, 2]), torch.zeros(1, 1, 20, 36), torch.Generator().manual_seed(0),
                     ig_steps=2)
    assert all(saliency.shape == (2, 5, 9) for saliency in result.maps.values())
    explicit = explain(model, inputs, torch.tensor([1, 2]), torch.zeros(1, 1, 20, 36), torch.Generator().manual_seed(0),
                       ig_steps=2, num_prefix_tokens=4)
    assert all(torch.allclose(result.maps[m], explicit.maps[m]) for m in ("cls_attention", "rollout", "grad_cam"))
    tables = attention_tables(model, inputs)
    assert len(tables["layer_head"]) == 2 * 2 and tables["layer_head"]["entropy_nats"].notna().all()
    assert (tables["layer_head"][["grid_h", "grid_w"]] == [5, 9]).all().all()
    assert tables["offset_profile"][["dx", "dy"]].abs().max().tolist() == [8, 4]  # offsets of the 5 x 9 patch grid


# ------------------------------------------------------------------------------ gradient rollout

def test_gradient_rollout_multiplies_in_forward_order():
    # grads = 1 so that clamp(∇A ⊙ A) = A: block 1 moves p1 -> p2, block 2 moves CLS -> p1
    w1 = torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 0, 0]])
    w2 = torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 0]])
    maps = torch.stack([w1, w2])[None, :, None]
    # (I + W2)(I + W1) = I + W1 + W2 + W2 W1, and (W2 W1)[CLS] = [0, 0, 1]: CLS reaches p2 through p1
    assert torch.equal(gradient_rollout(maps, torch.ones_like(maps), (1, 2)), torch.tensor([[[1.0, 1.0]]]))


@pytest.mark.parametrize("silent_layer", [0, 1])
def test_gradient_rollout_pairs_each_gradient_with_its_own_layer(silent_layer):
    """With one block's attention output zeroed, only the other block's map can carry relevance."""
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[silent_layer].attn.proj.weight.zero_()
        model.blocks[silent_layer].attn.proj.bias.zero_()
    inputs, targets = images(3), torch.tensor([0, 3, 7])
    result = attention_gradients(model, inputs, targets)
    active = 1 - silent_layer
    assert torch.equal(result.grads[:, silent_layer], torch.zeros_like(result.grads[:, silent_layer]))
    assert result.grads[:, active].abs().sum() > 0
    # R = (I + Ā_1)(I + Ā_0) with one Ā zero: R[CLS, patches] = Ā_active[CLS, patches]
    weighted = (result.grads[:, active] * result.maps[:, active]).clamp(min=0).mean(1)
    expected = weighted[:, 0, 1:].reshape(3, 7, 7)
    assert expected.abs().sum() > 0
    assert torch.allclose(gradient_rollout(result.maps, result.grads, (7, 7)), expected)


def test_gradients_of_maps_off_the_autograd_path_equal_autograd(monkeypatch):
    """Composed maps (axial, multi_axis) get (∂y/∂out) vᵀ; for softmax both routes must agree."""
    model = tiny_vit()
    inputs, targets = images(2), torch.tensor([4, 5])
    on_path = attention_gradients(model, inputs, targets)
    forward = model.forward_with_attention

    def detached_maps(x):
        logits, maps = forward(x)
        return logits, [m.detach().requires_grad_() for m in maps]

    monkeypatch.setattr(model, "forward_with_attention", detached_maps)
    off_path = attention_gradients(model, inputs, targets)
    assert off_path.grads.abs().sum() > 0
    assert torch.allclose(off_path.grads, on_path.grads, atol=1e-6)
    assert hook_count(model) == 0


@pytest.mark.parametrize("attention", sorted(ATTENTION_LAYERS))
def test_every_variant_is_explained_and_its_heads_can_be_masked(attention):
    """The analysis hooks (values at qkv where there is one, heads at proj's input) fit every attention variant."""
    model = tiny_vit(attention)
    inputs, targets = images(2), torch.tensor([4, 5])
    result = attention_gradients(model, inputs, targets)
    assert result.grads.shape == result.maps.shape and torch.isfinite(result.grads).all() and result.grads.abs().sum() > 0
    with torch.no_grad():
        kept = forward_with_head_mask(model, inputs, torch.ones(2, 2))
        silenced = forward_with_head_mask(model, inputs, torch.zeros(2, 2))
        assert torch.allclose(kept, model(inputs), atol=1e-5) and not torch.allclose(silenced, kept, atol=1e-4)
    assert hook_count(model) == 0


def test_a_map_off_the_autograd_path_without_values_is_a_clear_error(monkeypatch):
    model = tiny_vit("symmetric")
    forward = model.forward_with_attention
    monkeypatch.setattr(model, "forward_with_attention",
                        lambda x: (forward(x)[0], [m.detach().requires_grad_() for m in forward(x)[1]]))
    with pytest.raises(ValueError, match="SymmetricAttention has no qkv projection"):
        attention_gradients(model, images(2), torch.tensor([4, 5]))
    assert hook_count(model) == 0


# -------------------------------------------------------------------------------------- Grad-CAM

def manual_grad_cam(model, inputs, targets):
    features = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, a, out: features.append(out))
    try:
        score = model(inputs).gather(1, targets[:, None]).sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, features[0])
    patches, grads = features[0][:, 1:].detach(), grad[:, 1:]
    cam = (grads.mean(1, keepdim=True) * patches).sum(-1).clamp(min=0)
    cam = cam - cam.amin(1, keepdim=True)
    return cam / (cam.amax(1, keepdim=True) + 1e-7)


@pytest.mark.parametrize("size, grid", [((20, 36), (5, 9)), ((32, 16), (8, 4))])
def test_grad_cam_at_non_square_grids_matches_its_definition(size, grid):
    model = tiny_vit()
    inputs, targets = images(3, size), torch.tensor([1, 2, 3])
    maps = grad_cam(model, inputs, targets)
    assert maps.shape == (3, *grid)
    expected = manual_grad_cam(model, inputs, targets).reshape(3, *grid)
    assert torch.allclose(maps, expected, atol=1e-4)
    assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------ head masks

def test_all_ones_head_mask_is_the_plain_forward_and_hooks_are_removed():
    model = tiny_vit("moh")
    inputs = images(3)
    with torch.no_grad():
        plain = model(inputs)
        assert torch.equal(forward_with_head_mask(model, inputs, torch.ones(2, 2)), plain)
        one_off = torch.ones(2, 2)
        one_off[1, 0] = 0
        assert not torch.allclose(forward_with_head_mask(model, inputs, one_off), plain)
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError), masked_heads(model, torch.ones(2, 2)):
        assert hook_count(model) == 2
        model(torch.randn(1, 3, 28, 28))  # wrong channel count: the forward raises
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="head_mask"):
        forward_with_head_mask(model, inputs, torch.ones(3, 2))


def test_head_importance_is_the_gradient_of_the_loss_at_the_gate():
    model, inputs, labels = tiny_vit().double(), images(1).double(), torch.tensor([3])
    importance = head_importance(model, inputs, labels)[0]
    # finite difference of the loss in the gate of head (1, 0)
    step = 1e-3
    loss = []
    for value in (1 + step, 1 - step):
        mask = torch.ones(2, 2)
        mask[1, 0] = value
        with torch.no_grad():
            loss.append(nn.functional.cross_entropy(forward_with_head_mask(model, inputs, mask), labels))
    assert importance[1, 0] == pytest.approx(abs(loss[0] - loss[1]).item() / (2 * step), rel=1e-4)


@pytest.mark.parametrize("attention, pos_embed", [("softmax", "rope_mixed"), ("moh", "rope_mixed"),
                                                   ("linear", "ape"), ("softmax", "rope_adaptive_content"),
                                                   ("softmax", "fire")])
def test_pruning_curve_equals_full_forwards_with_the_head_mask(attention, pos_embed):
    """The curve reuses block inputs across steps; it must equal a full masked forward at every step."""
    model, inputs = tiny_vit(attention, pos_embed), images(64)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() >= 2):  # large weights: every head moves the logits
            weight.normal_(0.0, 0.3)
        labels = model(inputs).argmax(-1)
    labels[::2] = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    order = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])  # layers out of order: later, earlier, later again
    expected, mask = [], torch.ones(2, 2)
    for removed in range(len(order) + 1):
        if removed:
            mask[tuple(order[removed - 1])] = 0.0
        with torch.no_grad():
            expected.append((forward_with_head_mask(model, inputs, mask).argmax(-1) == labels).float().mean().item())
    curve = pruning_curve(model, inputs, labels, order, batch_size=24)
    assert curve.tolist() == pytest.approx(expected, abs=1e-12)
    assert len(set(expected)) > 1  # the heads matter: a constant curve would not test the reuse
    assert hook_count(model) == 0


# ----------------------------------------------------------------------------------------- metrics

def uniform_and_identity(grid):
    n = 1 + grid[0] * grid[1]
    return torch.full((1, 1, 1, n, n), 1.0 / n), torch.eye(n).expand(1, 1, 1, n, n)


@pytest.mark.parametrize("grid", [(3, 4), (7, 7), (1, 5)])
def test_mean_distance_of_uniform_and_identity_maps(grid):
    uniform, identity = uniform_and_identity(grid)
    positions = [(x, y) for y in range(grid[0]) for x in range(grid[1])]
    pairwise = sum(math.dist(a, b) for a, b in itertools.product(positions, positions)) / len(positions) ** 2
    assert mean_attention_distance(uniform, grid).item() == pytest.approx(pairwise, rel=1e-5)
    assert mean_attention_distance(identity, grid).item() == 0
    in_float64 = mean_attention_distance(uniform.double(), grid)  # maps from an fp64 analysis (it raised)
    assert in_float64.dtype == torch.float64 and in_float64.item() == pytest.approx(pairwise, rel=1e-12)


def test_entropy_equals_its_definition_on_renormalised_rows():
    """H = -sum q log q with q the patch-to-patch rows renormalised (prefix dropped, |w|, zero rows stay 0)."""
    maps = torch.randn(3, 2, 2, 10, 10, generator=torch.Generator().manual_seed(0)).softmax(-1)
    maps[0, 0, 0, 4] = 0  # a patch row without mass: entropy 0
    maps[1, 1] = -maps[1, 1]  # signed weights count by magnitude
    rows = patch_distribution(maps)
    reference = -torch.special.xlogy(rows, rows).sum(-1).mean(-1)
    assert torch.allclose(attention_entropy(maps), reference, atol=1e-6)
    assert torch.allclose(attention_entropy(maps.double()), reference.double(), atol=1e-6)


def test_entropy_and_concentration_closed_forms():
    uniform, identity = uniform_and_identity((4, 5))
    assert attention_entropy(uniform).item() == pytest.approx(math.log(20), rel=1e-6)
    assert attention_entropy(identity).item() == 0
    cls = cls_distribution(uniform)
    assert top_mass(cls, 0.1).item() == pytest.approx(2 / 20) and gini(cls).item() == pytest.approx(0, abs=1e-6)
    peaked = torch.zeros(1, 20)
    peaked[0, 7] = 1
    assert top_mass(peaked, 0.1).item() == 1 and gini(peaked).item() == pytest.approx(1 - 1 / 20)


def test_offset_profile_of_a_shift_map():
    """A map where each patch attends to its right neighbour (or itself at the border) peaks at (dx, dy) = (1, 0)."""
    grid = (3, 3)
    n = 10
    maps = torch.zeros(1, 1, 1, n, n)
    maps[..., 0, 0] = 1
    for y, x in itertools.product(range(3), range(3)):
        maps[..., 1 + 3 * y + x, 1 + 3 * y + min(x + 1, 2)] = 1
    profile = offset_profile(maps, grid)[0, 0, 0]  # (dy, dx) from -2 to 2
    assert profile.shape == (5, 5)
    assert profile[2, 3] == 1 and profile[2, 2] == pytest.approx(1 / 3) and profile.sum() == pytest.approx(4 / 3)


def test_metrics_do_not_depend_on_batch_order():
    model, inputs, labels = tiny_vit(), images(6), torch.arange(6)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    first, second = attention_maps(model, inputs), attention_maps(model, inputs[order])

    def per_image(record):
        cls = cls_distribution(record.maps)
        return [mean_attention_distance(record.maps, record.grid_hw), attention_entropy(record.maps), top_mass(cls),
                gini(cls), offset_profile(record.maps, record.grid_hw),
                *high_norm_tokens(record.tokens, record.maps, threshold=1.0)]

    for a, b in zip(per_image(first), per_image(second)):
        assert torch.allclose(a[order], b, atol=1e-6)
    assert torch.allclose(head_importance(model, inputs, labels)[order], head_importance(model, inputs[order], labels[order]),
                          atol=1e-6)


def test_high_norm_tokens_finds_a_planted_outlier():
    tokens = torch.randn(2, 1, 10, 8, generator=torch.Generator().manual_seed(0))
    tokens[0, 0, 4] *= 100  # patch 3 of image 0 (token 4, after CLS)
    maps = torch.zeros(2, 1, 2, 10, 10)
    maps[..., 4] = 0.5  # every query puts half its mass on token 4
    maps[..., 0] = 0.5
    found = high_norm_tokens(tokens, maps, threshold=5.0)
    assert found.count.tolist() == [[1.0], [0.0]]
    assert found.cls_mass[0, 0] == 0.5 and found.patch_mass[0, 0] == 0.5 and found.cls_mass[1, 0] == 0


# ------------------------------------------------------------------------------------- faithfulness

class PatchSum(nn.Module):
    """A 2-class synthetic model: logit 0 = sum_p w_p * mean(patch p), logit 1 = 0; patch size 2."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights  # (H, W)
        self.patch_embed = SimpleNamespace(patch_size=(2, 2))

    def forward(self, inputs):
        patch_means = nn.functional.avg_pool2d(inputs.mean(1, keepdim=True), 2)[:, 0]
        score = (patch_means * self.weights).flatten(1).sum(-1)
        return torch.stack([score, torch.zeros_like(score)], dim=-1)


def test_deletion_auc_of_a_perfect_saliency_beats_its_reverse():
    weights = torch.linspace(-1, 2, 16).reshape(4, 4)
    model = PatchSum(weights)
    inputs = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    baseline = torch.zeros(1, 1, 8, 8)
    contribution = nn.functional.avg_pool2d(inputs, 2)[:, 0] * weights  # exact per-patch evidence for class 0
    tie_break = torch.arange(16)
    rankings = {"perfect": patch_ranking(contribution, tie_break), "reversed": patch_ranking(-contribution, tie_break)}
    fractions = torch.linspace(0, 1, 17)
    targets = labels = torch.zeros(5, dtype=torch.long)
    curves = perturbation_curves(model, inputs, labels, targets, rankings, baseline, fractions)
    deletion = {name: curve_auc(curves[name, "most_relevant_first"].probability, fractions) for name in rankings}
    insertion = {name: curve_auc(curves[name, "least_relevant_first"].probability, fractions) for name in rankings}
    assert (deletion["perfect"] < deletion["reversed"]).all()
    assert (insertion["perfect"] > insertion["reversed"]).all()


def test_remove_patches_replaces_exactly_the_chosen_patches():
    inputs = torch.ones(1, 2, 4, 6)
    out = remove_patches(inputs, torch.zeros(1, 2, 4, 6), torch.tensor([[1, 5]]), (2, 2))  # grid 2 x 3
    expected = torch.ones(2, 3)
    expected[0, 1] = expected[1, 2] = 0
    assert torch.equal(out, expected.repeat_interleave(2, 0).repeat_interleave(2, 1).expand(1, 2, 4, 6))


def test_perturbation_curves_start_at_clean_accuracy():
    model = tiny_vit()
    inputs = images(8)
    with torch.no_grad():
        predicted = model(inputs).argmax(-1)
    labels = torch.where(torch.arange(8) < 5, predicted, (predicted + 1) % 10)  # clean accuracy 5 / 8
    maps = {"random": torch.rand(8, 7, 7, generator=torch.Generator().manual_seed(1)), "uniform": torch.ones(8, 7, 7)}
    fractions = torch.linspace(0, 1, 6)
    tables = faithfulness_tables(model, inputs, labels, predicted, maps, torch.zeros(1, 1, 28, 28), fractions,
                                 batch_size=3, resamples=200)
    curves = tables["curves"]
    start = curves[curves["fraction"] == 0]
    assert len(start) == 4 and np.allclose(start["accuracy"], 5 / 8)
    end = curves[curves["fraction"] == 1]
    assert end["probability"].nunique() == 1  # everything removed: the same baseline image for every method
    aucs = tables["faithfulness"]
    assert set(aucs["metric"]) == {"deletion_auc", "insertion_auc", "positive_perturbation_auc", "negative_perturbation_auc"}
    assert ((aucs["ci_low"] <= aucs["value"]) & (aucs["value"] <= aucs["ci_high"])).all()
    per_image = tables["per_image"].groupby(["method", "metric"])["value"].mean()  # the AUCs are their image means
    assert np.allclose(per_image.loc[list(zip(aucs["method"], aucs["metric"]))].to_numpy(), aucs["value"].to_numpy())


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    values = np.random.default_rng(0).normal(1.0, 1.0, 400)
    low, high = bootstrap_ci(values, 2000, seed=3)
    assert (low, high) == bootstrap_ci(values, 2000, seed=3)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.15)


def test_localisation_scores_through_quantus():
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, 0:2, 0:2] = True  # object 1 covers patch (0, 0) fully
    masks[:, 1, 4:5, 4:6] = True  # object 2 covers half of patch (2, 2)
    saliency = torch.zeros(2, 4, 4)
    saliency[0, 0, 0], saliency[0, 3, 3] = 3.0, 1.0  # image 0: peak on object 1
    saliency[1, 2, 2], saliency[1, 3, 0] = 1.0, 2.0  # image 1: peak off the objects
    scores = localisation(saliency, masks, torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), (2, 2))
    assert scores["pointing_game"].tolist() == [1.0, 0.0]
    # relevance mass = sum_p r_p * coverage_p / sum_p r_p
    assert np.allclose(scores["relevance_mass"], [3 / 4, (1 * 0.5) / 3])


def test_localisation_table_summarises_the_per_image_scores_it_is_given():
    masks = torch.zeros(3, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, 0:2, 0:2] = True
    masks[:, 1, 4:8, 4:8] = True
    maps = {"a": torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(3, 4, 4)}
    maps["b"][:, 0, 0] = 1.0  # every image: all relevance on object 1's patch
    images, labels = torch.rand(3, 3, 8, 8), torch.zeros(3, dtype=torch.long)
    per_image = localisation_per_image(maps, masks, images, labels, (2, 2))
    table = localisation_table(per_image, masks, (2, 2), resamples=200, seed=3).set_index(["method", "metric"])
    for method, saliency in maps.items():  # the same numbers as scoring each method directly
        for metric, values in localisation(saliency, masks, images, labels, (2, 2)).items():
            row = table.loc[(method, metric)]
            assert row["value"] == pytest.approx(values.mean()) and row["n"] == 3
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_ci(values, 200, seed=3))
    assert table.loc[("b", "relevance_mass"), "value"] == pytest.approx(1.0)
    assert table["mask_area_share"].iloc[0] == pytest.approx((4 + 16) / 64)


def test_accuracy_vs_chance_counts_hits_with_a_wilson_interval():
    row = accuracy_vs_chance(torch.tensor([True] * 30 + [False] * 70), num_classes=4).iloc[0]
    assert row["accuracy"] == 0.3 and row["n"] == 100 and row["chance"] == 0.25
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(30, 100))
    assert row["ci_low"] < row["chance"]  # 30 of 100 on 4 classes: not distinguishable from chance


def _per_image(scores: dict[str, np.ndarray], metric: str = "deletion_auc", better: str = "lower") -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"method": method, "metric": metric, "image": np.arange(len(values)),
                                    "value": values, "better": better}) for method, values in scores.items()])


def test_compare_methods_pairs_images_and_reports_ties():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 200)  # image difficulty, shared by every method: pairing removes it
    scores = {"random": base + 0.2, "rollout": base + 0.05, "integrated_gradients": base + 0.05 + rng.normal(0, 1e-3, 200),
              "grad_cam": base + 0.3}
    table = compare_methods(_per_image(scores), resamples=500, seed=1).set_index("method")
    # lower is better: the best is the lowest mean, positive differences mean better
    best = table.loc[table["status"] == "best"].index[0]
    assert best in ("rollout", "integrated_gradients")
    assert top_group(table.reset_index(), "deletion_auc")[1:] == sorted({"rollout", "integrated_gradients"} - {best})
    assert table.loc["grad_cam", "status"] == "worse"
    # against the random order, by hand: mean of random - method, with the bootstrap CI of those differences
    difference = scores["random"] - scores["rollout"]
    assert table.loc["rollout", "vs_reference"] == pytest.approx(difference.mean())
    assert (table.loc["rollout", "vs_reference_low"], table.loc["rollout", "vs_reference_high"]) == pytest.approx(
        bootstrap_ci(difference, 500, seed=1))
    assert table.loc["grad_cam", "vs_reference_high"] < 0  # worse than random
    assert table.loc["random", "status"] == ""  # the reference is neither best nor tied
    assert table.loc[best, ["gap_to_best", "gap_low", "gap_high"]].tolist() == [0.0, 0.0, 0.0]


def test_compare_methods_best_alone_when_every_gap_excludes_zero():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 100)
    scores = {"random": base, "rollout": base + 0.1 + rng.normal(0, 0.01, 100), "cls_attention": base + 0.05}
    table = compare_methods(_per_image(scores, "pointing_game", "higher"), resamples=500)
    assert top_group(table, "pointing_game") == ["rollout"]
    gap = table.set_index("method").loc["cls_attention"]
    assert gap["gap_to_best"] == pytest.approx((scores["rollout"] - scores["cls_attention"]).mean())
    assert gap["gap_low"] > 0


def test_compare_methods_skips_images_a_method_cannot_score():
    scores = {"random": np.array([0.0, 0.0, 1.0, np.nan]), "rollout": np.array([1.0, 1.0, 1.0, 1.0])}
    table = compare_methods(_per_image(scores, "pointing_game", "higher"), resamples=100).set_index("method")
    assert table.loc["rollout", "vs_reference"] == pytest.approx(2 / 3)  # over the 3 images both score
    assert table.loc["random", "n"] == 3


def test_reference_images_are_what_their_names_say():
    pixels = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    mean_colour = pixels.mean(dim=(0, 2, 3), keepdim=True)
    assert torch.equal(reference_images("mean", pixels, mean_colour, 4), mean_colour.expand_as(pixels))
    assert torch.equal(reference_images("black", pixels, mean_colour, 4), torch.zeros_like(pixels))
    other = reference_images("other_image", pixels, mean_colour, 4)
    assert torch.equal(other[1:], pixels[:-1]) and torch.equal(other[0], pixels[-1])  # never the image itself
    blur = reference_images("blur", pixels, mean_colour, 4)
    assert blur.shape == pixels.shape and blur.var() < 0.1 * pixels.var()  # one patch's sigma wipes out the noise
    assert torch.allclose(reference_images("blur", torch.full((1, 3, 12, 12), 0.3), mean_colour, 4),
                          torch.full((1, 3, 12, 12), 0.3))  # a kernel cut to a small image still sums to 1
    with pytest.raises(ValueError, match="unknown reference image 'grey'.*expected one of"):
        reference_images("grey", pixels, mean_colour, 4)


def test_faithfulness_differs_by_fill_and_ig_gains_nothing_from_its_own_baseline():
    model = tiny_vit()
    inputs = images(6)
    with torch.no_grad():
        predicted = model(inputs).argmax(-1)
    black = torch.zeros(1, 1, 28, 28)
    maps = {"random": torch.rand(6, 7, 7, generator=torch.Generator().manual_seed(1)),
            "integrated_gradients": integrated_gradients(model, inputs, predicted, black, steps=4).patches}
    fills = {"black": black, "other_image": inputs.roll(1, 0)}
    by_fill = faithfulness_by_fill(model, inputs, predicted, predicted, maps, fills, torch.linspace(0, 1, 5),
                                   batch_size=4, ig_steps=4, resamples=100)
    for tables in by_fill.values():  # every fill scores the maps' methods and IG from that fill
        assert set(tables["faithfulness"]["method"]) == {"random", "integrated_gradients", IG_FROM_FILL}
    deletion = {name: t["per_image"].query("metric == 'deletion_auc' and method == 'random'")["value"].to_numpy()
                for name, t in by_fill.items()}
    assert not np.allclose(deletion["black"], deletion["other_image"])  # the fill changes the scores
    headline = without_method(by_fill["black"], IG_FROM_FILL)
    assert IG_FROM_FILL not in set(headline["per_image"]["method"]) and len(headline["curves"])
    sensitivity = fill_sensitivity(by_fill, resamples=100)
    assert set(sensitivity["fills"]["fill"]) == set(fills)
    assert IG_FROM_FILL not in set(sensitivity["fills"]["method"])
    gain = sensitivity["ig_baseline"].set_index(["fill", "metric"])
    # IG integrated from black is the headline IG when black is the fill: nothing gained, exactly
    assert gain.loc[("black", "deletion_auc"), "gain"] == 0 == gain.loc[("black", "insertion_auc"), "gain"]
    assert gain.loc[("other_image", "deletion_auc"), "gain"] != 0


def test_fill_sensitivity_orients_the_gain_and_brackets_it():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 50)
    per_image = pd.concat([pd.DataFrame({"method": method, "metric": "deletion_auc", "image": np.arange(50),
                                         "value": values, "better": "lower"})
                           for method, values in (("random", base + 0.2), ("integrated_gradients", base),
                                                  (IG_FROM_FILL, base - 0.1 + rng.normal(0, 0.01, 50)))])
    table = fill_sensitivity({"mean": {"per_image": per_image}}, resamples=500)["ig_baseline"].iloc[0]
    # deletion: lower is better, so IG from the fill deleting 0.1 faster is a gain of +0.1
    assert table["gain"] == pytest.approx(0.1, abs=0.01) and table["gain_low"] > 0.09 and table["gain_high"] < 0.11


def test_the_randomisation_cascade_goes_top_down_and_redraws_every_learned_parameter():
    model = tiny_vit()
    steps = cascade(model)
    assert [name for name, _ in steps] == ["head", "block 1", "block 0", "embedding"]
    covered = {id(p) for _, parts in steps for part in parts
               for p in ([part] if isinstance(part, nn.Parameter) else part.parameters())}
    assert covered == {id(p) for p in model.parameters()}  # after the last step nothing learned is left
    weight = model.blocks[0].attn.qkv.weight
    before = weight.detach().clone()
    redraw([model.blocks[0]], torch.Generator().manual_seed(0))
    assert not torch.allclose(weight, before)
    assert weight.std().item() == pytest.approx(before.std().item(), rel=0.05)  # the trained scale is kept
    assert weight.mean().item() == pytest.approx(before.mean().item(), abs=0.01)


def test_cascading_randomisation_fails_a_model_blind_method_and_passes_gradients():
    model = tiny_vit()
    inputs = images(8)
    with torch.no_grad():
        targets = model(inputs).argmax(-1)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    def maps_of(m, x, t):
        x = x.clone().requires_grad_(True)
        m(x).gather(1, t[:, None]).sum().backward()
        return {"input_only": x.detach().abs().sum(1)[:, ::4, ::4],  # ignores the model: must fail
                "gradient": x.grad.sum(1).reshape(len(x), 7, 4, 7, 4).sum((2, 4))}  # signed, summed per patch

    table = cascading_randomisation(model, inputs, targets, maps_of, seed=0, resamples=200, max_correlation=0.5)
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())  # the model itself is untouched
    last = table[table["step"] == table["step"].max()].set_index("method")
    assert last.loc["input_only", "fails"] and last.loc["input_only", "spearman"] == pytest.approx(1.0)
    assert not last.loc["gradient", "fails"] and last.loc["gradient", "ci_high"] < 0.5
    assert table["fails"].isna().sum() == 2 * (table["step"].max() - 1)  # the verdict is the last step's only


def test_explain_and_score_explains_the_prediction_from_the_ig_baseline_under_each_fill():
    """The RQ3 core that `analysis` and `analysis-seeds` share: the class explained is the model's prediction,
    Integrated Gradients integrates from `ig_baseline`'s image (black), and each fill scores every map, IG from
    that fill's image added, on the same images."""
    from lib.analysis.explained import explain_and_score
    from lib.config import load_params
    from lib.run.study import normalize
    from tests.conftest import REPO

    model = tiny_vit()
    pictures = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    settings = load_params(REPO / "params.yaml").analysis.model_copy(update={"ig_steps": 4, "perturbation_steps": 4})
    mean_colour = pictures.mean(dim=(0, 2, 3), keepdim=True)
    result = explain_and_score(model, pictures, labels, mean_colour, settings, ["mean", "other_image"], seed=0,
                               batch_size=4, resamples=50)
    with torch.no_grad():
        assert torch.equal(result.predicted, model(normalize(pictures)).argmax(-1))
    assert torch.equal(result.ig_reference, normalize(torch.zeros_like(pictures)))
    assert list(result.by_fill) == ["mean", "other_image"]
    for tables in result.by_fill.values():
        assert set(tables["faithfulness"]["method"]) == {*result.explanations.maps, IG_FROM_FILL}
        assert tables["per_image"]["image"].nunique() == len(pictures)
    deletion = [tables["per_image"].query("metric == 'deletion_auc'")["value"].to_numpy()
                for tables in result.by_fill.values()]
    assert not np.allclose(*deletion)  # another fill, another test


def test_sanity_check_randomises_the_explained_maps_on_the_first_sanity_images():
    """The sanity check that `analysis` and `analysis-seeds` share: every method of explain_and_score, on the first
    `analysis.sanity_images` images, one row per cascade step, the trained model left untouched."""
    from lib.analysis.explained import explain_and_score, sanity_check
    from lib.config import load_params
    from tests.conftest import REPO

    model = tiny_vit()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    pictures = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    settings = load_params(REPO / "params.yaml").analysis.model_copy(
        update={"ig_steps": 4, "perturbation_steps": 4, "sanity_images": 3})
    result = explain_and_score(model, pictures, torch.arange(6), pictures.mean(dim=(0, 2, 3), keepdim=True), settings,
                               ["mean"], seed=0, batch_size=4, resamples=20)
    table = sanity_check(model, pictures, result.predicted, result.ig_reference, settings, seed=0, resamples=20)
    assert set(table["method"]) == set(result.explanations.maps)
    assert (table["n"] <= 3).all() and table["n"].max() == 3  # constant maps have no rank correlation
    assert table["step"].nunique() == len(cascade(model))
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
