"""Do RQ4's verdicts over seeds survive other floats? Retrain every safety seed with another thread count and compare.

As for RQ1 (lib/extrapolation/stability.py): torch's thread count changes the order of floating-point sums, so
training follows a slightly different path. A verdict of the `safety-seeds` stage (an encoding against the
baseline encoding, `comparison.csv`; an attention signal against MSP, `predictor_differences.csv`) that flips
under such a rerun rests on noise.

    python -m lib.safety.stability rerun --threads 2   # every safety seed again -> results/safety_seeds/float_check/

`rerun` trains and evaluates every run of `safety.runs` with every seed of `safety.seeds`, as the `safety-seeds`
stage does, with params.yaml's `threads` replaced, and writes both verdict tables and its settings to
results/safety_seeds/float_check/; the `safety-seeds` stage compares them with its own each time it runs
(`float_check`), and says so where the check is missing or ran with other settings.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from lib.config import Params, load_params
from lib.run.study import limit_threads
from lib.safety.seeds import compare_to_baseline, evaluate_seeds, per_seed_metrics, predictor_differences, train_seeds

# each verdict table of the safety-seeds stage and the columns that identify one comparison in it
VERDICT_TABLES = {"comparison": ["dataset", "variant", "baseline", "metric"],
                  "predictor_differences": ["dataset", "variant", "split", "score", "reference", "metric"]}


def seed_settings(params: Params) -> dict:
    """What decides the safety-seeds numbers apart from the floats: the seed, model, training, evaluation batch, the
    data sets and variants of `safety.runs`, and every `safety` key. Comparable only where these are equal."""
    pairs = params.safety.runs.pairs()
    settings = {"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump(),
                "batch_size": params.evaluate.batch_size,
                "datasets": {d: params.datasets[d].model_dump() for d, _ in pairs},
                "variants": {v: params.variants[v].model_dump() for _, v in pairs},
                "safety": params.safety.model_dump()}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def verdict_tables(params: Params, weights_dir: Path, checkpoint_dir: Path, log=print) -> dict[str, pd.DataFrame]:
    """Train every safety seed into `weights_dir` and evaluate them: the stage's two verdict tables."""
    train_seeds(params, weights_dir, checkpoint_dir, log)
    conditions, clean_correct, predictors = evaluate_seeds(params, weights_dir, log)
    metrics = per_seed_metrics(conditions, params.safety.baseline_variant, params.safety.moderate_severity)
    return {"comparison": compare_to_baseline(metrics, clean_correct, params.safety.baseline_variant),
            "predictor_differences": predictor_differences(predictors)}


def rerun(params: Params, threads: int, out_dir: Path, log=print) -> dict[str, pd.DataFrame]:
    """Every safety seed retrained and evaluated with `threads` torch threads; the verdict tables and the settings
    into `out_dir` (the weights are not kept)."""
    if threads == params.threads:
        raise ValueError(f"--threads {threads} equals params.yaml's threads: the rerun would repeat the study's floats")
    limit_threads(threads)
    with tempfile.TemporaryDirectory() as scratch:
        tables = verdict_tables(params, Path(scratch) / "weights", Path(scratch) / "checkpoints", log)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / "settings.json").write_text(json.dumps({"threads": threads, "study": seed_settings(params)}, indent=1) + "\n")
    return tables


def compare_verdicts(study: dict[str, pd.DataFrame], other: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per verdict of `study` (rows without one, such as the McNemar counts, are not verdicts): the table it
    is in, a label, both runs' difference, interval and verdict, and whether the verdict is the same. A comparison
    missing from `other` is an error."""
    rows = []
    for name, keys in VERDICT_TABLES.items():
        values = ["difference", "ci_low", "ci_high", "verdict"]
        both = study[name].dropna(subset=["verdict"])[keys + values].merge(other[name][keys + values], on=keys, how="left",
                                                suffixes=("", "_other"), validate="one_to_one", indicator=True)
        if (both["_merge"] != "both").any():
            raise ValueError(f"{int((both['_merge'] != 'both').sum())} comparisons of the study's {name}.csv are missing "
                             f"from the rerun: compare runs of the same safety settings")
        both["label"] = both[keys].astype(str).agg(", ".join, axis=1)
        rows.append(both.drop(columns="_merge").assign(table=name))
    compared = pd.concat(rows, ignore_index=True)
    compared["same_verdict"] = compared["verdict"] == compared["verdict_other"]
    return compared


def stability_lines(compared: pd.DataFrame, what: str) -> list[str]:
    """Sentences for findings.md: how many verdicts held, and each one that changed."""
    stated = compared[compared["verdict"] != "no difference detected"]
    changed = compared[~compared["same_verdict"]]
    lines = [f"Rerun with other floats ({what}): {int(compared['same_verdict'].sum())} of {len(compared)} verdicts "
             f"unchanged ({len(stated) - int(stated['same_verdict'].sum())} of the {len(stated)} stated differences "
             f"changed)."]
    lines += [f"Changed: {row.label}: {row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}] '{row.verdict}' -> "
              f"{row.difference_other:+.3f} [{row.ci_low_other:+.3f}, {row.ci_high_other:+.3f}] '{row.verdict_other}'."
              for row in changed.itertuples()]
    return lines


def float_check(params: Params, study: dict[str, pd.DataFrame], float_dir: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """The study's verdict tables against the rerun's, with the sentences for findings.md; where the check is
    missing or ran with other settings, no table and one line saying why."""
    settings = Path(float_dir) / "settings.json"
    if not settings.is_file():
        return None, [f"Float check: not run ({settings} missing; `python -m lib.safety.stability rerun`)."]
    recorded = json.loads(settings.read_text())
    current = seed_settings(params)
    changed = sorted(k for k, value in current.items() if recorded["study"].get(k) != value)
    if changed:
        return None, [f"Float check: stale, it ran with other settings ({', '.join(changed)} differ from params.yaml); "
                      f"rerun it with `python -m lib.safety.stability rerun` before quoting verdict stability."]
    other = {name: pd.read_csv(Path(float_dir) / f"{name}.csv") for name in VERDICT_TABLES}
    compared = compare_verdicts(study, other)
    what = f"threads = {recorded['threads']} instead of {params.threads}, every seed retrained"
    return compared, stability_lines(compared, what)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    again = commands.add_parser("rerun", help="every safety seed again with another thread count")
    again.add_argument("--threads", type=int, default=2, help="torch threads (the study: params.yaml's threads)")
    again.add_argument("--params", type=Path, default=Path("params.yaml"))
    again.add_argument("--out-dir", type=Path, default=Path("results/safety_seeds/float_check"))
    args = parser.parse_args(argv)
    rerun(load_params(args.params), args.threads, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
