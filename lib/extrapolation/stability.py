"""Do RQ1's verdicts survive other floats? Rerun every cell with another thread count and compare verdicts.

Floats differ between machines and with torch's thread count (`rq1.threads`), so training follows a slightly
different path and every accuracy moves a little. A verdict ("a > b", "a < b", "no difference detected") that
flips under such a rerun rests on noise.

    python -m lib.extrapolation.stability rerun --threads 2   # every rq1 cell again -> results/rq1/float_check/
    python -m lib.extrapolation.stability compare REFERENCE OTHER OUT_DIR

`rerun` trains and tests every cell of `rq1.cells` as the `rq1` stage does, with `rq1.threads` replaced, and writes
that run's per-seed accuracies, paired differences and settings to results/rq1/float_check/; the `rq1-summary`
stage compares its verdicts with the study's each time it runs (`float_check_lines`), and says so where the check
ran with other settings instead of comparing them.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from lib.config import ModelParams, Params, load_params
from lib.extrapolation.study import run_cell
from lib.extrapolation.summary import check_complete, onset_line, paired_table

# what identifies one comparison in paired.csv (train_grid: where both runs have it)
COMPARISON_KEYS = ["factor", "first", "second", "dataset", "train_grid", "augmentation", "variant", "method", "protocol",
                   "scale"]


def compare_verdicts(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison of `reference`: both runs' difference, interval and verdict, and whether the verdict
    is the same. A comparison missing from `other` is an error (the runs did not test the same things)."""
    keys = [k for k in COMPARISON_KEYS if k in reference and k in other]
    values = ["difference", "ci_low", "ci_high", "verdict"]
    both = reference[keys + values].merge(other[keys + values], on=keys, how="left", suffixes=("", "_other"),
                                          validate="one_to_one", indicator=True)
    missing = both[both["_merge"] != "both"]
    if len(missing):
        first = missing.iloc[0]
        raise ValueError(f"{len(missing)} comparisons of the reference run are missing from the other run, e.g. "
                         f"{', '.join(f'{k}={first[k]}' for k in keys)}: compare runs of the same rq1 cells and scales")
    both = both.drop(columns="_merge")
    both["same_verdict"] = both["verdict"] == both["verdict_other"]
    both["shift"] = both["difference_other"] - both["difference"]
    return both


def stability_lines(compared: pd.DataFrame, what: str) -> list[str]:
    """Sentences for results/README.md: how many verdicts held, and each one that changed."""
    decided = compared[compared["verdict"].str.contains(">|<")]
    changed = compared[~compared["same_verdict"]]
    lines = [f"Rerun with other floats ({what}): {int(compared['same_verdict'].sum())} of {len(compared)} verdicts "
             f"unchanged ({len(decided) - int(decided['same_verdict'].sum())} of the {len(decided)} stated differences "
             f"changed); paired differences moved by a median {100 * compared['shift'].abs().median():.1f} and at most "
             f"{100 * compared['shift'].abs().max():.1f} accuracy points."]
    for _, row in changed.iterrows():
        where = "/".join(str(row[k]) for k in ("dataset", "augmentation", "variant", "method", "protocol") if k in row)
        grid = f" ({row['train_grid']}x{row['train_grid']} training grid)" if "train_grid" in row else ""
        lines.append(f"Changed: {row['first']} - {row['second']}, {where}{grid} at {row['scale']:g}x: "
                     f"{100 * row['difference']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] "
                     f"'{row['verdict']}' -> {100 * row['difference_other']:+.1f} [{100 * row['ci_low_other']:+.1f}, "
                     f"{100 * row['ci_high_other']:+.1f}] '{row['verdict_other']}'.")
    return lines


def study_settings(params: Params) -> dict:
    """What decides RQ1's numbers apart from the floats: the model, training, the data sets and variants its cells
    use, and every rq1 key but the thread and worker counts. A float check is comparable with the study only where
    these are equal."""
    rq1 = params.rq1.model_dump(exclude={"threads", "workers"})
    cells = [params.rq1.parse(cell) for cell in params.rq1.cells]
    datasets, variants = sorted({cell.dataset for cell in cells}), sorted({cell.variant for cell in cells})
    return _jsonable({"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump(),
                      "datasets": {k: params.datasets[k].model_dump() for k in datasets},
                      "variants": {k: params.variants[k].model_dump() for k in variants},
                      "evaluate": params.evaluate.model_dump(), "rq1": rq1})


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _as_now(recorded: dict, current: dict) -> dict:
    """`recorded` settings read the way `study_settings` reads them now: a model key added since at its default,
    and only the data sets and variants the current cells use (others may come and go without touching RQ1)."""
    return {**recorded, "model": _jsonable(ModelParams.model_validate(recorded["model"]).model_dump()),
            "datasets": {k: recorded["datasets"].get(k) for k in current["datasets"]},
            "variants": {k: recorded["variants"].get(k) for k in current["variants"]}}


def _without_seeds(settings: dict) -> dict:
    return {**settings, "rq1": {k: v for k, v in settings["rq1"].items() if k != "seeds"}}


def write_float_check(params: Params, accuracy: pd.DataFrame, threads: int, out_dir: Path,
                      history: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rerun's per-seed accuracies, its paired differences, its training curves (`history`, per cell, seed and
    epoch) and the settings it ran with, into `out_dir`. The rerun may cover some of `rq1.cells` (a check still
    under way), each of them with every seed."""
    cells = [cell for cell in params.rq1.cells if cell in set(accuracy["cell"])]
    check_complete(accuracy, cells, params.rq1.seeds)
    paired = paired_table(accuracy)
    out_dir.mkdir(parents=True, exist_ok=True)
    accuracy.to_csv(out_dir / "accuracy.csv", index=False)
    if history is not None:
        history.to_csv(out_dir / "history.csv", index=False)
    paired.to_csv(out_dir / "paired.csv", index=False)
    (out_dir / "settings.json").write_text(json.dumps({"threads": threads, "study": study_settings(params)}, indent=1) + "\n")
    return paired


def rerun(params: Params, threads: int, out_dir: Path, log=print) -> pd.DataFrame:
    """Every cell of `params.rq1.cells`, every seed, with `threads` torch threads per process (and as many
    processes at a time as keep the study's total thread count), as the `rq1` stage runs them; writes the float
    check to `out_dir` (write_float_check) and returns its paired table."""
    if threads == params.rq1.threads:
        raise ValueError(f"--threads {threads} equals rq1.threads: the rerun would repeat the study's floats exactly")
    # as many threads in all as the study used: more than the cores makes each thread wait (4x slower measured)
    workers = max(1, params.rq1.workers * params.rq1.threads // threads)
    rerun_params = params.model_copy(update={"rq1": params.rq1.model_copy(update={"threads": threads, "workers": workers})})
    with tempfile.TemporaryDirectory() as scratch:  # weights of the rerun are not kept
        results = [run_cell(rerun_params, cell, Path(scratch) / "weights" / cell, Path(scratch) / "checkpoints", log)
                   for cell in params.rq1.cells]
    accuracy, history = (pd.concat([r[name] for r in results], ignore_index=True) for name in ("accuracy", "history"))
    return write_float_check(params, accuracy, threads, out_dir, history)


def float_check(params: Params, accuracy: pd.DataFrame, float_dir: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """The study's verdicts against the rerun's (`compare_verdicts`) among the cells the rerun covers, computed from
    the study's per-seed `accuracy` and the rerun's, with the sentences for findings.md; where the check is missing
    or ran with other settings, no table and one line saying why."""
    settings = Path(float_dir) / "settings.json"
    if not settings.is_file():
        return None, [f"Float check: not run ({settings} missing; `python -m lib.extrapolation.stability rerun`)."]
    recorded = json.loads(settings.read_text())
    current = study_settings(params)
    # a rerun of more seeds covers the study's: its seeds are retrained independently, so its rows of the study's
    # seeds are what a rerun of just those seeds gives
    rerun_seeds = recorded["study"]["rq1"]["seeds"]
    recorded_now = _without_seeds(_as_now(recorded["study"], current))
    changed = sorted(k for k, value in _without_seeds(current).items() if recorded_now.get(k) != value)
    if not set(params.rq1.seeds) <= set(rerun_seeds):
        changed.append("rq1.seeds")
    if changed:
        return None, [f"Float check: stale, it ran with other settings ({', '.join(changed)} differ from params.yaml); "
                      f"rerun it with `python -m lib.extrapolation.stability rerun` before quoting verdict stability."]
    other = pd.read_csv(Path(float_dir) / "accuracy.csv")
    other = other[other["seed"].isin(params.rq1.seeds)]
    cells = [cell for cell in params.rq1.cells if cell in set(other["cell"])]
    compared = compare_verdicts(paired_table(accuracy[accuracy["cell"].isin(cells)]), paired_table(other))
    covered = ("every cell" if len(cells) == len(params.rq1.cells)
               else f"{len(cells)} of the {len(params.rq1.cells)} cells so far ({', '.join(cells)}): the comparisons among them")
    seeds = ("every seed retrained" if set(rerun_seeds) == set(params.rq1.seeds)
             else f"every seed retrained; the study's seeds {list(params.rq1.seeds)} of the rerun's {rerun_seeds}")
    what = f"rq1.threads = {recorded['threads']} instead of {params.rq1.threads}, {covered}, {seeds}"
    lines = stability_lines(compared, what)
    if (Path(float_dir) / "history.csv").is_file():
        history = pd.read_csv(Path(float_dir) / "history.csv")
        lines.append(onset_line(history[history["seed"].isin(params.rq1.seeds)], "The rerun's learning onset"))
    return compared, lines


def float_check_lines(params: Params, accuracy: pd.DataFrame, float_dir: Path, out_dir: Path | None = None) -> list[str]:
    """`float_check`'s sentences; `out_dir` gets its table as verdict_stability.csv."""
    compared, lines = float_check(params, accuracy, float_dir)
    if compared is not None and out_dir is not None:
        compared.to_csv(Path(out_dir) / "verdict_stability.csv", index=False)
    return lines


def with_replication(paired: pd.DataFrame, compared: pd.DataFrame | None) -> pd.DataFrame:
    """`paired` with a `replicated` column: True where the rerun with other floats reached the same verdict, False
    where it did not, missing where the rerun did not cover the comparison (or there is no current float check).
    `findings` marks the False ones: a verdict that other floats overturn is not established."""
    paired = paired.copy()
    if compared is None:
        paired["replicated"] = pd.Series(pd.NA, index=paired.index, dtype="boolean")
        return paired
    keys = [k for k in COMPARISON_KEYS if k in paired and k in compared]
    marked = paired.merge(compared[keys + ["same_verdict"]], on=keys, how="left", validate="one_to_one")
    return marked.rename(columns={"same_verdict": "replicated"}).astype({"replicated": "boolean"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    again = commands.add_parser("rerun", help="every rq1 cell again with another thread count")
    again.add_argument("--threads", type=int, default=2, help="torch threads per process (the study: rq1.threads)")
    again.add_argument("--params", type=Path, default=Path("params.yaml"))
    again.add_argument("--out-dir", type=Path, default=Path("results/rq1/float_check"))
    compare = commands.add_parser("compare", help="verdicts of two paired.csv tables side by side")
    compare.add_argument("reference", type=Path, help="paired.csv of the study's run")
    compare.add_argument("other", type=Path, help="paired.csv of the rerun with other floats")
    compare.add_argument("out_dir", type=Path, help="where verdict_stability.csv and .md go")
    compare.add_argument("--what", default="rq1.threads = 2 instead of 1", help="how the rerun's floats differ")
    args = parser.parse_args(argv)
    if args.command == "rerun":
        rerun(load_params(args.params), args.threads, args.out_dir)
        return 0
    for path in (args.reference, args.other):
        if not path.is_file():
            print(f"{path}: file not found (expected a results/rq1/summary/paired.csv)", file=sys.stderr)
            return 2
    compared = compare_verdicts(pd.read_csv(args.reference), pd.read_csv(args.other))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    compared.to_csv(args.out_dir / "verdict_stability.csv", index=False)
    lines = stability_lines(compared, args.what)
    (args.out_dir / "verdict_stability.md").write_text("".join(f"- {line}\n" for line in lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
