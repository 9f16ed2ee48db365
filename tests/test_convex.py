"""Convex heads: the torch solver reaches cvxpy's optimum, its certificate is honest, and the convex
linear attention head is the multi-head network its Burer-Monteiro factors build."""
from dataclasses import dataclass, replace

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
import torch
from einops import rearrange

from lib.convex.benchmark import cvxpy_solve
from lib.convex.compare import (HEADS, accuracy, findings, grid_accuracies, head_specs, paired_comparisons,
                                select_on_validation, summarize)
from lib.convex.features import fit_projection, token_features
from lib.convex.heads import (AttentionNetwork, ConvexAttentionHead, ConvexFNOHead, ConvexHead, ConvexMixerHead,
                              DesignLogisticHead, LinearAttentionHead, LinearHead, MLPHead, SoftmaxAttentionNetwork, attention_design,
                              attention_gates, attention_masks, attention_network_from_convex, fit_design_path, fit_path,
                              fit_together)
from lib.convex.interpret import patch_labels
from lib.convex.solver import (beta_max, block_nuclear_norms, block_ranks, certificate, logits, single_threaded, solve,
                               svt)
from lib.models import VisionTransformer

TIGHT = dict(max_iter=5000, tol=1e-12, gap_tol=1e-7)


def random_tokens(n: int, s: int, d: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens whose label is the largest of c feature correlations x[k] x[k + 1] averaged over tokens (a
    quadratic interaction, so the heads have something to fit), plus noise; every class occurs."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, s, d, generator=g, dtype=torch.float64)
    score = (tokens * tokens.roll(-1, dims=-1)).mean(1)[:, :c]
    labels = (score + 0.3 * torch.randn(score.shape, generator=g, dtype=torch.float64)).argmax(-1)
    assert labels.unique().numel() == c
    return tokens, labels


def small_heads():
    return {
        "linear attention": (ConvexAttentionHead(gates=0), 4),
        "gated attention": (ConvexAttentionHead(gates=2), 4),
        "mixer": (ConvexMixerHead(gates=2), 4),
        "fno": (ConvexFNOHead(gates=2, grid_hw=(3, 3), max_mode=1), 9),
    }


@pytest.mark.parametrize("loss", ["softmax", "squared"])
@pytest.mark.parametrize("name", ["linear attention", "gated attention", "mixer", "fno"])
def test_solver_reaches_the_cvxpy_optimum(name, loss):
    head, s = small_heads()[name]
    head = replace(head, loss=loss, beta_ratio=0.05, **TIGHT)
    tokens, labels = random_tokens(24, s, 3, 3)
    head.gates_ = head.sample_gates(tokens, torch.Generator().manual_seed(0))
    features = head.design(tokens)
    fitted = head.fit_design(features, labels)
    reference, _ = cvxpy_solve(features, labels, 3, fitted.beta_, loss)
    assert fitted.solution_.converged
    assert abs(fitted.objective_ - reference) <= 1e-4 * abs(reference)


def test_prox_is_block_singular_value_thresholding():
    g = torch.Generator().manual_seed(1)
    V = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64)  # 2 blocks of 4 x 6
    tau = 0.7
    Z, singular = svt(V, tau)
    for j in range(2):  # definition: argmin 0.5 ||Z - V||_F^2 + tau ||Z||_*
        block = rearrange(V[j], "p q c -> p (q c)").numpy()
        variable = cp.Variable(block.shape)
        objective = 0.5 * cp.sum_squares(variable - block) + tau * cp.normNuc(variable)
        cp.Problem(cp.Minimize(objective)).solve(solver=cp.CLARABEL)
        assert np.allclose(rearrange(Z[j], "p q c -> p (q c)").numpy(), variable.value, atol=1e-6)
    # closed form: singular values shrink by tau and stop at 0, singular vectors stay
    expected = (torch.linalg.svdvals(rearrange(V, "j p q c -> j p (q c)")) - tau).clamp_min(0)
    assert torch.allclose(singular, expected)
    assert torch.allclose(torch.linalg.svdvals(rearrange(Z, "j p q c -> j p (q c)")), expected)
    # optimality: V - Z in tau * subdifferential of ||Z||_*  (spectral norm <= tau, <V - Z, Z> = tau ||Z||_*)
    residual = rearrange(V - Z, "j p q c -> j p (q c)")
    assert torch.linalg.matrix_norm(residual, ord=2).max() <= tau + 1e-10
    assert torch.allclose(((V - Z) * Z).sum(), tau * block_nuclear_norms(Z).sum())


def test_squared_loss_with_orthonormal_design_has_the_closed_form_solution():
    """A^T A / n = I  =>  P(Z) = 0.5 ||Z - A^T Y / n||^2 + beta ||Z||_* + const, solved by one SVT."""
    n, J, p, q, c = 40, 2, 3, 2, 2
    g = torch.Generator().manual_seed(2)
    design = torch.linalg.qr(torch.randn(n, J * p * q, generator=g, dtype=torch.float64)).Q * n**0.5
    features = rearrange(design, "n (j p q) -> n j p q", j=J, p=p)
    targets = torch.randn(n, c, generator=g, dtype=torch.float64)
    solution = solve(features, targets, c, beta=0.05, loss="squared", **TIGHT)
    expected, _ = svt(rearrange(design.T @ targets / n, "(j p q) c -> j p q c", j=J, p=p), 0.05)
    assert torch.allclose(solution.Z, expected, atol=1e-8)


def test_planted_rank_one_mixer_is_recovered():
    """Noise-free targets from a rank-one token x channel weight: small beta finds it, with rank one."""
    n, s, d, c = 200, 5, 3, 2
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(n, s, d, generator=g, dtype=torch.float64)
    token_weights, channel_weights = (torch.randn(size, generator=g, dtype=torch.float64) for size in (s, d * c))
    planted = rearrange(torch.outer(token_weights, channel_weights), "b (k c) -> 1 b k c", c=c)
    head = ConvexMixerHead(gates=0, loss="squared", beta_ratio=1e-3, **TIGHT)
    head.gates_ = head.sample_gates(tokens, g)
    features = head.design(tokens)
    head.fit_design(features, logits(features, planted))
    assert (head.Z_ - planted).norm() / planted.norm() < 1e-2
    assert block_ranks(head.Z_).tolist() == [1]


def test_duality_gap_vanishes_at_the_solution_and_bounds_suboptimality_elsewhere():
    tokens, labels = random_tokens(40, 4, 3, 3, seed=4)
    head = ConvexAttentionHead(gates=1, beta_ratio=0.1, **TIGHT).fit(tokens, labels)
    features, beta = head.design(tokens), head.beta_
    assert 0 <= head.duality_gap_ <= 1e-7 * head.objective_
    assert head.solution_.certificate.dual_scale > 1 - 1e-5  # the raw gradient is (nearly) dual feasible
    g = torch.Generator().manual_seed(5)
    for Z in (torch.zeros_like(head.Z_), head.Z_ + 0.05 * torch.randn(head.Z_.shape, generator=g, dtype=torch.float64)):
        other = certificate(features, labels, Z, beta, "softmax")
        suboptimality = other.primal - head.objective_
        assert suboptimality > 1e-4
        assert other.gap >= suboptimality - 1e-9  # the gap bounds the distance to the optimum


@pytest.mark.parametrize("gates", [0, 2])
def test_burer_monteiro_network_reproduces_the_convex_head(gates):
    tokens, labels = random_tokens(40, 5, 3, 3, seed=6)
    head = ConvexAttentionHead(gates=gates, beta_ratio=0.05, **TIGHT).fit(tokens, labels)
    network = attention_network_from_convex(head)
    test_tokens, _ = random_tokens(10, 7, 3, 3, seed=7)  # another token count too
    assert len(network.W1) == int(head.ranks().sum())  # one head per singular value: m* = rank(Z)
    with torch.no_grad():
        assert torch.allclose(network(test_tokens), head.decision_function(test_tokens), atol=1e-10)
        assert torch.isclose(network.weight_decay(), block_nuclear_norms(head.Z_).sum())  # same penalty


def test_adam_trained_network_does_not_beat_the_certified_convex_optimum():
    tokens, labels = random_tokens(60, 4, 3, 3, seed=8)
    convex = ConvexAttentionHead(beta_ratio=0.1, **TIGHT).fit(tokens, labels)
    network = LinearAttentionHead(beta_ratio=0.1, num_heads=6, steps=300, lr=0.02).fit(tokens, labels)
    assert network.penalty_ == pytest.approx(convex.beta_)
    assert network.objective_ >= convex.objective_ - 1e-9
    assert network.objective_ <= 1.05 * convex.objective_  # ... and Adam gets close with enough heads


def test_path_with_warm_starts_matches_cold_fits():
    tokens, labels = random_tokens(40, 4, 3, 3, seed=9)
    ratios = [0.3, 0.03]
    path = fit_path(ConvexMixerHead(gates=2, **TIGHT), tokens, labels, ratios)
    for ratio, warm in zip(ratios, path):
        cold = ConvexMixerHead(gates=2, beta_ratio=ratio, **TIGHT).fit(tokens, labels)
        assert warm.beta_ratio == ratio
        assert warm.objective_ == pytest.approx(cold.objective_, rel=1e-7)
    assert path[0].ranks().sum() <= path[1].ranks().sum()  # stronger beta, lower rank


def test_token_features_and_projection_are_fitted_on_train_only():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2)
    model.eval()
    images = torch.rand(6, 1, 16, 16)
    tokens, grid = token_features(model, images)
    with torch.no_grad():
        assert torch.allclose(tokens, model.forward_features(images * 2 - 1)[:, 1:], atol=1e-6)
    assert grid == (4, 4) and token_features(model, images, layer=0, include_cls=True)[0].shape == (6, 17, 16)
    projection = fit_projection(tokens[:4], dim=3)
    train, other = projection(tokens[:4].double()), projection(tokens[4:].double())
    assert train.shape == (4, 16, 4) and torch.all(train[..., -1] == 1)
    flat = rearrange(train[..., :-1], "n s d -> (n s) d")
    assert torch.allclose(flat.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(flat.std(0), torch.ones(3, dtype=torch.float64))
    assert not torch.allclose(rearrange(other[..., :-1], "n s d -> (n s) d").std(0), torch.ones(3, dtype=torch.float64))


def test_patch_labels_follow_the_object_masks():
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    masks[0, 0, :4, :4] = True  # circle fills the top-left patch
    masks[0, 1, 4:, 4:6] = True  # square covers half of the bottom-right patch
    assert patch_labels(masks, (2, 2)).tolist() == [[1, 0, 0, 2]]


def _selection_runs(grid=(0.8, 0.9), other=(0.7, 0.7), seeds=range(3)):
    import pandas as pd

    rows = []
    for seed in seeds:
        for head, family, accs in (("convex", "convex", grid), ("linear", "baseline", other)):
            for position, val in enumerate(accs):
                rows.append({"setting": "a -> b", "head": head, "family": family, "seed": seed, "regularizer": "r",
                             "value": 10.0**-position, "grid_position": position, "val_accuracy": val,
                             "val_images": 100, "test_accuracy": val - 0.01 * seed, "fit_seconds": 1.0, "parameters": 10})
    return pd.DataFrame(rows)


def test_selection_marks_grid_edges_and_summary_comes_from_the_numbers():
    selected = select_on_validation(_selection_runs(grid=(0.8, 0.9, 0.85)))
    by_key = selected.set_index(["head", "seed"])
    assert by_key.loc[("linear", 0), "grid_position"] == 0 and by_key.loc[("linear", 0), "at_edge"]  # tie -> stronger
    assert by_key.loc[("convex", 0), "grid_position"] == 1 and not by_key.loc[("convex", 0), "at_edge"]
    summary = summarize(selected, ["convex", "linear"])
    assert summary.loc[0, "setting"] == "a -> b" and summary.loc[0, "test_accuracy"] == pytest.approx(0.89)
    assert summary.loc[0, "at_edge"] == 0 and summary.loc[1, "at_edge"] == 3
    # an edge choice is on a plateau where the next value inward is within one binomial SE on validation:
    # 0.9 on 100 images: SE 0.03, so 0.88 inward is a plateau, 0.85 is not
    plateau = select_on_validation(_selection_runs(grid=(0.8, 0.88, 0.9))).set_index(["head", "seed"])
    assert plateau.loc[("convex", 0), "at_edge"] and plateau.loc[("convex", 0), "edge_on_plateau"]
    assert plateau.loc[("linear", 0), "edge_on_plateau"]  # a tie (0.7, 0.7) is the flattest plateau
    steep = select_on_validation(_selection_runs(grid=(0.8, 0.85, 0.9))).set_index(["head", "seed"])
    assert steep.loc[("convex", 0), "at_edge"] and not steep.loc[("convex", 0), "edge_on_plateau"]
    assert not by_key["edge_on_plateau"].loc[("convex", 0)]  # not at an edge: never on a plateau
    two = pd.concat([_selection_runs().assign(setting="z -> y"), _selection_runs()], ignore_index=True)
    assert list(dict.fromkeys(summarize(select_on_validation(two), ["convex", "linear"])["setting"])) == ["z -> y", "a -> b"]


def test_paired_comparisons_match_a_hand_computed_t_interval_and_state_only_what_excludes_zero():
    selected = select_on_validation(_selection_runs(seeds=range(4)))
    rng = np.random.default_rng(0)
    noise = {seed: rng.normal(0, 0.02) for seed in range(4)}
    selected["test_accuracy"] += [noise[s] if h == "convex" else 0.0 for h, s in zip(selected["head"], selected["seed"])]
    paired = paired_comparisons(selected, [("convex", "linear", "q one"), ("convex", "absent", "q two")])
    assert len(paired) == 1  # a pair with a head that was not run is left out
    differences = np.array([0.2 + noise[s] for s in range(4)])  # 0.9 - 0.7 plus the noise, seed by seed
    half = 3.182446305284263 * differences.std(ddof=1) / 2  # t_{0.975, 3} * sd / sqrt(4)
    row = paired.iloc[0]
    assert row["difference"] == pytest.approx(differences.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((differences.mean() - half, differences.mean() + half))
    assert row["verdict"] == "convex > linear" and row["seeds"] == 4
    tied = paired_comparisons(select_on_validation(_selection_runs(grid=(0.7, 0.7))), [("convex", "linear", "q")])
    summary = summarize(select_on_validation(_selection_runs()), ["convex", "linear"])
    lines = findings(pd.concat([paired, tied.assign(question="q three")]), summary)
    assert lines[0] == (f"- Q one: convex − linear = {100 * differences.mean():+.1f} points "
                        f"[{100 * (differences.mean() - half):+.1f}, {100 * (differences.mean() + half):+.1f}] in "
                        f"`a -> b`: **convex > linear**.")
    assert lines[1].endswith("= +0.0 points [+0.0, +0.0] in `a -> b`: **no difference detected**.")
    assert "Chosen at a grid edge" in lines[-1] and "linear (a -> b, 3 of 3 seeds)" in lines[-1]


def test_head_specs_give_every_head_the_same_number_of_configurations():
    from lib.config import ConvexParams

    config = ConvexParams(settings=["shapes-light-rope_mixed->shapes"], grid_size=4)
    specs = head_specs(config, (3, 3))
    assert [spec.name for spec in specs] == list(HEADS)
    assert {len(spec.grid) for spec in specs} == {4}
    for spec in specs:
        assert spec.grid == tuple(sorted(spec.grid, reverse=True))  # strongest first
        assert spec.regularizer == ("beta / beta_max" if spec.family == "convex" or "Adam)" in spec.name
                                    and "linear attention" in spec.name else "weight decay")
    chosen = head_specs(config.model_copy(update={"heads": ["convex mixer", "MLP, pooled tokens"]}), (3, 3))
    assert [spec.name for spec in chosen] == ["convex mixer", "MLP, pooled tokens"]
    tokens, labels = random_tokens(40, 9, 3, 3)
    flat = next(spec for spec in specs if spec.name == "linear, flattened tokens").fit_grid(tokens, labels, 0)
    assert len(flat) == 4 and flat[0].module_.pool == "flatten"


def test_working_set_and_block_scaling_keep_the_full_programs_optimum_and_certificate():
    """FISTA on the scaled working set reaches the optimum of plain FISTA on every block, and the gap it
    reports is the full program's (recomputed here from scratch on the unscaled design)."""
    tokens, labels = random_tokens(40, 9, 3, 3, seed=10)
    head = ConvexFNOHead(gates=3, grid_hw=(3, 3), max_mode=1)
    head.gates_ = head.sample_gates(tokens, torch.Generator().manual_seed(0))
    features = head.design(tokens)
    beta = 0.2 * beta_max(features, labels, 3)
    fast = solve(features, labels, 3, beta, **TIGHT)
    plain = solve(features, labels, 3, beta, working_set=False, **TIGHT)
    assert fast.converged and plain.converged
    assert (block_ranks(fast.Z) == 0).any()  # some blocks stay out: the working set is used
    assert fast.certificate.primal == pytest.approx(plain.certificate.primal, rel=1e-7)
    recomputed = certificate(features, labels, fast.Z, beta, "softmax")
    assert recomputed.gap == pytest.approx(fast.certificate.gap, abs=1e-12)
    assert recomputed.relative_gap < TIGHT["gap_tol"]


def test_attention_design_matches_its_definition():
    tokens, _ = random_tokens(5, 4, 3, 3, seed=11)
    gates = attention_gates(3, 2, torch.Generator().manual_seed(0))
    masks = attention_masks(tokens, gates)
    direct = torch.einsum("ngtb,nta,nbk,nbl->ngkal", masks, tokens, tokens, tokens) / 4**2
    assert torch.allclose(attention_design(tokens, gates, chunk=2), rearrange(direct, "n g k a l -> n g (k a) l"))


def test_fast_forwards_match_their_definitions():
    tokens, _ = random_tokens(6, 5, 3, 3, seed=12)
    g = torch.Generator().manual_seed(13)
    network = AttentionNetwork(torch.randn(4, 3, 3, generator=g, dtype=torch.float64),
                               torch.randn(4, 3, 2, generator=g, dtype=torch.float64))
    with torch.no_grad():  # (1/s) 1^T sum_j (X W1_j X^T / s) X W2_j, through the kernels
        direct = torch.einsum("njtb,nbl,jlc->nc", network.kernels(tokens), tokens, network.W2) / 5
        assert torch.allclose(network(tokens), direct)
        softmax = SoftmaxAttentionNetwork(3, 2, 4).double()
        q, k, v = rearrange(softmax.qkv(tokens), "n s (three m e) -> three n m s e", three=3, m=2)
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v).mean(2)
        assert torch.allclose(softmax(tokens), softmax.classifier(rearrange(mixed, "n m e -> n (m e)")))


def test_a_grid_trained_together_matches_training_each_member_alone():
    tokens, labels = random_tokens(30, 4, 3, 3, seed=14)
    for make in (lambda w: MLPHead(weight_decay=w, steps=40, hidden=8, seed=3),
                 lambda w: LinearAttentionHead(beta_ratio=w, num_heads=2, steps=40, seed=3)):
        together = fit_together([make(0.1), make(0.001)], tokens, labels)
        for head in together:
            alone = make(getattr(head, "beta_ratio", head.weight_decay)).fit(tokens, labels)
            assert head.objective_ == pytest.approx(alone.objective_, rel=1e-10)
            for p, q in zip(head.module_.parameters(), alone.module_.parameters()):
                assert torch.allclose(p, q, atol=1e-10)


def test_grid_accuracies_share_the_design_and_agree_with_each_head():
    tokens, labels = random_tokens(40, 4, 3, 3, seed=15)
    split = {"val": random_tokens(20, 4, 3, 3, seed=16)}
    path = fit_path(ConvexAttentionHead(gates=2, max_iter=200), tokens, labels, [0.3, 0.03])
    baselines = fit_together([LinearHead(weight_decay=w, steps=20) for w in (0.1, 0.01)], tokens, labels)
    for fitted in (path, baselines):
        assert grid_accuracies(fitted, split) == [{"val_accuracy": accuracy(h, *split["val"])} for h in fitted]


def test_single_threaded_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@dataclass(eq=False)
class RowDesignHead(ConvexHead):
    """A convex head whose only block is one row (p = 1): its nuclear norm is the Euclidean norm of the block."""

    def sample_gates(self, tokens, generator):
        return torch.zeros(0)

    def design(self, tokens):
        return rearrange(tokens, "n s d -> n 1 1 (s d)")


def test_design_logistic_head_is_the_convex_head_where_the_nuclear_norm_is_euclidean():
    # one row block: min L + beta ||z|| and min L + (lam / 2) ||z||^2 have the same minimizer at lam = beta / ||z*||
    tokens, labels = random_tokens(80, 4, 3, 3, seed=5)
    convex = RowDesignHead(beta_ratio=0.05, **TIGHT).fit(tokens, labels)
    weight_decay = convex.beta_ / convex.Z_.norm().item()
    ridge = DesignLogisticHead(weight_decay=weight_decay, template=RowDesignHead(), tol=1e-12).fit(tokens, labels)
    torch.testing.assert_close(ridge.weights_, rearrange(convex.Z_, "1 1 q c -> q c"), atol=2e-5, rtol=1e-3)
    assert (ridge.predict(tokens) == convex.predict(tokens)).all()
    # a different penalty strength gives a different model: the comparison can fail
    other = DesignLogisticHead(weight_decay=10 * weight_decay, template=RowDesignHead()).fit(tokens, labels)
    assert (other.weights_ - ridge.weights_).abs().max() > 1e-2


def test_design_logistic_head_sees_the_convex_attention_heads_features():
    tokens, labels = random_tokens(60, 5, 3, 3)
    head = DesignLogisticHead(weight_decay=1e-2).fit(tokens, labels)
    features = attention_design(tokens, torch.zeros(1, 3, 3, dtype=torch.float64))
    assert head.weights_.shape == (features[0].numel(), 3)
    torch.testing.assert_close(head.decision_function(tokens), rearrange(features, "n j p q -> n (j p q)") @ head.weights_)
    path = fit_design_path(DesignLogisticHead(), tokens, labels, [1e-1, 1e-2])
    assert [h.weight_decay for h in path] == [1e-1, 1e-2]
    torch.testing.assert_close(path[1].weights_, head.weights_)
    assert path[0].weights_.norm() < path[1].weights_.norm()  # stronger penalty, smaller weights


def test_flattened_heads_see_token_positions_and_pooled_heads_do_not():
    tokens, _ = random_tokens(4, 5, 3, 3)
    shuffled = tokens[:, torch.randperm(5, generator=torch.Generator().manual_seed(0))]
    for head in (LinearHead(steps=1), MLPHead(steps=1, hidden=8)):
        pooled = head.build(3, 5, 2).double()
        assert torch.allclose(pooled(tokens), pooled(shuffled))
        flat = replace(head, pool="flatten").build(3, 5, 2).double()
        assert not torch.allclose(flat(tokens), flat(shuffled))
    with pytest.raises(ValueError, match="pool"):
        LinearHead(pool="max").build(3, 5, 2)


def test_gated_share_is_the_penalty_share_of_the_sampled_gates():
    tokens, labels = random_tokens(60, 4, 3, 3)
    head = ConvexAttentionHead(beta_ratio=0.05, gates=2, **TIGHT).fit(tokens, labels)
    norms = block_nuclear_norms(head.Z_)
    assert head.gated_share() == pytest.approx((norms[1:].sum() / norms.sum()).item())
    assert np.isnan(ConvexAttentionHead(beta_ratio=0.05, gates=0).fit(tokens, labels).gated_share())
    fno = ConvexFNOHead(beta_ratio=0.05, gates=2, grid_hw=(2, 2), max_mode=1, **TIGHT).fit(tokens, labels)
    modes = fno.ungated_blocks()
    assert modes == 4 and fno.Z_.shape[0] == 3 * modes  # 4 modes of a 2x2 grid; (gate, mode) blocks, gate 0's first
    norms = block_nuclear_norms(fno.Z_)
    assert fno.gated_share() == pytest.approx((norms[modes:].sum() / norms.sum()).item())


def test_leaked_images_finds_a_planted_copy_at_any_resolution_and_colour():
    from lib.convex.features import leaked_images, match_channels

    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 3, 8, 8, generator=g)
    test = torch.rand(6, 3, 8, 8, generator=g)
    assert leaked_images(train, test) == 0
    test[2] = train[5]
    assert leaked_images(train, test) == 1
    # the same picture stored at twice the size and in grey still counts: compared at the smaller size, backbone colour
    big_grey = torch.nn.functional.interpolate(train[5:6].mean(1, keepdim=True), scale_factor=2, mode="nearest")
    assert leaked_images(match_channels(train, 1), torch.cat([torch.rand(2, 1, 16, 16, generator=g), big_grey])) == 1
    assert match_channels(train[:1, :1], 3).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="2-channel"):
        match_channels(torch.rand(1, 2, 4, 4), 3)


def test_token_features_feed_grey_images_to_a_colour_backbone():
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=3, embed_dim=16, depth=1, num_heads=2,
                              pos_embed="rope_mixed")
    grey = torch.rand(2, 1, 8, 8)
    tokens, grid = token_features(model, grey)
    torch.testing.assert_close(tokens, token_features(model, grey.expand(-1, 3, -1, -1))[0])
    assert grid == (2, 2)


def test_planted_clusters_are_recovered_with_nmi_one_and_random_groups_are_not():
    from lib.convex.interpret import cluster_tokens, clustering_agreement, grouping_agreement

    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.arange(12)[torch.randperm(12, generator=g)] % 3 for _ in range(5)])  # 4 tokens per group
    centres = 10 * torch.eye(3, 4, dtype=torch.float64)
    tokens = centres[labels] + 0.1 * torch.randn(5, 12, 4, generator=g, dtype=torch.float64)
    assert clustering_agreement(cluster_tokens(tokens, 3), labels.numpy()) == pytest.approx(1.0)
    network = AttentionNetwork(torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 4, 2, dtype=torch.float64))
    agreement = grouping_agreement(network, tokens, labels.numpy(), 3)
    assert agreement["raw tokens"] == pytest.approx(1.0) and agreement["random groups"] < 0.6


def test_rank_trend_counts_paths_whose_rank_never_grows_with_beta():
    from lib.convex.interpret import rank_trend

    rows = [{"setting": "s", "head": "h", "family": "convex", "seed": seed, "value": value, "rank": rank}
            for seed, ranks in ((0, (5, 3, 1)), (1, (4, 5, 1))) for value, rank in zip((1e-3, 1e-2, 1e-1), ranks)]
    trend = rank_trend(pd.DataFrame(rows)).iloc[0]
    assert (trend["seeds"], trend["non_increasing"]) == (2, 1)
    assert (trend["rank_weakest_beta"], trend["rank_strongest_beta"]) == (4.5, 1.0)


def test_excess_at_choice_reads_the_objectives_at_the_primal_heads_validation_choice():
    from lib.convex.compare import excess_at_choice

    rows = [{"setting": "s", "seed": seed, "head": head, "value": value, "objective": objective,
             "val_accuracy": val, "grid_position": position, "family": "f", "fit_seconds": 1.0, "val_images": 100}
            for seed in (0, 1)
            for head, objectives, vals in (("convex linear attention", (1.0, 0.5), (0.9, 0.9)),
                                           ("linear attention (Adam)", (1.1, 1.0), (0.8, 0.9 - 0.2 * seed)))
            for position, (value, objective, val) in enumerate(zip((0.1, 0.01), objectives, vals))]
    runs = pd.DataFrame(rows)
    excess = excess_at_choice(runs, select_on_validation(runs))
    assert excess.loc[("s", 0)] == pytest.approx(1.0 / 0.5 - 1)  # seed 0 chose 0.01: Adam 1.0 vs optimum 0.5
    assert excess.loc[("s", 1)] == pytest.approx(1.1 / 1.0 - 1)  # seed 1 chose 0.1
