"""Glue between `params.yaml` and the code: run names, model construction and loading, input scaling, seeding."""
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lib.config import Params, StudyParams
from lib.data import dataset_info
from lib.models import VisionTransformer
from lib.run.checkpoint import load_checkpoint
from lib.run.lanes import usable_cpus

# Images arrive in [0, 1]; the models see them centred to [-1, 1] (same for every dataset, so a
# perturbation or baseline image means the same thing everywhere).
INPUT_MEAN, INPUT_STD = 0.5, 0.5


def run_name(dataset: str, variant: str, seed: int | None = None) -> str:
    """Folder name of one trained configuration, e.g. 'mnist-rope_mixed' (the DVC matrix key), or
    'mnist-rope_mixed-seed1' for an extra seed of it (the `train-seeds` matrix)."""
    return f"{dataset}-{variant}" if seed is None else f"{dataset}-{variant}-seed{seed}"


def limit_threads(threads: int | None) -> None:
    """torch's threads and the BLAS/OpenMP pools scikit-learn's solver uses, in a worker process or a stage that runs
    beside another (params.yaml `threads`): two processes of unbounded threads each would oversubscribe the cores.
    None leaves the defaults (every core)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def available_cpus() -> int:
    """How many CPUs this process may run on: a stage that `make repro` runs beside another (lib/run/lanes.py) gets
    its share, and a pool of worker processes inside it is no larger (every CPU where the OS cannot say)."""
    return len(usable_cpus())


def map_in_workers(function, jobs: list[tuple], workers: int, threads: int, log=None) -> list:
    """[function(*job) for job in jobs] on `workers` spawned processes of `threads` threads each, at most one per
    available CPU (in this process where one worker would do), results in the jobs' order; log(job) as each job's
    result arrives, in that order. A job's result must not depend on the process that computes it (each seeds its
    own randomness)."""
    workers = min(workers, len(jobs), available_cpus())
    if workers <= 1:
        limit_threads(threads)
        results = []
        for job in jobs:
            results.append(function(*job))
            if log:
                log(job)
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=limit_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(function, *job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures):
            results.append(future.result())
            if log:
                log(job)
    return results


def run_folders(root: Path, runs: StudyParams, table: str, stage: str) -> list[Path]:
    """`root/<dataset>-<variant>` for every run of `runs`, in params.yaml's order; a run without `table`
    is an error naming each missing file (never a silent gap in a comparison)."""
    folders = [Path(root) / run_name(dataset, variant) for dataset, variant in runs.pairs()]
    missing = [str(folder / table) for folder in folders if not (folder / table).is_file()]
    if missing:
        raise FileNotFoundError(f"{stage} tables missing (run the `{stage}` stage first): {', '.join(missing)}")
    return folders


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - INPUT_MEAN) / INPUT_STD


def build_model(params: Params, dataset: str, variant: str) -> VisionTransformer:
    """The ViT for `variant` on `dataset`, with the architecture from params (plus variant overrides)."""
    info = dataset_info(dataset, Path(params.data_root))
    arch = params.model_for(variant, dataset)
    spec = params.variants[variant]
    return VisionTransformer(
        img_size=params.datasets[dataset].train_resolution,
        patch_size=arch.patch_size,
        in_chans=info["in_chans"],
        num_classes=info["num_classes"],
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        attention=spec.attention,
        attention_kwargs=dict(spec.attention_kwargs),
        pos_embed=spec.pos_embed,
        pos_embed_kwargs=dict(spec.pos_embed_kwargs),
        rope_theta=arch.rope_theta,
        drop_path_rate=arch.drop_path_rate,
        init_values=arch.init_values,
        global_pool=arch.global_pool,
        reg_tokens=arch.num_registers,
    )


def load_trained_model(params: Params, dataset: str, variant: str, weights_path: Path) -> torch.nn.Module:
    """Rebuild the model from params and load the weights a training run saved."""
    state = load_checkpoint(weights_path)
    if "model" not in state:
        raise ValueError(f"{weights_path}: expected a dict with a 'model' state dict, found keys {sorted(state)}")
    model = build_model(params, dataset, variant)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (N, K) of `model` in eval mode on model-ready (normalized) inputs (N, C, H, W), in batches."""
    model.eval()
    return torch.cat([model(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)])


@torch.no_grad()
def top1_correct(model: torch.nn.Module, batches) -> torch.Tensor:
    """Bool (N,) on the CPU: whether the model's top-1 prediction is each image's label, over (model-ready images,
    labels) batches; the images go to the device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(images.to(device)).argmax(-1).cpu() == labels.cpu() for images, labels in batches])


def seed_everything(seed: int, device: torch.device = torch.device("cpu")) -> None:
    """Seed Python, NumPy and torch, and make torch pick deterministic kernels (on a GPU, where it has them:
    a CUDA op without a deterministic kernel warns instead of stopping the run)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffling, augmentation and dropout, so a resumed run repeats it exactly."""
    return seed * 100_003 + epoch
