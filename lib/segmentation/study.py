"""The segmentation stage: per-patch heads on every seed of RQ1 cells, mIoU at every scale, compared over seeds.

Each backbone is one seed of an RQ1 cell (its saved weights); the heads are trained on the first
`segmentation.train_images` training images at the training resolution and tested on the first `test_images` test
images zoomed to every scale (the RQ1 `zoom` protocol: same picture, more pixels). Encodings are compared by paired
differences over seeds (same seed index, same images), as in RQ1.
"""
from pathlib import Path

import pandas as pd
import torch

from lib.config import Params
from lib.data import dataset_info
from lib.extrapolation.protocols import load_scaled_set, scaled_grid
from lib.extrapolation.study import cell_params
from lib.run.study import load_trained_model, map_in_workers
from lib.segmentation.probe import (LinearProbe, finetune_segmenter, first_objects, mean_iou, patch_features,
                                    patch_targets, pixel_labels, predict_pixels, raw_patches, relation_pixel_labels)
from lib.stats import paired_difference, t_interval, verdict

SUMMARY_COLUMNS = ["cell", "variant", "head", "grid_ratio", "miou", "ci_low", "ci_high", "seeds"]
RAW_PATCHES = "raw_patches"  # the control: the linear probe on each patch's own pixels (no backbone, no position)


def _sets(params: Params, cell: str, seed: int):
    """The cell's training set (training resolution) and a loader of its zoomed test set at a scale."""
    cfg = params.segmentation
    dataset = params.rq1.parse(cell).dataset
    resolution = cell_params(params, cell, seed).datasets[dataset].train_resolution
    root = Path(params.data_root)
    train = load_scaled_set(root, dataset, resolution, resolution, "zoom", cfg.train_images, split="train")
    return train, lambda size: load_scaled_set(root, dataset, resolution, size, "zoom", cfg.test_images)


def dense_labels(task: str, dataset: str, data) -> torch.Tensor:
    """Pixel labels (N, H, W) of `task` (segmentation.task) for an ImageSet with masks of `dataset`."""
    if task == "objects":
        return pixel_labels(data.masks)
    info = dataset_info(dataset)
    return relation_pixel_labels(data.masks, first_objects(data.labels, info["classes"], info["objects"]))


def _score(params: Params, heads: dict, patch: int, train_grid: int, test_set, keys: dict) -> list[dict]:
    """mIoU and pixel accuracy of every head (name -> images to per-patch logits) at every scale."""
    num_classes = 1 + len(dataset_info(keys["dataset"])["objects"])
    rows = []
    for scale in params.segmentation.scales:
        grid = scaled_grid(train_grid, scale)
        test = test_set(grid * patch)
        truth = dense_labels(params.segmentation.task, keys["dataset"], test)
        for head, logits_of in heads.items():
            with torch.no_grad():
                predicted = predict_pixels(logits_of(test.images), truth.shape[-2:])
            rows.append({**keys, "head": head, "scale": scale, "grid": grid, "grid_ratio": grid / train_grid,
                         "resolution": grid * patch, "miou": mean_iou(predicted, truth, num_classes),
                         "pixel_accuracy": float((predicted == truth).float().mean()), "images": len(test)})
    return rows


def segment_seed(params: Params, cell: str, seed: int, weights_dir: Path) -> list[dict]:
    """mIoU and pixel accuracy of both heads at every scale for one seed's backbone of `cell`."""
    cfg = params.segmentation
    dataset, _, variant, _ = params.rq1.parse(cell)
    model = load_trained_model(cell_params(params, cell, seed), dataset, variant,
                               Path(weights_dir) / cell / f"seed{seed}.pt")
    patch = model.patch_embed.patch_size[0]
    num_classes = 1 + len(dataset_info(dataset)["objects"])
    train, test_set = _sets(params, cell, seed)
    targets = patch_targets(dense_labels(cfg.task, dataset, train), patch, num_classes)
    probe = LinearProbe(num_classes, cfg.probe_c).fit(patch_features(model, train.images), targets)
    heads = {"linear probe": lambda images: probe.logits(patch_features(model, images))}
    if cfg.finetune_epochs:
        segmenter = finetune_segmenter(model, probe, train.images, targets, cfg.finetune_epochs, cfg.finetune_lr,
                                       cfg.batch_size, seed)
        heads["fine-tune"] = lambda images: torch.cat([segmenter(images[i:i + cfg.batch_size]).detach()
                                                       for i in range(0, len(images), cfg.batch_size)])
    keys = {"cell": cell, "dataset": dataset, "task": cfg.task, "variant": variant, "pos_embed": params.variants[variant].pos_embed,
            "seed": seed}
    return _score(params, heads, patch, train.images.shape[-1] // patch, test_set, keys)


def raw_patch_rows(params: Params, cell: str) -> list[dict]:
    """The control on `cell`'s data at its training grid: the linear probe on raw patch pixels, every scale. It has
    no seed (no backbone; L-BFGS is deterministic): its rows repeat for every segmentation seed, so that paired
    differences against it carry only the backbones' seed variation."""
    cfg = params.segmentation
    dataset, _, variant, _ = params.rq1.parse(cell)
    patch = params.model_for(variant, dataset).patch_size
    num_classes = 1 + len(dataset_info(dataset)["objects"])
    train, test_set = _sets(params, cell, cfg.seeds[0])
    targets = patch_targets(dense_labels(cfg.task, dataset, train), patch, num_classes)
    probe = LinearProbe(num_classes, cfg.probe_c).fit(raw_patches(train.images, patch), targets)
    heads = {"linear probe": lambda images: probe.logits(raw_patches(images, patch))}
    keys = {"cell": RAW_PATCHES, "dataset": dataset, "task": cfg.task, "variant": RAW_PATCHES, "pos_embed": "none", "seed": -1}
    rows = _score(params, heads, patch, train.images.shape[-1] // patch, test_set, keys)
    return [{**row, "seed": seed} for seed in cfg.seeds for row in rows]


def segment_cells(params: Params, weights_dir: Path, log=print) -> pd.DataFrame:
    """`segment_seed` for every cell and seed of `params.segmentation`, on rq1.workers processes of rq1.threads
    threads (as RQ1 trains them; a seed's numbers do not depend on the process that computes them)."""
    jobs = [(cell, seed) for cell in params.segmentation.cells for seed in params.segmentation.seeds]
    for cell in params.segmentation.cells:  # a missing backbone fails here, before any work
        for seed in params.segmentation.seeds:
            path = Path(weights_dir) / cell / f"seed{seed}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: segmentation.cells/seeds need rq1's weights of {cell} seed {seed} "
                                        f"(run the rq1 stage)")
    results = map_in_workers(segment_seed, [(params, cell, seed, weights_dir) for cell, seed in jobs],
                             params.rq1.workers, params.rq1.threads, log=lambda job: log(f"{job[1]} seed {job[2]}: done"))
    # the raw-pixel control at the first cell's training grid (every cell of a data set shares it, but for -g cells)
    results.append(raw_patch_rows(params, params.segmentation.cells[0]))
    return pd.DataFrame([row for rows in results for row in rows])


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Seed mean of mIoU with its 95% t-interval, per cell, head and scale."""
    rows = []
    for (cell, variant, head, scale), group in per_seed.groupby(["cell", "variant", "head", "grid_ratio"], sort=False):
        mean, low, high = t_interval(group["miou"])
        rows.append(dict(zip(SUMMARY_COLUMNS, (cell, variant, head, scale, mean, low, high, len(group)))))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def paired_summary(per_seed: pd.DataFrame, comparisons: list[tuple[str, str]]) -> pd.DataFrame:
    """mIoU differences first - second per head and scale, paired by seed (same images), with 95% t-intervals."""
    rows = []
    for first, second in comparisons:
        for (head, scale), group in per_seed.groupby(["head", "grid_ratio"], sort=False):
            a = group[group["variant"] == first].set_index("seed")["miou"].to_dict()
            b = group[group["variant"] == second].set_index("seed")["miou"].to_dict()
            if not (a and b):  # e.g. the raw-pixel control has a linear probe only
                continue
            difference = paired_difference(a, b)
            rows.append({"first": first, "second": second, "head": head, "grid_ratio": scale, **difference,
                         "verdict": verdict(difference, first, second)})
    return pd.DataFrame(rows)


def findings(summary: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """Sentences for results/README.md, every number read from the two tables (mIoU in points, 0-100)."""
    def points(value: float) -> str:
        return f"{100 * value:.1f}"

    seeds = int(summary["seeds"].min())
    lines = []
    for head, rows in summary.groupby("head", sort=False):
        cells = "; ".join(
            f"{variant} " + ", ".join(f"{r.grid_ratio:.3g}x {points(r.miou)} [{points(r.ci_low)}, {points(r.ci_high)}]"
                                      for r in part.itertuples())
            for variant, part in rows.groupby("variant", sort=False))
        lines.append(f"{head}, pixel mIoU (seed mean [95% t-CI], {seeds} seeds) by scale: {cells}.")
    for (first, second, head), rows in paired.groupby(["first", "second", "head"], sort=False):
        stated = rows[rows["verdict"].str.contains(">|<")]
        text = ", ".join(f"{r.grid_ratio:.3g}x {100 * r.difference:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
                         for r in stated.itertuples())
        lines.append(f"{head}, {first} - {second}: the interval excludes 0 at {len(stated)} of {len(rows)} scales"
                     + (f" ({text})" if text else "") + "; no difference detected at the others.")
    return lines
