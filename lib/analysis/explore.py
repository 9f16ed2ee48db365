"""Exploring any trained run in JupyterLab (notebooks/explore.ipynb): its curves, metrics and attention maps.

A run is named as its folder under results/runs: `<dataset>-<variant>`, or `<dataset>-<variant>-seed<S>` for an
extra training seed. The curves are dvclive's step logs; the maps are the run's CLS attention per block and
head and its attention rollout (lib/analysis), for one test image at any resolution of its data set.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from lib.analysis.explain import cls_attention, rollout
from lib.analysis.extract import attention_maps
from lib.config import Params
from lib.run.study import load_trained_model, normalize, run_name


@dataclass(frozen=True)
class Run:
    name: str
    dataset: str
    variant: str
    seed: int | None  # None: the study's own `seed`
    folder: Path


def trained_runs(params: Params, runs_dir: Path | str = "results/runs") -> list[Run]:
    """Every run that params.yaml trains (matrices, then extra seeds), then its `test_time` runs, whose weights are
    in `runs_dir`. A test_time run's folder is the one of the run whose weights it uses (`weights_from`): that
    training is its own, so the curves and metrics there are its too."""
    triples = ([(d, v, None) for d, v in params.runs()] + params.seed_runs()
               + [(d, v, None) for d, v in params.test_time_runs()])
    runs = [Run(run_name(d, v, s), d, v, s, Path(runs_dir) / run_name(d, params.weights_variant(v), s))
            for d, v, s in triples]
    return [run for run in runs if (run.folder / "model.pt").is_file()]


def find_run(params: Params, name: str, runs_dir: Path | str = "results/runs") -> Run:
    """The trained run called `name`; an error lists the trained ones."""
    runs = trained_runs(params, runs_dir)
    for run in runs:
        if run.name == name:
            return run
    raise ValueError(f"run {name!r} is not a trained run of this params.yaml in {runs_dir} "
                     f"(trained: {', '.join(run.name for run in runs) or 'none; run `make repro` first'})")


def load_curves(run: Run) -> pd.DataFrame:
    """One row per epoch: train/val loss and accuracy and the learning rate, read from dvclive's logs."""
    folder = run.folder / "live" / "plots" / "metrics"
    logs = sorted(folder.rglob("*.tsv"))
    if not logs:
        raise FileNotFoundError(f"{folder}: no dvclive logs (expected the output of the run's train stage)")
    columns = [pd.read_csv(path, sep="\t").set_index("step")[path.stem].rename(path.relative_to(folder).with_suffix("")
                                                                                  .as_posix()) for path in logs]
    curves = pd.concat(columns, axis=1).reset_index()
    return curves.assign(epoch=curves["step"] + 1)


def load_metrics(run: Run) -> dict:
    """The run's final metrics (dvclive's metrics.json)."""
    return json.loads((run.folder / "live" / "metrics.json").read_text())


def load_model(params: Params, run: Run) -> torch.nn.Module:
    return load_trained_model(params, run.dataset, run.variant, run.folder / "model.pt")


@torch.no_grad()
def attention_view(model: torch.nn.Module, image: torch.Tensor) -> dict:
    """What the model does with one image (C, H, W) in [0, 1]: class probabilities, CLS attention of every
    block and head (L, h, gh, gw) and the rollout (gh, gw)."""
    record = attention_maps(model, normalize(image)[None])
    return {"probabilities": record.logits.softmax(-1)[0], "grid_hw": record.grid_hw,
            "cls": cls_attention(record.maps, record.grid_hw, model.num_prefix_tokens)[0],
            "rollout": rollout(record.maps, record.grid_hw, model.num_prefix_tokens)[0]}


def plot_attention_view(image: torch.Tensor, view: dict, layer: int, head: int | None, classes: list[str],
                        label: int | None = None) -> plt.Figure:
    """The image, CLS attention of block `layer` (head `head`, or the mean over heads for None), and the
    rollout over all blocks, each upsampled over the image; the title gives the prediction."""
    cls = view["cls"][layer]
    panels = [("input", None), (f"CLS attention, block {layer + 1}, " + ("head mean" if head is None else f"head {head + 1}"),
                                cls.mean(0) if head is None else cls[head]), ("rollout (all blocks)", view["rollout"])]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    pixels = image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
    for ax, (title, values) in zip(axes, panels):
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        if values is not None:
            ax.imshow(values.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest",
                      extent=(-0.5, pixels.shape[1] - 0.5, pixels.shape[0] - 0.5, -0.5))
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    confidence, predicted = view["probabilities"].max(0)
    truth = "" if label is None else f"label {classes[label]}, "
    fig.suptitle(f"{truth}predicted {classes[predicted]} ({100 * confidence:.1f}%), "
                 f"{image.shape[-2]}x{image.shape[-1]} px, grid {view['grid_hw'][0]}x{view['grid_hw'][1]}", fontsize=9)
    fig.tight_layout()
    return fig
