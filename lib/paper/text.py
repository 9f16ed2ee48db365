"""The results README's sentences per research question, every number read from the result tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.analysis.compare import top_group
from lib.paper.tables import best_row, ci_row, label, severity_curve

QUESTIONS = {
    "RQ1": "Resolution extrapolation: when does RoPE keep its accuracy at other test resolutions, and does the answer "
           "depend on the encoding, the training augmentation, what a larger image shows (zoom or a wider field of "
           "view) or a test-time rescaling of the frequencies?",
    "RQ2": "Efficiency: what does each attention variant cost as the number of tokens grows, and from how many "
           "tokens on are linear / sparse / local variants cheaper than softmax attention?",
    "RQ3": "Attention analysis and faithfulness: how far does trained attention look per layer, and which "
           "explanation method is the most faithful and best localised?",
    "RQ4": "Safety and reliability: how do accuracy, calibration and selective prediction hold up under "
           "corruption shift?",
    "RQ5": "Convex heads: do convex attention / mixer heads on frozen features beat linear, MLP and "
           "Adam-trained attention heads?",
}


def rq1_lines(findings: str, accuracy: pd.DataFrame) -> list[str]:
    """RQ1's answer: the sentences `rq1-summary` computed from the seed tables (findings.md), after the design."""
    seeds = int(accuracy["seeds"].min())
    grids = "; ".join(f"{dataset} " + " and ".join(f"{g}x{g}" for g in sorted(set(part)))
                      for dataset, part in accuracy.groupby("dataset", sort=False)["train_grid"])
    design = (f"- Design: every cell (data set x training grid x training augmentation x position encoding; training "
              f"grids: {grids}) trained with {seeds} seeds; "
              f"each seed tested on the same {int(accuracy['n'].iloc[0])} test images at every scale and protocol. "
              "Values are seed means [95% t-interval over seeds]; differences are paired by seed index on the same "
              "images, in accuracy points, and a difference is stated only where its interval excludes 0.")
    return [design, *[line for line in findings.splitlines() if line.strip()]]


def zoo_resolution_lines(resolution: pd.DataFrame) -> list[str]:
    """The single-seed resolution sweep of every trained run: what it is, and that no claim rests on it."""
    runs = resolution["run"].nunique() if "run" in resolution else len(resolution.drop_duplicates(["dataset", "variant"]))
    return [f"- Every run the other questions analyse ({runs} runs, one training seed each, light augmentation, zoom "
            "protocol, Wilson intervals over test images) tested at every resolution of its data set. One seed per "
            "variant: RQ1's claims rest on the seed study above, not on this table."]


def rq2_lines(cost: pd.DataFrame, scaling: pd.DataFrame, lib_vs_timm: pd.DataFrame | None = None,
              targets: pd.DataFrame | None = None) -> list[str]:
    lines = []
    softmax = set(cost.loc[cost["attention"] == "softmax", "variant"])
    for _, row in scaling.iterrows():
        crossover, margin = row["forward_crossover_tokens"], row.get("crossover_margin", 0.0)
        faster = f"at least {margin:.0%} faster than softmax" if margin else "faster than softmax"
        where = ("the softmax baseline" if row["variant"] in softmax else
                 f"{faster} from {crossover:.0f} tokens on" if np.isfinite(crossover)
                 else f"never {faster} in the measured range")
        lines.append(f"- {label(row['variant'])}: forward time grows with log-log slope {row['forward_slope']:.2f} "
                     f"(training {row['train_slope']:.2f}); {where}.")
    most = cost[cost["tokens"] == cost["tokens"].max()]
    fastest = best_row(most, "forward_ms_per_image", lowest=True)
    lines.append(f"- At {int(fastest['tokens'])} tokens the fastest forward pass is {label(fastest['variant'])}'s, "
                 f"{fastest['forward_ms_per_image']:.3g} ms per image. Timings are medians of repeated steps on one "
                 f"machine; the tables hold no confidence intervals for them.")
    if lib_vs_timm is not None and targets is not None:
        lines += speed_goal_lines(lib_vs_timm, targets)
    return lines


def _goal_value(row: pd.Series, percent: bool) -> str:
    """'1.13x [1.10, 1.16]' or '7.2% [5.0, 9.1]': the median over rounds [slowest, fastest round]."""
    if percent:
        return f"{100 * row['value']:.1f}% [{100 * row['min']:.1f}, {100 * row['max']:.1f}]"
    return f"{row['value']:.2f}x [{row['min']:.2f}, {row['max']:.2f}]"


def speed_goal_lines(lib_vs_timm: pd.DataFrame, targets: pd.DataFrame) -> list[str]:
    """lib against timm, eager and compiled (the efficiency stage's lib_vs_timm.csv and targets.csv): each goal's
    median over the interleaved rounds with its slowest and fastest round, whether it was met, and what
    compiling cost."""
    first = lib_vs_timm.iloc[0]
    lines = [f"- lib against timm at the same configuration ({int(first['grid'])}x{int(first['grid'])} patches, batch "
             f"{int(first['batch'])}, training steps; median over interleaved rounds [slowest, fastest round]):"]
    measured = targets[targets["value"].notna() & (targets["target"] != "linear attention forward log-log slope")]
    for _, row in measured.iterrows():
        percent = "overhead" in row["target"] or "FLOP/s" in row["target"]
        verdict = "" if row["goal"] == "(reference)" else f"; goal {row['goal']}: {'met' if row['met'] else 'missed'}"
        lines.append(f"  - {row['target']}, {row['mode']}: {_goal_value(row, percent)}{verdict}.")
    compiled = lib_vs_timm[lib_vs_timm["mode"] == "compiled"].set_index("model")
    eager = lib_vs_timm[lib_vs_timm["mode"] == "eager"].set_index("model")
    for model, row in compiled.iterrows():
        saved = 1 / eager.loc[model, "images_per_s_train"] - 1 / row["images_per_s_train"]  # seconds per image
        steps = row["compile_seconds"] / (saved * row["batch"]) if saved > 0 else np.inf
        lines.append(f"  - torch.compile, {model}: {row['images_per_s_train'] / eager.loc[model, 'images_per_s_train']:.2f}x "
                     f"the eager training throughput after {row['compile_seconds']:.0f} s of compiling"
                     + (f", which pays off after {steps:,.0f} steps." if np.isfinite(steps) else ", never paid off."))
    return lines


def _top_groups(comparison: pd.DataFrame, metric: str, variants: list[str]) -> str:
    """'integrated_gradients alone in 5 of 9 variants, rollout alone in 1; tied at the top in 3 (...)': the best
    method per variant where its paired interval separates it from every other method, else the tie."""
    alone, tied = {}, {}
    for variant in variants:
        group = top_group(comparison[comparison["variant"] == variant], metric)
        if group:
            key = " = ".join(sorted(group))
            target = alone if len(group) == 1 else tied
            target[key] = target.get(key, 0) + 1
    parts = [f"{method} alone in {n}" for method, n in sorted(alone.items(), key=lambda item: -item[1])]
    text = (", ".join(parts) or "no method alone") + f" of {len(variants)} variants"
    if tied:
        ties = "; ".join(f"{group} in {n}" for group, n in sorted(tied.items(), key=lambda item: -item[1]))
        text += f"; tied at the top in {sum(tied.values())} ({ties})"
    return text


def fill_lines(fills: pd.DataFrame, ig_baseline: pd.DataFrame, variants: list[str]) -> list[str]:
    """Whether the fill decides the faithfulness verdicts: the best deletion / insertion method per fill, and
    what Integrated Gradients gains by integrating from the fill image instead of its own baseline."""
    fills, ig_baseline = fills[fills["variant"].isin(variants)], ig_baseline[ig_baseline["variant"].isin(variants)]
    lines = []
    metrics = (("deletion_auc", "deletion AUC"), ("insertion_auc", "insertion AUC"))
    if fills["fill"].nunique() < 2:  # the one fill is the headline fill, whose verdicts rq3_lines already gives
        metrics = ()
    for metric, name in metrics:
        per_fill = "; ".join(f"{fill.replace('_', ' ')} fill: "
                             f"{_top_groups(part, metric, [v for v in variants if v in set(part['variant'])])}"
                             for fill, part in fills.groupby("fill", sort=False))
        if per_fill:
            lines.append(f"  - {name}, best method by what fills the removed patches: {per_fill}.")
    for metric, part in ig_baseline.groupby("metric", sort=False):
        per_fill = "; ".join(f"{fill.replace('_', ' ')} fill: better in {int((g['gain_low'] > 0).sum())}, worse in "
                             f"{int((g['gain_high'] < 0).sum())} of {len(g)} variants (largest gain {g['gain'].max():+.3f})"
                             for fill, g in part.groupby("fill", sort=False))
        lines.append(f"  - Integrated Gradients integrated from the fill image instead of {part['baseline'].iloc[0]}, "
                     f"{metric.replace('_auc', ' AUC').replace('_', ' ')} (paired CI over the same images): {per_fill}.")
    return lines


def sanity_lines(sanity: pd.DataFrame, variants: list[str]) -> list[str]:
    """Cascading randomisation per method over the variants: how many fail (every layer re-drawn, the rank
    correlation's CI reaches the threshold), the correlation's range there, and for how many of the first steps
    (head, last block, ...) the maps stay above the threshold (median over variants)."""
    sanity = sanity[sanity["variant"].isin(variants)]
    if sanity.empty:
        return []
    threshold, steps = sanity["max_correlation"].iloc[0], int(sanity["step"].max())
    lines = [f"- sanity check (cascading randomisation, Adebayo et al. 2018: the weights re-drawn from the head down, "
             f"{int(sanity['n'].max())} images; a method fails where, every layer re-drawn, the 95% CI of its maps' rank "
             f"correlation with the trained model's reaches {threshold:g}):"]
    for method, part in sanity.groupby("method", sort=False):
        last = part[part["step"] == steps]
        held = part.groupby("variant", sort=False).apply(
            lambda g: int((g.sort_values("step")["ci_low"] >= threshold).cummin().sum()), include_groups=False)
        lines.append(f"  - {method}: fails in {int(last['fails'].astype(bool).sum())} of {len(last)} variants "
                     f"(correlation {last['spearman'].min():.2f} to {last['spearman'].max():.2f} with every layer "
                     f"re-drawn); stays above {threshold:g} for the first {held.median():g} of {steps} steps (median).")
    return lines


def rq3_lines(layer_head: pd.DataFrame, comparison: pd.DataFrame, accuracy: pd.DataFrame,
              fills: pd.DataFrame | None = None, ig_baseline: pd.DataFrame | None = None,
              sanity: pd.DataFrame | None = None) -> list[str]:
    """RQ3 across the analysed variants: the range of last-layer attention distances, then per metric which
    explanation method is best alone or tied (paired bootstrap over the same images), which methods beat or
    lose to the random order, on the variants whose model is above chance; then, where given, the same verdicts
    under every fill and IG's gain from integrating from the fill image (`fill_lines`), and the sanity check
    (`sanity_lines`)."""
    last = layer_head[layer_head["layer"] == layer_head["layer"].max()]
    distance = last.groupby("variant", sort=False)["mean_distance_pixels"].mean()
    lines = [f"- mean attention distance in the last layer (layer {int(last['layer'].iloc[0])}, mean over heads) "
             f"runs from {distance.min():.2f} px ({label(distance.idxmin())}) to {distance.max():.2f} px "
             f"({label(distance.idxmax())}) over {len(distance)} variants; uniform attention gives "
             f"{last['uniform_distance_pixels'].iloc[0]:.2f} px."]
    at_chance = accuracy[accuracy["ci_low"] <= accuracy["chance"]]
    variants = [v for v in dict.fromkeys(comparison["variant"]) if v not in set(at_chance["variant"])]
    if len(at_chance):
        lines.append("- left out of the comparisons below, their model not above chance on the analysed images (Wilson "
                     "95% CI reaches chance): " + ", ".join(f"{label(r['variant'])} {100 * r['accuracy']:.1f}% "
                                                           f"(chance {100 * r['chance']:.1f}%)"
                                                           for _, r in at_chance.iterrows()) + ".")
    compared = comparison[comparison["variant"].isin(variants)]
    if compared.empty:
        return [*lines, "- no analysed model is above chance: no explanation method is compared."]
    n = int(compared.loc[compared["metric"] == "deletion_auc", "n"].max())
    lines.append(f"- best explanation method per variant ({n} test images; a method is best *alone* where the paired "
                 f"bootstrap 95% CI of its gap to every other method excludes 0, else tied; one training seed):")
    for metric, name in (("deletion_auc", "deletion AUC (lower better)"),
                         ("insertion_auc", "insertion AUC (higher better)"),
                         ("pointing_game", "pointing game (object masks)"),
                         ("relevance_mass", "relevance mass (object masks)")):
        if metric in set(compared["metric"]):
            lines.append(f"  - {name}: {_top_groups(compared, metric, variants)}.")
    reference = compared["reference"].iloc[0]
    for metric in ("deletion_auc", "insertion_auc"):
        part = compared[(compared["metric"] == metric) & (compared["method"] != reference)]
        better = part[part["vs_reference_low"] > 0].groupby("method", sort=False)["variant"].count()
        worse = part[part["vs_reference_high"] < 0].groupby("method", sort=False)["variant"].count()
        present = part.groupby("method", sort=False)["variant"].nunique()  # a method may exist for some variants only
        lines.append(f"  - {metric.replace('_auc', ' AUC').replace('_', ' ')} against the {reference} patch order "
                     f"(paired CI): better in "
                     + ", ".join(f"{m} {int(better.get(m, 0))}" + (f" (of {k})" if k != len(variants) else "")
                                 for m, k in present.items()) + f" of {len(variants)} variants"
                     + ("; worse in " + ", ".join(f"{m} {int(k)}" for m, k in worse.items()) if len(worse) else "")
                     + ".")
    if fills is not None and ig_baseline is not None:
        lines += fill_lines(fills, ig_baseline, variants)
    if sanity is not None:
        lines += sanity_lines(sanity, variants)
    lines.append("- caveat: these are intervals over test images of one trained model per variant, not over training "
                 "seeds.")
    return lines


def rq4_lines(shift: pd.DataFrame, recommendation: str = "", seed_maps: pd.DataFrame | None = None,
              predictors: str = "", seed_findings: str = "") -> list[str]:
    """First the comparison of the encodings over training seeds (`seed_findings`, the safety-seeds stage's
    findings.md) when given, the only lines here that compare encodings; then per variant of the one-model safety
    stage: clean accuracy, calibration and corrupted accuracy; attention maps across training seeds
    (`seed_map_lines`) when given; then the safety-summary stage's trust decision (`recommendation`, its
    recommendation.md) and its attention-as-predictor lines (`predictors`, attention_predictors.md) when given."""
    curve = severity_curve(shift)
    lines = []
    if seed_findings.strip():
        lines += ["Over training seeds (safety-seeds stage, results/safety_seeds/): every case-study encoding trained "
                  "with each seed of `safety.seeds` and tested on the same images, compared by paired differences over "
                  "seeds; accuracies, ECE and AUGRC as fractions, mCE relative to the baseline model of the same seed:",
                  "", seed_findings.rstrip(), "",
                  "One trained model per encoding (the `train-case-study` model of params.yaml's `seed`, safety stage; "
                  "intervals over test images or corruptions, so no claim about the encodings):", ""]
    for (dataset, variant), part in curve.groupby(["dataset", "variant"], sort=False):
        clean_rows = shift[(shift["dataset"] == dataset) & (shift["variant"] == variant) & (shift["family"] == "clean")]
        worst = part[part["severity"] == part["severity"].max()].iloc[0]
        text = f"- {label(variant)} ({dataset}): "
        if len(clean_rows):
            clean = clean_rows.iloc[0]
            text += (f"clean accuracy {ci_row(clean)}% (n = {int(clean['n'])}); ECE {clean['ece']:.3f} -> "
                     f"{clean['ece_ts']:.3f} after temperature scaling; E-AURC {clean['eaurc']:.3f}; ")
        text += (f"mean accuracy over {int(worst['conditions'])} corruptions at severity {int(worst['severity'])}: "
                 f"{ci_row(worst)}% (95% t-CI over corruptions).")
        lines.append(text)
    lines += seed_map_lines(seed_maps) if seed_maps is not None else []
    if recommendation.strip():
        lines += ["", "Which variant to trust, and at which abstention threshold (safety-summary stage):", "",
                  recommendation.strip()]
    if predictors.strip():
        lines += ["", "Does attention predict errors? Per-image attention signals against confidence as error and "
                      "shift detectors (safety stage; directions and the combined score fixed on validation):", "",
                  predictors.strip()]
    return lines


def seed_map_lines(seed_maps: pd.DataFrame) -> list[str]:
    """Attention reliability across training seeds (the evaluate stage's seed_map_stability.csv): per run,
    each map method's similarity to the study seed's maps, averaged over the extra seeds; nothing without them."""
    lines = []
    for (dataset, variant), part in seed_maps.groupby(["dataset", "variant"], sort=False):
        means = part.groupby(["method", "metric"])["mean"].mean()
        methods = "; ".join(f"{method}: top-k IoU {means[(method, 'topk_iou')]:.2f}, Spearman "
                            f"{means[(method, 'spearman')]:.2f}, JS divergence {means[(method, 'js_divergence')]:.3f}"
                            for method in dict.fromkeys(part["method"]))
        lines.append(f"- attention maps across training seeds, {label(variant)} ({dataset}, seed "
                     f"{int(part['seed'].iloc[0])} vs {sorted(set(part['other_seed'].astype(int)))}, "
                     f"{int(part['n'].max())} test images): {methods}; same predicted class on "
                     f"{100 * part['prediction_agreement'].mean():.1f}% of the images.")
    return lines


def rq5_lines(findings: str, convex: pd.DataFrame) -> list[str]:
    """RQ5's answer: the design, then the verdicts the `convex` stage computed from paired seed differences."""
    settings = ", ".join(f"`{name}`" for name in dict.fromkeys(convex["setting"]))
    design = (f"Design: heads on frozen tokens of RQ1's trained seeds ({settings}; backbone -> the heads' data set), "
              f"{int(convex['seeds'].min())} seeds (seed k: the backbone's k-th training seed), every head the same "
              f"number of regularization values chosen on validation; differences are paired over seeds [95% t-CI] "
              f"and stated only where the interval excludes 0. Findings:")
    return [design, *[line for line in findings.splitlines() if line.strip()]]
