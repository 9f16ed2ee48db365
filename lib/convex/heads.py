"""Classification heads on frozen tokens: convex attention, MLP-Mixer and FNO heads, and their baselines.

All heads take tokens X_i (n, s, d) (patch tokens of a frozen backbone, see `lib.convex.features`) and
integer labels, and expose fit / decision_function / predict_proba / predict. Pooling F is the
global average over tokens followed by softmax cross-entropy (squared loss also available for the
convex heads).

Convex heads (solved to global optimality by `lib.convex.solver`): each is a fixed design map
X -> Phi(X) (J, p, q) and the program  min_Z L(sum Phi Z) + beta sum_j ||Z_j||_*,  Z_j as p x (q c).
Their derivations, in short (s tokens, d features, c classes, m hidden units / heads):

(a) Linear self-attention, m heads, GAP (Sahiner et al. 2022, Thm 3.1):
        f(X) = (1/s) 1^T sum_j (X W1_j X^T / s) X W2_j = sum_j xbar^T W1_j G W2_j,
    with xbar = X^T 1 / s and G = X^T X / s. Expanding W1 G W2 = sum_{k,l} G[k,l] W1[:, k] W2[l, :],
        f(X) = sum_{k,l} G[k,l] xbar^T Z^{(k,l)},    Z^{(k,l)} = sum_j W1_j[:, k] W2_j[l, :]  (d x c),
    i.e. Z = sum_j u_j v_j^T in R^{d^2 x dc} with u_j = vec(W1_j) (columns stacked), v_j = vec(W2_j^T)
    (rows stacked), a d x d grid of d x c blocks. Weight decay (beta/2)(||u||^2 + ||v||^2) >= beta ||u|| ||v||
    with equality at balanced scales, and min over factorizations of sum_j ||u_j|| ||v_j|| = ||Z||_*
    (attained by the SVD), so with m >= m* = rank(Z*) (<= min(d^2, dc)) heads the training problem
    equals  min_Z L(f) + beta ||Z||_*  exactly. Back to a network: Z = U diag(sigma) V^T,
    u_j = sqrt(sigma_j) U[:, j], v_j = sqrt(sigma_j) V[:, j], W1_j[a, k] = u_j[k d + a],
    W2_j[l, c] = v_j[l c_total + c]. Design: Phi[(k, a), l] = G[k,l] xbar[a]  (J = 1, p = d^2, q = d).
(b) Gated-ReLU attention: relu(X W1 X^T) has the sign pattern of the scores; fixing the patterns to
    P sampled ones, M_g[t, b] = 1{x_t^T H_g x_b >= 0} (H_g Gaussian d x d; H_0 = 0 gives the all-ones
    pattern, so (a) is contained), every head uses one pattern and
        f(X) = sum_g sum_{j in g} (1/s^2) sum_{t,b} M_g[t,b] x_t^T W1_j x_b x_b^T W2_j,
    the same argument per pattern gives  beta sum_g ||Z_g||_*,  Phi_g[(k, a), l] =
    (1/s^2) sum_{t,b} M_g[t,b] x_t[a] x_b[k] x_b[l]. Exact for the gated-ReLU network with these gates
    and enough heads per gate; a relaxation of true ReLU attention (which adds the cone constraints
    (2 M_g - 1) .* (X W1 X^T) >= 0 and needs every pattern) and of attention with learned gates.
(c) MLP-Mixer head: token mixing, then channel mixing, f(X) = sum_j sigma(T_j X) B_j, T_j (s x s),
    B_j (d x c), GAP. Only t_j = T_j^T 1 / s survives the pooling and min ||T_j||_F^2 over T_j with a
    given t_j is s ||t_j||^2, so for linear sigma:  f(X) = sum_{b,k} X[b,k] Z[b, (k, :)],
    Z = sum_j t_j vec(B_j^T)^T (s x dc, an s x d grid of 1 x c blocks), penalty beta sqrt(s) ||Z||_*.
    The gated version gates the pooled mixture per channel, sigma(X^T t_j)[k] -> D_g[k] (X^T t_j)[k]
    with D_g[k] = 1{X[:, k]^T h_g >= 0} (h_g Gaussian in R^s, h_0 = 0). The design carries the 1/s:
    Phi_g[b, k] = D_g[k] X[b,k] / s, so its weights are Z'_g = s Z_g and the program's penalty
    beta' sum_g ||Z'_g||_* is the network's weight decay beta = beta' sqrt(s) (beta' is set as a ratio of
    beta_max, so only this reading changes). Exact for this pool-then-activate two-layer mixer with fixed
    gates (the activation of a full Mixer acts per token before pooling: that is not convexified here).
(d) FNO head: an FNO layer mixes channels per Fourier mode of the token grid. Hidden unit r of mode
    w in Omega (low modes of the h x w grid, half-plane), H[a] = Re(e_w[a] Xhat_w^T W1_{w,r}) with
    Xhat_w = sum_a conj(e_w[a]) x_a (orthonormal DFT, W1 complex), gated ReLU D_g[a] = 1{x_a^T h_g >= 0},
    then a pointwise layer W2 to classes and GAP:
        f(X) = sum_{g,w} sum_{r in (g,w)} Re(m_{g,w} Xhat_w^T W1_{w,r}) W2_{w,r},
        m_{g,w} = (1/s) sum_a D_g[a] e_w[a].
    With u = [Re W1; Im W1] (2d), Phi_{g,w} = [Re(m Xhat_w); -Im(m Xhat_w)] and one nuclear norm per
    (gate, mode) block Z_{g,w} (2d x c): beta sum_{g,w} ||Z_{g,w}||_*. Exact for this mode-separated
    gated layer (each hidden unit reads one mode, as in FNO's per-mode weights R_w); letting a unit
    read all modes gives one nuclear norm per gate over the stacked modes (`mode_blocks=False`).
    Note: without gates GAP keeps only the DC mode (m_{0,w} = 0 for w != 0): the linear FNO head
    collapses to a low-rank linear head on pooled tokens; the gates are what make the modes matter.

Baselines, on the same objective form (loss + L2 penalty):
- the same features: logistic regression on a convex head's design Phi(X) with an L2 penalty in place of
  the nuclear norms (`DesignLogisticHead`; for (a), the cubic Gram features), and logistic regression / an
  MLP on flattened tokens (the features of the mixer's ungated block: every token where it is);
- fewer features: logistic regression and an MLP on mean-pooled tokens (first order, no position);
- the same network, non-convex: m-head linear attention (the primal of (a), same beta) trained by Adam, and
  a standard m-head softmax attention block + GAP + linear classifier.
The networks are trained by full-batch Adam, the logistic regressions on designs by L-BFGS.

References: Sahiner, Ergen, Ozturkler, Pauly, Mardani & Pilanci 2022, "Unraveling Attention via Convex
Duality: Analysis and Interpretations of Vision Transformers" (ICML, arXiv 2205.08078); Pilanci &
Ergen 2020, "Neural Networks are Convex Regularizers"; Sahiner et al. 2021, "Vector-output ReLU Neural
Network Problems are Copositive Programs"; Tolstikhin et al. 2021, "MLP-Mixer"; Li et al. 2021,
"Fourier Neural Operator"; Guibas et al. 2022, "Adaptive Fourier Neural Operators".
"""
import math
import time
from dataclasses import dataclass, field, replace

import torch
from einops import rearrange
from torch import nn

from lib.convex.solver import Solution, beta_max, block_nuclear_norms, block_ranks, logits, single_threaded, solve


# ---------------------------------------------------------------------------------------------
# design maps Phi(X) (n, J, p, q)


def attention_gates(dim: int, num_gates: int, generator: torch.Generator) -> torch.Tensor:
    """(1 + num_gates, d, d): H_0 = 0 (all-ones pattern, linear attention), then Gaussian H_g."""
    sampled = torch.randn(num_gates, dim, dim, generator=generator, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dim, dim, dtype=torch.float64), sampled])


def attention_masks(tokens: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """M_g[t, b] = 1{x_t^T H_g x_b >= 0}, shape (n, P, s, s)."""
    scores = torch.einsum("nta,gab,nsb->ngts", tokens, gates, tokens)
    return (scores >= 0).to(tokens.dtype)


def attention_design(tokens: torch.Tensor, gates: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Phi_g[(k, a), l] = (1/s^2) sum_{t,b} M_g[t,b] x_t[a] x_b[k] x_b[l], shape (n, P, d^2, d)."""
    s, d, P = tokens.shape[1], tokens.shape[2], len(gates)
    parts = []
    for x in tokens.split(chunk):  # two batched matrix products per chunk (a 3-operand einsum is ~5x slower)
        n = len(x)
        masks = attention_masks(x, gates).transpose(-1, -2).reshape(n, P * s, s)
        mixed = (masks @ x).view(n, P, s, d)  # sum_t M[t,b] x_t[a], (n, P, b, a)
        outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).reshape(n, s, d * d)  # x_b[k] x_b[l]
        phi = (mixed.transpose(-1, -2).reshape(n, P * d, s) @ outer).view(n, P, d, d, d)  # (n, P, a, k, l)
        parts.append(rearrange(phi, "n g a k l -> n g (k a) l") / s**2)
    return torch.cat(parts)


def mixer_gates(num_tokens: int, num_gates: int, generator: torch.Generator) -> torch.Tensor:
    """(1 + num_gates, s): h_0 = 0 (no gating, linear mixer), then Gaussian token-mixing directions."""
    sampled = torch.randn(num_gates, num_tokens, generator=generator, dtype=torch.float64)
    return torch.cat([torch.zeros(1, num_tokens, dtype=torch.float64), sampled])


def mixer_design(tokens: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Phi_g[b, k] = D_g[k] X[b, k] / s with D_g[k] = 1{X[:, k]^T h_g >= 0}, shape (n, P, s, d)."""
    open_channels = (torch.einsum("nbk,gb->ngk", tokens, gates) >= 0).to(tokens.dtype)
    return (torch.einsum("ngk,nbk->ngbk", open_channels, tokens) / tokens.shape[1]).contiguous()


def fourier_modes(grid_hw: tuple[int, int], max_mode: int) -> torch.Tensor:
    """(M, 2) integer modes (u, v), |u|, v <= max_mode, one of each conjugate pair (v > 0 or u >= 0)."""
    h, w = grid_hw
    rows = range(-min(max_mode, (h - 1) // 2), min(max_mode, h // 2) + 1)
    cols = range(min(max_mode, w // 2) + 1)
    return torch.tensor([(u, v) for v in cols for u in rows if v > 0 or u >= 0])


def fourier_basis(grid_hw: tuple[int, int], modes: torch.Tensor) -> torch.Tensor:
    """e_w[a] = exp(2 pi i (u y_a / h + v x_a / w)) / sqrt(s) for row-major tokens a, shape (s, M)."""
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    phase = (torch.outer(rows.flatten().double(), modes[:, 0].double() / h)
             + torch.outer(cols.flatten().double(), modes[:, 1].double() / w))
    return torch.polar(torch.full_like(phase, 1 / math.sqrt(h * w)), 2 * math.pi * phase)


def fno_gates(dim: int, num_gates: int, generator: torch.Generator) -> torch.Tensor:
    """(1 + num_gates, d): h_0 = 0 (no gating), then Gaussian token hyperplanes."""
    sampled = torch.randn(num_gates, dim, generator=generator, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), sampled])


def fno_design(tokens: torch.Tensor, gates: torch.Tensor, basis: torch.Tensor,
               mode_blocks: bool = True) -> torch.Tensor:
    """[Re(m_{g,w} Xhat_w); -Im(m_{g,w} Xhat_w)]: (n, P*M, 2d, 1) per (gate, mode) or (n, P, M*2d, 1)."""
    spectrum = torch.einsum("sm,nsd->nmd", basis.conj(), tokens.to(basis.dtype))  # Xhat_w
    open_tokens = (tokens @ gates.T >= 0).to(basis.dtype)  # (n, s, P)
    weights = torch.einsum("nsg,sm->ngm", open_tokens, basis) / tokens.shape[1]  # m_{g,w}
    psi = weights[..., None] * spectrum[:, None]  # (n, P, M, d)
    real = torch.cat([psi.real, -psi.imag], dim=-1)
    pattern = "n g m e -> n (g m) e 1" if mode_blocks else "n g m e -> n g (m e) 1"
    return rearrange(real, pattern).contiguous()


# ---------------------------------------------------------------------------------------------
# convex heads


@dataclass(eq=False)
class ConvexHead:
    """A block-nuclear-norm regularized head; subclasses define the gates and the design map.

    beta_ratio: beta as a fraction of beta_max (the smallest beta with solution Z = 0), so one grid
    fits every head. gates: number of sampled ReLU gate patterns besides the all-ones one.
    max_iter, tol, gap_tol: `lib.convex.solver.solve`: a solve stops once the relative duality gap of
    the full program is below gap_tol (tol: also wait for a relative objective change below tol).
    """

    beta_ratio: float = 0.1
    gates: int = 0
    loss: str = "softmax"
    seed: int = 0
    max_iter: int = 1000
    tol: float | None = None
    gap_tol: float = 1e-4

    def sample_gates(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def design(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, tokens: torch.Tensor, labels: torch.Tensor, init: torch.Tensor | None = None) -> "ConvexHead":
        tokens = tokens.double()
        self.gates_ = self.sample_gates(tokens, torch.Generator().manual_seed(self.seed))
        return self.fit_design(self.design(tokens), labels, init)

    def fit_design(self, features: torch.Tensor, labels: torch.Tensor, init: torch.Tensor | None = None,
                   lipschitz: float | None = None) -> "ConvexHead":
        """Solve the program on a precomputed design (same gates); `init` and `lipschitz` (a curvature
        estimate) warm-start the solver."""
        start = time.perf_counter()
        self.num_classes_ = int(labels.max()) + 1
        self.beta_max_ = beta_max(features, labels, self.num_classes_, self.loss)
        self.beta_ = self.beta_ratio * self.beta_max_
        self.solution_: Solution = solve(features, labels, self.num_classes_, self.beta_, self.loss, init,
                                         self.max_iter, tol=self.tol, gap_tol=self.gap_tol, lipschitz=lipschitz)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    @property
    def Z_(self) -> torch.Tensor:
        return self.solution_.Z

    @property
    def objective_(self) -> float:
        return self.solution_.certificate.primal

    @property
    def duality_gap_(self) -> float:
        return self.solution_.certificate.gap

    def decision_function(self, tokens: torch.Tensor) -> torch.Tensor:
        return logits(self.design(tokens.double()), self.Z_)

    def predict_proba(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decision_function(tokens).softmax(-1)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decision_function(tokens).argmax(-1)

    def ranks(self, rtol: float = 1e-6) -> torch.Tensor:
        """Rank of each learned block (singular values above rtol x the largest of all blocks)."""
        return block_ranks(self.Z_, rtol)

    def num_parameters(self, rtol: float = 1e-6) -> int:
        """Weights of the factorized network: rank r_j block p x (q c) -> r_j (p + q c)."""
        _, p, q, c = self.Z_.shape
        return int(self.ranks(rtol).sum()) * (p + q * c)

    def ungated_blocks(self) -> int:
        """How many leading blocks of Z belong to the all-open pattern (gate 0, h_0 = 0)."""
        return 1

    def gated_share(self) -> float:
        """Share of the penalty sum_j ||Z_j||_* carried by the sampled gate patterns (0: the gates are unused and
        the head is its ungated version; nan without gates or for Z = 0)."""
        norms = block_nuclear_norms(self.Z_)
        total = norms.sum().item()
        if self.gates == 0 or total == 0:
            return math.nan
        return norms[self.ungated_blocks():].sum().item() / total


@dataclass(eq=False)
class ConvexAttentionHead(ConvexHead):
    """Convex linear (gates=0) or gated-ReLU (gates>0) self-attention head, programs (a) and (b)."""

    def sample_gates(self, tokens, generator):
        return attention_gates(tokens.shape[-1], self.gates, generator)

    def design(self, tokens):
        return attention_design(tokens, self.gates_)


@dataclass(eq=False)
class ConvexMixerHead(ConvexHead):
    """Convex two-layer MLP-Mixer head (token mixing, then channel mixing), program (c)."""

    def sample_gates(self, tokens, generator):
        return mixer_gates(tokens.shape[1], self.gates, generator)

    def design(self, tokens):
        return mixer_design(tokens, self.gates_)


@dataclass(eq=False)
class ConvexFNOHead(ConvexHead):
    """Convex gated FNO head over the low Fourier modes of the token grid, program (d)."""

    grid_hw: tuple[int, int] = (6, 6)
    max_mode: int = 2
    mode_blocks: bool = True
    gates: int = 8

    def sample_gates(self, tokens, generator):
        return fno_gates(tokens.shape[-1], self.gates, generator)

    def ungated_blocks(self):
        return len(fourier_modes(self.grid_hw, self.max_mode)) if self.mode_blocks else 1

    def design(self, tokens):
        if tokens.shape[1] != self.grid_hw[0] * self.grid_hw[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not form the {self.grid_hw} grid (patch tokens only)")
        basis = fourier_basis(self.grid_hw, fourier_modes(self.grid_hw, self.max_mode))
        return fno_design(tokens, self.gates_, basis, self.mode_blocks)


def fit_path(head: ConvexHead, tokens: torch.Tensor, labels: torch.Tensor,
             beta_ratios: list[float]) -> list[ConvexHead]:
    """One fitted copy of `head` per beta ratio (returned in the given order), one shared design.

    Solved from the largest beta down, each solve warm-started from the previous solution and its
    curvature estimate (path following: neighbouring solutions are close, and large beta solves fast).
    """
    tokens = tokens.double()
    gates = head.sample_gates(tokens, torch.Generator().manual_seed(head.seed))
    fitted, init, features, lipschitz = {}, None, None, None
    for ratio in sorted(set(beta_ratios), reverse=True):
        member = replace(head, beta_ratio=ratio)
        member.gates_ = gates
        features = member.design(tokens) if features is None else features
        fitted[ratio] = member.fit_design(features, labels, init, lipschitz)
        init, lipschitz = member.Z_, member.solution_.lipschitz
    return [fitted[ratio] for ratio in beta_ratios]


@dataclass(eq=False)
class DesignLogisticHead:
    """Logistic regression on a convex head's own features Phi(X), with an L2 penalty instead of its nuclear norms:

        min_W  L(Phi W) + (weight_decay / 2) ||W||_F^2      vs the convex head's   L(Phi Z) + beta sum_j ||Z_j||_*.

    The baseline that sees exactly what the convex head sees (for linear attention: the cubic token products
    G[k, l] xbar[a]), so a gap between the two measures the nuclear norm (low rank), not the features. Where a
    block is a single row (p = 1) its nuclear norm is its Euclidean norm and the two programs share their
    solution at weight_decay = beta / ||Z*||_F (the same stationarity condition). Solved by scikit-learn's
    L-BFGS (C = 1 / (n weight_decay)), no intercept (the features' constant channel carries it).

    template: the convex head whose design (and gates, drawn with `seed`) is used.
    """

    weight_decay: float = 1e-3
    template: ConvexHead = field(default_factory=ConvexAttentionHead)
    seed: int = 0
    max_iter: int = 2000
    tol: float = 1e-6  # L-BFGS: objectives agree with tol=1e-8 to 6 digits at 60% of the time

    def design(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(self.template.design(tokens.double()), "n j p q -> n (j p q)")

    def fit(self, tokens: torch.Tensor, labels: torch.Tensor) -> "DesignLogisticHead":
        self.template = replace(self.template, seed=self.seed)
        self.template.gates_ = self.template.sample_gates(tokens.double(), torch.Generator().manual_seed(self.seed))
        return self.fit_design(self.design(tokens), labels)

    def fit_design(self, features: torch.Tensor, labels: torch.Tensor) -> "DesignLogisticHead":
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits
        start = time.perf_counter()
        n = len(labels)
        model = LogisticRegression(C=1 / (n * self.weight_decay), fit_intercept=False, max_iter=self.max_iter,
                                   tol=self.tol)
        with single_threaded(), threadpool_limits(1):  # one BLAS thread too: floats independent of the machine
            model.fit(features.numpy(), labels.numpy())
        self.model_ = model
        self.iterations_ = int(model.n_iter_.max())
        self.converged_ = self.iterations_ < self.max_iter
        self.weights_ = torch.from_numpy(model.coef_).T  # (F, classes seen in training)
        self.classes_ = torch.from_numpy(model.classes_)  # column k scores class classes_[k]
        outputs = features @ self.weights_
        penalty = 0.5 * self.weight_decay * self.weights_.square().sum()
        targets = torch.searchsorted(self.classes_, labels)
        self.objective_ = (nn.functional.cross_entropy(outputs, targets) + penalty).item()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def decision_function(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the classes seen in training (`classes_`), shape (n, len(classes_))."""
        return self.design(tokens) @ self.weights_

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classes_[self.decision_function(tokens).argmax(-1)]

    def num_parameters(self) -> int:
        return self.weights_.numel()


def fit_design_path(head: DesignLogisticHead, tokens: torch.Tensor, labels: torch.Tensor,
                    weight_decays: list[float]) -> list[DesignLogisticHead]:
    """One fitted copy of `head` per weight decay (in the given order), the design built once."""
    template = replace(head.template, seed=head.seed)
    template.gates_ = template.sample_gates(tokens.double(), torch.Generator().manual_seed(head.seed))
    features = rearrange(template.design(tokens.double()), "n j p q -> n (j p q)")
    fitted = []
    for decay in weight_decays:
        member = replace(head, weight_decay=decay, template=template)
        fitted.append(member.fit_design(features, labels))
    return fitted


# ---------------------------------------------------------------------------------------------
# networks: the attention network a convex solution maps back to, and the baselines' modules


class AttentionNetwork(nn.Module):
    """m-head (gated) linear attention with GAP:
        f(X) = (1/s) 1^T sum_j ((M_{g(j)} .* X W1_j X^T) / s) X W2_j,
    M_g[t, b] = 1{x_t^T H_g x_b >= 0} for the head's gate g(j); no gates: M = 1 (linear attention).
    """

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor, gates: torch.Tensor | None = None,
                 head_gate: torch.Tensor | None = None):
        super().__init__()
        self.W1, self.W2 = nn.Parameter(W1), nn.Parameter(W2)  # (m, d, d), (m, d, c)
        self.register_buffer("gates", gates)
        self.register_buffer("head_gate", head_gate)

    def kernels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each head's attention matrix (M .* X W1_j X^T) / s, shape (n, m, s, s)."""
        scores = torch.einsum("nta,jak,nbk->njtb", tokens, self.W1, tokens) / tokens.shape[1]
        if self.gates is None:
            return scores
        return scores * attention_masks(tokens, self.gates.to(tokens.dtype))[:, self.head_gate]

    def token_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention each token b receives in head j, averaged over queries, shape (n, m, s):
        the pooled output is sum_{j,b} weight[j, b] x_b^T W2_j."""
        return self.kernels(tokens).mean(2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.gates is None:  # no masks: f(X) = sum_j xbar^T W1_j G W2_j, O(m d^2) per image, not O(m s^2 d)
            mean = tokens.mean(1)  # xbar (n, d)
            gram = tokens.transpose(1, 2) @ tokens / tokens.shape[1]  # G = X^T X / s (n, d, d)
            left = torch.einsum("na,jak->njk", mean, self.W1)  # xbar^T W1_j
            return torch.einsum("njk,nkl,jlc->nc", left, gram, self.W2)
        return torch.einsum("njb,nbl,jlc->nc", self.token_weights(tokens), tokens, self.W2)

    def weight_decay(self) -> torch.Tensor:
        """(1/2) sum_j ||W1_j||_F^2 + ||W2_j||_F^2, equal to ||Z||_* for the Burer-Monteiro map."""
        return 0.5 * (self.W1.square().sum() + self.W2.square().sum())


def attention_network_from_convex(head: ConvexAttentionHead, rtol: float = 1e-9) -> AttentionNetwork:
    """Burer-Monteiro map of program (a)/(b): SVD of each gate's Z_g -> heads (W1_j, W2_j, gate g).

    Z_g = U diag(sigma) V^T, u_j = sqrt(sigma_j) U[:, j], v_j = sqrt(sigma_j) V[:, j],
    W1_j[a, k] = u_j[(k, a)], W2_j[l, c] = v_j[(l, c)]. Heads are ordered by decreasing sigma_j.
    """
    Z = head.Z_
    d, c = Z.shape[2], Z.shape[3]
    U, sigma, Vh = torch.linalg.svd(rearrange(Z, "g p q c -> g p (q c)"), full_matrices=False)
    keep = sigma > rtol * sigma.max()
    gate_index = torch.arange(len(Z))[:, None].expand_as(sigma)[keep]
    root = sigma[keep].sqrt()
    u = U.transpose(1, 2)[keep] * root[:, None]
    v = Vh[keep] * root[:, None]
    order = sigma[keep].argsort(descending=True)
    W1 = rearrange(u[order], "m (k a) -> m a k", a=d)
    W2 = rearrange(v[order], "m (l c) -> m l c", c=c)
    gated = head.gates > 0
    return AttentionNetwork(W1, W2, head.gates_ if gated else None, gate_index[order] if gated else None)


class SoftmaxAttentionNetwork(nn.Module):
    """One standard m-head softmax self-attention block (head width d) + GAP + linear classifier."""

    def __init__(self, dim: int, num_heads: int, num_classes: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * num_heads * dim, bias=False)
        self.classifier = nn.Linear(num_heads * dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(tokens), "n s (three m e) -> three n m s e", three=3, m=self.num_heads)
        attention = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(-1)  # (n, m, s, s)
        # GAP over the queries first: mean_t (A V)[t] = (sum_t A[t]) V / s, one vector-matrix product per
        # head: the output of scaled_dot_product_attention then the mean, without its CPU kernel (slow
        # for heads this small) and with elementwise work on (n, m, s, e) tensors, not (n, m, s, s) maps
        pooled = (attention.sum(2, keepdim=True) @ v).squeeze(2) / tokens.shape[1]  # (n, m, e)
        return self.classifier(rearrange(pooled, "n m e -> n (m e)"))


POOLINGS = ("mean", "flatten")


class PooledNetwork(nn.Module):
    """A classifier on pooled tokens: a linear layer, or an MLP with one hidden ReLU layer.

    pool: "mean" (first-order, position-blind features) or "flatten" (every token in place: the features of
    the convex mixer's ungated block, which sees where each token is).
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 0, pool: str = "mean", num_tokens: int = 1):
        super().__init__()
        if pool not in POOLINGS:
            raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
        self.pool = pool
        width = dim * num_tokens if pool == "flatten" else dim
        self.net = (nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
                    if hidden else nn.Linear(width, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = rearrange(tokens, "n s d -> n (s d)") if self.pool == "flatten" else tokens.mean(1)
        return self.net(pooled)


# ---------------------------------------------------------------------------------------------
# baselines: trained by full-batch Adam on  mean cross-entropy + (weight_decay / 2) sum ||W||_F^2


def train_networks(modules: list[nn.Module], tokens: torch.Tensor, labels: torch.Tensor,
                   weight_decays: list[float], lr: float, steps: int) -> list[float]:
    """Full-batch Adam with cosine decay on CE + (weight_decay / 2) * (squared norm of non-bias weights),
    every module with its own weight decay; returns the final objectives.

    All modules are trained at once: one Adam over all their parameters on the SUM of their objectives.
    Each objective depends only on its own module's parameters and Adam acts coordinate by coordinate,
    so every module follows exactly the trajectory it would follow alone (a grid of weight decays is
    one training run, with one backward pass and one optimizer step per step).
    """
    decayed = [[p for name, p in module.named_parameters() if not name.endswith("bias")] for module in modules]

    def objectives() -> list[torch.Tensor]:
        return [nn.functional.cross_entropy(module(tokens), labels) + 0.5 * decay * sum(p.square().sum() for p in ps)
                for module, decay, ps in zip(modules, weight_decays, decayed)]

    optimizer = torch.optim.Adam([p for module in modules for p in module.parameters()], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with single_threaded():
        for _ in range(steps):
            optimizer.zero_grad()
            sum(objectives()).backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            return [value.item() for value in objectives()]


@dataclass(eq=False)
class TorchHead:
    """Base of the Adam-trained heads; subclasses build the module and may derive the penalty."""

    weight_decay: float = 1e-3
    lr: float = 1e-2
    steps: int = 300
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def build(self, dim: int, num_tokens: int, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def penalty(self, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        return self.weight_decay

    def fit(self, tokens: torch.Tensor, labels: torch.Tensor) -> "TorchHead":
        return fit_together([self], tokens, labels)[0]

    @torch.no_grad()
    def decision_function(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module_(tokens.to(self.dtype))

    def predict_proba(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decision_function(tokens).softmax(-1)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decision_function(tokens).argmax(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module_.parameters())


def fit_together(heads: list[TorchHead], tokens: torch.Tensor, labels: torch.Tensor) -> list[TorchHead]:
    """Fit heads that differ only in their regularization (a grid) in one training run (`train_networks`);
    each ends as if fitted alone, its fit_seconds_ the run's time shared out equally."""
    first = heads[0]
    if any((h.lr, h.steps, h.dtype, h.seed) != (first.lr, first.steps, first.dtype, first.seed) for h in heads):
        raise ValueError("heads fitted together need the same lr, steps, dtype and seed")
    start = time.perf_counter()
    num_classes = int(labels.max()) + 1
    tokens = tokens.to(first.dtype)
    for head in heads:
        torch.manual_seed(head.seed)  # every head starts from the weights it would start from alone
        head.num_classes_ = num_classes
        head.module_ = head.build(tokens.shape[-1], tokens.shape[1], num_classes).to(first.dtype)
        head.penalty_ = head.penalty(tokens.double(), labels)
    values = train_networks([h.module_ for h in heads], tokens, labels, [h.penalty_ for h in heads],
                            first.lr, first.steps)
    seconds = (time.perf_counter() - start) / len(heads)
    for head, value in zip(heads, values):
        head.objective_, head.fit_seconds_ = value, seconds
    return heads


@dataclass(eq=False)
class LinearHead(TorchHead):
    """Multinomial logistic regression on mean-pooled (pool="mean") or flattened (pool="flatten") tokens."""

    pool: str = "mean"

    def build(self, dim, num_tokens, num_classes):
        return PooledNetwork(dim, num_classes, pool=self.pool, num_tokens=num_tokens)


@dataclass(eq=False)
class MLPHead(TorchHead):
    """Two-layer ReLU MLP on mean-pooled (pool="mean") or flattened (pool="flatten") tokens."""

    hidden: int = 64
    pool: str = "mean"

    def build(self, dim, num_tokens, num_classes):
        return PooledNetwork(dim, num_classes, self.hidden, self.pool, num_tokens)


@dataclass(eq=False)
class SoftmaxAttentionHead(TorchHead):
    """Standard m-head softmax attention block + GAP + linear classifier (non-convex).

    Trained in float32 by default: its O(n m s^2) attention maps dominate the cost of all baselines,
    and single precision is about three times faster on CPU (no certificate depends on it).
    """

    num_heads: int = 4
    dtype: torch.dtype = torch.float32

    def build(self, dim, num_tokens, num_classes):
        return SoftmaxAttentionNetwork(dim, self.num_heads, num_classes)


@dataclass(eq=False)
class LinearAttentionHead(TorchHead):
    """The primal of program (a), m heads trained by Adam: CE + (beta/2) sum_j ||W1_j||^2 + ||W2_j||^2.

    beta = beta_ratio * beta_max of the convex program on the same data, so objectives compare
    directly with `ConvexAttentionHead(beta_ratio)` (the convex optimum is a lower bound).
    """

    beta_ratio: float = 0.1
    num_heads: int = 8
    init_scale: float = 0.1

    def build(self, dim, num_tokens, num_classes):
        W1 = self.init_scale * torch.randn(self.num_heads, dim, dim)
        W2 = self.init_scale * torch.randn(self.num_heads, dim, num_classes)
        return AttentionNetwork(W1, W2)

    def penalty(self, tokens, labels):
        features = attention_design(tokens, torch.zeros(1, tokens.shape[-1], tokens.shape[-1], dtype=tokens.dtype))
        return self.beta_ratio * beta_max(features, labels, int(labels.max()) + 1)
