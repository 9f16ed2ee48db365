"""The head comparison: every head, every seed, one regularization grid each, chosen on validation.

Protocol (the same for every head): a seed draws the training subset (and the gates, the initial
weights); each head is fitted once per value of its regularization grid (beta / beta_max for the
convex programs and the non-convex linear attention, weight decay for the other baselines; every grid
has the same length, so every head has the same tuning budget); the value with the best validation
accuracy is kept (ties: the stronger regularization); its test accuracy is the seed's result. Test
accuracies are summarized over seeds by their mean and a 95% Student-t interval.
"""
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from lib.convex.heads import ConvexHead, TorchHead, fit_path, fit_together
from lib.convex.solver import logits


@dataclass(frozen=True)
class HeadSpec:
    """A head to compare: `make(value, seed)` builds it unfitted for one value of its grid."""

    name: str
    family: str  # "convex" or "baseline"
    regularizer: str  # the grid's meaning, e.g. "beta / beta_max" or "weight decay"
    grid: tuple[float, ...]  # strongest regularization first
    make: Callable[[float, int], ConvexHead | TorchHead]

    def fit_grid(self, tokens: torch.Tensor, labels: torch.Tensor, seed: int) -> list[ConvexHead | TorchHead]:
        """Convex heads: one path, warm-started from strong to weak beta, one design; Adam-trained heads:
        one joint training run of the whole grid (each member as if trained alone)."""
        first = self.make(self.grid[0], seed)
        if isinstance(first, ConvexHead):
            return fit_path(first, tokens, labels, list(self.grid))
        return fit_together([first] + [self.make(value, seed) for value in self.grid[1:]], tokens, labels)


def training_subset(num_samples: int, size: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of the training split (all of it when size is None)."""
    if size is None or size >= num_samples:
        return torch.arange(num_samples)
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))[:size]


def accuracy(head, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    return (head.predict(tokens) == labels).double().mean().item()


def grid_accuracies(fitted: list, evaluated: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, float]]:
    """`<split>_accuracy` of every fitted grid member. Convex members of one path share their gates, so
    each split's design is built once for the whole grid (not once per member and split)."""
    first = fitted[0]
    if not (isinstance(first, ConvexHead) and all(head.gates_ is first.gates_ for head in fitted)):
        return [{f"{split}_accuracy": accuracy(head, *data) for split, data in evaluated.items()} for head in fitted]
    rows = [{} for _ in fitted]
    for split, (tokens, labels) in evaluated.items():
        design = first.design(tokens.double())
        for row, head in zip(rows, fitted):
            row[f"{split}_accuracy"] = (logits(design, head.Z_).argmax(-1) == labels).double().mean().item()
    return rows


def describe(head) -> dict:
    """Size, cost and (convex heads) optimality and rank of one fitted head."""
    row = {"fit_seconds": head.fit_seconds_, "parameters": head.num_parameters(), "objective": head.objective_}
    if isinstance(head, ConvexHead):
        ranks = head.ranks()
        certificate = head.solution_.certificate
        row |= {"rank": int(ranks.sum()), "max_block_rank": int(ranks.max()), "blocks": len(ranks),
                "duality_gap": certificate.gap, "relative_gap": certificate.relative_gap,
                "iterations": head.solution_.iterations, "converged": head.solution_.converged,
                "beta": head.beta_}
    return row


def run_comparison(
    specs: list[HeadSpec], splits: dict[str, tuple[torch.Tensor, torch.Tensor]], seeds: list[int],
    train_size: int | None, log=print, keep: dict | None = None,
) -> pd.DataFrame:
    """One row per (head, seed, grid value): accuracies on train subset / val / test and `describe`.

    keep: a dict that receives every fitted head under (head name, seed, grid value), for a later look
    at the selected ones without fitting them again.
    """
    if len({len(spec.grid) for spec in specs}) != 1:
        raise ValueError("every head needs a grid of the same length (the same tuning budget)")
    rows = []
    for seed in seeds:
        tokens, labels = splits["train"]
        index = training_subset(len(labels), train_size, seed)
        train = (tokens[index], labels[index])
        evaluated = {"train": train, "val": splits["val"], "test": splits["test"]}
        for spec in specs:
            fitted = spec.fit_grid(*train, seed)
            accuracies = grid_accuracies(fitted, evaluated)
            for position, (value, head, scores) in enumerate(zip(spec.grid, fitted, accuracies)):
                rows.append({"head": spec.name, "family": spec.family, "seed": seed, "regularizer": spec.regularizer,
                             "value": value, "grid_position": position, **scores, **describe(head)})
                if keep is not None:
                    keep[spec.name, seed, value] = head
            best = max(row["val_accuracy"] for row in rows[-len(fitted):])
            log(f"seed {seed} {spec.name}: best val {best:.3f} ({sum(h.fit_seconds_ for h in fitted):.1f} s)")
    return pd.DataFrame(rows)


def select_on_validation(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (head, seed) the grid value with the best validation accuracy (ties: strongest regularization)."""
    ordered = runs.sort_values(["head", "seed", "val_accuracy", "grid_position"], ascending=[True, True, False, True])
    selected = ordered.groupby(["head", "seed"], sort=False).head(1)
    grid_seconds = runs.groupby(["head", "seed"])["fit_seconds"].sum().rename("grid_seconds")
    return selected.join(grid_seconds, on=["head", "seed"]).reset_index(drop=True)


def mean_interval(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (nan for one value)."""
    values = values.to_numpy(dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def summarize(selected: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per head (in `order`): test accuracy mean +- 95% CI over seeds, cost, size, rank, gap."""
    rows = []
    for name in order:
        part = selected[selected["head"] == name]
        mean, half = mean_interval(part["test_accuracy"])
        row = {"head": name, "family": part["family"].iloc[0], "seeds": len(part),
               "test_accuracy": mean, "ci95": half, "val_accuracy": part["val_accuracy"].mean(),
               "regularizer": part["regularizer"].iloc[0], "chosen_value": part["value"].median(),
               "parameters": part["parameters"].mean(), "fit_seconds": part["fit_seconds"].mean(),
               "grid_seconds": part["grid_seconds"].mean()}
        if "rank" in part and part["rank"].notna().all():
            row |= {"rank": part["rank"].mean(), "duality_gap": part["duality_gap"].max(),
                    "relative_gap": part["relative_gap"].max()}
        rows.append(row)
    return pd.DataFrame(rows)


def ordering_markdown(summary: pd.DataFrame, convex: list[str], simple: list[str]) -> str:
    """The paper's claim (convex heads >= linear and MLP heads), checked on the summary's numbers."""
    acc = summary.set_index("head")
    best_simple = acc.loc[simple, "test_accuracy"].idxmax()
    def result(name: str) -> str:
        return f"{100 * acc.loc[name, 'test_accuracy']:.1f}% ± {100 * acc.loc[name, 'ci95']:.1f}"

    lines = []
    for name in convex:
        diff = acc.loc[name, "test_accuracy"] - acc.loc[best_simple, "test_accuracy"]
        overlap = abs(diff) <= acc.loc[name, "ci95"] + acc.loc[best_simple, "ci95"]
        verdict = "at least as accurate as" if diff >= 0 else "less accurate than"
        lines.append(f"- **{name}** ({result(name)}) is {verdict} the best simple head **{best_simple}** "
                     f"({result(best_simple)}): difference {100 * diff:+.1f} points, "
                     f"{'within' if overlap else 'outside'} the sum of the 95% half-widths.")
    holds = [name for name in convex if acc.loc[name, "test_accuracy"] >= acc.loc[best_simple, "test_accuracy"]]
    if len(holds) == len(convex):
        head = "The paper's ordering (convex heads ≥ linear/MLP heads) **holds** here for every convex head."
    elif holds:
        head = (f"The paper's ordering **holds only in part** here: {', '.join(holds)} reach the best simple head, "
                f"{', '.join(n for n in convex if n not in holds)} do not.")
    else:
        head = "The paper's ordering (convex heads ≥ linear/MLP heads) **does not hold** here."
    seeds = int(summary["seeds"].min())
    return "\n".join([head, "", *lines, "", f"(mean test accuracy over {seeds} seeds, ± 95% Student-t half-width)"])
