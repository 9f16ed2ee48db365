"""Resolution extrapolation: accuracy of a trained model at its training resolution and others.

A model trained at one image size is tested on the same test images at other sizes, patch size
fixed, so the patch grid shrinks or grows (Heo et al. 2024, Fig. 4). MNIST and CIFAR test images are
resized, image folders decoded at each size; the procedural `shapes` scenes are re-rendered at each size,
so larger images carry real detail.
"""
import hashlib
from pathlib import Path

import pandas as pd
import torch

from lib.config import Params, fingerprint
from lib.data import load_split
from lib.run.distributed import local_device
from lib.run.study import load_trained_model, run_name
from lib.run.train import code_fingerprint, evaluate_accuracy
from lib.stats import wilson_interval


# The code whose changes can change an evaluation's numbers.
EVALUATION_CODE = ("resolution/accuracy.py", "run/train.py", "run/study.py", "data", "layers", "models")


def accuracy_vs_resolution(
    model: torch.nn.Module, params: Params, dataset: str, variant: str, split: str = "test",
    test_sets: dict | None = None,
) -> pd.DataFrame:
    """One row per test resolution: accuracy with its 95% CI, loss, grid and token count.

    test_sets: a dict that keeps the loaded (re-rendered) test sets for reuse by later calls.
    """
    spec = params.datasets[dataset]
    patch = params.model_for(variant, dataset).patch_size
    test_sets = {} if test_sets is None else test_sets
    rows = []
    for resolution in sorted({spec.train_resolution, *spec.eval_resolutions}):
        key = (dataset, split, resolution)
        if key not in test_sets:
            test_sets[key] = load_split(Path(params.data_root), dataset, split, resolution)
        data = test_sets[key]
        metrics = evaluate_accuracy(model, data, params.evaluate.batch_size, workers=params.data_workers,
                                    precision=params.train_for(dataset).precision)
        correct = round(metrics["acc"] * len(data))
        low, high = wilson_interval(correct, len(data))
        rows.append({
            "dataset": dataset,
            "variant": variant,
            "attention": params.variants[variant].attention,
            "pos_embed": params.variants[variant].pos_embed,
            "resolution": resolution,
            "train_resolution": spec.train_resolution,
            "grid": resolution // patch,
            "tokens": (resolution // patch) ** 2,
            "accuracy": metrics["acc"],
            "ci_low": low,
            "ci_high": high,
            "loss": metrics["loss"],
            "n": len(data),
        })
    return pd.DataFrame(rows)


def file_md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def evaluate_runs(params: Params, runs_dir: Path, previous: pd.DataFrame | None = None, log=print,
                  runs: list[tuple[str, str, int | None]] | None = None) -> pd.DataFrame:
    """`accuracy_vs_resolution` for every run of `runs`, one tidy table with `run` and `seed` columns.

    runs: (dataset, variant, seed) triples, seed None for the study's own `seed`; default every run of
    the training matrices (`params.runs()`), then the `test_time` runs, each with the weights of its
    `weights_from` variant; `params.seed_runs()` are the extra seeds.
    Rows of `previous` (an earlier output of this function) are reused for a run whose weights
    (md5 of model.pt) and evaluation settings are unchanged, so retraining one variant re-evaluates
    only that variant.
    """
    tables, test_sets = [], {}
    code = code_fingerprint(EVALUATION_CODE)
    runs = [(d, v, None) for d, v in params.runs() + params.test_time_runs()] if runs is None else runs
    if not runs:
        return pd.DataFrame()
    for dataset, variant, seed in runs:
        run, run_seed = run_name(dataset, variant, seed), params.seed if seed is None else seed
        trained = run_name(dataset, params.weights_variant(variant), seed)  # the run whose weights these are
        weights = Path(runs_dir) / trained / "model.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing weights of run {trained} (expected the output of its train stage)")
        key = fingerprint({
            "model_md5": file_md5(weights),
            "dataset": params.datasets[dataset].model_dump(exclude={"train"}),
            "model": params.model_for(variant, dataset).model_dump(),
            "variant": params.variants[variant].model_dump(),
            "evaluate": params.evaluate.model_dump(),
            "precision": params.train_for(dataset).precision,
            "code": code,
        })
        cached = None if previous is None or "eval_key" not in previous else previous[previous["eval_key"] == key]
        if cached is not None and len(cached):
            log(f"{run}: unchanged, reusing its evaluation")
            tables.append(cached.assign(seed=run_seed, weights=trained))
            continue
        weights_of = f" with the weights of {trained}" if trained != run else ""
        log(f"{run}: evaluating at {len(params.datasets[dataset].eval_resolutions)} resolutions{weights_of}")
        model = load_trained_model(params, dataset, variant, weights).to(local_device(params.device))
        table = accuracy_vs_resolution(model, params, dataset, variant, test_sets=test_sets)
        tables.append(table.assign(run=run, weights=trained, seed=run_seed, eval_key=key))
    return pd.concat(tables, ignore_index=True)


def evaluate_seeds(params: Params, runs_dir: Path, table: pd.DataFrame, previous: pd.DataFrame | None = None,
                   log=print) -> pd.DataFrame:
    """One row per seed and resolution for every run of `seeds.runs`: the study's own seed (its rows of
    `table`, the output of `evaluate_runs`) and each extra seed (evaluated here; `previous` as in evaluate_runs)."""
    extra = evaluate_runs(params, runs_dir, previous, log, runs=params.seed_runs())
    primary = table[table["run"].isin([run_name(d, v) for d, v in params.seeds.runs.pairs()])]
    return pd.concat([primary, extra], ignore_index=True)


def load_previous(path: Path | str) -> pd.DataFrame | None:
    """An earlier output table of this stage (for reuse of unchanged evaluations), None before the first run."""
    return pd.read_csv(path) if Path(path).is_file() else None
