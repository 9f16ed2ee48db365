"""RQ4's float check (lib/safety/stability.py): the safety seeds retrained with other threads, verdicts compared."""
import json

import pandas as pd
import pytest
import torch

from lib.safety.stability import VERDICT_TABLES, compare_verdicts, float_check, rerun, stability_lines


def _tables(shift: float = 0.0) -> dict[str, pd.DataFrame]:
    """One encoding comparison and two signal-vs-MSP comparisons; `shift` moves every difference and interval."""
    comparison = pd.DataFrame([{"dataset": "signs", "variant": "rope_mixed", "baseline": "ape", "metric": "clean accuracy",
                                "difference": 0.02 + shift, "ci_low": 0.01 + shift, "ci_high": 0.03 + shift,
                                "verdict": "rope_mixed > ape" if 0.01 + shift > 0 else "no difference detected"}])
    differences = pd.DataFrame([{"dataset": "signs", "variant": "ape", "split": "clean", "score": score,
                                 "reference": "msp", "metric": "error-detection AUROC", "difference": d,
                                 "ci_low": d - 0.1, "ci_high": d + 0.1,
                                 "verdict": f"{score} < msp" if d + 0.1 < 0 else "no difference detected"}
                                for score, d in (("rollout_entropy", -0.3), ("sink_mass", -0.05))])
    return {"comparison": comparison, "predictor_differences": differences}


def test_compare_verdicts_lists_each_changed_verdict():
    study, other = _tables(), _tables(shift=-0.02)  # the encoding difference's interval now reaches 0
    compared = compare_verdicts(study, other)
    assert len(compared) == 3 and compared["same_verdict"].tolist() == [False, True, True]
    lines = stability_lines(compared, "threads = 2 instead of 1")
    assert lines[0] == ("Rerun with other floats (threads = 2 instead of 1): 2 of 3 verdicts unchanged (1 of the 2 "
                        "stated differences changed).")
    assert lines[1] == ("Changed: signs, rope_mixed, ape, clean accuracy: +0.020 [+0.010, +0.030] 'rope_mixed > ape' -> "
                        "+0.000 [-0.010, +0.010] 'no difference detected'.")
    with pytest.raises(ValueError, match="missing from the rerun"):
        compare_verdicts(study, {**other, "predictor_differences": other["predictor_differences"].iloc[:1]})


@pytest.mark.slow
def test_rerun_retrains_every_seed_and_the_stage_compares_when_current(tiny_params, tmp_path):
    safety = tiny_params.safety.model_copy(update={"seeds": [0, 1], "corruptions": ["gaussian_noise"], "severities": [1],
                                                   "seed_test_images": 16, "seed_scales": []})
    params = tiny_params.model_copy(update={"safety": safety})
    with pytest.raises(ValueError, match="equals params.yaml's threads"):
        rerun(params, params.threads, tmp_path / "same")
    before = torch.get_num_threads()
    try:
        tables = rerun(params, 2, tmp_path / "float_check", log=lambda *_: None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "float_check" / "settings.json").read_text())["threads"] == 2
    assert set(VERDICT_TABLES) <= {p.stem for p in (tmp_path / "float_check").glob("*.csv")}
    compared, lines = float_check(params, tables, tmp_path / "float_check")  # the rerun against itself
    assert compared["same_verdict"].all() and lines[0].startswith(
        f"Rerun with other floats (threads = 2 instead of {params.threads}, every seed retrained): "
        f"{len(compared)} of {len(compared)} verdicts unchanged")
    longer = params.model_copy(update={"train": params.train.model_copy(update={"epochs": params.train.epochs + 1})})
    assert float_check(longer, tables, tmp_path / "float_check") == (None, [
        "Float check: stale, it ran with other settings (train differ from params.yaml); rerun it with "
        "`python -m lib.safety.stability rerun` before quoting verdict stability."])
    assert "not run" in float_check(params, tables, tmp_path / "nowhere")[1][0]
