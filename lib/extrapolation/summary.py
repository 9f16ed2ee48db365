"""RQ1's tables and verdicts from the per-seed accuracies of every cell (notebooks/rq1_summary.py).

- `seed_table`: per (dataset, augmentation, variant, method, protocol, scale), the seed mean with its 95%
  Student-t interval over seeds (the primary interval, clipped to [0, 1]), the seeds' spread, and the Wilson interval over test
  images of the mean accuracy (secondary: it ignores the seed-to-seed variation).
- `paired_table`: every comparison of `COMPARISONS` that the cells allow, as the mean over seeds of the
  paired difference (same seed index, same test images) with its t-interval, and a verdict that names a
  difference only where the interval excludes zero.
"""
import math
from pathlib import Path

import pandas as pd

from lib.stats import paired_difference, t_interval, verdict, wilson_interval

KEYS = ["dataset", "train_grid", "augmentation", "variant", "method", "protocol", "scale"]

# (factor that differs, first level, second level, what the comparison tests). A variant comparison pairs models
# trained the same way (same dataset, augmentation and seed index) and tested as trained; a method comparison
# pairs one trained model with and without a test-time rescaling; augmentation and protocol likewise.
COMPARISONS: list[tuple[str, str, str, str]] = [
    ("variant", "rope_mixed", "rope_axial", "Heo et al.: RoPE-Mixed above RoPE-Axial"),
    ("variant", "rope_axial", "ape", "Heo et al.: RoPE-Axial above APE"),
    ("variant", "rope_mixed", "ape", "Heo et al.: RoPE-Mixed above APE"),
    ("variant", "rope_mixed_ape", "rope_mixed", "RoPE-Mixed + APE against RoPE-Mixed"),
    ("variant", "sincos", "ape", "fixed sin-cos (integer positions) against learned, resampled APE"),
    ("variant", "rope_mixed_norm", "rope_mixed", "normalised coordinates + box jitter against integer indices"),
    ("variant", "rope_mixed_norm", "ape", "normalised-coordinate RoPE-Mixed against APE"),
    ("variant", "fire", "rope_mixed", "FIRE relative bias against RoPE-Mixed"),
    ("variant", "fire", "ape", "FIRE relative bias against APE"),
    ("method", "pi", "trained", "position interpolation at test time"),
    ("method", "ntk", "trained", "NTK-aware scaling at test time"),
    ("method", "yarn", "trained", "YaRN ramp at test time"),
    ("method", "yarn", "pi", "YaRN ramp against plain position interpolation"),
    ("augmentation", "rrc", "light", "RandomResizedCrop against light shifts and zooms"),
    ("protocol", "field_of_view", "zoom", "a wider view against a zoomed one, same model"),
]
TRAINED = "trained"


def grid_comparisons(accuracy: pd.DataFrame) -> list[tuple[str, int, int, str]]:
    """Each larger training grid against each smaller one of the same data set (the cells decide which exist)."""
    comparisons = set()
    for _, grids in accuracy.groupby("dataset")["train_grid"]:
        levels = sorted(set(grids))
        comparisons |= {(big, small) for big in levels for small in levels if big > small}
    return [("train_grid", big, small, f"training grid {big}x{big} against {small}x{small} (longer offsets seen in training)")
            for big, small in sorted(comparisons, reverse=True)]


def main_grids(table: pd.DataFrame) -> dict[str, int]:
    """Per dataset, the training grid most cells use (others are named where they appear)."""
    return {dataset: int(grids.mode().iloc[0]) for dataset, grids in table.groupby("dataset")["train_grid"]}


def seed_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Seed mean, 95% t-interval over seeds, spread and the secondary Wilson interval, per cell x method x test."""
    rows = []
    for key, group in accuracy.groupby(KEYS, sort=False):
        mean, low, high = t_interval(group["accuracy"])
        n = int(group["n"].iloc[0])
        wilson_low, wilson_high = wilson_interval(round(mean * n), n)
        rows.append({**dict(zip(KEYS, key)), "grid": int(group["grid"].iloc[0]), "resolution": int(group["resolution"].iloc[0]),
                     "grid_ratio": float(group["grid_ratio"].iloc[0]), "seeds": group["seed"].nunique(),
                     # an accuracy lies in [0, 1]; few, spread seeds give a t-interval wider than that
                     "accuracy": mean, "ci_low": max(low, 0.0), "ci_high": min(high, 1.0),
                     "std": float(group["accuracy"].std(ddof=1)) if len(group) > 1 else math.nan,
                     "min": float(group["accuracy"].min()), "max": float(group["accuracy"].max()),
                     "n": n, "wilson_low": wilson_low, "wilson_high": wilson_high})
    return pd.DataFrame(rows)


def paired_table(accuracy: pd.DataFrame, comparisons=None) -> pd.DataFrame:
    """Every comparison the table allows (default: COMPARISONS and the training grids'): mean paired difference over
    seeds with its 95% t-interval and verdict."""
    comparisons = COMPARISONS + grid_comparisons(accuracy) if comparisons is None else comparisons
    rows = []
    for factor, first, second, what in comparisons:
        fixed = [k for k in KEYS if k != factor]
        part = accuracy[accuracy[factor].isin([first, second])]
        if factor != "method":
            part = part[part["method"] == TRAINED]
        for key, group in part.groupby(fixed, sort=False):
            by_level = {level: dict(zip(g["seed"], g["accuracy"])) for level, g in group.groupby(factor)}
            if first not in by_level or second not in by_level:
                continue
            diff = paired_difference(by_level[first], by_level[second])
            if diff["seeds"] == 0:
                continue
            context = dict(zip(fixed, key))
            rows.append({"factor": factor, "first": first, "second": second, "tests": what, **context,
                         factor: f"{first} - {second}", "grid_ratio": float(group["grid_ratio"].iloc[0]), **diff,
                         "verdict": verdict(diff, first, second)})
    columns = ["factor", "first", "second", "tests", *KEYS, "grid_ratio", "seeds", "difference", "ci_low", "ci_high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def format_difference(row) -> str:
    """'+4.1 [+1.2, +7.0]' in accuracy points."""
    return f"{100 * row['difference']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"


def format_accuracy(row) -> str:
    return f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def overturned(row) -> bool:
    """Whether the float check reached another verdict for this comparison (`replicated` False; see
    lib.extrapolation.stability.with_replication)."""
    value = row.get("replicated", pd.NA)
    return value is not pd.NA and not pd.isna(value) and not bool(value)


def heo_ordering(paired: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, training grid, augmentation, protocol, scale above 1): whether RoPE-Mixed > RoPE-Axial > APE holds, i.e. both
    adjacent paired differences have intervals above zero; 'contradicted' where either lies below zero. `overturned`:
    the float check reached another verdict for one of the two adjacent differences that decide it."""
    pairs = {("rope_mixed", "rope_axial"): "mixed_vs_axial", ("rope_axial", "ape"): "axial_vs_ape",
             ("rope_mixed", "ape"): "mixed_vs_ape"}
    part = paired[(paired["factor"] == "variant") & (paired["scale"] > 1)
                  & paired[["first", "second"]].apply(tuple, axis=1).isin(list(pairs))]
    rows = []
    where = ["dataset", "train_grid", "augmentation", "protocol", "scale"]
    for key, group in part.groupby(where, sort=False):
        found = {pairs[(r["first"], r["second"])]: r for _, r in group.iterrows()}
        if len(found) < 3:
            continue
        above = all(found[name]["ci_low"] > 0 for name in ("mixed_vs_axial", "axial_vs_ape"))
        below = any(found[name]["ci_high"] < 0 for name in ("mixed_vs_axial", "axial_vs_ape"))
        rows.append({**dict(zip(where, key)),
                     **{name: format_difference(found[name]) for name in pairs.values()},
                     "ordering": "holds" if above else "contradicted" if below else "not shown (an interval includes 0)",
                     "overturned": any(overturned(found[name]) for name in ("mixed_vs_axial", "axial_vs_ape"))})
    return pd.DataFrame(rows, columns=[*where, *pairs.values(), "ordering", "overturned"])


def half_counts(paired: pd.DataFrame, ordering: pd.DataFrame, first: str, second: str) -> str:
    """'<first> > <second> in k, < in m' over the conditions of `ordering` (rows of heo_ordering): one adjacent
    half of Heo et al.'s ordering, which can hold where the whole ordering does not."""
    where = ["dataset", "train_grid", "augmentation", "protocol", "scale"]
    pair = paired[(paired["factor"] == "variant") & (paired["first"] == first) & (paired["second"] == second)]
    pair = pair.merge(ordering[where], on=where)
    name = {"rope_mixed": "RoPE-Mixed", "rope_axial": "RoPE-Axial", "ape": "APE"}
    return (f"{name[first]} > {name[second]} in {int((pair['ci_low'] > 0).sum())} of {len(pair)}, "
            f"{name[first]} < {name[second]} in {int((pair['ci_high'] < 0).sum())} of {len(pair)}")


def difference_grid(paired: pd.DataFrame, scales=(0.5, 1.5, 2.0, 4.0)) -> pd.DataFrame:
    """The paired differences at the issue's scales, one column per scale ('+d [lo, hi]'; '*' where the CI excludes 0)."""
    part = paired[paired["scale"].isin(scales)].copy()
    part["cell"] = part.apply(lambda r: format_difference(r) + (" *" if r["ci_low"] > 0 or r["ci_high"] < 0 else ""), axis=1)
    index = ["dataset", "factor", "first", "second", "train_grid", "augmentation", "variant", "method", "protocol"]
    for column in index:  # the compared factor's column holds 'first - second'; keep it as text for the pivot
        part[column] = part[column].astype(str)
    wide = part.pivot_table(index=index, columns="scale", values="cell", aggfunc="first", sort=False)
    wide.columns = [f"{c:g}x" for c in wide.columns]
    return wide.reset_index()


def ramp_summary(ramp: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the share of learned frequency components that the yarn rule interpolates / blends / keeps."""
    if ramp.empty:
        return ramp
    return (ramp.groupby(["cell", "axis"], sort=False)[["interpolated", "blended", "kept", "median_periods", "max_periods"]]
            .mean().reset_index())


CONVERGED_WITHIN = 0.05  # a cell more than 5 points below its data set's best at the training resolution is flagged


def unconverged(seeds: pd.DataFrame) -> pd.DataFrame:
    """Cells (tested as trained) whose seed-mean accuracy at the training resolution lies more than CONVERGED_WITHIN
    below the best cell of their data set: an extrapolation comparison with them is confounded by under-training."""
    at_train = seeds[(seeds["scale"] == 1.0) & (seeds["method"] == TRAINED) & (seeds["protocol"] == "zoom")].copy()
    at_train["best"] = at_train.groupby("dataset")["accuracy"].transform("max")
    return at_train[at_train["accuracy"] < at_train["best"] - CONVERGED_WITHIN]


ONSET_ACCURACY = 0.5  # the validation accuracy whose first epoch marks when a seed started to learn


def learning_onset(history: pd.DataFrame, threshold: float = ONSET_ACCURACY) -> pd.DataFrame:
    """Per cell and seed, the first epoch whose validation accuracy reaches `threshold` (NaN: never), of how many.
    A late onset means the seed spent its first epochs near chance: fewer epochs left to learn in."""
    rows = []
    for (cell, seed), group in history.groupby(["cell", "seed"], sort=False):
        reached = group.loc[group["val/acc"] >= threshold, "epoch"]
        rows.append({"cell": cell, "seed": seed, "onset_epoch": reached.min() if len(reached) else float("nan"),
                     "epochs": int(group["epoch"].max()), "final_val_acc": float(group.sort_values("epoch")["val/acc"].iloc[-1])})
    return pd.DataFrame(rows)


def onset_line(history: pd.DataFrame, what: str, threshold: float = ONSET_ACCURACY) -> str:
    """One sentence: per cell, the epochs at which its seeds first reached `threshold` validation accuracy."""
    onset = learning_onset(history, threshold)
    epoch = lambda value: "never" if pd.isna(value) else str(int(value))
    per_cell = "; ".join(f"{cell} {', '.join(epoch(v) for v in group['onset_epoch'])} (of {group['epochs'].max()})"
                         for cell, group in onset.groupby("cell", sort=False))
    return (f"{what}: the epoch at which each seed's validation accuracy first reached {100 * threshold:.0f}% "
            f"(seeds in order): {per_cell}.")


def findings(seeds: pd.DataFrame, paired: pd.DataFrame, ramp: pd.DataFrame) -> list[str]:
    """Sentences for results/README.md, each computed from the tables (no number typed by hand). Where `paired`
    has a `replicated` column (the float check), a verdict that the rerun with other floats overturned is
    marked † wherever it is listed."""
    lines = []
    dagger = lambda r: " †" if overturned(r) else ""
    if "replicated" in paired and paired.apply(overturned, axis=1).any():
        lines.append("† marks a verdict that the float check overturned (every seed retrained with other floats, "
                     "last lines): it rests on float noise, so it is not established.")
    grids = main_grids(seeds)
    grid_name = lambda dataset, grid: "" if grid == grids[dataset] else f"{grid}x{grid} training grid/"
    at_train = seeds[(seeds["scale"] == 1.0) & (seeds["method"] == TRAINED) & (seeds["protocol"] == seeds["protocol"].iloc[0])]
    for (dataset, grid, augmentation), group in at_train.groupby(["dataset", "train_grid", "augmentation"], sort=False):
        listed = "; ".join(f"{r['variant']} {format_accuracy(r)}" for _, r in group.iterrows())
        lines.append(f"{dataset}, {augmentation} augmentation, {grid}x{grid} training grid, at the training resolution "
                     f"(seed mean [95% t-CI], {int(group['seeds'].min())} seeds): {listed}.")
    for dataset, cells in unconverged(seeds).groupby("dataset", sort=False):
        listed = "; ".join(f"{grid_name(dataset, r['train_grid'])}{r['augmentation']}/{r['variant']} {100 * r['accuracy']:.1f}%"
                           for _, r in cells.iterrows())
        lines.append(f"**{dataset}: under-trained at this budget** (more than {100 * CONVERGED_WITHIN:.0f} points below "
                     f"the data set's best cell, {100 * cells['best'].iloc[0]:.1f}%, at the training resolution): {listed}. "
                     f"Where such a cell loses a comparison at another resolution, under-training may explain it; where "
                     f"it wins despite its lower accuracy at the training resolution, under-training works against it.")
    ordering = heo_ordering(paired)
    for dataset, group in ordering.groupby("dataset", sort=False):
        holds = group[group["ordering"] == "holds"]
        contradicted = group[group["ordering"] == "contradicted"]
        where = lambda g: ", ".join(f"{grid_name(dataset, r['train_grid'])}{r['augmentation']}/{r['protocol']} {r['scale']:g}x"
                                    f"{' †' if r['overturned'] else ''}" for _, r in g.iterrows()) or "none"
        lines.append(f"{dataset}: Heo et al.'s ordering RoPE-Mixed > RoPE-Axial > APE above the training resolution holds "
                     f"(both paired CIs above 0) in {len(holds)} of {len(group)} conditions ({where(holds)}); it is "
                     f"contradicted (an adjacent difference below 0) in {len(contradicted)} ({where(contradicted)}); "
                     f"elsewhere no difference detected"
                     + (f" ({where(unsettled)})" if len(unsettled := group[(group["ordering"].str.startswith("not shown"))
                                                                          & group["overturned"]]) else "")
                     + ". Its halves in the same conditions: "
                     f"{half_counts(paired, group, 'rope_mixed', 'rope_axial')}; {half_counts(paired, group, 'rope_axial', 'ape')} "
                     f"(each pair's conditions: the lines below).")
    for (dataset, factor, first, second), group in paired.groupby(["dataset", "factor", "first", "second"], sort=False):
        beyond = group[group["scale"] != 1.0]
        better = beyond[beyond["ci_low"] > 0]
        worse = beyond[beyond["ci_high"] < 0]
        span = lambda g: ", ".join(f"{'' if factor == 'train_grid' else grid_name(dataset, r['train_grid'])}"
                                   f"{_context(r, factor)} {r['scale']:g}x {format_difference(r)}{dagger(r)}"
                                   for _, r in g.iterrows())
        text = f"{dataset}, {first} - {second} ({group['tests'].iloc[0]}), accuracy points away from the training resolution: "
        text += f"above 0 in {len(better)} of {len(beyond)} conditions" + (f" ({span(better)})" if len(better) else "")
        text += f"; below 0 in {len(worse)}" + (f" ({span(worse)})" if len(worse) else "")
        text += "; no difference detected elsewhere."
        lines.append(text)
    if not ramp.empty:
        summary = ramp_summary(ramp)
        for cell, group in summary.groupby("cell", sort=False):
            shares = "; ".join(f"{r['axis']}: {100 * r['interpolated']:.0f}% interpolated, {100 * r['blended']:.0f}% blended, "
                               f"{100 * r['kept']:.0f}% kept (median {r['median_periods']:.2f} periods over the training grid)"
                               for _, r in group.iterrows())
            lines.append(f"{cell}, learned RoPE-Mixed frequencies under YaRN's ramp (alpha 1, beta 2; mean over seeds): "
                         f"{shares}. On every interpolated component the yarn rule is exactly position interpolation; "
                         f"it can differ from it only on the blended and kept ones (the yarn - pi comparison).")
    return lines


def _context(row, factor: str) -> str:
    parts = [row[k] for k in ("augmentation", "variant", "method", "protocol")
             if k != factor and not (k == "method" and row[k] == TRAINED) and not (k == "variant" and factor == "variant")]
    return "/".join(str(p) for p in parts)


def accuracy_markdown(seeds: pd.DataFrame) -> str:
    """Seed mean [95% t-CI] per cell x method (rows) and protocol x scale (columns), one table per dataset."""
    sections = []
    for dataset, part in seeds.groupby("dataset", sort=False):
        part = part.copy()
        part["cell"] = part.apply(format_accuracy, axis=1)
        part["test"] = part.apply(lambda r: f"{r['protocol']} {r['scale']:g}x", axis=1)
        wide = part.pivot_table(index=["train_grid", "augmentation", "variant", "method"], columns="test", values="cell",
                                aggfunc="first", sort=False)
        sections.append(f"### {dataset} (accuracy %, seed mean [95% t-CI over {int(part['seeds'].min())} seeds], "
                        f"n = {int(part['n'].iloc[0])} test images)\n\n" + wide.reset_index().to_markdown(index=False))
    return "\n\n".join(sections) + "\n"


def read_cells(runs_dir, cells: list[str], name: str) -> pd.DataFrame:
    """The table `name`.csv of every cell that wrote one (ramp.csv: RoPE-Mixed cells only), concatenated."""
    paths = [Path(runs_dir) / cell / f"{name}.csv" for cell in cells]
    found = [pd.read_csv(path) for path in paths if path.is_file()]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame()


def check_complete(accuracy: pd.DataFrame, cells: list[str], seeds: list[int]) -> None:
    """Every cell has every seed (a missing one would silently shrink a comparison)."""
    found = accuracy.groupby("cell")["seed"].apply(lambda s: sorted(set(s))).to_dict()
    missing = [f"{cell} seeds {sorted(set(seeds) - set(found.get(cell, [])))}" for cell in cells
               if set(seeds) - set(found.get(cell, []))]
    if missing:
        raise ValueError(f"rq1: results missing for {'; '.join(missing)} (run the `rq1` stage for them)")


def entropy_summary(entropy: pd.DataFrame) -> pd.DataFrame:
    """Seed mean and t-interval of the normalised attention entropy per cell and scale."""
    rows = []
    where = ["dataset", "train_grid", "augmentation", "variant", "scale"]
    for key, group in entropy.groupby(where, sort=False):
        for column in ("entropy_all_layers", "entropy_last_layer"):
            mean, low, high = t_interval(group[column])
            rows.append({**dict(zip(where, key)), "layers": column.removeprefix("entropy_"),
                         "entropy": mean, "ci_low": low, "ci_high": high, "seeds": group["seed"].nunique(),
                         "grid_ratio": float(group["grid_ratio"].iloc[0])})
    return pd.DataFrame(rows)

