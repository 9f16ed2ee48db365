"""What the convex heads learn: which tokens each attention head groups, and the mixer's token templates.

Sahiner et al. (2022) read the linear-attention program as a clustering: head j scores token pairs by
a latent similarity K_j = X W1_j X^T / s (W1_j from the Burer-Monteiro factors of Z), and the pooled
output sum_{j,b} w_j[b] x_b^T W2_j weighs every token b by the attention it receives,
w_j[b] = (1/s) sum_t K_j[t, b]. Tokens that the kernels see alike land in the same group. Here:

- token groups of one image: k-means on the kernel columns of the strongest heads (token b ->
  [K_j[:, b]]_j, i.e. how every query sees b), compared with k-means on the raw tokens;
- agreement with the objects (shapes masks -> one label per patch: background or the object covering
  at least half of it), measured by normalized mutual information (NMI) per image;
- the MLP-Mixer head's token templates: the left singular vectors of its blocks Z_g (s-dim), read as
  maps over the patch grid.

References: Sahiner et al. 2022, "Unraveling Attention via Convex Duality" (arXiv 2205.08078), Sec. on
interpretation (self-attention clusters tokens by latent similarity).
"""
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from lib.convex.heads import AttentionNetwork, ConvexMixerHead


def kernel_embedding(network: AttentionNetwork, tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Token b of each image -> the b-th columns of the first `num_heads` kernels, (n, s, heads * s)."""
    with torch.no_grad():
        kernels = network.kernels(tokens.to(network.W1.dtype))[:, :num_heads]
    return rearrange(kernels, "n j t b -> n b (j t)")


def cluster_tokens(embedding: torch.Tensor, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means of the tokens of each image on their embedding, labels (n, s)."""
    return np.stack([
        KMeans(num_clusters, n_init=4, random_state=seed).fit_predict(e.double().numpy()) for e in embedding
    ])


def patch_labels(masks: torch.Tensor, grid_hw: tuple[int, int]) -> np.ndarray:
    """Object masks (n, objects, H, W) -> (n, s): 0 background, 1 + o for the object covering most of the
    patch when it covers at least half of it."""
    coverage = F.adaptive_avg_pool2d(masks.float(), grid_hw)  # patches tile the image exactly
    best, index = coverage.max(1)
    labels = torch.where(best >= 0.5, index + 1, 0)
    return rearrange(labels, "n h w -> n (h w)").numpy()


def clustering_agreement(clusters: np.ndarray, reference: np.ndarray) -> float:
    """Mean over images of the NMI between token clusters and reference patch labels."""
    return float(np.mean([normalized_mutual_info_score(r, c) for c, r in zip(clusters, reference)]))


def mixer_templates(head: ConvexMixerHead, grid_hw: tuple[int, int], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` strongest token-mixing templates over all gates: (count, H, W) maps and their
    singular values (left singular vectors of Z_g, s x dc)."""
    U, sigma, _ = torch.linalg.svd(rearrange(head.Z_, "g b k c -> g b (k c)"), full_matrices=False)
    order = sigma.flatten().argsort(descending=True)[:count]
    templates = rearrange(U, "g b r -> (g r) b")[order]
    return rearrange(templates, "m (h w) -> m h w", h=grid_hw[0], w=grid_hw[1]), sigma.flatten()[order]


def grouping_agreement(network: AttentionNetwork, tokens: torch.Tensor, objects: np.ndarray, num_clusters: int,
                       seed: int = 0) -> dict[str, float]:
    """NMI with the object patch labels of three groupings of each image's tokens: k-means on the raw tokens, on
    the columns of the head's three strongest kernels (the paper's prediction: these follow the objects better),
    and uniformly random groups (the chance level)."""
    random_groups = np.random.default_rng(seed).integers(num_clusters, size=objects.shape)
    return {
        "raw tokens": clustering_agreement(cluster_tokens(tokens, num_clusters, seed), objects),
        "convex attention kernels": clustering_agreement(
            cluster_tokens(kernel_embedding(network, tokens, 3), num_clusters, seed), objects),
        "random groups": clustering_agreement(random_groups, objects),
    }


def rank_trend(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, convex head): the mean total rank of Z at the strongest and the weakest beta of the grid, and
    in how many seeds the rank never grows as beta grows (the nuclear norm's prediction: stronger beta, lower rank)."""
    rows = []
    convex = runs[runs["family"] == "convex"]
    for (setting, head), part in convex.groupby(["setting", "head"], sort=False):
        paths = [rows_.sort_values("value")["rank"].to_numpy() for _, rows_ in part.groupby("seed")]
        by_value = part.groupby("value")["rank"].mean()
        rows.append({"setting": setting, "head": head, "seeds": len(paths),
                     "non_increasing": sum(bool(np.all(np.diff(path) <= 0)) for path in paths),
                     "rank_weakest_beta": by_value.iloc[0], "rank_strongest_beta": by_value.iloc[-1],
                     "weakest_beta": by_value.index[0], "strongest_beta": by_value.index[-1]})
    return pd.DataFrame(rows)
