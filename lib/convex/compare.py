"""The head comparison: every head, every seed, one regularization grid each, chosen on validation.

Protocol (the same for every head): seed k is the k-th training seed of the frozen backbone (an RQ1 cell's
weights) and draws the training subset, the gates and the initial weights; each head is fitted once per value
of its regularization grid (beta / beta_max for the convex programs and the non-convex linear attention,
weight decay for the other heads; every grid has the same length, so every head has the same tuning budget);
the value with the best validation accuracy is kept (ties: the stronger regularization); its test accuracy is
the seed's result. Heads are compared by paired differences over seeds (the same seed shares the backbone,
the training subset and the test images) with 95% Student-t intervals (`lib.stats`); a difference is stated
only where its interval excludes 0.

Which baseline answers which question (`COMPARISONS`): the convex linear attention head is a linear model on
cubic token features with a nuclear-norm penalty, so against heads on pooled tokens it differs in features,
penalty and optimizer at once. The same-feature heads (an L2 logistic regression on its own features, a
linear head on the flattened tokens the mixer sees) isolate the penalty; the Adam-trained linear attention
(its primal network, same beta grid) isolates global optimality.
"""
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lib.convex.heads import (ConvexAttentionHead, ConvexFNOHead, ConvexHead, ConvexMixerHead, DesignLogisticHead,
                              LinearAttentionHead, LinearHead, MLPHead, SoftmaxAttentionHead, TorchHead, fit_design_path,
                              fit_path, fit_together)
from lib.convex.solver import logits
from lib.stats import paired_difference, t_interval, verdict


@dataclass(frozen=True)
class HeadSpec:
    """A head to compare: `make(value, seed)` builds it unfitted for one value of its grid."""

    name: str
    family: str  # what it is by features and fit (the values of HEADS), e.g. "convex" or "same features, L2"
    regularizer: str  # the grid's meaning, e.g. "beta / beta_max" or "weight decay"
    grid: tuple[float, ...]  # strongest regularization first
    make: Callable[[float, int], ConvexHead | DesignLogisticHead | TorchHead]

    def fit_grid(self, tokens: torch.Tensor, labels: torch.Tensor,
                 seed: int) -> list[ConvexHead | DesignLogisticHead | TorchHead]:
        """Convex heads: one path, warm-started from strong to weak beta, one design; logistic regressions on a
        design: one design, a fit per value; Adam-trained heads: one joint training run of the whole grid (each
        member as if trained alone)."""
        first = self.make(self.grid[0], seed)
        if isinstance(first, ConvexHead):
            return fit_path(first, tokens, labels, list(self.grid))
        if isinstance(first, DesignLogisticHead):
            return fit_design_path(first, tokens, labels, list(self.grid))
        return fit_together([first] + [self.make(value, seed) for value in self.grid[1:]], tokens, labels)


# name -> family: what each head is, by the features it sees and how it is fitted
HEADS = {
    "convex linear attention": "convex",        # program (a): nuclear norm on the cubic Gram features
    "convex gated attention": "convex",         # program (b): (a) plus sampled ReLU gate patterns
    "convex mixer": "convex",                   # program (c): nuclear norm on the (gated) flattened tokens
    "convex fno": "convex",                     # program (d): nuclear norm per (gate, Fourier mode)
    "L2 logistic, attention features": "same features, L2",  # (a)'s features, L2 penalty instead of ||.||_*
    "linear, flattened tokens": "same features, L2",         # (c)'s ungated features, L2 penalty
    "MLP, flattened tokens": "tokens, Adam",
    "linear attention (Adam)": "attention, Adam",            # (a)'s primal network, same beta grid
    "softmax attention (Adam)": "attention, Adam",
    "linear, pooled tokens": "tokens, Adam",
    "MLP, pooled tokens": "tokens, Adam",
}

# (first, second, the question the paired difference answers); rows whose heads were not run are skipped
COMPARISONS = [
    *[(name, "MLP, pooled tokens", "the paper's ordering, convex head vs MLP head on pooled tokens")
      for name in ("convex linear attention", "convex gated attention", "convex mixer", "convex fno")],
    *[(name, "MLP, flattened tokens", "convex head vs an MLP that sees every token where it is")
      for name in ("convex linear attention", "convex gated attention", "convex mixer", "convex fno")],
    ("convex linear attention", "L2 logistic, attention features", "same features, nuclear norm vs L2 penalty"),
    ("convex mixer", "linear, flattened tokens", "same features, nuclear norm (+ gates) vs L2 penalty"),
    ("convex linear attention", "linear attention (Adam)", "same network and beta grid, global optimum vs Adam"),
    ("convex gated attention", "convex linear attention", "what the sampled ReLU gates add"),
    ("MLP, flattened tokens", "MLP, pooled tokens", "what token position adds to a first-order head"),
]


def head_specs(config, grid_hw: tuple[int, int]) -> list[HeadSpec]:
    """Every head of `config.heads` (None: all of HEADS, in its order), one grid of `config.grid_size` values each.

    config: `lib.config.ConvexParams`. Convex heads and the Adam-trained linear attention share the beta / beta_max
    grid; the other heads share a weight decay grid. Every grid is geometric, strongest regularization first.
    """
    betas = tuple(float(b) for b in np.geomspace(config.beta_ratio_max, config.beta_ratio_min, config.grid_size))
    decays = tuple(float(w) for w in np.geomspace(config.weight_decay_max, config.weight_decay_min, config.grid_size))
    solver = {"max_iter": config.max_iter, "gap_tol": config.gap_tol}
    steps = config.steps
    makers = {
        "convex linear attention": lambda v, s: ConvexAttentionHead(v, gates=0, seed=s, **solver),
        "convex gated attention": lambda v, s: ConvexAttentionHead(v, gates=config.gates, seed=s, **solver),
        "convex mixer": lambda v, s: ConvexMixerHead(v, gates=config.gates, seed=s, **solver),
        "convex fno": lambda v, s: ConvexFNOHead(v, gates=config.gates, seed=s, grid_hw=grid_hw,
                                                 max_mode=config.fno_modes, **solver),
        "L2 logistic, attention features": lambda v, s: DesignLogisticHead(v, ConvexAttentionHead(gates=0), seed=s),
        "linear, flattened tokens": lambda v, s: LinearHead(weight_decay=v, steps=steps, seed=s, pool="flatten"),
        "MLP, flattened tokens": lambda v, s: MLPHead(weight_decay=v, steps=steps, seed=s, pool="flatten"),
        "linear attention (Adam)": lambda v, s: LinearAttentionHead(beta_ratio=v, num_heads=config.num_heads,
                                                                    steps=steps, seed=s),
        "softmax attention (Adam)": lambda v, s: SoftmaxAttentionHead(weight_decay=v, num_heads=config.softmax_heads,
                                                                      steps=steps, seed=s),
        "linear, pooled tokens": lambda v, s: LinearHead(weight_decay=v, steps=steps, seed=s),
        "MLP, pooled tokens": lambda v, s: MLPHead(weight_decay=v, steps=steps, seed=s),
    }
    beta_grid = {"convex linear attention", "convex gated attention", "convex mixer", "convex fno",
                 "linear attention (Adam)"}
    specs = []
    for name in config.heads or list(HEADS):
        on_beta = name in beta_grid
        specs.append(HeadSpec(name, HEADS[name], "beta / beta_max" if on_beta else "weight decay",
                              betas if on_beta else decays, makers[name]))
    return specs


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
                "beta": head.beta_, "gated_share": head.gated_share()}
    elif isinstance(head, DesignLogisticHead):
        row |= {"iterations": head.iterations_, "converged": head.converged_}
    return row


def run_comparison(
    specs: list[HeadSpec], splits: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int, log=print,
    keep: dict | None = None,
) -> pd.DataFrame:
    """One row per (head, grid value) of one seed: accuracies on train / val / test and `describe`.

    splits: {"train", "val", "test"} -> (tokens, labels) of this seed (its backbone, its training subset).
    keep: a dict that receives every fitted head under (head name, grid value), for a later look at the
    selected ones without fitting them again.
    """
    if len({len(spec.grid) for spec in specs}) != 1:
        raise ValueError("every head needs a grid of the same length (the same tuning budget)")
    rows = []
    for spec in specs:
        fitted = spec.fit_grid(*splits["train"], seed)
        accuracies = grid_accuracies(fitted, splits)
        for position, (value, head, scores) in enumerate(zip(spec.grid, fitted, accuracies)):
            rows.append({"head": spec.name, "family": spec.family, "seed": seed, "regularizer": spec.regularizer,
                         "value": value, "grid_position": position, **scores, "val_images": len(splits["val"][1]),
                         **describe(head)})
            if keep is not None:
                keep[spec.name, value] = head
        best = max(row["val_accuracy"] for row in rows[-len(fitted):])
        log(f"seed {seed} {spec.name}: best val {best:.3f} ({sum(h.fit_seconds_ for h in fitted):.1f} s)")
    return pd.DataFrame(rows)


def select_on_validation(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, head, seed) the grid value with the best validation accuracy (ties: strongest regularization);
    `at_edge` marks a choice at either end of the grid (the grid may be too narrow there), `edge_on_plateau` an
    edge choice whose inward neighbour is within one binomial standard error of it on the `val_images` images."""
    keys = [k for k in ("setting", "head", "seed") if k in runs]
    runs = runs.reset_index(drop=True)
    ordered = runs.sort_values(["val_accuracy", "grid_position"], ascending=[False, True], kind="stable")
    selected = ordered.groupby(keys, sort=False).head(1)
    grid_seconds = runs.groupby(keys)["fit_seconds"].sum().rename("grid_seconds")
    last = runs.groupby(keys)["grid_position"].max().rename("last_position")
    first_row = runs.reset_index().groupby(keys)["index"].min().rename("first_row")  # keep the runs' order
    selected = (selected.join(grid_seconds, on=keys).join(last, on=keys).join(first_row, on=keys)
                .sort_values("first_row").drop(columns="first_row").reset_index(drop=True))
    selected["at_edge"] = (selected["grid_position"] == 0) | (selected["grid_position"] == selected["last_position"])
    # an edge choice on a plateau: the next value inward scores within one binomial standard error on validation,
    # so the edge won by noise, not because the grid stops short of a better value
    inward = selected["grid_position"] + np.where(selected["grid_position"] == 0, 1, -1)
    neighbour = runs.set_index(keys + ["grid_position"])["val_accuracy"]
    inward_accuracy = [neighbour.get((*key, position), np.nan)
                       for key, position in zip(selected[keys].itertuples(index=False), inward)]
    standard_error = np.sqrt(selected["val_accuracy"] * (1 - selected["val_accuracy"]) / selected["val_images"])
    selected["edge_on_plateau"] = selected["at_edge"] & (selected["val_accuracy"] - np.array(inward_accuracy) <= standard_error)
    return selected.drop(columns="last_position")


def mean_interval(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (nan for one value)."""
    mean, low, high = t_interval(values.to_numpy(dtype=float), level)
    return mean, (high - low) / 2


def summarize(selected: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per (setting, head in `order`): test accuracy mean +- 95% CI over seeds, the chosen values, the
    seeds whose choice sits at a grid edge, cost, size, rank, gap."""
    rows = []
    groups = selected.groupby("setting", sort=False) if "setting" in selected else [(None, selected)]
    for setting, part_setting in groups:
        for name in order:
            part = part_setting[part_setting["head"] == name]
            if part.empty:
                continue
            mean, half = mean_interval(part["test_accuracy"])
            row = {"head": name, "family": part["family"].iloc[0], "seeds": len(part),
                   "test_accuracy": mean, "ci95": half, "val_accuracy": part["val_accuracy"].mean(),
                   "regularizer": part["regularizer"].iloc[0], "chosen_value": part["value"].median(),
                   "chosen_min": part["value"].min(), "chosen_max": part["value"].max(),
                   "at_edge": int(part["at_edge"].sum()) if "at_edge" in part else 0,
                   "edge_on_plateau": int(part["edge_on_plateau"].sum()) if "edge_on_plateau" in part else 0,
                   "parameters": part["parameters"].mean(), "fit_seconds": part["fit_seconds"].mean(),
                   "grid_seconds": part["grid_seconds"].mean()}
            if setting is not None:
                row = {"setting": setting} | row
            if "rank" in part and part["rank"].notna().all():
                row |= {"rank": part["rank"].mean(), "duality_gap": part["duality_gap"].max(),
                        "relative_gap": part["relative_gap"].max()}
            rows.append(row)
    return pd.DataFrame(rows)


def paired_comparisons(selected: pd.DataFrame, comparisons=COMPARISONS) -> pd.DataFrame:
    """Paired test-accuracy differences first - second over seeds (same seed: same backbone, training subset and
    test images) with 95% t-intervals, per setting; pairs with a head that was not run are left out."""
    rows = []
    for setting, part in selected.groupby("setting", sort=False):
        accuracy = {head: dict(zip(rows_["seed"], rows_["test_accuracy"])) for head, rows_ in part.groupby("head")}
        for first, second, question in comparisons:
            if first not in accuracy or second not in accuracy:
                continue
            difference = paired_difference(accuracy[first], accuracy[second])
            rows.append({"setting": setting, "first": first, "second": second, "question": question, **difference,
                         "verdict": verdict(difference, first, second)})
    return pd.DataFrame(rows)


def format_difference(row) -> str:
    return (f"{100 * row['difference']:+.1f} points [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]")


def findings(paired: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The RQ5 verdicts, one bullet per question, each stated only where the paired seed interval excludes 0."""
    lines = []
    for (first, second, question), part in paired.groupby(["first", "second", "question"], sort=False):
        results = "; ".join(f"{format_difference(row)} in `{row['setting']}`: **{row['verdict']}**"
                            for _, row in part.iterrows())
        lines.append(f"- {question[0].upper()}{question[1:]}: {first} − {second} = {results}.")
    edges = summary[summary["at_edge"] > 0]
    if len(edges):
        where = ", ".join(f"{r['head']} ({r['setting']}, {int(r['at_edge'])} of {int(r['seeds'])} seeds)"
                          for _, r in edges.iterrows())
        plateau = int(edges["edge_on_plateau"].sum())
        total = int(edges["at_edge"].sum())
        lines.append(f"- Chosen at a grid edge (the grid may be too narrow there): {where}. In {plateau} of these {total} "
                     f"choices the next value inward scores within one binomial standard error on validation (a "
                     f"plateau: the edge won by noise, not by a better value beyond the grid).")
    else:
        lines.append("- No head's validation choice sits at an edge of its grid, in any setting or seed.")
    return lines


def excess_at_choice(runs: pd.DataFrame, selected: pd.DataFrame, convex: str = "convex linear attention",
                     primal: str = "linear attention (Adam)") -> pd.Series:
    """Per (setting, seed): (primal objective / convex optimum) - 1 at the beta the primal head chose on
    validation, i.e. how far the non-convex training stopped from the certified optimum of the very program it
    minimizes, where its accuracy is read (>= 0 up to the certificate's tolerance)."""
    objective = runs.pivot_table(index=["setting", "seed", "value"], columns="head", values="objective")
    chosen = selected[selected["head"] == primal].set_index(["setting", "seed"])["value"]
    at = [(setting, seed, value) for (setting, seed), value in chosen.items()]
    excess = objective.loc[at, primal] / objective.loc[at, convex] - 1
    return excess.droplevel("value")
