"""Wall time of the repo's convex solver against a generic one, on the same program, as n grows.

What: the convex linear attention head (`lib.convex.heads.attention_design` with one all-zero gate, i.e.
no gating) gives the program

    min_Z  (1/n) sum_i CE(softmax((A Z)_i), y_i) + beta ||Z||_*,   Z a (d^2) x (d c) matrix,

which is solved twice: by `lib.convex.solver.solve` (FISTA, stopped by a duality-gap certificate at a
relative gap of 1e-6 by default, `fista_converged` says whether it got there) and by cvxpy with the
CLARABEL interior-point solver (`cvxpy_solve`, which the tests also use as the reference optimum). The
cvxpy time includes building and compiling the problem, since a user pays for that too. One row per number of samples n: both times, both objectives and their
relative difference, and speedup = cvxpy seconds / FISTA seconds.

Why: the repo claims its solver certifies the global optimum fast; this measures how much time that
saves over an off-the-shelf conic solver, and checks that both reach the same optimum.

Data: SYNTHETIC tokens (standard normal, last channel set to 1 like the constant channel the study
appends) with labels from a quadratic rule (argmax over classes k of mean_t x_t[k] x_t[k+1], plus
noise), so the attention head has something to fit; defaults mimic the study's shapes (6x6 = 36
tokens, 8 projected dims + the constant channel, 4 classes).

    python -m lib.convex.benchmark --sizes 25 50 100 200 --out results/benchmarks/convex_solvers.csv

Timings are machine-dependent wall times measured once in one run (single torch thread), not a timed
test; the speedup range printed is that of this run only.
"""
import argparse
import math
import time
from pathlib import Path

import cvxpy as cp
import numpy as np
import pandas as pd
import torch

from lib.convex.heads import attention_design
from lib.convex.solver import beta_max, solve


def synthetic_tokens(n: int, tokens: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, tokens, dim) float64 tokens with a constant last channel, and labels in range(classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tokens, dim, generator=g, dtype=torch.float64)
    x[..., -1] = 1.0
    score = (x * x.roll(-1, dims=-1)).mean(1)[:, :classes]  # quadratic: mean_t x_t[k] x_t[k+1]
    labels = (score + 0.3 * torch.randn(score.shape, generator=g, dtype=torch.float64)).argmax(-1)
    return x, labels


def cvxpy_solve(design: torch.Tensor, labels: torch.Tensor, classes: int, beta: float,
                loss: str = "softmax") -> tuple[float, str]:
    """The program of `lib.convex.solver` in cvxpy (one (p, q c) variable per block, nuclear norms; softmax
    cross-entropy via log_sum_exp, or the squared loss): its optimal value and cvxpy's status."""
    n, J, p, q = design.shape
    c = classes
    phi = design.numpy()
    blocks = [cp.Variable((p, q * c)) for _ in range(J)]
    outputs = sum(phi[:, j, :, k] @ blocks[j][:, k * c:(k + 1) * c] for j in range(J) for k in range(q))
    onehot = np.eye(c)[labels.numpy()]
    if loss == "softmax":
        data = (cp.sum(cp.log_sum_exp(outputs, axis=1)) - cp.sum(cp.multiply(onehot, outputs))) / n
    else:
        data = cp.sum_squares(outputs - onehot) / (2 * n)
    problem = cp.Problem(cp.Minimize(data + beta * sum(cp.normNuc(b) for b in blocks)))
    problem.solve(solver=cp.CLARABEL)
    return float(problem.value), str(problem.status)


def benchmark(sizes: list[int], tokens: int = 36, dim: int = 9, classes: int = 4, beta_ratio: float = 0.01,
              cvxpy_limit: float = 300.0, seed: int = 0, max_iter: int = 20000, gap_tol: float = 1e-6) -> pd.DataFrame:
    """One row per n in sizes; cvxpy is skipped (nan, status 'skipped') for every size after the first
    cvxpy solve that took longer than cvxpy_limit seconds."""
    rows, skip_cvxpy = [], False
    for n in sizes:
        x, labels = synthetic_tokens(n, tokens, dim, classes, seed)
        design = attention_design(x, torch.zeros(1, dim, dim, dtype=torch.float64))  # (n, 1, dim^2, dim)
        beta = beta_ratio * beta_max(design, labels, classes)

        start = time.perf_counter()
        solution = solve(design, labels, classes, beta, "softmax", None, max_iter, gap_tol=gap_tol)
        fista_seconds = time.perf_counter() - start

        cvxpy_seconds, cvxpy_objective, status = math.nan, math.nan, "skipped"
        if not skip_cvxpy:
            start = time.perf_counter()
            cvxpy_objective, status = cvxpy_solve(design, labels, classes, beta)
            cvxpy_seconds = time.perf_counter() - start
            skip_cvxpy = cvxpy_seconds > cvxpy_limit

        fista_objective = solution.certificate.primal
        rows.append(dict(
            n=n, tokens=tokens, dim=dim, classes=classes,
            fista_seconds=fista_seconds, fista_iterations=solution.iterations,
            fista_relative_gap=solution.certificate.relative_gap, fista_converged=solution.converged,
            fista_objective=fista_objective,
            cvxpy_seconds=cvxpy_seconds, cvxpy_objective=cvxpy_objective, cvxpy_status=status,
            objective_difference=(fista_objective - cvxpy_objective) / abs(cvxpy_objective),
            speedup=cvxpy_seconds / fista_seconds,
        ))
        print(f"n={n}: fista {fista_seconds:.2f}s ({solution.iterations} it), cvxpy {cvxpy_seconds:.2f}s ({status})",
              flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--tokens", type=int, default=36)
    parser.add_argument("--dim", type=int, default=9)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--beta-ratio", type=float, default=0.01)
    parser.add_argument("--cvxpy-limit", type=float, default=300.0, help="seconds; larger sizes skip cvxpy after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gap-tol", type=float, default=1e-6, help="FISTA stops at this relative duality gap")
    parser.add_argument("--max-iter", type=int, default=20000, help="FISTA steps at most")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    table = benchmark(args.sizes, args.tokens, args.dim, args.classes, args.beta_ratio, args.cvxpy_limit, args.seed,
                      args.max_iter, args.gap_tol)
    print(table.to_markdown(index=False, floatfmt=".4g"))
    speedups = table.speedup.dropna()
    if len(speedups):
        print(f"speedup (cvxpy / FISTA wall time) in this run: {speedups.min():.3g}x to {speedups.max():.3g}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
