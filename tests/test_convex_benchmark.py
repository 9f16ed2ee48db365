"""The solver benchmark: FISTA and cvxpy reach the same optimum, the table is consistent, the cvxpy time
limit skips larger sizes, and the CLI writes its CSV (tiny sizes, a few seconds)."""
import math

import pandas as pd
import pytest
import torch

from lib.convex.benchmark import benchmark, main

TINY = dict(tokens=4, dim=3, classes=3)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_fista_matches_cvxpy_and_rows_are_consistent():
    table = benchmark([12, 20], **TINY)
    assert table.n.tolist() == [12, 20]
    assert (table.fista_relative_gap <= 1e-6).all() and table.fista_converged.all()
    assert (table.cvxpy_status == "optimal").all()
    assert (table.objective_difference.abs() <= 1e-4).all()
    assert ((table.fista_objective - table.cvxpy_objective).abs() <= 1e-4 * table.cvxpy_objective.abs()).all()
    assert (table.fista_seconds > 0).all() and (table.cvxpy_seconds > 0).all()
    assert (table.fista_iterations > 0).all()
    assert table.speedup.tolist() == pytest.approx((table.cvxpy_seconds / table.fista_seconds).tolist())


def test_cvxpy_limit_skips_larger_sizes():
    table = benchmark([12, 20], cvxpy_limit=1e-9, **TINY)
    first, second = table.iloc[0], table.iloc[1]
    assert first.cvxpy_status == "optimal" and first.cvxpy_seconds > 0
    assert second.cvxpy_status == "skipped"
    assert math.isnan(second.cvxpy_seconds) and math.isnan(second.speedup)
    assert second.fista_relative_gap <= 1e-6  # FISTA still runs


def test_cli_writes_csv(tmp_path):
    out = tmp_path / "sub" / "solvers.csv"
    main(["--sizes", "12", "--tokens", "4", "--dim", "3", "--classes", "3", "--out", str(out)])
    table = pd.read_csv(out)
    assert table.n.tolist() == [12]
    assert {"fista_seconds", "cvxpy_seconds", "speedup", "objective_difference", "cvxpy_status"} <= set(table.columns)
