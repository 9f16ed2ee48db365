"""Safety evaluation (lib/safety): corruptions, calibration, selective prediction, map reliability, signs."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.classification import multiclass_calibration_error

from lib.data import shapes
from lib.data import signs
from lib.analysis.extract import attention_maps
from lib.models import VisionTransformer
from lib.run.study import normalize
from lib.safety.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    reliability_bins,
)
from lib.safety.corruptions import (CORRUPTIONS, FAMILIES, IMAGENET_C, SEVERITIES, corrupt, corrupt_image, image_rng,
                                    length_reference, spatial_scale)
from lib.safety.maps import run_model
from lib.safety.reliability import (
    js_divergence,
    localisation,
    map_similarity,
    resolution_stability,
    spearman,
    topk_iou,
)
from lib.safety.robustness import corruption_errors, mean_corruption_error
from lib.safety.selective import (
    augrc,
    aurc,
    clopper_pearson_upper,
    excess_aurc,
    optimal_aurc,
    risk_coverage_curve,
    selective_metrics,
    threshold_for_risk,
)
from lib.safety.shift import map_rows, prediction_row

# corruptions that draw no random numbers: the seed cannot change them
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
SIZES = [(24, 24), (32, 32), (20, 44)]


def scenes_batch(n: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """n procedural shapes scenes as float images (n, C, H, W) in [0, 1] (grey when channels == 1)."""
    scenes, _ = shapes.generate_scenes(4 * math.ceil(n / 4), seed=7)
    pixels, _ = shapes.render(scenes[:n], height, width)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return images.mean(dim=1, keepdim=True) if channels == 1 else images


# ---------------------------------------------------------------------------------------------------------
# corruptions


def test_registry_covers_imagenet_c_and_occlusion():
    assert len(IMAGENET_C) == 15 and set(CORRUPTIONS) == set(IMAGENET_C) | {"occlusion"}
    assert [len(FAMILIES[f]) for f in ("noise", "blur", "weather", "digital")] == [3, 4, 4, 4]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corruption_contract(corruption):
    """Severity 0 is the identity; shape, dtype and [0, 1] kept at every size and channel count; the same
    seed gives the same bytes; another seed changes the random corruptions."""
    for height, width in SIZES:
        for channels in (1, 3):
            images = scenes_batch(2, height, width, channels)
            assert torch.equal(corrupt(images, corruption, 0, seed=0), images)
            for severity in (1, 5):
                out = corrupt(images, corruption, severity, seed=0)
                assert out.shape == images.shape and out.dtype == images.dtype
                assert out.min() >= 0 and out.max() <= 1
                assert torch.equal(out, corrupt(images, corruption, severity, seed=0))
                if corruption not in DETERMINISTIC:
                    assert not torch.equal(out, corrupt(images, corruption, severity, seed=1))
            assert not torch.equal(corrupt(images, corruption, 5, seed=0), images)


def distortions(corruption: str, images: np.ndarray, measure) -> list[float]:
    """Mean distortion of images (n, H, W, C) at severities 0..5, image i drawing from the same seed at every
    severity (paired: the severity's parameters, not a new random pattern, make the difference)."""
    return [
        float(np.mean([measure(corrupt_image(image, corruption, s, np.random.default_rng(i)), image)
                       for i, image in enumerate(images)]))
        for s in (0, *SEVERITIES)
    ]


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def ssim_loss(a: np.ndarray, b: np.ndarray) -> float:
    return 1 - structural_similarity(a, b, channel_axis=-1, data_range=1.0)


@pytest.mark.parametrize("corruption", sorted(set(CORRUPTIONS) - {"elastic_transform"}))
@pytest.mark.parametrize("size", [(24, 24), (20, 44)])
def test_severity_increases_distortion(corruption, size):
    """Distortion never decreases with severity and grows from severity 1 to 5, averaged over 12 images.

    Measure: mean absolute difference to the clean image; for frost 1 - SSIM, because frost blends the image
    (weight 1 -> 0.6) with a bright texture (weight 0.4 -> 0.75) and the darkening partly cancels the added
    frost in absolute-difference terms, while SSIM sees the growing loss of structure. elastic_transform is
    tested separately: ImageNet-C's severities 1-2 are a large affine warp and 3-5 a fine elastic one."""
    images = scenes_batch(12, *size).permute(0, 2, 3, 1).numpy()
    measure = ssim_loss if corruption == "frost" else mean_abs_difference
    distortion = distortions(corruption, images, measure)
    assert distortion[0] == 0
    assert all(b >= a - 1e-4 for a, b in zip(distortion, distortion[1:])), distortion
    assert distortion[5] > distortion[1]


def test_elastic_transform_severities():
    images = scenes_batch(12, 32, 32).permute(0, 2, 3, 1).numpy()
    distortion = distortions("elastic_transform", images, mean_abs_difference)
    assert distortion[1] < distortion[2]  # the affine part grows
    assert distortion[3] < distortion[4] < distortion[5]  # the elastic part grows
    assert min(distortion[1:]) > 0


def test_length_reference_scales_to_the_image_or_the_patch():
    """'image': s = side / 224; 'patch': s = patch / 16 at every size; both are ImageNet-C's constants (s = 1) for a
    ViT-B/16 at 224 px; an unknown scaling is named."""
    assert length_reference("image", 24, 24, 4) == 224
    assert spatial_scale(24, 24, length_reference("patch", 24, 24, 4)) == pytest.approx(0.25)
    assert spatial_scale(20, 44, length_reference("patch", 20, 44, 4)) == pytest.approx(0.25)
    assert length_reference("patch", 224, 224, 16) == pytest.approx(length_reference("image", 224, 224, 16)) == 224
    with pytest.raises(ValueError, match="'pixel'.*image, patch"):
        length_reference("pixel", 24, 24, 4)


def test_patch_lengths_blur_more_at_small_sizes_and_leave_relative_corruptions_alone():
    """At 24 px with 4 px patches the 'patch' scaling (s = 0.25) blurs more than the 'image' one (s = 0.107);
    zoom blur's factors are relative, so it is the same under both."""
    images = scenes_batch(8, 24, 24)
    image_ref, patch_ref = length_reference("image", 24, 24, 4), length_reference("patch", 24, 24, 4)
    for corruption in ("defocus_blur", "motion_blur", "glass_blur"):
        by_image = corrupt(images, corruption, 5, seed=0, reference_size=image_ref)
        by_patch = corrupt(images, corruption, 5, seed=0, reference_size=patch_ref)
        assert (by_patch - images).abs().mean() > 1.5 * (by_image - images).abs().mean(), corruption
    assert torch.equal(corrupt(images, "zoom_blur", 5, seed=0, reference_size=image_ref),
                       corrupt(images, "zoom_blur", 5, seed=0, reference_size=patch_ref))


def test_corruption_of_a_subset_matches_the_full_batch():
    images = scenes_batch(6, 24, 24)
    full = corrupt(images, "shot_noise", 2, seed=5)
    subset = corrupt(images[[4, 1]], "shot_noise", 2, seed=5, indices=[4, 1])
    assert torch.equal(subset, full[[4, 1]])


def test_occlusion_covers_the_requested_area():
    image = np.zeros((40, 40, 3))
    out = corrupt_image(image, "occlusion", 5, image_rng(0, "occlusion", 5, 0))  # 40% of the area
    changed = (out != image).any(axis=-1).mean()
    assert changed == pytest.approx(0.4, abs=0.05)


def test_corrupt_image_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(np.zeros((8, 8, 3)), "rain", 1, image_rng(0, "rain", 1, 0))
    with pytest.raises(ValueError, match="severity"):
        corrupt_image(np.zeros((8, 8, 3)), "fog", 6, image_rng(0, "fog", 6, 0))
    with pytest.raises(ValueError, match="float"):
        corrupt_image(np.zeros((8, 8, 2)), "fog", 1, image_rng(0, "fog", 1, 0))


# ---------------------------------------------------------------------------------------------------------
# calibration


def test_ece_of_a_calibrated_predictor_is_near_zero():
    """Labels drawn from the predicted probabilities: calibrated by construction."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((5,), 0.5)).sample((200_000,)).double()
    labels = torch.multinomial(probs.float(), 1, generator=generator)[:, 0]
    assert expected_calibration_error(probs, labels) < 0.005


def test_ece_matches_hand_computed_value():
    # 10 samples at confidence 0.9 with 6 correct, 10 at 0.55 with 5 correct:
    # ECE = 10/20 * |0.6 - 0.9| + 10/20 * |0.5 - 0.55| = 0.175
    high = torch.tensor([[0.9, 0.05, 0.05]]).repeat(10, 1)
    low = torch.tensor([[0.55, 0.25, 0.20]]).repeat(10, 1)
    probs = torch.cat([high, low]).double()
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 5 + [2] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.175, abs=1e-6)
    bins = reliability_bins(probs, labels)
    assert bins["count"].sum() == 20 and bins["count"][13] == 10 and bins["count"][8] == 10
    assert bins["accuracy"][13] == pytest.approx(0.6) and bins["confidence"][8] == pytest.approx(0.55)


def test_reliability_bins_give_torchmetrics_ece():
    """sum_m |B_m| / n |acc - conf| over our bins equals torchmetrics' ECE (no confidence at exactly 1)."""
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(5000, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (5000,), generator=generator)
    probs = probabilities(logits)
    bins = reliability_bins(probs, labels)
    filled = bins["count"] > 0
    from_bins = (bins["count"][filled] / 5000 * (bins["accuracy"][filled] - bins["confidence"][filled]).abs()).sum()
    reference = multiclass_calibration_error(probs, labels, num_classes=7, n_bins=15, norm="l1")
    assert from_bins.item() == pytest.approx(reference.item(), abs=1e-6)


def test_nll_and_brier_known_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # probabilities (1/2, 1/2) and (3/4, 1/4)
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(logits, labels) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    # Brier: (0.25 + 0.25 + 0.0625 + 0.0625) / 2
    assert brier_score(probabilities(logits), labels) == pytest.approx(0.3125)


def test_temperature_scaling_repairs_overconfidence():
    generator = torch.Generator().manual_seed(2)
    true_logits = torch.randn(20_000, 4, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(true_logits, -1).float(), 1, generator=generator)[:, 0]
    overconfident = 3 * true_logits
    temperature = fit_temperature(overconfident[:10_000], labels[:10_000])
    assert temperature == pytest.approx(3.0, rel=0.1)
    held_out = overconfident[10_000:], labels[10_000:]
    assert negative_log_likelihood(*held_out, temperature) < negative_log_likelihood(*held_out) - 0.1
    assert (expected_calibration_error(probabilities(held_out[0], temperature), held_out[1])
            < expected_calibration_error(probabilities(held_out[0]), held_out[1]))


# ---------------------------------------------------------------------------------------------------------
# selective prediction


def test_aurc_of_a_perfect_ranking_is_optimal():
    correct = torch.tensor([True] * 7 + [False] * 3)
    confidence = torch.linspace(1, 0, 10)  # every correct sample ranked first
    assert aurc(confidence, correct) == pytest.approx(optimal_aurc(correct))
    # by hand: ranks 8, 9, 10 hold 1, 2, 3 errors
    assert optimal_aurc(correct) == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 10)
    assert excess_aurc(confidence, correct) == pytest.approx(0.0, abs=1e-12)
    assert excess_aurc(confidence.flip(0), correct) > 0.3  # errors ranked first


def test_tied_scores_give_the_expected_curve():
    """With one shared score the expected risk is the error rate at every coverage."""
    correct = torch.tensor([True, False, True, True])
    curve = risk_coverage_curve(torch.full((4,), 0.5), correct)
    assert torch.allclose(curve.risk, torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(curve.coverage, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_threshold_for_target_risk():
    confidence = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    correct = torch.tensor([True, True, True, False, True, False])
    assert threshold_for_risk(confidence, correct, 0.0) == pytest.approx(0.9)
    threshold = threshold_for_risk(confidence, correct, 0.2)
    assert threshold == pytest.approx(0.7)  # 1 error in the top 5; the top 6 hold 2
    assert threshold_for_risk(confidence, correct, 0.0, upper_bound=True) == math.inf  # 3 samples prove nothing
    chosen = selective_metrics(confidence, correct, threshold)
    assert chosen["coverage"] == pytest.approx(5 / 6) and chosen["selective_risk"] == pytest.approx(0.2)
    assert math.isnan(selective_metrics(confidence, correct, math.inf)["selective_risk"])
    assert chosen["errors"] == 1 and chosen["accepted"] == 5
    assert chosen["risk_upper"] == pytest.approx(clopper_pearson_upper(1, 5))


def test_clopper_pearson_upper_bound_matches_the_exact_binomial_interval():
    from scipy.stats import binomtest

    assert clopper_pearson_upper(0, 44) == pytest.approx(1 - 0.025 ** (1 / 44))  # closed form at 0 errors
    assert clopper_pearson_upper(0, 44) == pytest.approx(0.0804, abs=1e-4)  # "0 errors in 44 still allow 8%"
    for errors, n in ((1, 5), (3, 60), (17, 200)):
        exact = binomtest(errors, n).proportion_ci(confidence_level=0.95, method="exact").high
        assert clopper_pearson_upper(errors, n) == pytest.approx(exact)
    assert clopper_pearson_upper(5, 5) == 1.0 and clopper_pearson_upper(0, 0) == 1.0
    with pytest.raises(ValueError, match="errors must be in"):
        clopper_pearson_upper(6, 5)


def test_threshold_with_the_bound_needs_enough_accepted_samples():
    """60 correct then errors: the plain rule accepts 60 at a 0% target; the bound needs the 0-error bound
    (1 - 0.025^(1/n)) at or below the target, so a 10% target accepts all 60 (bound 5.8%) and a 5% one none."""
    confidence = torch.linspace(1.0, 0.0, 100, dtype=torch.float64)
    correct = torch.arange(100) < 60
    assert threshold_for_risk(confidence, correct, 0.0) == pytest.approx(confidence[59].item())
    assert threshold_for_risk(confidence, correct, 0.05, upper_bound=True) == math.inf
    loose = threshold_for_risk(confidence, correct, 0.10, upper_bound=True)
    accepted = int((confidence >= loose).sum())
    assert clopper_pearson_upper(0, 60) <= 0.10 and accepted >= 60
    assert clopper_pearson_upper(accepted - 60, accepted) <= 0.10 < clopper_pearson_upper(accepted - 59, accepted + 1)


def test_augrc_is_the_mean_generalized_risk_and_vanishes_for_a_perfect_ranking():
    confidence = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    # errors among the top k: 0, 1, 1, 2 -> generalized risk k-wise 0, 1/4, 1/4, 2/4
    correct = torch.tensor([True, False, True, False])
    assert augrc(confidence, correct) == pytest.approx((0 + 0.25 + 0.25 + 0.5) / 4)
    assert augrc(confidence, torch.tensor([True, True, False, False])) == pytest.approx((0 + 0 + 0.25 + 0.5) / 4)
    assert augrc(torch.full((4,), 0.5), correct) == pytest.approx((0.125 + 0.25 + 0.375 + 0.5) / 4)  # ties: expected
    assert augrc(confidence, torch.zeros(4, dtype=torch.bool)) == pytest.approx((1 + 2 + 3 + 4) / 16)


# ---------------------------------------------------------------------------------------------------------
# map reliability


def reversed_ordering(maps: torch.Tensor) -> torch.Tensor:
    """The same values with the ranking reversed: the largest where the smallest was."""
    flat = maps.flatten(1)
    order = flat.argsort(dim=1)
    values = flat.gather(1, order)
    return torch.zeros_like(flat).scatter(1, order.flip(1), values).view_as(maps)


def test_map_similarity_extremes():
    maps = torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(3))
    same = map_similarity(maps, maps)
    assert torch.allclose(same["topk_iou"], torch.ones(5, dtype=torch.float64))
    assert torch.allclose(same["spearman"], torch.ones(5, dtype=torch.float64))
    assert torch.allclose(same["js_divergence"], torch.zeros(5, dtype=torch.float64), atol=1e-12)
    worst = map_similarity(maps, reversed_ordering(maps))
    assert torch.equal(worst["topk_iou"], torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(worst["spearman"], -torch.ones(5, dtype=torch.float64))
    nearby = map_similarity(maps, maps + 0.05 * torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(4)))
    assert (worst["js_divergence"] > nearby["js_divergence"]).all()


def test_js_divergence_in_bits():
    a, b = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    a[0, 0, 0], b[0, 1, 1] = 1.0, 1.0
    assert js_divergence(a, b).item() == pytest.approx(1.0)  # disjoint supports: ln 2 nats = 1 bit
    assert topk_iou(a, b, fraction=0.25).item() == 0.0


def test_resolution_stability_of_one_smooth_map():
    def smooth(size: int) -> torch.Tensor:
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return torch.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.05)[None]

    stability = resolution_stability(smooth(6), smooth(12))
    assert stability["spearman"].item() > 0.95 and stability["js_divergence"].item() < 0.01
    assert spearman(smooth(6), smooth(6)).item() == pytest.approx(1.0)


def test_localisation_on_a_mask():
    masks = torch.zeros(2, 1, 24, 24, dtype=torch.bool)
    masks[:, :, :8, :8] = True  # the top-left 2 x 2 patches of a 6 x 6 grid
    on_object = torch.zeros(2, 6, 6)
    on_object[:, :2, :2] = 1.0
    uniform = torch.ones(2, 6, 6)
    hit, flat = localisation(on_object, masks), localisation(uniform, masks)
    assert torch.allclose(hit["relevance_mass"], torch.ones(2, dtype=torch.float64))
    assert torch.equal(hit["pointing_game"], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(flat["relevance_mass"], torch.full((2,), 4 / 36, dtype=torch.float64))
    assert torch.allclose(flat["mask_share"], torch.full((2,), 4 / 36, dtype=torch.float64))
    off = torch.zeros(2, 6, 6)
    off[:, 5, 5] = 1.0
    assert torch.equal(localisation(off, masks)["pointing_game"], torch.zeros(2, dtype=torch.float64))


def test_maps_and_rows_from_a_model():
    model = VisionTransformer(img_size=24, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=2,
                              num_heads=2, pos_embed="rope_mixed").eval()
    images = scenes_batch(8, 24, 24)
    labels = torch.arange(8) % 4
    outputs = run_model(model, images, batch_size=5)
    assert outputs.logits.shape == (8, 4)
    assert {k: tuple(v.shape) for k, v in outputs.maps.items()} == {"cls_attention": (8, 6, 6), "rollout": (8, 6, 6)}
    assert torch.allclose(outputs.logits, run_model(model, images, with_maps=False).logits, atol=1e-5)
    row = prediction_row(outputs.logits, labels, 1.5, {"target": 0.5})
    assert 0 <= row["accuracy"] <= 1 and row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert row["aurc"] >= optimal_aurc(outputs.logits.argmax(-1) == labels) - 1e-12
    masks = torch.zeros(8, 1, 24, 24, dtype=torch.bool)
    masks[:, :, 4:12, 4:12] = True
    rows = pd.DataFrame(map_rows(outputs.maps, outputs.maps, masks, 0.2))
    spearman_rows = rows[rows["metric"] == "spearman"]
    assert len(spearman_rows) == 2 and np.allclose(spearman_rows["mean"], 1.0)


def test_sink_mass_and_rollout_stability_of_a_model():
    model = VisionTransformer(img_size=24, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=2,
                              num_heads=2, pos_embed="rope_mixed").eval()
    images = scenes_batch(8, 24, 24)
    plain = run_model(model, images, batch_size=5)
    assert plain.stability is None  # not asked for: no second pass
    with torch.no_grad():
        maps = attention_maps(model, normalize(images)).maps
    assert torch.allclose(plain.sink, maps[:, -1, :, 0, 0].mean(dim=1))  # CLS to itself, the one prefix token
    assert ((plain.sink > 0) & (plain.sink < 1)).all()
    tiny = run_model(model, images, batch_size=5, stability_noise=1e-6, seed=3)
    strong = run_model(model, images, batch_size=5, stability_noise=0.5, seed=3)
    assert (tiny.stability > 0.99).all() and strong.stability.mean() < tiny.stability.mean() - 0.05
    assert torch.equal(strong.logits, plain.logits) and torch.equal(strong.sink, plain.sink)  # the clean pass unchanged
    # one noise draw per call, from the seed: the same signal whatever the batch size; another seed, another draw
    assert torch.allclose(run_model(model, images, batch_size=8, stability_noise=0.5, seed=3).stability, strong.stability)
    assert not torch.equal(run_model(model, images, batch_size=5, stability_noise=0.5, seed=4).stability, strong.stability)


# ---------------------------------------------------------------------------------------------------------
# corruption errors


def error_table(errors: dict[str, list[float]], clean: float) -> pd.DataFrame:
    rows = [{"shift": "clean", "severity": 0, "error": clean}]
    rows += [{"shift": name, "severity": s + 1, "error": e} for name, values in errors.items() for s, e in enumerate(values)]
    return pd.DataFrame(rows)


def test_corruption_error_and_relative_ce():
    model = error_table({"fog": [0.2, 0.3], "occlusion": [0.5, 0.5]}, clean=0.1)
    base = error_table({"fog": [0.4, 0.6], "occlusion": [0.5, 0.5]}, clean=0.2)
    rows = corruption_errors(model, base).set_index("shift")
    assert rows.loc["fog", "ce"] == pytest.approx(0.5 / 1.0)
    assert rows.loc["fog", "relative_ce"] == pytest.approx((0.1 + 0.2) / (0.2 + 0.4))
    summary = mean_corruption_error(rows.reset_index())
    assert summary["mce"] == pytest.approx(0.5) and summary["corruptions"] == 1  # occlusion not in the mCE
    assert math.isnan(mean_corruption_error(corruption_errors(model))["mce"])


# ---------------------------------------------------------------------------------------------------------
# signs data set


def test_signs_generation_is_byte_deterministic_and_balanced():
    scenes, labels = signs.generate_scenes(203, seed=11)
    again, labels_again = signs.generate_scenes(203, seed=11)
    assert scenes.tobytes() == again.tobytes() and np.array_equal(labels, labels_again)
    counts = np.bincount(labels, minlength=len(signs.CLASSES))
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(signs.scene_labels(scenes), labels)
    images, masks = signs.render(scenes[:40], 32, 32)
    images_again, masks_again = signs.render(again[:40], 32, 32)
    assert images.tobytes() == images_again.tobytes() and masks.tobytes() == masks_again.tobytes()
    assert images.dtype == np.uint8 and images.shape == (40, 32, 32, 3) and masks.shape == (40, 1, 32, 32)
    assert not np.array_equal(signs.generate_scenes(203, seed=12)[0], scenes)


def test_signs_masks_are_non_empty_and_on_the_sign():
    scenes, _ = signs.generate_scenes(160, seed=13)
    _, masks = signs.render(scenes, 32, 32)
    assert masks.reshape(len(masks), -1).sum(1).min() >= 4
    # every mask pixel lies within the sign's circumscribed circle (+1 px for the pixel's extent)
    rows, cols = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
    centre_x = scenes[:, signs.COLUMN["sign_x"], None, None] * 32
    centre_y = scenes[:, signs.COLUMN["sign_y"], None, None] * 32
    radius = scenes[:, signs.COLUMN["sign_radius"], None, None] * 32
    distance = np.hypot(cols - centre_x, rows - centre_y)
    assert (distance[masks[:, 0]] <= np.broadcast_to(radius, distance.shape)[masks[:, 0]] + 1).all()


def test_signs_rerendered_at_twice_the_resolution_keep_their_masks():
    scenes, _ = signs.generate_scenes(80, seed=14)
    _, small = signs.render(scenes, 32, 32)
    _, large = signs.render(scenes, 64, 64)
    pooled = large[:, 0].reshape(80, 32, 2, 32, 2).mean(axis=(2, 4)) >= 0.5
    overlap = (pooled & small[:, 0]).sum((1, 2)) / (pooled | small[:, 0]).sum((1, 2))
    assert overlap.mean() > 0.85 and overlap.min() > 0.6


def test_signs_module_contract():
    assert signs.SYNTHETIC is True and "SYNTHETIC" in signs.__doc__ and "SYNTHETIC" in signs.DESCRIPTION
    assert len(signs.CLASSES) >= 6 and signs.IN_CHANS == 3 and signs.NATIVE_RESOLUTION == (32, 32)
    assert set(signs.STYLES) == set(signs.CLASSES) and signs.HAS_MASKS
    assert len({signs.STYLES[c][:3] + signs.STYLES[c][4:] for c in signs.CLASSES}) == len(signs.CLASSES)


# ---------------------------------------------------------------------------------------------------------
# across models: the trust decision


def _summary_row(variant: str, clean_risk: float, shift_risk: float, shift_coverage: float) -> dict:
    """Upper bounds 0.01 above the risks (as from many accepted images)."""
    return {"run": f"signs-{variant}", "dataset": "signs", "variant": variant, "target_risk": 0.05,
            "temperature": 1.2, "threshold": 0.9, "clean_accuracy": 0.9, "corrupted_accuracy": 0.7,
            "clean_ece_ts": 0.02, "shift_ece_ts": 0.05, "clean_coverage": 0.8, "clean_accepted": 800,
            "clean_risk": clean_risk, "clean_risk_upper": clean_risk + 0.01, "shift_coverage": shift_coverage,
            "shift_risk": shift_risk, "shift_risk_upper": shift_risk + 0.01, "worst_shift_risk": shift_risk,
            "shift_eaurc": 0.01}


def test_recommendation_trusts_the_variant_that_answers_most_within_the_risk():
    from lib.safety.summary import recommendation

    rows = pd.DataFrame([_summary_row("ape", 0.01, 0.04, 0.5), _summary_row("rope_mixed", 0.02, 0.03, 0.6),
                         _summary_row("rope_axial", 0.01, 0.09, 0.9)])  # answers most, but too risky under shift
    text = recommendation(rows, moderate_severity=3)
    assert "trust **rope_mixed**" in text and "2 of 3 variants meet the rule" in text and "ape (50.0%)" in text
    none = recommendation(rows.assign(shift_risk_upper=0.2), moderate_severity=3)
    assert none.startswith("**signs**: no variant keeps the 95% upper bound of its selective risk at or below 5.0%")
    # a risk of 0 on few accepted images is no guarantee: the bound, not the point estimate, decides
    few = recommendation(rows.assign(clean_risk=0.0, clean_accepted=44, clean_risk_upper=0.080), moderate_severity=3)
    assert "no variant keeps the 95% upper bound" in few and "44 images answered" in few
    unreachable = recommendation(rows.assign(threshold=np.inf), moderate_severity=3)
    assert unreachable.startswith("**signs**: no variant reaches a selective risk of 5.0% at any confidence threshold")
    assert "nan" not in unreachable and "inf" not in unreachable
