"""One cell of the resolution study: train every seed of (dataset, augmentation, variant), then test each seed at
every scale under every protocol, and every RoPE-Mixed seed also with each test-time rescaling.

Seeds run in `rq1.workers` processes of `rq1.threads` torch threads each: a run's floats then depend on the thread
count but not on how many runs share the machine, and two single-threaded runs use 2 cores better than one run's two
threads on these small models. Changing `rq1.threads` changes the floats, which is how the study checks that its
verdicts do not hang on them.
Every seed is tested on the same first `rq1.test_images` images of the test split, so two cells (or two
rescalings of one model) are compared on the same images, seed index by seed index.
"""
import functools
import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from lib.analysis.metrics import attention_entropy
from lib.config import Params
from lib.data import ImageSet, dataset_info
from lib.extrapolation.protocols import load_scaled_set, scaled_grid
from lib.layers.rope_rescale import RopeRescaled, periods_over_grid, ramp_weights
from lib.run.study import available_cpus, limit_threads, load_trained_model, normalize, top1_correct
from lib.run.train import train_to_file
from lib.stats import wilson_interval

TRAINED = "trained"  # the method column of a model tested as trained (no test-time rescaling)


def cell_params(params: Params, cell: str, seed: int) -> Params:
    """`params` for one seed of `cell`: the cell's augmentation replaces the dataset's training augmentation, and a
    cell with its own training grid ('-g<grid>') trains at grid x patch pixels."""
    dataset, augmentation, _, _ = params.rq1.parse(cell)
    spec = params.datasets[dataset]
    update = {"train": {**spec.train, "augment": params.rq1.augmentations[augmentation].model_dump()},
              "train_resolution": params.rq1_train_resolution(cell)}
    datasets = {**params.datasets, dataset: spec.model_copy(update=update)}
    return params.model_copy(update={"seed": seed, "datasets": datasets})


def scale_plan(params: Params, cell: str) -> list[dict]:
    """Every (protocol, scale) tested for `cell` (`params` from `cell_params`): grid, resolution and the grid ratio
    actually tested."""
    dataset, _, variant, _ = params.rq1.parse(cell)
    patch = params.model_for(variant, dataset).patch_size
    train_resolution = params.datasets[dataset].train_resolution
    train_grid = train_resolution // patch
    largest = params.rq1.max_test_grid
    plan = []
    for protocol in params.rq1.protocols:
        for scale in params.rq1.scales:
            grid = scaled_grid(train_grid, scale)
            if protocol == "field_of_view" and grid < train_grid:
                continue  # a smaller canvas would cut objects: zoom only
            if largest is not None and grid > max(largest, train_grid):
                continue  # rq1.max_test_grid: attention's cost grows with the square of the tokens
            plan.append({"protocol": protocol, "scale": scale, "train_grid": train_grid, "grid": grid, "resolution": grid * patch,
                         "grid_ratio": grid / train_grid, "train_resolution": train_resolution})
    return plan


def rescalings_for(params: Params, variant: str) -> list[str]:
    """The test-time rescalings that apply to `variant`: all of rq1.rescalings for RoPE-Mixed, else none."""
    return list(params.rq1.rescalings) if params.variants[variant].pos_embed == "rope_mixed" else []


@torch.inference_mode()
def correct_predictions(model: torch.nn.Module, data: ImageSet, batch_size: int) -> torch.Tensor:
    """Bool (N,): whether each image's top-1 prediction is right."""
    return top1_correct(model, ((normalize(data.images[i:i + batch_size]), data.labels[i:i + batch_size])
                                for i in range(0, len(data), batch_size)))


@torch.no_grad()
def mean_attention_entropy(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Patch-to-patch attention entropy normalised by log(patches) (1 = uniform), mean over images, heads and
    (first value) all layers or (second) the last layer."""
    model.eval()
    _, maps = model.forward_with_attention(normalize(images))  # per layer (B, heads, N, N): no stacked copy
    patches = maps[0].shape[-1] - model.num_prefix_tokens
    if patches < 2:  # one patch: nothing to spread attention over
        return 0.0, 0.0
    per_layer = [float(attention_entropy(layer, model.num_prefix_tokens).mean()) / math.log(patches) for layer in maps]
    return sum(per_layer) / len(per_layer), per_layer[-1]


@functools.lru_cache(maxsize=16)
def scaled_test_set(root: Path, dataset: str, train_resolution: int, resolution: int, protocol: str, limit: int) -> ImageSet:
    """`load_scaled_set`, kept for the process's next seeds: every seed of a cell is tested on the same images, and
    a worker tests several seeds (rendering a cell's 10 shapes test sets again took ~2 s a seed). Read-only."""
    return load_scaled_set(root, dataset, train_resolution, resolution, protocol, limit)


def evaluate_seed(params: Params, cell: str, seed: int, model: torch.nn.Module) -> tuple[list, list]:
    """Accuracy rows (every protocol, scale and method) and attention-entropy rows (zoom, trained model) of one seed."""
    dataset, augmentation, variant, _ = params.rq1.parse(cell)
    trained_grid = model.patch_embed.grid_size
    trained_rope = model.rope
    keys = {"cell": cell, "dataset": dataset, "augmentation": augmentation, "variant": variant,
            "pos_embed": params.variants[variant].pos_embed, "seed": seed}
    accuracy, entropy = [], []
    for point in scale_plan(params, cell):
        data = scaled_test_set(Path(params.data_root), dataset, point["train_resolution"], point["resolution"], point["protocol"],
                        params.rq1.test_images)
        tested = []  # (frequencies, correct) of the methods tested at this point
        rescalings = rescalings_for(params, variant) if point["protocol"] == "zoom" else []
        for method in [TRAINED] + rescalings:
            model.rope = trained_rope if method == TRAINED else RopeRescaled(trained_rope, trained_grid, method)
            freqs = (getattr(trained_rope, "freqs", None) if method == TRAINED
                     else model.rope.frequencies_at((point["grid"], point["grid"])))
            # a rule that gives the same frequencies as one tested already (YaRN where every component is
            # interpolated is PI) gives the same predictions: reuse them instead of running the model again
            same = next((c for f, c in tested if f is not None and freqs is not None and torch.equal(f, freqs)), None)
            correct = same if same is not None else correct_predictions(model, data, params.evaluate.batch_size)
            tested.append((freqs, correct))
            low, high = wilson_interval(int(correct.sum()), len(correct))
            accuracy.append({**keys, "method": method, **point, "accuracy": float(correct.float().mean()),
                             "correct": int(correct.sum()), "n": len(correct), "wilson_low": low, "wilson_high": high})
        model.rope = trained_rope
        if point["protocol"] == "zoom":
            every, last = mean_attention_entropy(model, data.images[:params.rq1.entropy_images])
            entropy.append({**keys, **point, "entropy_all_layers": every, "entropy_last_layer": last,
                            "images": min(len(data), params.rq1.entropy_images)})
    return accuracy, entropy


def ramp_rows(params: Params, cell: str, seed: int, model: torch.nn.Module) -> list[dict]:
    """YaRN's ramp weight gamma of every learned frequency component of a RoPE-Mixed model: the shares that the
    `yarn` rule interpolates (gamma = 0: exactly position interpolation), blends, or keeps (gamma = 1)."""
    if "yarn" not in rescalings_for(params, params.rq1.parse(cell).variant):
        return []
    freqs, grid = model.rope.freqs.detach(), model.patch_embed.grid_size
    gamma, periods = ramp_weights(freqs, grid), periods_over_grid(freqs, grid)
    return [{"cell": cell, "seed": seed, "axis": axis, "components": gamma[i].numel(),
             "interpolated": float((gamma[i] == 0).float().mean()), "blended": float(((gamma[i] > 0) & (gamma[i] < 1)).float().mean()),
             "kept": float((gamma[i] == 1).float().mean()), "median_periods": float(periods[i].median()),
             "max_periods": float(periods[i].max())}
            for i, axis in enumerate(("x", "y"))]


def train_seed(params: Params, cell: str, seed: int, weights_dir: Path, checkpoint_dir: Path) -> list[dict]:
    """Train (or resume) one seed of `cell` and save its weights; return its per-epoch history rows."""
    dataset, _, variant, _ = params.rq1.parse(cell)
    history = train_to_file(cell_params(params, cell, seed), dataset, variant, weights_dir / f"seed{seed}.pt",
                            checkpoint_dir / f"{cell}-seed{seed}.pt")  # per-epoch records go to history.csv
    return [{"cell": cell, "seed": seed, **record} for record in history]


def evaluate_trained_seed(params: Params, cell: str, seed: int, weights_dir: Path) -> dict:
    """Test the saved weights of one seed of `cell`: its accuracy, entropy and ramp rows."""
    dataset, _, variant, _ = params.rq1.parse(cell)
    seeded = cell_params(params, cell, seed)
    model = load_trained_model(seeded, dataset, variant, weights_dir / f"seed{seed}.pt")
    accuracy, entropy = evaluate_seed(seeded, cell, seed, model)
    return {"accuracy": accuracy, "entropy": entropy, "ramp": ramp_rows(seeded, cell, seed, model)}


def run_cell(params: Params, cell: str, weights_dir: Path, checkpoint_dir: Path, log=print) -> dict[str, pd.DataFrame]:
    """Every seed of `cell` (rq1.workers processes of rq1.threads threads each); tables ordered by seed.

    Training and testing a seed are separate jobs, every training queued first: with an odd number of seeds the
    last training runs beside the other seeds' tests instead of beside an idle core, so 5 seeds on 2 workers take
    about 2.5 rounds of (train + test) instead of 3. A seed's floats do not depend on which process runs it."""
    weights_dir, checkpoint_dir = Path(weights_dir), Path(checkpoint_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dataset_info(params.rq1.parse(cell).dataset, Path(params.data_root))  # a missing data set fails here, not in a worker
    seeds = list(params.rq1.seeds)
    workers = min(params.rq1.workers, len(seeds), available_cpus())  # in a lane of `make repro`: its share
    if workers == 1:
        limit_threads(params.rq1.threads)
        histories = [train_seed(params, cell, seed, weights_dir, checkpoint_dir) for seed in seeds]
        tests = [evaluate_trained_seed(params, cell, seed, weights_dir) for seed in seeds]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=limit_threads,
                                 initargs=(params.rq1.threads,)) as pool:
            trainings = [pool.submit(train_seed, params, cell, seed, weights_dir, checkpoint_dir) for seed in seeds]
            histories, testing = [], []
            for seed, training in zip(seeds, trainings):  # a seed's test is queued once its training is done
                histories.append(training.result())
                log(f"{cell} seed {seed}: trained")
                testing.append(pool.submit(evaluate_trained_seed, params, cell, seed, weights_dir))
            tests = [future.result() for future in testing]
    tables = {name: pd.DataFrame([row for test in tests for row in test[name]]) for name in ("accuracy", "entropy", "ramp")}
    return {**tables, "history": pd.DataFrame([row for history in histories for row in history])}
