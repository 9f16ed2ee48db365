"""RQ3 over training seeds: method comparisons paired over seeds, IG's gain, the sanity verdict, the findings, params."""
import pandas as pd
import pytest
import torch

from lib.analysis.seeds import (
    IG, NOT_TESTABLE, RANDOM, compare_over_seeds, explain_seed, findings, ig_gain_over_seeds, sanity_over_seeds,
)
from lib.analysis.tables import IG_FROM_FILL
from lib.config import Params
from lib.run.checkpoint import save_atomic
from lib.run.study import map_in_workers
from tests.conftest import tiny_params_dict

T2 = 4.302653  # t_{0.975, 2}: three seeds


def scores_table(values: dict[str, list[float]], metric: str = "deletion_auc", better: str = "lower",
                 cell: str = "shapes-rrc-ape", fill: str = "mean") -> pd.DataFrame:
    """One cell, fill and metric: {method: [value of seed 0, 1, 2]}."""
    return pd.DataFrame([{"cell": cell, "variant": cell.split("-")[-1], "fill": fill, "method": method,
                          "metric": metric, "better": better, "seed": seed, "value": value}
                         for method, seeds in values.items() for seed, value in enumerate(seeds)])


def test_compare_over_seeds_by_hand():
    # deletion: lower is better. a is best (mean 0.3); b's gap to a: 0.2, 0.25, 0.3 -> mean 0.25, sd 0.05: worse;
    # c's gap: 0.1, -0.1, 0.1 -> mean 1/30, interval reaches 0: tied. ig_from_fill (0.1) is a control, never best.
    table = scores_table({"a": [0.3, 0.2, 0.4], "b": [0.5, 0.45, 0.7], "c": [0.4, 0.1, 0.5],
                          RANDOM: [0.7, 0.8, 0.9], IG_FROM_FILL: [0.1, 0.1, 0.1]})
    out = compare_over_seeds(table).set_index("method")
    assert out.loc["a", "status"] == "best" and out.loc["a", "gap_to_best"] == 0
    assert out.loc["b", "gap_to_best"] == pytest.approx(0.25)
    assert out.loc["b", "gap_low"] == pytest.approx(0.25 - T2 * 0.05 / 3 ** 0.5, rel=1e-5)
    assert out.loc["b", "status"] == "worse" and out.loc["c", "status"] == "tied with best"
    assert out.loc[IG_FROM_FILL, "status"] == "" and out.loc[RANDOM, "status"] == ""
    # against random, oriented (positive: deletes faster than random): a - random = 0.4, 0.6, 0.5
    assert out.loc["a", "vs_reference"] == pytest.approx(0.5)
    assert out.loc["a", "vs_reference_verdict"] == "a > random"
    assert out.loc["a", "value"] == pytest.approx(0.3) and out.loc["a", "seeds"] == 3
    assert out.loc["a", "ci_high"] == pytest.approx(0.3 + T2 * 0.1 / 3 ** 0.5, rel=1e-5)


def test_higher_is_better_metrics_are_not_flipped_and_two_seeds_are_the_least():
    out = compare_over_seeds(scores_table({"a": [0.9, 0.8, 0.85], "b": [0.5, 0.6, 0.55], RANDOM: [0.5, 0.5, 0.5]},
                                          metric="insertion_auc", better="higher")).set_index("method")
    assert out.loc["a", "status"] == "best" and out.loc["b", "status"] == "worse"
    assert out.loc["b", "vs_reference_verdict"] == "no difference detected"  # 0, +0.1, +0.05: the interval reaches 0
    one_seed = scores_table({"a": [0.9], "b": [0.5], RANDOM: [0.5]}, metric="insertion_auc", better="higher")
    assert compare_over_seeds(one_seed).set_index("method").loc["b", "status"] == NOT_TESTABLE


def test_ig_gain_is_paired_over_seeds_and_oriented():
    table = scores_table({IG: [0.5, 0.6, 0.7], IG_FROM_FILL: [0.3, 0.3, 0.4]})  # deletion: from the fill deletes faster
    gain = ig_gain_over_seeds(table).iloc[0]
    assert gain["gain"] == pytest.approx(0.8 / 3) and gain["seeds"] == 3  # 0.2, 0.3, 0.3
    assert gain["verdict"] == "from the fill > from the baseline"


def test_sanity_fails_where_the_seed_interval_reaches_the_threshold():
    rows = [{"cell": "c", "variant": "v", "method": method, "seed": seed, "spearman": value}
            for method, values in (("rollout", [0.1, 0.0, -0.1]), (RANDOM, [1.0, 1.0, 1.0]), ("ig", [0.2, 0.45, 0.7]))
            for seed, value in enumerate(values)]
    out = sanity_over_seeds(pd.DataFrame(rows), 0.5).set_index("method")
    assert not out.loc["rollout", "fails"] and out.loc[RANDOM, "fails"]
    assert out.loc["ig", "fails"]  # mean 0.45, but the interval over seeds reaches 0.5: not shown to change
    assert out.loc["rollout", "spearman"] == pytest.approx(0.0)


def test_findings_are_read_from_the_tables():
    scores = pd.concat([scores_table({"a": [0.3, 0.2, 0.4], "b": [0.5, 0.45, 0.7], RANDOM: [0.7, 0.8, 0.9],
                                      IG: [0.5, 0.5, 0.6], IG_FROM_FILL: [0.3, 0.3, 0.3]}, cell=cell)
                        for cell in ("shapes-rrc-ape", "shapes-rrc-rope_mixed")])
    comparison = compare_over_seeds(scores)
    sanity = sanity_over_seeds(pd.DataFrame([{"cell": cell, "variant": "v", "method": m, "seed": s, "spearman": v}
                                             for cell in ("shapes-rrc-ape", "shapes-rrc-rope_mixed")
                                             for m, v in (("a", 0.0), (RANDOM, 1.0)) for s in range(3)]), 0.5)
    accuracy = pd.DataFrame([{"cell": "c", "seed": s, "accuracy": 0.98, "images": 100} for s in range(3)])
    lines = findings(comparison, ig_gain_over_seeds(scores), sanity, accuracy)
    assert lines[0].startswith("Design: 3 training seeds (0, 1, 2) of each of 2 RQ1 cells") and "100 test images" in lines[0]
    deletion = next(line for line in lines if line.startswith("deletion_auc, mean fill"))
    assert "best alone over seeds in 1 of 2 cells" not in deletion
    # a vs IG: gaps 0.2, 0.3, 0.2 -> worse; a vs b: worse; so a is best alone in both cells
    assert "in 2 of 2 cells (shapes-rrc-ape: a alone; shapes-rrc-rope_mixed: a alone)" in deletion
    assert "above the random order in every cell: a, b, integrated_gradients." in deletion
    gain = next(line for line in lines if line.startswith("IG integrated from the mean fill"))
    assert "looks more faithful in 2 of 2 cells, less in 0" in gain
    assert lines[-1].endswith("in every cell: random; in some: none; in none: a.")


def test_explain_seed_scores_a_saved_model_on_the_same_images(tmp_path, data_root):
    raw = tiny_params_dict(data_root)
    params = Params.model_validate(raw)
    cell = params.analysis.seed_cells[0]
    dataset, _, variant, _ = params.rq1.parse(cell)
    from lib.extrapolation.study import cell_params
    from lib.run.study import build_model

    torch.manual_seed(0)
    model = build_model(cell_params(params, cell, 0), dataset, variant)
    folder = tmp_path / cell
    folder.mkdir()
    save_atomic({"model": model.state_dict(), "config": {}}, folder / "seed0.pt")
    first, again = (explain_seed(params, cell, 0, tmp_path) for _ in range(2))
    assert first == again  # deterministic
    scores = pd.DataFrame(first["scores"])
    assert set(scores["fill"]) == set(params.analysis.fills) | {"none"}  # shapes has masks: localisation
    assert {RANDOM, IG, IG_FROM_FILL} <= set(scores["method"])
    assert scores.loc[scores["fill"] != "none", "value"].between(0, 1).all()
    assert set(pd.DataFrame(first["sanity"])["method"]) == set(scores["method"]) - {IG_FROM_FILL}
    assert first["accuracy"][0]["images"] == params.analysis.num_images


@pytest.mark.parametrize("change, message", [
    ({"seed_cells": ["shapes-rrc-nope"]}, "analysis.seed_cells"),
    ({"seed_cells": ["shapes-rrc-ape", "shapes-rrc-ape"]}, "listed twice"),
    ({"seeds": [0, 7]}, r"analysis.seeds: \[7\] not in rq1.seeds"),
    ({"seeds": [0]}, "at least 2"),
])
def test_bad_seed_study_params_name_the_key(data_root, change, message):
    raw = tiny_params_dict(data_root)
    raw["analysis"].update(change)
    with pytest.raises(ValueError, match=message):
        Params.model_validate(raw)


def test_no_seed_cells_turns_the_stage_off_whatever_the_seeds(data_root):
    raw = tiny_params_dict(data_root)
    raw["analysis"].update(seed_cells=[], seeds=[0, 7])
    assert Params.model_validate(raw).analysis.seed_cells == []


def _double_and_threads(value: int) -> tuple[int, int]:
    return 2 * value, torch.get_num_threads()


def test_map_in_workers_keeps_the_jobs_order_and_limits_threads():
    jobs = [(value,) for value in range(4)]
    logged = []
    in_workers = map_in_workers(_double_and_threads, jobs, workers=2, threads=1, log=logged.append)
    assert in_workers == [(0, 1), (2, 1), (4, 1), (6, 1)] and logged == jobs
    threads = torch.get_num_threads()  # in this process: keep the test session's threads as they are
    assert map_in_workers(_double_and_threads, jobs, workers=1, threads=threads) == [(0, threads), (2, threads),
                                                                                     (4, threads), (6, threads)]
