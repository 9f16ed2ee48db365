"""Dense prediction: pixel and patch labels, mIoU, the linear probe and the fine-tune, seed summaries, params."""
import copy

import pandas as pd
import pytest
import torch

from lib.config import Params
from lib.models import VisionTransformer
from lib.segmentation.probe import (LinearProbe, finetune_segmenter, first_objects, mean_iou, patch_features,
                                    patch_targets, pixel_labels, predict_pixels, raw_patches, relation_pixel_labels)
from lib.segmentation.study import paired_summary, seed_summary
from tests.conftest import tiny_params_dict


def test_pixel_labels_and_patch_majority_by_hand():
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True          # object 0 fills the top-left patch
    masks[0, 1, 2:, 2:3] = True         # object 1 covers half of the bottom-right patch: a tie goes to background
    masks[0, 1, 0, 2:] = True           # and a quarter of the top-right one
    labels = pixel_labels(masks)
    assert labels.tolist() == [[[1, 1, 2, 2], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 2, 0]]]
    assert patch_targets(labels, 2, 3).tolist() == [[[1, 0], [0, 0]]]
    labels[0, 3, 3] = 2                 # three quarters of the bottom-right patch
    assert patch_targets(labels, 2, 3).tolist() == [[[1, 0], [0, 2]]]


def test_relation_labels_name_the_first_object_along_the_label_axis():
    classes = ["circle_left_of_square", "circle_right_of_square", "circle_above_square", "circle_below_square"]
    first = first_objects(torch.tensor([0, 1, 2, 3]), classes, ["circle", "square"])
    assert first.tolist() == [0, 1, 0, 1]  # the circle is first when it is left of or above the square
    masks = torch.zeros(2, 2, 2, 3, dtype=torch.bool)
    masks[:, 0, 0, 0] = True  # the circle's pixel
    masks[:, 1, 1, 2] = True  # the square's pixel
    labels = relation_pixel_labels(masks, torch.tensor([0, 1]))
    assert labels[0].tolist() == [[1, 0, 0], [0, 0, 2]] and labels[1].tolist() == [[2, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="names no relation"):
        first_objects(torch.tensor([0]), ["stop"], ["sign"])


def test_raw_patches_are_each_patch_pixels():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = raw_patches(images, 2)
    assert patches.shape == (2, 2, 3, 12)
    assert torch.equal(patches[1, 1, 2], images[1, :, 2:4, 4:6].flatten())


def test_mean_iou_accumulates_over_the_set_then_averages_classes():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 2]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    # class 0: |P & T| = 2 (pixels 0, 4), |P | T| = 4 (0, 1, 4, 7); class 1: 2 / 3; class 2: 2 / 3
    assert mean_iou(predicted, target, 3) == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert mean_iou(target, target, 3) == 1.0


def test_predicted_pixels_upsample_the_patch_logits():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 5.0            # class 1 in the top-left patch only
    pixels = predict_pixels(logits, (4, 4))
    assert pixels.shape == (1, 4, 4) and pixels[0, 0, 0] == 1 and pixels[0, 3, 3] == 0


def test_the_probe_recovers_planted_classes_and_is_one_linear_layer():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (20, 3, 3), generator=generator)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    features = centres[targets] + 0.3 * torch.randn(20, 3, 3, 4, generator=generator) + 7.0  # off-centre, scaled
    probe = LinearProbe(3, inverse_regularisation=10.0).fit(features, targets)
    logits = probe.logits(features)
    assert logits.shape == (20, 3, 3, 3) and mean_iou(logits.argmax(1), targets, 3) == 1.0
    linear = probe.as_linear()  # the standardisation folded in: the fine-tune's starting head
    with torch.no_grad():
        folded = linear(features).permute(0, 3, 1, 2)
    assert torch.allclose(folded, logits, atol=1e-4)
    with pytest.raises(ValueError, match=r"no training patch of class \[2\]"):
        LinearProbe(3).fit(features, targets.clamp(max=1))


def tiny_vit(registers: int = 0) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=16, depth=1, num_heads=2,
                             reg_tokens=registers).eval()


@pytest.mark.parametrize("registers", [0, 2])
def test_patch_features_are_the_final_patch_tokens_at_any_size(registers):
    model = tiny_vit(registers)
    images = torch.rand(3, 3, 12, 20)
    features = patch_features(model, images, batch_size=2)
    assert features.shape == (3, 3, 5, 16)
    with torch.no_grad():
        tokens = model.forward_features((images - 0.5) / 0.5)
    assert torch.allclose(features[1, 2, 4], tokens[1, 1 + registers + 2 * 5 + 4], atol=1e-6)


def test_finetune_starts_from_the_probe_is_seeded_and_leaves_the_backbone_alone():
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(12, 3, 16, 16, generator=generator)
    targets = torch.randint(0, 3, (12, 4, 4), generator=generator)
    probe = LinearProbe(3).fit(patch_features(model, images), targets)
    unchanged = finetune_segmenter(model, probe, images, targets, epochs=0, lr=1e-3, batch_size=4, seed=0)
    with torch.no_grad():
        assert torch.allclose(unchanged(images), probe.logits(patch_features(model, images)), atol=1e-4)
    first = finetune_segmenter(model, probe, images, targets, epochs=2, lr=1e-3, batch_size=4, seed=0)
    again = finetune_segmenter(model, probe, images, targets, epochs=2, lr=1e-3, batch_size=4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.head.weight, unchanged.head.weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_seed_summary_and_paired_differences_by_hand():
    rows = [{"cell": f"c-{v}", "variant": v, "head": "linear probe", "grid_ratio": 1.0, "seed": s, "miou": m}
            for v, values in (("a", [0.5, 0.6, 0.7]), ("b", [0.4, 0.4, 0.5])) for s, m in enumerate(values)]
    per_seed = pd.DataFrame(rows)
    summary = seed_summary(per_seed).set_index("variant")
    assert summary.loc["a", "miou"] == pytest.approx(0.6) and summary.loc["a", "seeds"] == 3
    half = 4.302653 * 0.1 / 3 ** 0.5  # t_{0.975, 2} * sd / sqrt(n)
    assert summary.loc["a", "ci_high"] == pytest.approx(0.6 + half, rel=1e-5)
    paired = paired_summary(per_seed, [("a", "b")]).iloc[0]
    # differences 0.1, 0.2, 0.2: mean 1/6, sd 0.0577
    assert paired["difference"] == pytest.approx(1 / 6)
    assert paired["ci_low"] == pytest.approx(1 / 6 - 4.302653 * 0.0577350 / 3 ** 0.5, rel=1e-4)
    assert paired["verdict"] == "a > b"
    one_sided = pd.concat([per_seed, per_seed[per_seed["variant"] == "a"].assign(head="fine-tune")])
    assert set(paired_summary(one_sided, [("a", "b")])["head"]) == {"linear probe"}  # b has no fine-tune: no row


@pytest.mark.parametrize("change, message", [
    ({"cells": ["shapes-rrc-nope"]}, "segmentation.cells"),
    ({"seeds": [0, 7]}, r"segmentation.seeds: \[7\] not in rq1.seeds"),
    ({"seeds": [0]}, "at least 2"),
    ({"scales": [0.5, 2.0]}, "must include 1.0"),
    ({"comparisons": ["rope_mixed ape"]}, "is not 'first - second'"),
    ({"comparisons": ["rope_mixed - rope_axial"]}, "segmentation.comparisons"),
])
def test_bad_segmentation_params_name_the_key(data_root, change, message):
    raw = tiny_params_dict(data_root)
    raw["segmentation"].update(change)
    with pytest.raises(ValueError, match=message):
        Params.model_validate(raw)


def test_the_relation_task_needs_two_related_objects(data_root):
    raw = tiny_params_dict(data_root)
    raw["rq1"].update(cells=raw["rq1"]["cells"] + ["signs-rrc-ape"], protocols=["zoom"])
    raw["segmentation"].update(cells=["signs-rrc-ape"], comparisons=[])
    with pytest.raises(ValueError, match="segmentation.task: relation needs two objects"):
        Params.model_validate(raw)
    raw["segmentation"]["task"] = "objects"  # object identity works on any masks
    assert Params.model_validate(raw).segmentation.task == "objects"


def test_a_cell_on_a_data_set_without_masks_is_refused(data_root):
    raw = tiny_params_dict(data_root)
    raw["segmentation"]["cells"] = ["mnist-rrc-fire"]
    raw["segmentation"]["comparisons"] = []
    with pytest.raises(ValueError, match="mnist has no object masks"):
        Params.model_validate(raw)


def test_finetune_with_training_randomness_ignores_the_global_generator():
    """Normalised RoPE jitters its coordinates in training, from the global generator: the fine-tune seeds it, so
    the result depends on the seed only, not on what ran before (a worker's earlier jobs)."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=16, depth=1, num_heads=2,
                              pos_embed="rope_mixed_norm").eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 16, 16, generator=generator)
    targets = torch.randint(0, 3, (8, 4, 4), generator=generator)
    probe = LinearProbe(3).fit(patch_features(model, images), targets)
    runs = []
    for state in (5, 6):
        torch.manual_seed(state)
        runs.append(finetune_segmenter(model, probe, images, targets, epochs=2, lr=1e-3, batch_size=4, seed=0))
        assert torch.initial_seed() == state  # the caller's generator is restored
    assert all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()))


def test_no_cells_turns_the_stage_off_whatever_the_other_keys(data_root):
    """The paper profile lists no cells: its rq1 seeds need not cover the default segmentation seeds."""
    raw = tiny_params_dict(data_root)
    raw["segmentation"].update(cells=[], comparisons=[], seeds=[0, 7])
    assert Params.model_validate(raw).segmentation.cells == []
