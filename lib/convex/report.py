"""The RQ5 report's tables and sentences, each computed from the stage's result tables (notebooks/convex.py).

    accuracy_table    one row per head: test accuracy over seeds, the validation choice, grid edges, cost
    certificate_line  how many convex solves reached the duality-gap tolerance
    adam_objectives   the Adam-trained primal's objective against the certified optimum, per seed and beta
    objective_lines   ... as a sentence, at the beta the Adam head chose and at the grid's ends
    gate_lines        how much of the gated head's penalty its sampled gates carry
    rank_lines        rank of the learned blocks against beta (the nuclear norm's prediction)
    clustering_lines  token groups against the object masks, as paired NMI differences

A function returns [] where its table is empty (a head not in `convex.heads`), so the report says nothing
about what did not run.
"""
import pandas as pd

from lib.convex.compare import excess_at_choice

CONVEX_ATTENTION = "convex linear attention"
ADAM_ATTENTION = "linear attention (Adam)"


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """`summarize`'s rows of one setting as a display table (accuracy in %, ± the 95% t half-width)."""
    return pd.DataFrame({
        "head": summary["head"],
        "features / fit": summary["family"],
        "test accuracy (%)": [f"{100 * m:.1f} ± {100 * h:.1f}" for m, h in zip(summary["test_accuracy"], summary["ci95"])],
        "chosen": [f"{r} = {v:.2g} ({lo:.2g}-{hi:.2g})" for r, v, lo, hi in
                   zip(summary["regularizer"], summary["chosen_value"], summary["chosen_min"], summary["chosen_max"])],
        "at edge (on a plateau)": [f"{e} ({p})" for e, p in zip(summary["at_edge"], summary["edge_on_plateau"])],
        "parameters": summary["parameters"].round().astype(int),
        "grid time (s)": summary["grid_seconds"].round(1),
        "rank": summary["rank"].round(1) if "rank" in summary else float("nan"),
    })


def certificate_line(runs: pd.DataFrame, gap_tol: float, max_iter: int) -> str:
    solves = runs[runs["family"] == "convex"]
    return (f"Convex solves: {int(solves['converged'].sum())} of {len(solves)} reached the relative duality gap "
            f"tolerance {gap_tol:.0e}; largest relative gap {solves['relative_gap'].max():.1e}, median "
            f"{solves['relative_gap'].median():.1e}; at most {int(solves['iterations'].max())} FISTA steps "
            f"(limit {max_iter}).")


def adam_objectives(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, seed, beta): both heads' objectives and the relative excess (Adam / convex - 1) of the
    Adam-trained network, which minimizes the very primal whose convex form was solved; empty where either
    head did not run."""
    attention = runs[runs["head"].isin([CONVEX_ATTENTION, ADAM_ATTENTION])]
    objectives = attention.pivot_table(index=["setting", "seed", "value"], columns="head", values="objective")
    if not {CONVEX_ATTENTION, ADAM_ATTENTION} <= set(objectives.columns):
        return pd.DataFrame()
    objectives["relative excess of Adam"] = objectives[ADAM_ATTENTION] / objectives[CONVEX_ATTENTION] - 1
    return objectives


def objective_lines(objectives: pd.DataFrame, runs: pd.DataFrame, selected: pd.DataFrame, steps: int) -> list[str]:
    if "relative excess of Adam" not in objectives:
        return []
    excess = objectives["relative excess of Adam"]
    by_beta = excess.groupby("value").median()  # ascending beta: weakest first
    chosen = excess_at_choice(runs, selected, CONVEX_ATTENTION, ADAM_ATTENTION)
    return [f"- Same objective, Adam vs the certified optimum: the Adam-trained linear attention ({steps} "
            f"full-batch steps) ends {100 * chosen.median():.1f}% above the convex optimum at the beta it chose on "
            f"validation (median over seeds; range {100 * chosen.min():.1f}-{100 * chosen.max():.1f}%), "
            f"{100 * by_beta.iloc[-1]:.1f}% at the strongest beta/beta_max {by_beta.index[-1]:.2g} and "
            f"{100 * by_beta.iloc[0]:.1f}% at the weakest {by_beta.index[0]:.2g} (medians): its accuracy gap to the "
            f"convex head measures a finite step budget as much as non-convexity. Below the optimum in "
            f"{int((excess < -1e-6).sum())} of {len(excess)} fits (the certificate allows none)."]


def gate_lines(gates: pd.DataFrame) -> list[str]:
    """gates: one row per (setting, seed) with the gated head's 'gated share of the penalty' and the share of
    'same test predictions' as the linear head, both at the chosen beta."""
    if not len(gates):
        return []
    share, same = gates["gated share of the penalty"], gates["same test predictions"]
    return [f"- The sampled gates of the gated attention head carry at most {100 * share.max():.1f}% of its nuclear "
            f"norm at the chosen beta, and it predicts the same class as the convex linear attention head on "
            f"{100 * same.min():.1f}-{100 * same.max():.1f}% of test images: the all-open pattern (the linear head) "
            f"fits the training subset alone, and a random gate pattern's features are a noisier, lower-norm copy "
            f"of it, so the group penalty leaves them unused."]


def rank_lines(ranks: pd.DataFrame) -> list[str]:
    """ranks: `lib.convex.interpret.rank_trend`'s table."""
    return [f"- Rank of Z, {row['head']} ({row['setting']}): {row['rank_weakest_beta']:.1f} at beta/beta_max = "
            f"{row['weakest_beta']:.2g} → {row['rank_strongest_beta']:.1f} at {row['strongest_beta']:.2g}; never "
            f"grows with beta in {row['non_increasing']} of {row['seeds']} seeds." for _, row in ranks.iterrows()]


def clustering_lines(nmi_paired: pd.DataFrame) -> list[str]:
    """nmi_paired: `paired_comparisons` of the NMI of token groupings with the object masks."""
    return [f"- Token groups vs object masks (NMI, {row['setting']}): {row['first']} − {row['second']} = "
            f"{row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] ({row['verdict']})."
            for _, row in nmi_paired.iterrows()]
