"""Training one configuration: AdamW, warmup + cosine, label smoothing, light augmentation.

The run saves a checkpoint after every epoch and resumes from it automatically. Each epoch draws its
shuffling, augmentation and dropout from a seed derived from (seed, epoch), so a resumed run repeats
exactly what an uninterrupted run would have done: same parameters and seed, same metrics.
A checkpoint remembers the configuration it was trained with (`run_config`: code, settings and a hash of
the data); one written for another configuration is set aside (renamed, never deleted) and training starts
afresh, with one line naming what differs. A checkpoint exists only to resume an interrupted run: once the
finished model is written (`save_model`), it is deleted, so the next run of the configuration trains anew.

Launched by torchrun, the same code trains on several GPUs or machines with DistributedDataParallel
(lib/run/distributed.py; entry point lib/run/train_cli.py). A batch stays `batch_size` images in all: every process
draws the same shuffle and augmentation, trains on its share of each batch (every world_size-th image) and
DDP averages the gradients, so the result equals a single process's up to the order of float sums.
Evaluation is sharded the same way and its sums added up. Only rank 0 reads and writes files (checkpoint,
dvclive logs); a checkpoint resumes with any number of processes. Not bit-for-bit equivalent: dropout and
stochastic depth draw independently on each process, and batch-level auxiliary losses (MoH load balance)
are computed over each share.
"""
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from dvclive import Live
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lib.config import Params, fingerprint
from lib.data import collate, load_split, take
from lib.data.augment import random_affine, random_hflip, random_resized_crop
from lib.data.pin import check_pinned, dataset_hash
from lib.run import distributed as dist
from lib.run.checkpoint import CheckpointError, load_checkpoint, save_atomic
from lib.run.compiling import compile_or_eager
from lib.run.study import build_model, epoch_seed, normalize, seed_everything


# The code whose changes can change a trained model (a checkpoint from other code is not resumed).
TRAINING_CODE = ("run/checkpoint.py", "run/distributed.py", "run/study.py", "run/train.py", "data", "layers", "models")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    resumed_from_epoch: int = 0
    config: dict = field(default_factory=dict)  # run_config: what the weights were trained with
    checkpoint_path: Path | None = None  # the run's checkpoint, deleted by save_model


def run_config(params: Params, dataset: str, variant: str) -> dict:
    """Everything that determines the trained weights, as plain data (fingerprinted for resume).

    "data" is the hash of the files the run trains on: new labels or images make a checkpoint another
    configuration's, which is never resumed.
    """
    return {
        "code": code_fingerprint(TRAINING_CODE),
        "data": dataset_hash(Path(params.data_root), dataset),
        "seed": params.seed,
        "dataset": dataset,
        "dataset_params": params.datasets[dataset].model_dump(),
        "variant": params.variants[variant].model_dump(),
        "model": params.model_for(variant, dataset).model_dump(),
        "train": params.train_for(dataset).model_dump(),
    }


def code_fingerprint(parts: tuple[str, ...] = ()) -> str:
    """Hash of the `lib` sources (or of the given files / folders under lib/): work done by other code is redone."""
    root = Path(__file__).parents[1]  # lib/
    folders = [root / part for part in parts] or [root]
    sources = sorted({p for folder in folders for p in ([folder] if folder.is_file() else folder.rglob("*.py"))})
    return fingerprint({str(p.relative_to(root)): p.read_text() for p in sources})


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: fp32 as it is, or bf16 autocast (matrix products in bfloat16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, data: Dataset, batch_size: int, label_smoothing: float = 0.0,
                      workers: int = 0, precision: str = "fp32") -> dict:
    """Mean loss and accuracy of `model` on `data` (eval mode, no augmentation), on the model's device.

    Under torchrun every process must call it: each evaluates its shard of `data`, the sums are added up
    across processes and every process gets the result for the whole of `data`.
    workers: DataLoader processes that decode a lazy data set (an image folder).
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for images, labels in DataLoader(dist.shard(data), batch_size=batch_size, collate_fn=collate,
                                     num_workers=workers, pin_memory=device.type == "cuda"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(normalize(images)).float()
        loss_sum += F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
    loss_sum, correct = dist.all_reduce_sum(loss_sum, correct)
    return {"loss": loss_sum / len(data), "acc": correct / len(data)}


def train(
    params: Params,
    dataset: str,
    variant: str,
    live_dir: Path,
    checkpoint_path: Path,
    progress: bool = True,
) -> TrainResult:
    """Train `variant` on `dataset`; log to dvclive in `live_dir`; checkpoint to `checkpoint_path`.

    progress: show a per-step progress bar (a one-line summary is printed after every epoch regardless).
    Under torchrun every process calls this (it joins the process group) and gets the same result; only
    rank 0 writes the checkpoint and the logs, and prints.
    """
    device = dist.setup(params.device)  # params' device; under torchrun this process's GPU (or CPU share)
    world = dist.world_size()
    cfg = params.train_for(dataset)
    config = run_config(params, dataset, variant)
    config_id = fingerprint(config)
    seed_everything(params.seed, device)

    data_root = Path(params.data_root)
    check_pinned(data_root)  # never train on data that differs from what data.dvc pins
    resolution = params.datasets[dataset].train_resolution
    train_set = load_split(data_root, dataset, "train", resolution)  # image folders: decoded lazily
    if cfg.train_subset:
        train_set = take(train_set, range(min(cfg.train_subset, len(train_set))))
    val_set = load_split(data_root, dataset, "val", resolution)
    if cfg.batch_size % world or 0 < len(train_set) % cfg.batch_size < world:
        raise ValueError(
            f"{world} processes cannot share batches of {cfg.batch_size} images ({len(train_set)} in all): "
            f"batch_size must be divisible by the number of processes, and the last batch hold at least one image each"
        )

    model = build_model(params, dataset, variant).to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=cfg.epochs * steps_per_epoch, lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_epochs * steps_per_epoch, warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False,
    )

    start_epoch, history = _resume(checkpoint_path, config, model, optimizer)
    parallel = dist.wrap(model, device)  # train through this: with several processes DDP averages their gradients
    if cfg.compile:
        first = collate([train_set[i] for i in range(min(cfg.batch_size // world, len(train_set)))])[0].to(device)

        def warmup(compiled):  # one training forward and backward, as the steps below run them
            with autocast(device, cfg.precision):
                loss = compiled(normalize(first)).float().sum()
            loss.backward()
        parallel = compile_or_eager(parallel, f"{dataset}-{variant}", warmup,
                                    log=lambda line: print(line, flush=True) if dist.is_main() else None)
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) if dist.is_main() else None
    for past in history:  # a resumed run re-logs what came before, so the curves are whole
        _log_epoch(live, past)

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(epoch_seed(params.seed, epoch))  # the same on every process
        torch.manual_seed(epoch_seed(params.seed, epoch) + dist.rank() * 2**40)  # dropout / drop-path, per process
        order = torch.randperm(len(train_set), generator=generator)
        batches = order.split(cfg.batch_size)
        shares = [batch[dist.share()].tolist() for batch in batches]  # each process trains on its share of each batch
        loader = DataLoader(train_set, batch_sampler=shares, collate_fn=collate, num_workers=params.data_workers,
                            pin_memory=device.type == "cuda")
        parallel.train()
        loss_sum, correct, seen = 0.0, 0, 0
        show = progress and dist.is_main()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        for step, (images, labels) in enumerate(bar):
            scheduler.step_update(epoch * steps_per_epoch + step)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            whole = len(batches[step])  # images in the whole batch, of which this process holds len(labels)
            images = augment(images, cfg.augment, generator, batch=whole, rows=dist.share())
            if cfg.augment.hflip:
                images = random_hflip(images, generator, batch=whole, rows=dist.share())
            with autocast(device, cfg.precision):
                logits = parallel(normalize(images))
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing) + auxiliary_loss(model)
            if not dist.all_true(bool(torch.isfinite(loss))):  # every process stops, or none
                raise NonFiniteLossError(
                    f"loss became non-finite ({loss.item()} on this process) at epoch {epoch + 1}, step {step + 1}; "
                    f"stopping. The last good checkpoint ({checkpoint_path}, epoch {epoch}) is kept."
                )
            optimizer.zero_grad(set_to_none=True)
            # weighted by the share's size: the mean over processes that DDP takes is then the whole batch's mean
            (loss * (len(labels) * world / whole)).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")

        val = evaluate_accuracy(model, val_set, params.evaluate.batch_size, cfg.label_smoothing,
                                workers=params.data_workers, precision=cfg.precision)
        loss_sum, correct, seen = dist.all_reduce_sum(loss_sum, correct, seen)  # over the whole training set
        record = {
            "epoch": epoch + 1,
            "train/loss": loss_sum / seen,
            "train/acc": correct / seen,
            "val/loss": val["loss"],
            "val/acc": val["acc"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        _log_epoch(live, record)
        if dist.is_main():
            save_atomic(
                {"config_id": config_id, "config": config, "epoch": epoch + 1, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "history": history},
                checkpoint_path,
            )
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train/loss']:.4f} acc {record['train/acc']:.4f}"
                  f" | val loss {record['val/loss']:.4f} acc {record['val/acc']:.4f}"
                  f" | {record['epoch_seconds']:.1f}s", flush=True)
        dist.barrier()  # the other processes wait until the epoch's checkpoint is written
    if live is not None:
        end_live(live)
    return TrainResult(model=model, history=history, resumed_from_epoch=start_epoch, config=config,
                       checkpoint_path=Path(checkpoint_path))


def save_model(result: TrainResult, path: Path) -> None:
    """Write the trained weights and their run configuration to `path` (model.pt), then delete the checkpoint.

    The checkpoint exists only to resume an interrupted run. Kept after the run, the next run of the same
    configuration would resume it and return the finished model untrained (`dvc repro --force` could never
    retrain), and checkpoints/ would fill with finished runs. It goes only once model.pt is written: a run killed
    in between resumes after its last epoch and writes model.pt then. Call on rank 0 only, as every file write.
    """
    weights = {key: value.cpu() for key, value in result.model.state_dict().items()}
    save_atomic({"model": weights, "config": result.config}, path)
    if result.checkpoint_path is not None:
        Path(result.checkpoint_path).unlink(missing_ok=True)


def train_to_file(params: Params, dataset: str, variant: str, weights_path: Path, checkpoint_path: Path) -> list[dict]:
    """Train (or resume) one configuration and save its weights to `weights_path` (`save_model`), without dvclive
    logs: what a stage that trains several seeds in one process needs. Returns the per-epoch history."""
    with tempfile.TemporaryDirectory() as live_dir:
        result = train(params, dataset, variant, live_dir=Path(live_dir), checkpoint_path=checkpoint_path, progress=False)
    save_model(result, weights_path)  # and delete the finished run's checkpoint
    return result.history


def save_run(result: TrainResult, out_dir: Path, processes: int = 1) -> None:
    """Write a finished run into its folder: `model.pt` (`save_model`, which then deletes the checkpoint) and
    `timing.json` (training seconds, the epoch it resumed after, the number of processes). Rank 0 only."""
    out_dir = Path(out_dir)
    save_model(result, out_dir / "model.pt")
    timing = {"train_seconds": sum(record["epoch_seconds"] for record in result.history),
              "resumed_from_epoch": result.resumed_from_epoch, "processes": processes}
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")


def augment(images: torch.Tensor, settings, generator: torch.Generator, batch: int, rows: slice) -> torch.Tensor:
    """The configured scale augmentation (`train.augment`): RandomResizedCrop where `crop_area` is set, else
    light shifts and zooms; the draws are the whole batch's and `rows` of them are applied (one process's share)."""
    if settings.crop_area is not None:
        return random_resized_crop(images, tuple(settings.crop_area), tuple(settings.crop_ratio), generator,
                                   batch=batch, rows=rows)
    return random_affine(images, settings.translate, settings.scale, generator, batch=batch, rows=rows)


def auxiliary_loss(model: torch.nn.Module) -> torch.Tensor | float:
    """Sum of the `aux_loss` that layers set during the forward (e.g. MoH's load balance), else 0."""
    return sum(m.aux_loss for m in model.modules() if getattr(m, "aux_loss", None) is not None)


def _resume(path: Path, config: dict, model, optimizer) -> tuple[int, list[dict]]:
    """Load the checkpoint at `path` if it belongs to this configuration; return (next epoch, history).

    Only rank 0 reads (or sets aside) the file and sends what it found to the other processes, so they need
    not share its file system; an unreadable checkpoint stops every process with the same error.
    """
    state = None
    if dist.is_main():
        try:
            state = _read_resumable(Path(path), config)
        except CheckpointError as err:
            state = err
    state = dist.broadcast_object(state)
    if isinstance(state, CheckpointError):
        raise state
    if state is None:
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"], list(state["history"])


def _read_resumable(path: Path, config: dict) -> dict | None:
    """The checkpoint at `path` if there is one for this configuration; one for another is renamed aside."""
    if not path.exists():
        return None
    # a checkpoint only resumes an interrupted run: deleting a broken one loses at most that run's epochs
    delete = f"; delete it (rm {path}) to train this run from scratch"
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{delete}") from None
    missing = {"config_id", "epoch", "model", "optimizer", "history"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of this study (missing {sorted(missing)}){delete}")
    if state["config_id"] != fingerprint(config):
        stale = path.with_name(f"{path.stem}.{state['config_id']}.stale{path.suffix}")
        path.rename(stale)
        print(f"{path}: written for another configuration{_difference(state.get('config'), config)}; "
              f"kept as {stale.name}, starting from scratch")
        return None
    print(f"{path}: resuming after epoch {state['epoch']}")
    return state


def _difference(old: dict | None, new: dict) -> str:
    """' (changed: <dotted names>)' from a checkpoint's run config to this run's; '' for a checkpoint from
    before configs were stored (it has only the fingerprint)."""
    names = _differing(old, new) if isinstance(old, dict) else []
    return f" (changed: {', '.join(names)})" if names else ""


def _differing(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts (e.g. ['data', 'train.epochs'])."""
    names = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differing(a, b, f"{prefix}{key}.")
        elif key not in old or key not in new or a != b:
            names.append(f"{prefix}{key}")
    return names


STEP_SIGNAL_FILE = "DVCLIVE_STEP_COMPLETED"  # dvclive's per-repository step signal for DVC's VS Code extension


def end_live(live: Live) -> None:
    """End a dvclive run, tolerating one race between runs in parallel (RQ1 trains its seeds side by side).

    dvclive's last act in `Live.end` removes the step signal it keeps for DVC's VS Code extension, one file per
    repository (.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED), by checking that it exists and then removing it;
    another run can remove it in between, and the FileNotFoundError would fail a finished run (dvclive 3.49; the
    same check-then-remove race as treeverse/dvclive#624). Losing that race loses nothing: the run's logs are
    written before it. Any other missing file still raises.
    """
    try:
        live.end()
    except FileNotFoundError as error:
        if Path(error.filename or "").name != STEP_SIGNAL_FILE:
            raise


def _log_epoch(live: Live | None, record: dict) -> None:
    """Log an epoch's metrics (on rank 0, the only one with a `live`); wall-clock time is left out so that reruns
    give identical metrics."""
    if live is None:
        return
    for key, value in record.items():
        if key not in ("epoch", "epoch_seconds"):
            live.log_metric(key, value)
    live.next_step()
