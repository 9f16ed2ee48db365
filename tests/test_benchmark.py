"""The efficiency benchmark's arithmetic (slopes, crossovers) and one real measurement in a subprocess."""
import math

import numpy as np
import pandas as pd
import pytest

from lib.efficiency.benchmark import (COMPARED_MODELS, compare_with_timm, crossover_tokens, efficiency_targets, forward_flops,
                           images_for, lib_and_timm_models, loglog_slope, measure_in_subprocess, round_ratios,
                           sweep_seconds, throughput_summary, tiny_model)


def table(tokens, cost):
    return pd.DataFrame({"tokens": tokens, "forward_ms_per_image": cost})


def test_loglog_slope_recovers_the_exponent():
    tokens = np.array([49, 196, 784, 4096])
    assert loglog_slope(table(tokens, 3e-4 * tokens**2.0)) == pytest.approx(2.0)
    assert loglog_slope(table(tokens, 0.01 * tokens + 0 * tokens), min_x=196) == pytest.approx(1.0)


def test_crossover_interpolates_in_log_space():
    tokens = [100, 400, 1600]
    softmax = table(tokens, [1.0, 4.0, 16.0])
    # cheaper from 400 on; at 100 it costs 4x softmax, at 400 it costs half: crossing where log ratio = 0
    linear = table(tokens, [4.0, 2.0, 4.0])
    expected = math.exp(math.log(100) + math.log(4) / (math.log(4) + math.log(2)) * (math.log(400) - math.log(100)))
    assert crossover_tokens(linear, softmax) == pytest.approx(expected)
    assert crossover_tokens(table(tokens, [0.5, 1, 2]), softmax) == 100  # cheaper throughout
    assert crossover_tokens(table(tokens, [0.5, 1, 20]), softmax) == math.inf  # not cheaper at the end


def test_crossover_margin_keeps_ties_out():
    tokens = [100, 400, 1600]
    softmax = table(tokens, [1.0, 4.0, 16.0])
    ties_then_cheaper = table(tokens, [0.98, 3.88, 8.0])  # 2% and 3% cheaper: within timing noise; then half
    assert crossover_tokens(ties_then_cheaper, softmax) == 100  # the sign rule counts the ties as cheaper
    # at least 10% cheaper: the crossing of log(ratio / 0.9) between 400 (ratio 0.97) and 1600 (ratio 0.5)
    before, after = math.log(0.97 / 0.9), math.log(0.5 / 0.9)
    expected = math.exp(math.log(400) + before / (before - after) * (math.log(1600) - math.log(400)))
    assert crossover_tokens(ties_then_cheaper, softmax, margin=0.1) == pytest.approx(expected)
    assert crossover_tokens(table(tokens, [0.95, 3.8, 15.0]), softmax, margin=0.1) == math.inf  # never 10% cheaper
    assert crossover_tokens(table(tokens, [0.5, 1, 2]), softmax, margin=0.1) == 100  # at least 10% cheaper throughout


def test_flops_grow_linearly_for_linear_attention_and_quadratically_for_softmax():
    def flops(attention, grid):
        return forward_flops(tiny_model(attention, "rope_mixed", grid), images_for(grid, 1))
    linear_ratio = flops("linear", 32) / flops("linear", 8)  # 16x the tokens
    softmax_ratio = flops("softmax", 32) / flops("softmax", 8)
    assert 14 < linear_ratio < 18 and softmax_ratio > 40


def test_measurement_in_a_subprocess():
    rows = measure_in_subprocess("linear", "rope_mixed", [2, 4], tokens_per_batch=64, repeats=1, threads=1)
    assert [row["tokens"] for row in rows] == [4, 16]
    assert all(row["forward_images_per_s"] > 0 and row["train_images_per_s"] > 0 for row in rows)
    assert all(row["peak_mb"] >= 0 and row["forward_gflops"] > 0 for row in rows)


def rounds_table(speeds: dict[tuple[str, str], list[float]], grid=14) -> pd.DataFrame:
    """A per-round table as compare_with_timm writes it, from images/s per (model, mode) and round."""
    return pd.DataFrame([{"model": model, "mode": mode, "round": r, "grid": grid, "batch": 32,
                          "images_per_s_train": speed, "images_per_s_forward": float("nan"),
                          "forward_gflops_per_image": 0.5, "compile_seconds": float("nan"), "parameters": 10}
                         for (model, mode), values in speeds.items() for r, speed in enumerate(values)])


def test_ratios_are_taken_round_by_round():
    per_round = rounds_table({("lib_rope_mixed", "eager"): [120, 60, 130], ("timm_eva_rope_mixed", "eager"): [100, 50, 100]})
    assert round_ratios(per_round, "lib_rope_mixed", "timm_eva_rope_mixed", "eager") == pytest.approx([1.2, 1.2, 1.3])
    assert len(round_ratios(per_round, "lib_rope_mixed", "timm_eva_rope_mixed", "compiled")) == 0  # not compiled


def test_the_lib_timm_goal_must_hold_in_every_round_and_the_overhead_goal_at_the_median():
    per_round = rounds_table({
        ("lib_rope_mixed", "eager"): [120, 120, 110], ("timm_eva_rope_mixed", "eager"): [100, 100, 100],
        ("lib_ape", "eager"): [126, 126, 130], ("timm_vit_ape", "eager"): [120, 120, 120],
        ("lib_rope_mixed", "compiled"): [150, 150, 150], ("timm_eva_rope_mixed", "compiled"): [125, 125, 125],
    })
    summary = throughput_summary(per_round, peak_gflops=100.0)
    assert summary.set_index(["model", "mode"]).loc[("lib_rope_mixed", "eager"), "train_fraction_of_peak"] == \
        pytest.approx(3 * 0.5 * 120 / 100.0)
    targets = efficiency_targets(per_round, 100.0, linear_slope=1.2).set_index(["target", "mode"])
    speedup = targets.loc[("lib RoPE-Mixed / timm RoPE-Mixed training throughput", "eager")]
    assert speedup["value"] == pytest.approx(1.2) and speedup["min"] == pytest.approx(1.1) and not speedup["met"]
    assert targets.loc[("lib RoPE-Mixed / timm RoPE-Mixed training throughput", "compiled"), "met"]  # 1.2 every round
    overhead = targets.loc[("lib RoPE-Mixed overhead over lib APE (training)", "eager")]
    assert overhead["value"] == pytest.approx(0.05) and overhead["max"] == pytest.approx(130 / 110 - 1) and overhead["met"]
    assert pd.isna(targets.loc[("lib RoPE-Mixed overhead over lib APE (training)", "compiled"), "value"])  # no compiled APE
    # training counted as 3 forwards: 3 x 0.5 GFLOP per image x 120 images/s (median) over a 100 GFLOP/s peak
    peak = targets.loc[("lib RoPE-Mixed training FLOP/s / fp32 matmul peak (14x14 patches)", "eager")]
    assert peak["value"] == pytest.approx(3 * 0.5 * 120 / 100.0) and peak["min"] == pytest.approx(3 * 0.5 * 110 / 100.0)
    assert not targets.loc[("linear attention forward log-log slope", "eager"), "met"]


def test_the_names_efficiency_compiled_accepts_are_the_models_compared():
    from lib.config import EfficiencyParams
    accepted = EfficiencyParams.model_fields["compiled"].annotation.__args__[0].__args__
    assert list(lib_and_timm_models(2)) == list(COMPARED_MODELS) == list(accepted)


def test_compare_with_timm_names_an_unknown_compiled_model():
    with pytest.raises(ValueError, match="compiled: unknown model.*'lib_rope_mxed'.*expected some of"):
        compare_with_timm(2, 2, 1, rounds=1, compiled=("lib_rope_mxed",))


def test_compiled_evaluation_sweep_matches_eager():
    """The sweep `python -m lib.efficiency.benchmark compile-sweep` times: compiled outputs equal eager ones at each size."""
    row = sweep_seconds("rope_mixed", [8, 12], images=3, batch=2, mode="recompile")
    assert row["resolutions"] == 2 and row["seconds"] > 0 and row["max_abs_difference_to_eager"] <= 1e-5
