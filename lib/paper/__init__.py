"""Paper-ready figures, tables and a results README, built only from the study's result tables.

Nothing here trains or evaluates a model: every number comes from a CSV written by an earlier stage
(`load_tables` names the stage behind each table), is formatted with its 95% confidence interval where
the table has one (`format_ci`: ``95.1 [93.6, 96.3]``), and is written as Markdown and LaTeX
(`write_table`). `build_readme` states the research questions and the numbers that answer them, every
number pulled from those tables.

Layout of `out_dir` (see `build_all`):

    figures/<name>.png, figures/<name>.pdf     one style (lib.plots.set_style, seaborn "colorblind")
    tables/<name>.md, tables/<name>.tex        every table in both formats
    README.md                                  the answers to RQ1-RQ5, linking tables and figures

    tables   read the result tables, format numbers with their intervals, write Markdown and LaTeX
    figures  the paper's figures
    text     the README's sentences per research question
    build    `build_readme` and `build_all`, which the paper-figures stage runs
"""
from lib.paper.build import build_all, build_readme

__all__ = ["build_all", "build_readme"]
