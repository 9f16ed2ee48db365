"""Aggregating per-run results into the study's tables."""
import pandas as pd


def resolution_summary(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Wide table for one dataset: a row per variant, test accuracy (%) per resolution; '*' marks training."""
    part = table[table["dataset"] == dataset]
    train_res = part["train_resolution"].iloc[0]
    wide = part.pivot(index="variant", columns="resolution", values="accuracy").mul(100).round(1)
    wide = wide.reindex(list(dict.fromkeys(part["variant"])))  # study order, not alphabetical
    wide.columns = [f"{r}*" if r == train_res else str(r) for r in wide.columns]
    return wide.reset_index()


def resolution_markdown(table: pd.DataFrame) -> str:
    """One Markdown table per dataset (accuracy % by test resolution in pixels; * = training resolution)."""
    sections = []
    for dataset in dict.fromkeys(table["dataset"]):
        n = int(table.loc[table["dataset"] == dataset, "n"].iloc[0])
        sections.append(f"### {dataset} (test accuracy %, n = {n}; columns: test resolution in pixels, * = training)\n\n"
                        + resolution_summary(table, dataset).to_markdown(index=False))
    return "\n\n".join(sections) + "\n"
