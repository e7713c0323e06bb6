"""k-means and its relatives for the codebook initialisation: nearest code, plain and balanced k-means,
and Sinkhorn's biases towards uniform code usage. Pure torch; distances by one matrix product.

Shapes: N points, H dim, K codes.

May import: torch only.
"""

from __future__ import annotations

import torch


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest code (squared L2, plus the code's bias if given) for each row; distances by
    one matrix product.

    Args:
        x: (B, H) vectors.
        codebook: (K, H) codes.
        bias: (K,) added to each code's squared distance (a power diagram; see ``RQVAEConfig.balance``).

    Returns:
        (B,) int64 indices.
    """
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code, so it is dropped.
    const = (codebook * codebook).sum(1) if bias is None else (codebook * codebook).sum(1) + bias  # (K,)
    dist = torch.addmm(const[None, :], x, codebook.T, alpha=-2.0)  # (B, K)
    return dist.argmin(dim=1)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means from k distinct random points (as FAISS does); seeded, deterministic on CPU.

    A cluster that empties during the iterations takes the point farthest from its centroid, so all k
    centroids stay on data.

    Args:
        x: (N, H) points, N >= k.
        k: number of centroids.
        iters: Lloyd iterations.
        generator: the random source of the starting points.

    Returns:
        (k, H) centroids.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    centroids = x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()  # (K, H)
    for _ in range(iters):
        assign = nearest_code(x, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (K, H)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # (K,)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            err = ((x - centroids[assign]) ** 2).sum(1)  # (N,)
            far = err.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
    return centroids


def sinkhorn_bias(dist: torch.Tensor, eps: float, iters: int = 50, init: torch.Tensor | None = None) -> torch.Tensor:
    """Per-code biases b such that assigning each row to argmin_k dist + b gives (nearly) uniform code
    usage: the dual potentials of entropic semi-discrete optimal transport to the uniform distribution
    (Cuturi 2013), by fixed-point iterations on the codes' side.

    Args:
        dist: (N, K) squared distances. eps: entropic temperature, in the units of dist.
        init: (K,) biases to start from (a warm start).

    Returns:
        (K,) biases with mean 0.
    """
    k = dist.shape[1]
    b = dist.new_zeros(k) if init is None else init.clone()
    for _ in range(iters):
        usage = torch.softmax(-(dist + b) / eps, dim=1).mean(0)  # (K,)
        b = b + eps * torch.log(usage.clamp_min(1e-12) * k)
    return b - b.mean()


def balanced_kmeans(x: torch.Tensor, k: int, *, iters: int, balance: float, rounds: int = 3,
                    sample: int = 16384, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means, then ``rounds`` of: biases towards uniform usage (``sinkhorn_bias`` on a seeded sample of
    at most ``sample`` points, x ``balance``), reassign every point by ``nearest_code`` with the biases,
    move each centroid to the mean of its points; the biases are fitted once more at the end.

    Returns:
        (k, H) centroids and (k,) biases (zeros when ``balance`` is 0).
    """
    centroids = kmeans(x, k, iters=iters, generator=generator)
    bias = x.new_zeros(k)
    if balance <= 0:
        return centroids, bias
    sub = x if len(x) <= sample else x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    full = x.new_zeros(k)  # the unscaled potentials, warm-started round to round
    for r in range(rounds + 1):
        dist = ((sub * sub).sum(1, keepdim=True) + (centroids * centroids).sum(1)[None]
                - 2 * sub @ centroids.T).clamp_min(0)  # (S, K)
        eps = 0.02 * float(dist.min(dim=1).values.mean())  # 2% of the typical distance to the nearest code
        full = sinkhorn_bias(dist, max(eps, 1e-12), iters=50 if r == 0 else 20, init=full)  # later rounds: warm
        bias = balance * full
        if r == rounds:
            break
        assign = nearest_code(x, centroids, bias)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids, bias


# The residual quantizer
