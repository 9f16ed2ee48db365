"""Explanations over training seeds (RQ3): is one method more faithful than another for the *architecture*?

`lib.analysis.compare` compares methods on one trained model, with intervals over its test images: it says whether
the methods differ on that model. Whether they differ for a position encoding is a claim over training runs, so
here every seed of RQ1's cells (the same weights RQ1 tests) is explained on the same test images: a method's score
per seed is its mean over the images, and methods are compared by paired differences over seeds (same seed, same
images; `lib.stats`), with Student-t 95% intervals.

Per seed (`explain_seed`): deletion / insertion AUC under every fill of `analysis.fills` (Integrated Gradients from
`analysis.ig_baseline`, plus IG integrated from each fill's image, `IG_FROM_FILL`), localisation (pointing game,
relevance mass) where the data set has object masks, the cascading-randomisation sanity check with every layer
re-drawn, and the accuracy on the explained images. Across seeds (`compare_over_seeds`): per cell, fill and metric,
each method's seed mean, its paired difference from the random order and its gap to the best method; a method whose
gap interval reaches 0 is tied with the best, as in `compare_methods`.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from lib.analysis.compare import STATUS_BEST, STATUS_TIED, STATUS_WORSE
from lib.analysis.explained import explain_and_score, sanity_check
from lib.analysis.tables import IG_FROM_FILL, localisation_per_image
from lib.config import Params
from lib.data import load_split
from lib.extrapolation.study import cell_params
from lib.run.study import load_trained_model, map_in_workers
from lib.stats import paired_difference, t_interval, verdict

IG = "integrated_gradients"
RANDOM = "random"
NOT_TESTABLE = "not testable (fewer than 2 seeds)"
COMPARISON_COLUMNS = ["cell", "variant", "fill", "metric", "method", "better", "value", "ci_low", "ci_high",
                      "vs_reference", "vs_reference_low", "vs_reference_high", "vs_reference_verdict", "gap_to_best",
                      "gap_low", "gap_high", "status", "seeds", "reference"]
FINDING_METRICS = ("deletion_auc", "insertion_auc", "pointing_game", "relevance_mass")  # findings.md; the tables: all


def explain_seed(params: Params, cell: str, seed: int, weights_dir: Path) -> dict[str, list[dict]]:
    """Every RQ3 score of one seed's model of `cell`, each a mean over the first `analysis.num_images` images.

    Returns rows for the tables `scores` (fill, method, metric, better, value; localisation metrics have fill
    "none"), `sanity` (method, spearman with every layer re-drawn) and `accuracy`."""
    cfg = params.analysis
    dataset, _, variant, _ = params.rq1.parse(cell)
    model = load_trained_model(cell_params(params, cell, seed), dataset, variant,
                               Path(weights_dir) / cell / f"seed{seed}.pt")
    batch_size = params.evaluate.batch_size
    data = load_split(Path(params.data_root), dataset, cfg.split, params.datasets[dataset].train_resolution,
                      limit=cfg.max_images, workers=params.data_workers)
    mean_colour = data.images.mean(dim=(0, 2, 3), keepdim=True)  # as notebooks/analysis.py: the headline fill
    shown = slice(0, min(cfg.num_images, len(data)))
    images, labels = data.images[shown], data.labels[shown]
    # the training seed draws the random maps and tie-breaks: the random order is replicated like the models
    predicted, ig_reference, explanations, by_fill = explain_and_score(model, images, labels, mean_colour, cfg,
                                                                       cfg.fills, seed, batch_size, resamples=1)
    keys = {"cell": cell, "dataset": dataset, "variant": variant, "pos_embed": params.variants[variant].pos_embed,
            "seed": seed}
    per_image = [tables["per_image"].assign(fill=fill) for fill, tables in by_fill.items()]
    if data.masks is not None:
        per_image.append(localisation_per_image(explanations.maps, data.masks[shown], images, labels,
                                                model.patch_embed.patch_size).assign(fill="none"))
    scores = (pd.concat(per_image, ignore_index=True)
              .groupby(["fill", "method", "metric", "better"], sort=False)["value"].mean().reset_index())
    sanity_rows = []
    if cfg.sanity_images:
        sanity = sanity_check(model, images, predicted, ig_reference, cfg, seed, resamples=1)
        last = sanity[sanity["step"] == sanity["step"].max()]
        sanity_rows = [{**keys, "method": row.method, "spearman": row.spearman, "images": row.n}
                       for row in last.itertuples()]
    correct = predicted == labels
    return {"scores": [{**keys, **row} for row in scores.to_dict("records")], "sanity": sanity_rows,
            "accuracy": [{**keys, "accuracy": float(correct.float().mean()), "images": len(correct)}]}


def explain_cells(params: Params, weights_dir: Path, log=print) -> dict[str, pd.DataFrame]:
    """`explain_seed` for every cell of `analysis.seed_cells` and seed of `analysis.seeds`, on rq1.workers processes
    of rq1.threads threads (a seed's numbers do not depend on the process that computes them)."""
    cfg = params.analysis
    jobs = [(cell, seed) for cell in cfg.seed_cells for seed in cfg.seeds]
    for cell, seed in jobs:  # a missing model fails here, before any work
        path = Path(weights_dir) / cell / f"seed{seed}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: analysis.seed_cells / analysis.seeds need rq1's weights of {cell} seed "
                                    f"{seed} (run the rq1 stage)")
    results = map_in_workers(explain_seed, [(params, cell, seed, weights_dir) for cell, seed in jobs],
                             params.rq1.workers, params.rq1.threads,
                             log=lambda job: log(f"{job[1]} seed {job[2]}: explained"))
    return {name: pd.DataFrame([row for result in results for row in result[name]])
            for name in ("scores", "sanity", "accuracy")}


def _oriented(table: pd.DataFrame) -> pd.DataFrame:
    """seed x method scores of one metric, the sign flipped where lower is better (positive: better)."""
    sign = 1.0 if table["better"].iloc[0] == "higher" else -1.0
    return sign * table.pivot(index="seed", columns="method", values="value")


def compare_over_seeds(scores: pd.DataFrame, reference: str = RANDOM) -> pd.DataFrame:
    """Per cell, fill, metric and method: the seed mean (t-interval), the paired difference from `reference` and the
    gap to the best method (both oriented: positive means better than the reference / the best is better; paired
    over seeds, t-intervals), and the status best / tied with best / worse. IG_FROM_FILL, a control, takes part in
    neither the best nor the ties; nor does the reference."""
    rows = []
    for (cell, variant, fill, metric), table in scores.groupby(["cell", "variant", "fill", "metric"], sort=False):
        wide = _oriented(table)
        candidates = [m for m in wide.columns if m not in (reference, IG_FROM_FILL)]
        best = max(candidates, key=lambda method: wide[method].mean())
        for method in wide.columns:
            mean, low, high = t_interval(table.loc[table["method"] == method, "value"])
            versus = (paired_difference(wide[method].to_dict(), wide[reference].to_dict())
                      if reference in wide.columns and method != reference else None)
            if method in (reference, IG_FROM_FILL):
                gap, status = None, ""
            elif method == best:
                gap, status = {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}, STATUS_BEST
            else:
                gap = paired_difference(wide[best].to_dict(), wide[method].to_dict())
                status = (NOT_TESTABLE if not np.isfinite(gap["ci_low"])
                          else STATUS_TIED if gap["ci_low"] <= 0 else STATUS_WORSE)
            rows.append({
                "cell": cell, "variant": variant, "fill": fill, "metric": metric, "method": method,
                "better": table["better"].iloc[0], "value": mean, "ci_low": low, "ci_high": high,
                "vs_reference": versus["difference"] if versus else np.nan,
                "vs_reference_low": versus["ci_low"] if versus else np.nan,
                "vs_reference_high": versus["ci_high"] if versus else np.nan,
                "vs_reference_verdict": verdict(versus, method, reference) if versus else "",
                "gap_to_best": gap["difference"] if gap else np.nan, "gap_low": gap["ci_low"] if gap else np.nan,
                "gap_high": gap["ci_high"] if gap else np.nan, "status": status,
                "seeds": int(wide[method].notna().sum()), "reference": reference,
            })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def ig_gain_over_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """Per cell, fill and deletion / insertion metric: IG integrated from the fill's image minus IG from the study's
    baseline, oriented (positive: the fill-baseline IG looks more faithful), paired over seeds with a t-interval."""
    rows = []
    faithfulness = scores[scores["method"].isin([IG, IG_FROM_FILL])]
    for (cell, variant, fill, metric), table in faithfulness.groupby(["cell", "variant", "fill", "metric"], sort=False):
        wide = _oriented(table)
        if IG_FROM_FILL not in wide.columns:  # localisation: no fill to integrate from
            continue
        gain = paired_difference(wide[IG_FROM_FILL].to_dict(), wide[IG].to_dict())
        rows.append({"cell": cell, "variant": variant, "fill": fill, "metric": metric, "gain": gain["difference"],
                     "gain_low": gain["ci_low"], "gain_high": gain["ci_high"], "seeds": gain["seeds"],
                     "verdict": verdict(gain, "from the fill", "from the baseline")})
    return pd.DataFrame(rows)


def sanity_over_seeds(sanity: pd.DataFrame, max_correlation: float) -> pd.DataFrame:
    """Per cell and method: the mean rank correlation of the maps with every layer re-drawn against the trained
    model's (seed mean, t-interval over seeds); a method fails where the interval reaches `max_correlation`."""
    rows = []
    for (cell, variant, method), table in sanity.groupby(["cell", "variant", "method"], sort=False):
        mean, low, high = t_interval(table["spearman"])
        rows.append({"cell": cell, "variant": variant, "method": method, "spearman": mean, "ci_low": low,
                     "ci_high": high, "seeds": int(table["spearman"].notna().sum()), "max_correlation": max_correlation,
                     "fails": bool(high >= max_correlation) if np.isfinite(high) else None})
    return pd.DataFrame(rows)


def _methods(names) -> str:
    return ", ".join(str(name) for name in names) or "none"


def findings(comparison: pd.DataFrame, gains: pd.DataFrame, sanity: pd.DataFrame, accuracy: pd.DataFrame) -> list[str]:
    """The sentences results/README.md quotes, each from the tables above: per fill and metric, the best method of
    each cell (alone, or with the methods tied with it); which methods beat the random order in every cell; what
    integrating IG from the fill image buys it; which methods fail the sanity check."""
    cells = list(dict.fromkeys(comparison["cell"]))
    seeds = sorted(set(accuracy["seed"]))
    lines = [f"Design: {len(seeds)} training seeds ({_methods(seeds)}) of each of {len(cells)} RQ1 cells "
             f"({_methods(cells)}), explained on the same {int(accuracy['images'].iloc[0])} test images; accuracy on "
             f"them {100 * accuracy['accuracy'].min():.0f}-{100 * accuracy['accuracy'].max():.0f}%. A method's score per "
             f"seed is its mean over the images; differences are paired over seeds [95% t-CI]; a method is tied with "
             f"the best where its gap's interval reaches 0."]
    compared = comparison[comparison["metric"].isin(FINDING_METRICS)]
    for (fill, metric), table in compared.groupby(["fill", "metric"], sort=False):
        per_cell, alone = [], 0
        for cell, part in table.groupby("cell", sort=False):
            best = part.loc[part["status"] == STATUS_BEST, "method"].tolist()
            tied = sorted(part.loc[part["status"] == STATUS_TIED, "method"])
            alone += not tied
            per_cell.append(f"{cell}: {best[0]}" + (f" (tied: {_methods(tied)})" if tied else " alone"))
        beats = [method for method, part in table[table["method"] != RANDOM].groupby("method", sort=False)
                 if (part["vs_reference_low"] > 0).all()]
        where = f"{metric}, {fill} fill" if fill != "none" else metric
        lines.append(f"{where}: best alone over seeds in {alone} of {len(per_cell)} cells ({'; '.join(per_cell)}); "
                     f"above the random order in every cell: {_methods(m for m in beats if m != IG_FROM_FILL)}.")
    for (fill, metric), table in gains[gains["metric"].isin(FINDING_METRICS)].groupby(["fill", "metric"], sort=False):
        faster = int((table["gain_low"] > 0).sum())
        slower = int((table["gain_high"] < 0).sum())
        lines.append(f"IG integrated from the {fill} fill's image instead of the baseline, {metric}: looks more faithful "
                     f"in {faster} of {len(table)} cells, less in {slower} (gains "
                     f"{table['gain'].min():+.3f} to {table['gain'].max():+.3f}).")
    if len(sanity):
        failing = {method: sorted(part.loc[part["fails"] == True, "cell"])  # noqa: E712 (None: not testable)
                   for method, part in sanity.groupby("method", sort=False)}
        lines.append("Sanity check, every layer re-drawn: fails (mean rank correlation's seed interval reaches "
                     f"{sanity['max_correlation'].iloc[0]:g}) in every cell: "
                     f"{_methods(m for m, c in failing.items() if len(c) == len(cells))}; in some: "
                     f"{_methods(m for m, c in failing.items() if 0 < len(c) < len(cells))}; in none: "
                     f"{_methods(m for m, c in failing.items() if not c)}.")
    return lines
