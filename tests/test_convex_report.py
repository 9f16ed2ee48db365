"""The RQ5 report's sentences say what their tables hold (lib/convex/report.py), on hand-made tables."""
import pandas as pd
import pytest

from lib.convex.compare import select_on_validation
from lib.convex.report import (adam_objectives, certificate_line, clustering_lines, gate_lines, objective_lines,
                               rank_lines)


def attention_runs() -> pd.DataFrame:
    """Two seeds, a 2-value beta grid (0.1 strong, 0.01 weak); Adam's objectives above the optimum by 10% / 100%
    at 0.1 / 0.01; seed 0's Adam head chooses 0.01 on validation, seed 1's 0.1."""
    rows = [{"setting": "s", "seed": seed, "head": head, "value": value, "objective": objective,
             "val_accuracy": val, "grid_position": position, "family": family, "fit_seconds": 1.0,
             "val_images": 100}
            for seed in (0, 1)
            for head, family, objectives, vals in (
                ("convex linear attention", "convex", (1.0, 0.5), (0.9, 0.9)),
                ("linear attention (Adam)", "adam", (1.1, 1.0), (0.8, 0.9 - 0.2 * seed)))
            for position, (value, objective, val) in enumerate(zip((0.1, 0.01), objectives, vals))]
    return pd.DataFrame(rows)


def test_adam_objectives_give_the_relative_excess_per_seed_and_beta():
    objectives = adam_objectives(attention_runs())
    assert objectives.loc[("s", 0, 0.1), "relative excess of Adam"] == pytest.approx(0.1)
    assert objectives.loc[("s", 1, 0.01), "relative excess of Adam"] == pytest.approx(1.0)
    runs = attention_runs()
    assert adam_objectives(runs[runs["head"] != "linear attention (Adam)"]).empty  # Adam not run: no table
    assert objective_lines(pd.DataFrame(), runs, select_on_validation(runs), 150) == []


def test_objective_line_quotes_the_excess_at_the_choice_and_at_both_grid_ends():
    runs = attention_runs()
    line, = objective_lines(adam_objectives(runs), runs, select_on_validation(runs), steps=150)
    # at the choice: seed 0 (0.01) 100%, seed 1 (0.1) 10% -> median 55%, range 10-100%
    assert "(150 full-batch steps) ends 55.0% above the convex optimum" in line
    assert "range 10.0-100.0%" in line
    assert "10.0% at the strongest beta/beta_max 0.1 and 100.0% at the weakest 0.01" in line
    assert "Below the optimum in 0 of 4 fits" in line
    below = runs.copy()
    below.loc[(below["head"] == "linear attention (Adam)") & (below["value"] == 0.1) & (below["seed"] == 1),
              "objective"] = 0.9  # an uncertified 'optimum': the sentence must count it
    assert "Below the optimum in 1 of 4 fits" in objective_lines(adam_objectives(below), below,
                                                                   select_on_validation(below), 150)[0]


def test_certificate_line_counts_only_convex_solves():
    runs = pd.DataFrame({"family": ["convex", "convex", "convex", "adam"], "converged": [True, False, True, False],
                         "relative_gap": [1e-5, 3e-3, 2e-5, float("nan")], "iterations": [120, 4000, 300, 150]})
    line = certificate_line(runs, gap_tol=1e-4, max_iter=4000)
    assert line.startswith("Convex solves: 2 of 3 reached the relative duality gap tolerance 1e-04")
    assert "largest relative gap 3.0e-03, median 2.0e-05; at most 4000 FISTA steps (limit 4000)" in line


def test_gate_line_reports_the_largest_share_and_the_range_of_agreement():
    gates = pd.DataFrame({"setting": "s", "seed": [0, 1], "gated share of the penalty": [0.0, 0.012],
                          "same test predictions": [1.0, 0.985]})
    line, = gate_lines(gates)
    assert "carry at most 1.2% of its nuclear norm" in line and "on 98.5-100.0% of test images" in line
    assert gate_lines(pd.DataFrame()) == []


def test_rank_and_clustering_lines_one_per_row():
    ranks = pd.DataFrame([{"setting": "s", "head": "convex mixer", "weakest_beta": 3e-5, "strongest_beta": 0.3,
                           "rank_weakest_beta": 7.4, "rank_strongest_beta": 1.0, "non_increasing": 4, "seeds": 5}])
    assert rank_lines(ranks) == ["- Rank of Z, convex mixer (s): 7.4 at beta/beta_max = 3e-05 → 1.0 at 0.3; never "
                                 "grows with beta in 4 of 5 seeds."]
    paired = pd.DataFrame([{"setting": "s", "first": "kernels", "second": "raw", "difference": -0.044,
                            "ci_low": -0.062, "ci_high": -0.026, "verdict": "kernels < raw"}])
    assert clustering_lines(paired) == ["- Token groups vs object masks (NMI, s): kernels − raw = -0.044 "
                                        "[-0.062, -0.026] (kernels < raw)."]
    assert rank_lines(ranks.iloc[:0]) == [] and clustering_lines(pd.DataFrame()) == []
