"""RQ1's building blocks: scale augmentation, the field-of-view protocol, test-time RoPE rescalings, the seed
statistics, and the tables built from them."""
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from lib.config import AugmentParams
from lib.data import load_scenes, scene_image_set
from lib.data.augment import random_affine, random_resized_crop
from lib.data.shapes import widen_field_of_view
from lib.extrapolation.crops import crop_label_noise, crop_lines, crop_visibility, object_masks
from lib.extrapolation.figures import plot_accuracy_vs_scale, plot_entropy_vs_scale, plot_rescalings
from lib.extrapolation.protocols import centre_on_canvas, load_scaled_set, scaled_grid
from lib.extrapolation.stability import (compare_verdicts, float_check_lines, main as stability_main, rerun as stability_rerun,
                                         stability_lines, with_replication, write_float_check)
from lib.extrapolation.study import cell_params, scale_plan
from lib.extrapolation.summary import findings, heo_ordering, paired_table, seed_table, unconverged
from lib.layers.rope import RopeMixed
from lib.layers.rope_rescale import RopeRescaled, periods_over_grid, ramp_weights, rescale_factors
from lib.models import VisionTransformer
from lib.run.train import augment
from lib.stats import paired_difference, t_interval, verdict


def ramp_images(n: int = 4, size: int = 24) -> torch.Tensor:
    """Images whose value is the pixel centre's x coordinate in [0, 1]."""
    x = (torch.arange(size) + 0.5) / size
    return x.view(1, 1, 1, size).expand(n, 1, size, size).contiguous()


def test_resized_crop_is_deterministic_per_generator_and_zooms_in():
    images = ramp_images(64)
    first = random_resized_crop(images, (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(3))
    again = random_resized_crop(images, (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(3))
    other = random_resized_crop(images, (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # each output row spans the crop box's width of the ramp: between sqrt(0.25 * 0.75) and 1 of the image
    span = first[:, 0, 0, -1] - first[:, 0, 0, 0]
    assert span.min() > 0.4 * 23 / 24 - 1e-4 and span.max() <= 23 / 24 + 1e-4
    assert span.min() < 0.8  # some crops zoom in markedly (2x at a quarter of the area)


def test_resized_crop_of_the_whole_image_is_the_identity():
    images = torch.rand(3, 3, 16, 16)
    same = random_resized_crop(images, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(same, images, atol=1e-5)


def test_crop_draws_split_across_processes_like_one_batch():
    images = torch.rand(8, 1, 12, 12)
    whole = random_resized_crop(images, (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(1))
    even = random_resized_crop(images[0::2], (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(1),
                               batch=8, rows=slice(0, None, 2))
    assert torch.allclose(whole[0::2], even, atol=1e-6)


def test_augment_picks_crops_only_where_crop_area_is_set():
    images = torch.rand(4, 1, 12, 12)
    light = augment(images, AugmentParams(translate=0.05, scale=0.05), torch.Generator().manual_seed(0), 4, slice(None))
    assert torch.equal(light, random_affine(images, 0.05, 0.05, torch.Generator().manual_seed(0)))
    crops = augment(images, AugmentParams(crop_area=[0.25, 1.0]), torch.Generator().manual_seed(0), 4, slice(None))
    assert torch.equal(crops, random_resized_crop(images, (0.25, 1.0), (0.75, 1.3333), torch.Generator().manual_seed(0)))


def test_field_of_view_keeps_object_pixel_size_and_labels(data_root):
    scenes, labels = load_scenes(data_root, "shapes", "test")
    scenes, labels = scenes[:16], labels[:16]
    base = scene_image_set("shapes", scenes, labels, 24)
    for factor, size in ((2, 48), (4, 96)):
        wide = scene_image_set("shapes", widen_field_of_view(scenes, factor), labels, size)
        area_base = base.masks.flatten(2).sum(-1).float()  # (N, objects) pixels per object
        area_wide = wide.masks.flatten(2).sum(-1).float()
        assert torch.allclose(area_wide, area_base, rtol=0.25, atol=3), (factor, area_base[:2], area_wide[:2])
        assert (area_wide - area_base).abs().mean() < 1.5  # anti-aliasing moves a pixel or so at the edges
        # the original view sits in the centre of the wider canvas: the same picture up to pixel noise
        offset = (size - 24) // 2
        centre = wide.images[:, :, offset:offset + 24, offset:offset + 24]
        assert (centre - base.images).abs().mean() < 0.03
        # zoom makes the objects factor^2 larger in pixels, which is what field of view avoids
        zoomed = scene_image_set("shapes", scenes, labels, size)
        assert (zoomed.masks.flatten(2).sum(-1).float() / area_base.clamp(min=1)).median() > factor ** 2 * 0.8


def test_mnist_field_of_view_places_the_digit_in_the_centre(data_root):
    wide = load_scaled_set(data_root, "mnist", 28, 56, "field_of_view", limit=5)
    plain = load_scaled_set(data_root, "mnist", 28, 28, "zoom", limit=5)
    assert wide.images.shape[-1] == 56 and torch.equal(wide.images[:, :, 14:42, 14:42], plain.images)
    assert wide.images[:, :, :14].abs().sum() == 0 and torch.equal(wide.labels, plain.labels)
    assert torch.equal(centre_on_canvas(torch.ones(1, 1, 2, 2), 5)[0, 0].sum(0), torch.tensor([0., 2., 2., 0., 0.]))


@pytest.mark.parametrize("dataset,resolution,protocol,words", [
    ("shapes", 12, "field_of_view", "smaller than the training resolution"),
    ("signs", 48, "field_of_view", "defined for"),
    ("shapes", 48, "stretch", "unknown protocol 'stretch'"),
])
def test_bad_protocol_requests_fail_clearly(data_root, dataset, resolution, protocol, words):
    with pytest.raises(ValueError, match=words):
        load_scaled_set(data_root, dataset, 24, resolution, protocol, limit=2)


def test_scaled_grids_round_to_whole_patches():
    assert [scaled_grid(7, s) for s in (0.5, 0.75, 1.0, 1.5, 2.0, 4.0)] == [4, 5, 7, 10, 14, 28]
    assert [scaled_grid(6, s) for s in (0.5, 0.75, 1.0, 1.5, 2.0, 4.0)] == [3, 4, 6, 9, 12, 24]


def rope_model(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=24, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=2, num_heads=2,
                             pos_embed="rope_mixed").eval()


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn"])
def test_each_rescaling_is_rope_mixed_at_the_training_grid_and_differs_elsewhere(method):
    model, images, big = rope_model(), torch.rand(2, 3, 24, 24), torch.rand(2, 3, 48, 48)
    trained = model.rope
    with torch.no_grad():
        plain, plain_big = model(images), model(big)
        model.rope = RopeRescaled(trained, (6, 6), method)
        assert torch.equal(model(images), plain)  # bit for bit
        assert not torch.allclose(model(big), plain_big)  # a 12x12 grid is rescaled
    assert torch.equal(rescale_factors(trained.freqs, (6, 6), (6, 6), method), torch.ones_like(trained.freqs))
    factors = rescale_factors(trained.freqs, (6, 6), (12, 12), method)
    assert not torch.allclose(factors, torch.ones_like(factors))


def test_rescaling_formulas():
    freqs = RopeMixed(head_dim=16, num_heads=2, depth=1).freqs.detach()  # P = 8 pairs, K = 4 magnitudes per axis
    pi = rescale_factors(freqs, (6, 6), (12, 24), "pi")
    assert torch.allclose(pi[0], torch.full_like(pi[0], 0.25)) and torch.allclose(pi[1], torch.full_like(pi[1], 0.5))
    ntk = rescale_factors(freqs, (6, 6), (12, 12), "ntk")  # s^(k / (K - 1)), k = pair index mod K
    expected = torch.tensor([0.5 ** (k / 3) for k in (0, 1, 2, 3, 0, 1, 2, 3)])
    assert torch.allclose(ntk[0, 0, 0], expected) and torch.allclose(ntk[1, 0, 1], expected)
    # downscaling: the ratio exceeds 1
    assert torch.allclose(rescale_factors(freqs, (6, 6), (3, 3), "pi"), torch.full_like(freqs, 2.0))
    # YaRN: components under alpha periods over the training grid are interpolated exactly like PI, fast ones kept
    slow = torch.full((2, 1, 1, 4), 0.1)  # 6 * 0.1 / 2pi < 1 period
    fast = torch.full((2, 1, 1, 4), 3.0)  # 6 * 3 / 2pi > 2 periods
    assert torch.equal(rescale_factors(slow, (6, 6), (12, 12), "yarn"), rescale_factors(slow, (6, 6), (12, 12), "pi"))
    assert torch.equal(rescale_factors(fast, (6, 6), (12, 12), "yarn"), torch.ones_like(fast))
    assert torch.equal(ramp_weights(slow, (6, 6)), torch.zeros_like(slow))
    # periods over a 4-row x 8-column grid: x turns f * 8 / 2pi times across the width, y f * 4 / 2pi down the height
    turns = periods_over_grid(torch.full((2, 1, 1, 1), math.pi / 2), (4, 8))
    assert torch.allclose(turns.flatten(), torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="unknown rescaling 'linear'"):
        rescale_factors(freqs, (6, 6), (12, 12), "linear")


def test_t_interval_and_paired_difference_by_hand():
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.302653
    assert mean == 2.0 and math.isclose(high - mean, 4.302653 / math.sqrt(3), rel_tol=1e-6)
    # diffs 0.1, 0.0, 0.1: mean 0.0667, sd 0.0577, half-width 4.302653 * 0.0577 / sqrt(3) = 0.1434
    diff = paired_difference({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.5}, {0: 0.8, 1: 0.8, 2: 0.6})
    assert diff["seeds"] == 3 and math.isclose(diff["difference"], 0.2 / 3)
    assert math.isclose(diff["ci_high"] - diff["difference"], 4.302653 * math.sqrt(1 / 300) / math.sqrt(3), rel_tol=1e-5)
    assert verdict(diff, "a", "b") == "no difference detected"
    steady = paired_difference({0: 0.9, 1: 0.85, 2: 0.8}, {0: 0.7, 1: 0.66, 2: 0.62})
    assert verdict(steady, "a", "b") == "a > b" and verdict(paired_difference({0: 0.1, 1: 0.2, 2: 0.15}, {0: 0.5, 1: 0.7, 2: 0.6}), "a", "b") == "a < b"
    assert verdict(paired_difference({0: 0.9}, {0: 0.1}), "a", "b").startswith("not testable")


def synthetic_accuracy() -> pd.DataFrame:
    """Three encodings x 4 seeds at scales 1 and 2: RoPE-Mixed beats RoPE-Axial by 0.1 at 2x on every seed,
    RoPE-Axial and APE differ by noise only."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        noise = rng.normal(0, 0.05)
        for variant, at2 in (("ape", 0.5 + noise), ("rope_axial", 0.5 + noise + rng.normal(0, 0.05)), ("rope_mixed", 0.6 + noise)):
            for scale, value in ((1.0, 0.95), (2.0, at2)):
                rows.append({"cell": f"shapes-rrc-{variant}", "dataset": "shapes", "train_grid": 6, "augmentation": "rrc", "variant": variant,
                             "method": "trained", "protocol": "zoom", "scale": scale, "grid": int(6 * scale),
                             "resolution": int(24 * scale), "grid_ratio": scale, "seed": seed, "accuracy": value, "n": 200})
    return pd.DataFrame(rows)


def test_paired_table_pairs_by_seed_and_names_only_supported_differences():
    accuracy = synthetic_accuracy()
    paired = paired_table(accuracy)
    row = paired[(paired["first"] == "rope_mixed") & (paired["second"] == "ape") & (paired["scale"] == 2.0)].iloc[0]
    assert row["seeds"] == 4 and math.isclose(row["difference"], 0.1) and row["verdict"] == "rope_mixed > ape"
    mixed_axial = paired[(paired["first"] == "rope_mixed") & (paired["second"] == "rope_axial") & (paired["scale"] == 2.0)].iloc[0]
    at_one = paired[(paired["first"] == "rope_axial") & (paired["second"] == "ape") & (paired["scale"] == 1.0)].iloc[0]
    assert at_one["difference"] == 0 and at_one["verdict"] == "not testable (fewer than 2 seeds)" or \
        at_one["verdict"] == "no difference detected"
    ordering = heo_ordering(paired)
    assert len(ordering) == 1 and ordering["ordering"].iloc[0] in ("holds", "not shown (an interval includes 0)")
    assert (ordering["ordering"].iloc[0] == "holds") == (mixed_axial["ci_low"] > 0 and
        paired[(paired["first"] == "rope_axial") & (paired["scale"] == 2.0)]["ci_low"].iloc[0] > 0)
    seeds = seed_table(accuracy)
    one = seeds[(seeds["variant"] == "rope_mixed") & (seeds["scale"] == 2.0)].iloc[0]
    assert one["seeds"] == 4 and math.isclose(one["accuracy"], accuracy.query("variant == 'rope_mixed' and scale == 2.0")["accuracy"].mean())
    assert one["ci_low"] < one["accuracy"] < one["ci_high"] and one["wilson_low"] < one["accuracy"] < one["wilson_high"]


def test_cells_far_below_the_best_at_the_training_resolution_are_flagged():
    accuracy = synthetic_accuracy()
    slow = accuracy["variant"] == "ape"
    accuracy.loc[slow & (accuracy["scale"] == 1.0), "accuracy"] = 0.6  # APE learned far less than the others
    seeds = seed_table(accuracy)
    flagged = unconverged(seeds)
    assert list(flagged["variant"]) == ["ape"] and flagged["best"].iloc[0] == pytest.approx(0.95)
    lines = findings(seeds, paired_table(accuracy), pd.DataFrame())
    assert any(line.startswith("**shapes: under-trained at this budget**") and "rrc/ape 60.0%" in line
               for line in lines)
    assert unconverged(seed_table(synthetic_accuracy())).empty


def test_a_cell_with_its_own_training_grid_trains_and_is_tested_on_that_grid(tiny_params):
    params = tiny_params.model_copy(update={"rq1": tiny_params.rq1.model_copy(update={"scales": [0.5, 1.0, 2.0, 4.0],
                                                                                       "max_test_grid": 12})})
    assert params.rq1.parse("shapes-rrc-ape-g5") == ("shapes", "rrc", "ape", 5)
    assert params.rq1.parse("shapes-rrc-ape").train_grid is None
    seeded = cell_params(params, "shapes-rrc-ape-g5", seed=3)
    patch = params.model_for("ape", "shapes").patch_size
    assert seeded.seed == 3 and seeded.datasets["shapes"].train_resolution == 5 * patch
    assert seeded.datasets["shapes"].train["augment"]["crop_area"] == params.rq1.augmentations["rrc"].crop_area
    plan = scale_plan(seeded, "shapes-rrc-ape-g5")
    # 4x (a 20x20 grid) lies above max_test_grid = 12: skipped; the rest keep their scale and report the 5x5 grid
    assert [(p["protocol"], p["grid"]) for p in plan] == [("zoom", scaled_grid(5, 0.5)), ("zoom", 5), ("zoom", 10), ("field_of_view", 5),
                                                          ("field_of_view", 10)]
    assert {p["train_grid"] for p in plan} == {5} and all(p["resolution"] == p["grid"] * patch for p in plan)
    default = scale_plan(cell_params(params, "shapes-rrc-ape", seed=0), "shapes-rrc-ape")
    train_grid = params.datasets["shapes"].train_resolution // patch
    assert {p["train_grid"] for p in default} == {train_grid}


def test_training_grids_are_compared_paired_at_equal_scale():
    small = synthetic_accuracy()
    big = small[small["variant"] != "rope_axial"].copy()  # the larger grid trains APE and RoPE-Mixed only
    big["train_grid"] = 9
    big.loc[big["scale"] == 2.0, "accuracy"] += 0.2  # the larger training grid extrapolates better on every seed
    accuracy = pd.concat([small, big], ignore_index=True)
    paired = paired_table(accuracy)
    grid = paired[paired["factor"] == "train_grid"]
    assert set(zip(grid["first"], grid["second"])) == {(9, 6)}
    at2 = grid[(grid["scale"] == 2.0) & (grid["variant"] == "rope_mixed")].iloc[0]
    assert math.isclose(at2["difference"], 0.2) and at2["verdict"] == "9 > 6"
    assert grid[grid["scale"] == 1.0]["difference"].abs().max() == 0
    ordering = heo_ordering(paired)  # per training grid, never pairing a 6x6 model with a 9x9 one; 9x9 lacks Axial
    assert list(ordering["train_grid"]) == [6]
    lines = findings(seed_table(accuracy), paired, pd.DataFrame())
    assert any("training grid 9x9 against 6x6" in line and "above 0 in" in line for line in lines)
    # RoPE-Mixed - APE where no ordering covers it: on the 9x9 grid it gets its own sentence, naming the grid
    mixed_ape = next(line for line in lines if line.startswith("shapes, rope_mixed - ape"))
    assert "9x9 training grid/rrc/zoom 2x" in mixed_ape and "6x6 training grid" not in mixed_ape


def test_verdict_stability_flags_every_flipped_verdict(tmp_path):
    reference = paired_table(synthetic_accuracy())
    same = compare_verdicts(reference, reference.copy())
    assert same["same_verdict"].all() and (same["shift"] == 0).all()
    other = reference.copy()
    flip = (other["first"] == "rope_mixed") & (other["second"] == "ape") & (other["scale"] == 2.0)
    assert reference.loc[flip, "verdict"].item() == "rope_mixed > ape"
    other.loc[flip, ["difference", "ci_low", "ci_high", "verdict"]] = [0.01, -0.02, 0.04, "no difference detected"]
    compared = compare_verdicts(reference, other)
    assert (~compared["same_verdict"]).sum() == 1
    lines = stability_lines(compared, "two threads")
    assert lines[0].startswith(f"Rerun with other floats (two threads): {len(reference) - 1} of {len(reference)} verdicts unchanged")
    assert len(lines) == 2 and "'rope_mixed > ape' -> +1.0 [-2.0, +4.0] 'no difference detected'" in lines[1]
    with pytest.raises(ValueError, match="missing from the other run"):
        compare_verdicts(reference, other[~flip])
    reference.to_csv(tmp_path / "a.csv", index=False)
    other.to_csv(tmp_path / "b.csv", index=False)
    assert stability_main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "verdict_stability.md").read_text().count("\n- Changed:") == 1
    assert stability_main(["compare", str(tmp_path / "nope.csv"), str(tmp_path / "b.csv"), str(tmp_path / "out")]) == 2


def test_findings_mark_every_verdict_the_float_check_overturned():
    accuracy = synthetic_accuracy()
    paired = paired_table(accuracy)
    unmarked = findings(seed_table(accuracy), with_replication(paired, None), pd.DataFrame())
    assert with_replication(paired, None)["replicated"].isna().all() and not any("†" in line for line in unmarked)
    assert unmarked == findings(seed_table(accuracy), paired, pd.DataFrame())  # no float check: as before
    other = paired.copy()
    flip = (other["first"] == "rope_mixed") & (other["second"] == "rope_axial") & (other["scale"] == 2.0)
    assert paired.loc[flip, "verdict"].item() == "rope_mixed > rope_axial"  # Axial - APE is not: ordering not shown
    other.loc[flip, ["difference", "ci_low", "ci_high", "verdict"]] = [0.01, -0.02, 0.04, "no difference detected"]
    marked = with_replication(paired, compare_verdicts(paired, other))
    assert list(marked.index) == list(paired.index) and (marked.drop(columns="replicated") == paired).all().all()
    assert (~marked["replicated"]).sum() == 1 and not marked.loc[flip, "replicated"].item()
    lines = findings(seed_table(accuracy), marked, pd.DataFrame())
    assert lines[0].startswith("† marks a verdict that the float check overturned")
    daggers = [line for line in lines[1:] if "†" in line]
    # the ordering it decides and its own pair's line, which lists every condition (the ordering's included)
    assert len(daggers) == 2 and "Heo et al.'s ordering" in daggers[0] and "rope_mixed - rope_axial" in daggers[1]
    assert "elsewhere no difference detected (rrc/zoom 2x †). Its halves in the same conditions: " in daggers[0]
    assert "(rrc/zoom 2x +8.4 [+4.7, +12.1] †)" in daggers[1]
    # a half of the ordering is counted on its own: Mixed > Axial is shown at 2x, Axial - APE is not
    assert daggers[0].endswith("RoPE-Mixed > RoPE-Axial in 1 of 1, RoPE-Mixed < RoPE-Axial in 0 of 1; "
                               "RoPE-Axial > APE in 0 of 1, RoPE-Axial < APE in 0 of 1 (each pair's conditions: the lines below).")
    # a rerun that covers some comparisons only: the others are not marked either way
    partial = with_replication(paired, compare_verdicts(paired[~flip], other[~flip]))
    assert partial.loc[flip, "replicated"].isna().item() and partial["replicated"].sum() == (~flip).sum()


@pytest.mark.slow
def test_float_check_rerun_trains_every_cell_with_other_threads(tiny_params, tmp_path):
    rq1 = tiny_params.rq1.model_copy(update={"cells": ["shapes-rrc-ape", "shapes-rrc-rope_mixed"], "scales": [1.0, 2.0],
                                             "protocols": ["zoom"], "rescalings": [], "test_images": 8, "workers": 1})
    params = tiny_params.model_copy(update={"rq1": rq1})
    with pytest.raises(ValueError, match="equals rq1.threads"):
        stability_rerun(params, params.rq1.threads, tmp_path / "same")
    before = torch.get_num_threads()
    try:
        paired = stability_rerun(params, 2, tmp_path / "float_check", log=lambda *_: None)
        assert torch.get_num_threads() == 2  # workers = 1 runs the seeds in this process
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "float_check" / "settings.json").read_text())["threads"] == 2
    accuracy = pd.read_csv(tmp_path / "float_check" / "accuracy.csv")
    assert set(accuracy["cell"]) == set(rq1.cells) and set(accuracy["seed"]) == set(rq1.seeds)
    assert set(zip(paired["first"], paired["second"])) == {("rope_mixed", "ape")} and set(paired["scale"]) == {1.0, 2.0}
    # the summary's sentences: compared where the settings match, else why not
    lines = float_check_lines(params, accuracy, tmp_path / "float_check", out_dir=tmp_path)
    assert lines[0].startswith(f"Rerun with other floats (rq1.threads = 2 instead of 1, every cell, every seed retrained): "
                               f"{len(paired)} of {len(paired)} verdicts unchanged")
    assert (tmp_path / "verdict_stability.csv").is_file()
    longer = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 7})})
    assert float_check_lines(longer, accuracy, tmp_path / "float_check")[0].startswith(
        "Float check: stale, it ran with other settings (train differ from params.yaml)")
    assert "not run" in float_check_lines(params, accuracy, tmp_path / "nowhere")[0]
    # a check under way covers some cells: only the comparisons among them, and it says so
    part = tmp_path / "partial"
    write_float_check(params, accuracy[accuracy["cell"] == "shapes-rrc-ape"], 2, part)
    assert "1 of the 2 cells so far (shapes-rrc-ape)" in float_check_lines(params, accuracy, part)[0]


def test_a_float_check_of_more_seeds_is_compared_on_the_study_seeds_only(tiny_params, tmp_path):
    cells = ["shapes-rrc-ape", "shapes-rrc-rope_axial", "shapes-rrc-rope_mixed"]
    accuracy = synthetic_accuracy()  # seeds 0-3
    rerun = accuracy.assign(accuracy=accuracy["accuracy"] + 0.001)
    extra = rerun[rerun["seed"] == 0].assign(seed=4)
    extra.loc[extra["variant"] == "rope_mixed", "accuracy"] = 0.0  # seed 4: RoPE-Mixed far below the others
    rerun = pd.concat([rerun, extra], ignore_index=True)
    params = tiny_params.model_copy(update={"rq1": tiny_params.rq1.model_copy(update={"cells": cells, "seeds": [0, 1, 2, 3, 4]})})
    write_float_check(params, rerun, 2, tmp_path / "float_check")
    study = params.model_copy(update={"rq1": params.rq1.model_copy(update={"seeds": [0, 1, 2, 3]})})
    lines = float_check_lines(study, accuracy, tmp_path / "float_check", out_dir=tmp_path)
    compared = pd.read_csv(tmp_path / "verdict_stability.csv")
    # seed 4 of the rerun would move every RoPE-Mixed difference: left out, the differences are the study's
    assert compared["same_verdict"].all() and compared["shift"].abs().max() < 1e-9
    assert "every seed retrained; the study's seeds [0, 1, 2, 3] of the rerun's [0, 1, 2, 3, 4]" in lines[0]
    assert f"{len(compared)} of {len(compared)} verdicts unchanged" in lines[0]
    # what does not decide RQ1's numbers leaves the check current: a variant no cell uses, a model key added since
    # the rerun (read at its default)
    extra = study.model_copy(update={"variants": {**study.variants, "unused": study.variants["ape"]}})
    assert float_check_lines(extra, accuracy, tmp_path / "float_check")[0].startswith("Rerun with other floats")
    settings = tmp_path / "float_check" / "settings.json"
    recorded = json.loads(settings.read_text())
    del recorded["study"]["model"]["num_registers"]
    settings.write_text(json.dumps(recorded))
    assert float_check_lines(study, accuracy, tmp_path / "float_check")[0].startswith("Rerun with other floats")
    registers = study.model_copy(update={"model": study.model.model_copy(update={"num_registers": 2})})
    assert "model differ" in float_check_lines(registers, accuracy, tmp_path / "float_check")[0]
    more = params.model_copy(update={"rq1": params.rq1.model_copy(update={"seeds": [0, 1, 2, 3, 4, 5]})})
    assert float_check_lines(more, accuracy, tmp_path / "float_check")[0].startswith(
        "Float check: stale, it ran with other settings (rq1.seeds differ from params.yaml)")


def test_figures_name_training_grids_where_panels_differ_in_them():
    """One augmentation trained on two grids, another on one: every line of every panel gets its own style."""
    base = synthetic_accuracy()
    big = base.assign(train_grid=9)
    light = base[base["variant"] != "rope_axial"].assign(augmentation="light")
    rescaled = base[base["variant"] == "rope_mixed"].assign(method="pi")
    accuracy = pd.concat([base, big, light, rescaled], ignore_index=True)
    seeds = seed_table(accuracy)
    entropy = seeds.assign(layers="all_layers", entropy=0.5).rename(columns={"accuracy": "unused"})
    figure = plot_accuracy_vs_scale(seeds, "shapes")
    labels = {text.get_text() for text in figure.legends[0].get_texts()}
    assert "rope_mixed, 9x9 training grid" in labels and "rope_mixed, 6x6 training grid" in labels
    plot_rescalings(seeds, "shapes")
    plot_entropy_vs_scale(entropy, "shapes")
    plt.close("all")


def test_crop_visibility_measures_the_share_of_each_object_left_in_view():
    whole = torch.ones(200, 1, 24, 24)  # an object covering the image: in view exactly the box's share
    assert torch.allclose(crop_visibility(whole, (0.25, 0.25), (1.0, 1.0)), torch.full((200, 1), 0.25), atol=0.02)
    assert torch.allclose(crop_visibility(whole, (0.5, 0.5), (0.75, 1.3333)), torch.full((200, 1), 0.5), atol=0.03)
    corner = torch.zeros(500, 2, 24, 24)
    corner[:, 0, :4, :4] = 1  # a corner object, often cropped away
    corner[:, 1, 10:14, 10:14] = 1  # a central one, in view of most half-side crops
    visible = crop_visibility(corner, (0.25, 0.25), (1.0, 1.0), seed=3)
    assert torch.equal(visible, crop_visibility(corner, (0.25, 0.25), (1.0, 1.0), seed=3))  # same draws per seed
    assert (visible[:, 0] == 0).float().mean() > 0.5 and (visible[:, 1] == 0).float().mean() == 0
    assert visible[:, 1].mean() > 0.7 > 0.2 > visible[:, 0].mean()
    assert torch.equal(crop_visibility(corner, (1.0, 1.0), (1.0, 1.0)), torch.ones(500, 2))  # the whole image
    assert crop_visibility(torch.zeros(2, 1, 8, 8), (0.5, 1.0), (1.0, 1.0)).isnan().all()  # no object, no share


def test_crop_label_noise_per_dataset_uses_masks_or_the_digit(data_root, tiny_params):
    table = crop_label_noise(data_root, [("shapes", "rrc", 24), ("mnist", "rrc", 28), ("shapes", "light", 24)],
                             tiny_params.rq1.augmentations, limit=300)
    assert list(table["dataset"]) == ["shapes", "mnist"]  # light augmentation has no crops to measure
    assert (table["images"] == 300).all() and table["cut"].between(0, 1).all()
    assert (table["removed"] <= table["cut"]).all()
    assert object_masks(data_root, "mnist", 28, 5).shape == (5, 1, 28, 28)  # MNIST: the digit's ink
    assert crop_lines(table)[0].startswith("shapes at 24 px, rrc crops: ")


def test_learning_onset_is_the_first_epoch_at_the_threshold():
    from lib.extrapolation.summary import learning_onset, onset_line
    history = pd.DataFrame({"cell": ["a"] * 6 + ["b"] * 3, "seed": [0, 0, 0, 1, 1, 1, 0, 0, 0],
                            "epoch": [1, 2, 3] * 3, "val/acc": [0.25, 0.6, 0.4, 0.2, 0.3, 0.45, 0.5, 0.9, 0.95]})
    onset = learning_onset(history)
    assert onset["onset_epoch"].tolist()[0] == 2 and pd.isna(onset["onset_epoch"].tolist()[1])
    assert onset["onset_epoch"].tolist()[2] == 1 and onset["final_val_acc"].tolist() == [0.4, 0.45, 0.95]
    assert onset_line(history, "Onset") == ("Onset: the epoch at which each seed's validation accuracy first reached "
                                            "50% (seeds in order): a 2, never (of 3); b 1 (of 3).")
