"""The efficiency benchmark's arithmetic (slopes, crossovers) and one real measurement in a subprocess."""
import math

import numpy as np
import pandas as pd
import pytest

from lib.benchmark import crossover_tokens, forward_flops, loglog_slope, measure_in_subprocess, tiny_model, images_for


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
