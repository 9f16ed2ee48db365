"""Global solver for block-nuclear-norm regularized linear models: FISTA with a duality-gap certificate.

Every convex head of `lib.convex.heads` is one instance of

    P(Z) = L(A Z) + beta * sum_j ||Z_j||_*,      (A Z)_i = sum_{j,p,q,c} Phi[i, j, p, q] Z[j, p, q, c]

with a design tensor Phi (n, J, p, q) built from the frozen tokens, a weight tensor Z (J, p, q, c), and
block j penalized by the nuclear norm of Z_j seen as a p x (q c) matrix. L(O) = (1/n) sum_i l(o_i, y_i)
on the logits O (n, c): softmax cross-entropy, or squared loss (1/2n) ||O - Y||_F^2.

Solver (Beck & Teboulle 2009, FISTA): from y_k take a gradient step and the prox of the penalty,
    x_{k+1} = prox_{(beta/L) sum ||.||_*}(y_k - grad f(y_k) / L),
    prox_{tau ||.||_*}(V) = U diag(max(s - tau, 0)) W^T for V = U diag(s) W^T (singular-value
    soft-thresholding, block by block; Cai, Candes & Shen 2010),
with backtracking (L doubles until f(x+) <= f(y) + <grad f(y), x+ - y> + L/2 ||x+ - y||^2), momentum
y_{k+1} = x_{k+1} + (t_k - 1)/t_{k+1} (x_{k+1} - x_k), and adaptive restart (O'Donoghue & Candes
2015): when the objective goes up, drop the momentum and redo the step from x_k.

Certificate (Fenchel duality). The dual of P is
    D(Lam) = -L*(Lam)   subject to   ||(A^T Lam)_j||_2 <= beta for every block j   (spectral norm),
since the conjugate of beta ||.||_* is the indicator of the spectral-norm ball of radius beta. Weak
duality gives P(Z) >= D(Lam) for every Z and feasible Lam. From any Z take the loss gradient
Lam = grad L(A Z) (so A^T Lam = grad_Z L) and scale it into the feasible set,
    Lam' = min(1, beta / max_j ||(A^T Lam)_j||_2) Lam;
the gap P(Z) - D(Lam') >= 0 bounds the suboptimality P(Z) - P* and is 0 exactly at a minimizer
(optimality: -(A^T Lam)_j is in beta d||Z_j||_*, so ||(A^T Lam)_j||_2 <= beta and the scale is 1).
Conjugates (per sample, L = (1/n) sum l  =>  L*(Lam) = (1/n) sum_i l*(n lam_i)):
    squared:   l(o) = ||o - y||^2 / 2,   l*(u) = <u, y> + ||u||^2 / 2;
    softmax:   l(o) = logsumexp(o) - o_y,   l*(u) = sum_k q_k log q_k with q = u + e_y when q lies
               in the simplex (else +inf). For Lam' = t grad, q_i = t softmax(o_i) + (1 - t) e_{y_i}
               is always in the simplex, so the scaled point is dual feasible.

References: Beck & Teboulle 2009, "A Fast Iterative Shrinkage-Thresholding Algorithm"; O'Donoghue &
Candes 2015, "Adaptive Restart for Accelerated Gradient Schemes"; Cai, Candes & Shen 2010, "A Singular
Value Thresholding Algorithm for Matrix Completion"; Sahiner et al. 2022, "Unraveling Attention via
Convex Duality" (arXiv 2205.08078).
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

LOSSES = ("softmax", "squared")


def as_blocks(Z: torch.Tensor) -> torch.Tensor:
    """(J, p, q, c) weights -> (J, p, q*c) matrices, the blocks that carry a nuclear norm."""
    return rearrange(Z, "j p q c -> j p (q c)")


def from_blocks(blocks: torch.Tensor, q: int) -> torch.Tensor:
    return rearrange(blocks, "j p (q c) -> j p q c", q=q)


def block_nuclear_norms(Z: torch.Tensor) -> torch.Tensor:
    """||Z_j||_* for every block j, shape (J,)."""
    return torch.linalg.svdvals(as_blocks(Z)).sum(-1)


def svt(V: torch.Tensor, tau: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prox of sum_j tau_j ||V_j||_*: block singular-value soft-thresholding (tau: one for every block,
    or (J,) thresholds).

    Returns the thresholded weights (J, p, q, c) and their singular values (J, min(p, q c)).
    """
    U, s, Wh = torch.linalg.svd(as_blocks(V), full_matrices=False)
    s = (s - torch.as_tensor(tau, dtype=s.dtype).reshape(-1, 1)).clamp_min(0)
    return from_blocks((U * s.unsqueeze(-2)) @ Wh, V.shape[2]), s


def block_ranks(Z: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Rank of every block: singular values above rtol times the largest singular value of all blocks."""
    s = torch.linalg.svdvals(as_blocks(Z))
    return (s > rtol * s.max().clamp_min(1e-300)).sum(-1)


def logits(features: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """(A Z)_i = sum_{j,p,q} Phi[i, j, p, q] Z[j, p, q, :], shape (n, c).

    Computed as (Z^T A^T)^T: with few classes c, MKL's GEMM is several times faster with the long
    shared dimension F = J p q as the inner one of a (c, F) x (F, n) product than as A (n, F) @ Z (F, c).
    """
    return (rearrange(Z, "j p q c -> c (j p q)") @ rearrange(features, "n j p q -> (j p q) n")).T


def targets_matrix(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels -> one-hot rows; a float (n, c) matrix passes through (squared loss)."""
    if targets.dtype.is_floating_point:
        return targets.to(dtype)
    return F.one_hot(targets, num_classes).to(dtype)


def loss_value(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """L(O): mean softmax cross-entropy (integer targets) or (1/2n) ||O - Y||_F^2."""
    if loss == "softmax":
        return F.cross_entropy(outputs, targets)
    return 0.5 * (outputs - targets_matrix(targets, outputs.shape[1], outputs.dtype)).square().sum() / len(outputs)


def loss_gradient(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """grad_O L(O), shape (n, c)."""
    reference = targets_matrix(targets, outputs.shape[1], outputs.dtype)
    residual = outputs.softmax(-1) - reference if loss == "softmax" else outputs - reference
    return residual / len(outputs)


def _loss_and_gradient(outputs: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor,
                       loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`loss_value` and `loss_gradient` in one pass (one softmax); reference = targets_matrix(targets)."""
    n = len(outputs)
    if loss == "softmax":
        log_p = outputs.log_softmax(-1)
        return -(log_p * reference).sum() / n, (log_p.exp() - reference) / n
    residual = outputs - reference
    return 0.5 * residual.square().sum() / n, residual / n


def dual_value(outputs: torch.Tensor, targets: torch.Tensor, loss: str, scale: float) -> torch.Tensor:
    """D(Lam') = -L*(Lam') at Lam' = scale * grad_O L(O), 0 <= scale <= 1 (see module docstring)."""
    n = len(outputs)
    reference = targets_matrix(targets, outputs.shape[1], outputs.dtype)
    if loss == "softmax":
        q = scale * outputs.softmax(-1) + (1 - scale) * reference
        return -torch.special.xlogy(q, q).sum() / n
    u = scale * (outputs - reference)  # n * Lam'
    return -((u * reference).sum() + 0.5 * u.square().sum()) / n


@dataclass(frozen=True)
class Certificate:
    """Primal value, a dual-feasible lower bound on the optimum, and their gap (>= 0)."""

    primal: float
    dual: float
    gap: float
    dual_scale: float  # min(1, beta / max_j ||grad_j||_2); 1 iff the unscaled gradient is dual feasible
    max_spectral: float  # max_j ||grad_j||_2, <= beta at a minimizer

    @property
    def relative_gap(self) -> float:
        return self.gap / max(abs(self.primal), 1e-12)


def certificate(features: torch.Tensor, targets: torch.Tensor, Z: torch.Tensor, beta: float, loss: str,
                outputs: torch.Tensor | None = None) -> Certificate:
    """Duality gap of Z for P(Z) = L(A Z) + beta sum_j ||Z_j||_*; `outputs` = A Z when already known."""
    return _certificate(features, targets, Z, beta, loss, outputs)[0]


def _certificate(features, targets, Z, beta, loss, outputs=None, weights=None) -> tuple[Certificate, torch.Tensor]:
    """`certificate` and every block's ||(A^T Lam)_j||_2 (the blocks violating optimality: > beta).

    weights (J,): the certificate of the block-weighted program L(A Z) + beta sum_j w_j ||Z_j||_*,
    whose dual constraints are ||(A^T Lam)_j||_2 <= beta w_j (the norms returned are divided by w_j).
    Scaling block j of the design by 1 / r_j, its weights by r_j and its penalty by w_j = 1 / r_j
    leaves the program, and this certificate, unchanged.
    """
    outputs = logits(features, Z) if outputs is None else outputs
    grad = gradient(features, loss_gradient(outputs, targets, loss), Z.shape)
    spectral = torch.linalg.matrix_norm(as_blocks(grad), ord=2)
    nuclear = block_nuclear_norms(Z)
    if weights is not None:
        spectral, nuclear = spectral / weights, nuclear * weights
    max_spectral = spectral.max().item()
    scale = 1.0 if max_spectral <= beta else beta / max_spectral
    primal = (loss_value(outputs, targets, loss) + beta * nuclear.sum()).item()
    dual = dual_value(outputs, targets, loss, scale).item()
    return Certificate(primal, dual, primal - dual, scale, max_spectral), spectral


def gradient(features: torch.Tensor, output_grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A^T G: the gradient with respect to Z (J, p, q, c) of a loss whose gradient in the logits is G,
    computed as (G^T A)^T (see `logits`)."""
    flat = output_grad.T @ rearrange(features, "n j p q -> n (j p q)")
    return flat.T.reshape(shape)


def beta_max(features: torch.Tensor, targets: torch.Tensor, num_classes: int, loss: str = "softmax") -> float:
    """Smallest beta for which Z = 0 is optimal: max_j ||(A^T grad L(0))_j||_2."""
    zero = features.new_zeros(features.shape[1:] + (num_classes,))
    grad = gradient(features, loss_gradient(logits(features, zero), targets, loss), zero.shape)
    return torch.linalg.matrix_norm(as_blocks(grad), ord=2).max().item()


def lipschitz_estimate(features: torch.Tensor, loss: str, num_classes: int, iterations: int = 30) -> float:
    """Curvature at Z = 0 times ||A||_2^2 / n (power iteration): a starting point for backtracking."""
    design = rearrange(features, "n j p q -> n (j p q)")
    v = torch.ones(design.shape[1], dtype=design.dtype) / math.sqrt(design.shape[1])
    for _ in range(iterations):
        v = design.T @ (design @ v)
        v = v / v.norm().clamp_min(1e-300)
    norm_sq = (design @ v).square().sum().item()
    curvature = 1.0 / num_classes if loss == "softmax" else 1.0
    return max(curvature * norm_sq / len(design), 1e-12)


@dataclass(frozen=True)
class Solution:
    Z: torch.Tensor  # (J, p, q, c)
    certificate: Certificate
    iterations: int
    restarts: int
    converged: bool
    lipschitz: float  # the last step size's curvature estimate (a warm start for the next solve)


@contextmanager
def single_threaded():
    """Run torch on one intra-op thread inside the block (the setting is restored after).

    The convex programs and the baselines are long chains of small operations (SVDs of blocks of a
    few dozen rows, products with designs of a few MB) that extra threads barely speed up, while on a
    small machine shared with other work the threads wait on each other: on 2 busy cores, two threads
    made these solves and trainings 10 to 70 times slower than one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def solve(
    features: torch.Tensor, targets: torch.Tensor, num_classes: int, beta: float, loss: str = "softmax",
    init: torch.Tensor | None = None, max_iter: int = 2000, tol: float | None = None, gap_tol: float = 1e-6,
    check_every: int = 10, lipschitz: float | None = None, shrink: float = 0.9, working_set: bool = True,
    coarse_tol: float = 1e-2,
) -> Solution:
    """Minimize L(A Z) + beta sum_j ||Z_j||_* by FISTA with backtracking and adaptive restart.

    Stops when the relative duality gap (P - D) / |P| of the iterate on the FULL program is below
    `gap_tol` (checked every `check_every` steps; with `tol` set, only once the relative objective
    change of a step is also below `tol`), or after `max_iter` steps in all.
    features: (n, J, p, q); targets: (n,) integer labels, or (n, c) floats for the squared loss.

    Three devices make it fast without changing the program or its certificate:
    - block scaling: FISTA runs on the design with every block j divided by its RMS size r_j =
      ||A_j||_F / sqrt(n) and on r_j Z_j, with penalty beta / r_j on block j (the same program; the
      prox stays one SVT per block, thresholds beta / (r_j L)). Blocks of very different sizes (gates
      that open rarely, high Fourier modes) then share one step size instead of the largest block's.
    - step size: every step first tries `shrink` times the last accepted curvature estimate L, so the
      step follows the local curvature (which falls as the softmax saturates) instead of the global
      bound; backtracking doubles L where too small. `lipschitz`: a starting L for the scaled program
      (from the previous solve along a path; default: power iteration at Z = 0).
    - working set: most blocks of the gated heads are 0 at the optimum, so FISTA runs on the blocks
      that are nonzero in `init` (none: the one that violates optimality most, max_j
      ||(A^T Lam)_j||_2), and the full certificate (every block) decides: when it is not yet small,
      the blocks that violate optimality (||(A^T Lam)_j||_2 > beta) join and FISTA goes on. Until no
      block joins, the restricted programs are only solved to a relative gap of `coarse_tol`. Blocks
      left out are 0 and satisfy their optimality condition, so the restricted optimum is the full
      one, and the gap reported is always that of the full program (original, unscaled design).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "softmax" and targets.dtype.is_floating_point:
        raise ValueError("the softmax loss needs integer class labels")
    with single_threaded():
        return _solve(features, targets, num_classes, beta, loss, init, max_iter, tol, gap_tol, check_every,
                      lipschitz, shrink, working_set, coarse_tol)


def _solve(features, targets, num_classes, beta, loss, init, max_iter, tol, gap_tol, check_every, lipschitz, shrink,
           working_set, coarse_tol) -> Solution:
    features = features.contiguous()  # flattening views, no copies, in every product below
    shape = features.shape[1:] + (num_classes,)
    x = features.new_zeros(shape) if init is None else init.to(features.dtype).clone()
    sizes = (features.square().sum((0, 2, 3)) / len(features)).sqrt().clamp_min(1e-12)  # r_j
    final, spectral = _certificate(features, targets, x, beta, loss)
    active = torch.ones(len(x), dtype=torch.bool)
    if working_set:  # the nonzero blocks, else the most violating one
        active = as_blocks(x).abs().amax((1, 2)) > 0
        if not active.any():
            active[spectral.argmax()] = True
    L = lipschitz
    converged, steps, restarts = final.relative_gap < gap_tol, 0, 0
    inner_tol = max(gap_tol, coarse_tol)  # while blocks may still join, restricted solves stop early
    while not converged and steps < max_iter:
        inner_tol = gap_tol if active.all() else inner_tol
        size = sizes[active]
        part = features[:, active] / size[:, None, None]  # a scaled copy of the working blocks
        if L is None:
            L = lipschitz_estimate(part, loss, num_classes)
        monitor = None
        if inner_tol > gap_tol:  # coarse phase: also stop once left-out blocks clearly matter
            rest = features[:, ~active].contiguous()

            def monitor(Ax: torch.Tensor, restricted: Certificate) -> bool:
                """Blocks left out that violate optimality while the full gap is well above the restricted
                one (their dual infeasibility dominates): stop, so that they join now."""
                grad = gradient(rest, loss_gradient(Ax, targets, loss), rest.shape[1:] + (num_classes,))
                worst = torch.linalg.matrix_norm(as_blocks(grad), ord=2).max().item()
                if worst <= beta:
                    return False
                dual = dual_value(Ax, targets, loss, beta / max(worst, restricted.max_spectral)).item()
                return restricted.primal - dual > 2 * restricted.gap

        x_part, Ax, taken, restarted, L = _fista(part, targets, num_classes, beta, 1 / size, loss,
                                                 x[active] * size[:, None, None, None], max_iter - steps, tol,
                                                 inner_tol, check_every, L, shrink, monitor)
        x[active] = x_part / size[:, None, None, None]
        steps, restarts = steps + taken, restarts + restarted
        final, spectral = _certificate(features, targets, x, beta, loss, outputs=Ax)  # left-out blocks are 0
        converged = final.relative_gap < gap_tol
        violating = (spectral > beta) & ~active
        if violating.any():
            active |= violating
        elif inner_tol > gap_tol:
            inner_tol = gap_tol  # no block to add: finish on this working set
        else:
            break  # out of steps, or the restricted gap is the full one
    return Solution(x, final, steps, restarts, converged, L)


def _fista(features, targets, num_classes, beta, weights, loss, x, max_iter, tol, gap_tol, check_every, L, shrink,
           monitor=None):
    """FISTA on L(A x) + beta sum_j w_j ||x_j||_* from x until its relative gap is below gap_tol,
    `monitor(A x, certificate)` says stop (at a gap check), or max_iter steps; returns x, A x, the
    steps and restarts taken, and the last curvature estimate.

    Each step costs two passes over the design: A^T G at the extrapolated point and A x at the new
    iterate (A y is extrapolated from A x, the map being linear).
    """
    shape = x.shape
    Ax = logits(features, x)
    y, Ay, t, restarts = x, Ax, 1.0, 0
    objective = (loss_value(Ax, targets, loss) + beta * (weights * block_nuclear_norms(x)).sum()).item()
    step, next_check = 0, check_every
    reference = targets_matrix(targets, num_classes, features.dtype)  # one-hot rows, or the float targets
    for step in range(1, max_iter + 1):
        f_y, output_grad = _loss_and_gradient(Ay, targets, reference, loss)
        g_y = gradient(features, output_grad, shape)
        L *= shrink
        while True:
            x_new, singular = svt(y - g_y / L, beta * weights / L)
            d = x_new - y
            Ax_new = logits(features, x_new)
            f_new = loss_value(Ax_new, targets, loss)
            if f_new <= f_y + (g_y * d).sum() + 0.5 * L * d.square().sum() + 1e-15 * abs(f_y):
                break
            L *= 2.0
        objective_new = (f_new + beta * (weights[:, None] * singular).sum()).item()
        if objective_new > objective and t > 1.0:  # momentum overshot: restart from x
            y, Ay, t, restarts = x, Ax, 1.0, restarts + 1
            continue
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum = (t - 1) / t_new
        y, Ay = x_new + momentum * (x_new - x), Ax_new + momentum * (Ax_new - Ax)
        change = abs(objective - objective_new) / max(abs(objective_new), 1e-12)
        x, Ax, objective, t = x_new, Ax_new, objective_new, t_new
        if step >= next_check and (tol is None or change < tol):
            next_check = step + check_every
            checked = _certificate(features, targets, x, beta, loss, outputs=Ax, weights=weights)[0]
            if checked.relative_gap < gap_tol or (monitor is not None and monitor(Ax, checked)):
                break
    return x, Ax, step, restarts, L
