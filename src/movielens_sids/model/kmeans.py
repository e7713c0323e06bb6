"""k-means and its relatives for the codebook initialisation: nearest code, plain and balanced k-means,
and Sinkhorn's biases towards uniform code usage. Pure torch; distances by one matrix product.

Shapes: N points, H dim, K codes.

May import: torch only.
"""

from __future__ import annotations

import functools

import torch


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest code (squared L2, plus the code's bias if given) for each row; distances by
    matrix products, in blocks of rows so that each block's (rows, K) table stays small.

    On a CPU that multiplies bf16 natively (AVX512-BF16 or AMX), large codebooks are searched by
    ``nearest_code_screened``: the same answer, faster (docs/benchmarks.md#the-demo).

    Args:
        x: (B, H) vectors.
        codebook: (K, H) codes.
        bias: (K,) added to each code's squared distance (a power diagram; see ``RQVAEConfig.balance``).

    Returns:
        (B,) int64 indices; ties go to the lowest index.
    """
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code, so it is dropped.
    const = (codebook * codebook).sum(1) if bias is None else (codebook * codebook).sum(1) + bias  # (K,)
    k = codebook.shape[0]
    if k >= SCREEN_MIN_CODES and x.dtype == torch.float32 and x.device.type == "cpu" and native_bf16():
        return nearest_code_screened(x, codebook, const)
    rows = max(256, BLOCK_ELEMENTS // max(k, 1))  # a (rows, K) block of distances fits in a few MB
    out = [torch.addmm(const[None, :], xb, codebook.T, alpha=-2.0).argmin(dim=1) for xb in x.split(rows)]
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.long)


SCREEN_MIN_CODES = 1024
"""Codebooks at least this large are searched by ``nearest_code_screened`` where bf16 is native."""
BLOCK_ELEMENTS = 1 << 21
"""Distances per block of rows in ``nearest_code`` (8 MB in fp32): large (B, K) tables cost more in page
faults than in arithmetic."""


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16), from Linux's /proc/cpuinfo;
    False where that cannot be read (bf16 emulated in software is slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def nearest_code_screened(x: torch.Tensor, codebook: torch.Tensor, const: torch.Tensor, *,
                          rows: int = 2048) -> torch.Tensor:
    """``nearest_code``, exactly, screened in bf16: approximate distances from one bf16 matrix product
    keep, per row, only the codes that could still be nearest under a rigorous bound on the bf16
    error; those few are then scored in fp32.

    The bound: with unit roundoff u = 2^-8, rounding x and the codes to bf16 moves x.e by at most
    (2u + u^2)|x||e|; fp32 accumulation over H terms adds H 2^-24 |x||e|; rounding the product, the
    constant and the sum to bf16 adds u each of |2 x.e|, |const| and the result. Any code within twice
    that bound of the smallest approximate distance is a candidate, so the nearest is always among them.
    Most rows have one candidate (their runner-up, from the same pass as the smallest, is beyond the
    bound) and need no fp32 score at all.

    Args:
        x: (B, H) fp32 vectors.
        codebook: (K, H) fp32 codes.
        const: (K,) what each code adds to -2 x.e: its squared norm, plus its bias.
        rows: rows per block (a (rows, K) bf16 table: larger blocks cost fewer passes of the codebook).

    Returns:
        (B,) int64 indices; ties (in fp32) go to the lowest index.
    """
    u, h, k = 2.0 ** -8, x.shape[1], codebook.shape[0]
    if k < 2:
        return torch.zeros(len(x), dtype=torch.long, device=x.device)
    cb16, const16 = codebook.to(torch.bfloat16), const.to(torch.bfloat16)[None, :]  # (K, H), (1, K)
    cmax, m = float(codebook.norm(dim=1).max()), float(const.abs().max())
    dot = (2 * u + u * u + h * 2.0 ** -24) * (1 + u) ** 2 + 2 * u  # error of x.e per unit of |x| |e|
    out = []
    for xb in x.split(rows):
        approx = torch.addmm(const16, xb.to(torch.bfloat16), cb16.T, alpha=-2.0)  # (b, K) bf16
        xn = xb.norm(dim=1)  # (b,)
        err = (2 * dot + 3 * u) * xn * cmax + 3 * u * m  # (b,) >= |approx - exact| for every code
        low, top = approx.topk(2, dim=1, largest=False)  # (b, 2): the two smallest approximate distances
        limit = low[:, 0].float() + 2 * err  # (b,) the nearest's approximate distance is below
        limit = (limit + 2 * u * limit.abs()).to(torch.bfloat16)  # so that rounding to bf16 cannot lower it
        idx = top[:, 0].clone()  # a row whose runner-up is beyond the limit has one candidate: this one
        many = (low[:, 1] <= limit).nonzero().squeeze(1)  # (m,) rows with more candidates: scored in fp32
        if len(many):
            r, c = (approx[many] <= limit[many, None]).nonzero(as_tuple=True)  # candidates (n,), (n,)
            exact = const[c] - 2 * (xb[many[r]] * codebook[c]).sum(1)  # (n,) fp32
            best = torch.full((len(many),), float("inf")).scatter_reduce(0, r, exact, "amin")  # (m,)
            lowest = torch.where(exact == best[r], c, k)  # (n,) the lowest index among each row's minima wins
            idx[many] = torch.full((len(many),), k, dtype=torch.long).scatter_reduce(0, r, lowest, "amin")
        miss = (idx == k) | ~torch.isfinite(limit.float())  # NaN in the row: answered as the unscreened search does
        if miss.any():
            idx[miss] = torch.addmm(const[None, :], xb[miss], codebook.T, alpha=-2.0).argmin(dim=1)
        out.append(idx)
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.long)


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


def sinkhorn_bias(dist: torch.Tensor, eps: float, iters: int = 50, init: torch.Tensor | None = None, *,
                  work: torch.Tensor | None = None) -> torch.Tensor:
    """Per-code biases b such that assigning each row to argmin_k dist + b gives (nearly) uniform code
    usage: the dual potentials of entropic semi-discrete optimal transport to the uniform distribution
    (Cuturi 2013), by fixed-point iterations on the codes' side.

    Each iteration is ``b += eps log(K usage)``, usage the mean over rows of ``softmax(-(dist + b) / eps)``,
    computed as Sinkhorn's matrix scaling computes it: two matrix-vector products with a kernel
    ``exp(-(dist + a) / eps)`` (rows shifted to a maximum of 1) made for biases a near b, scaled by
    ``exp(-(b - a) / eps)``; the kernel is made again when b strays from a (stabilised scaling, Schmitzer 2019),
    so that no product under- or overflows.

    Args:
        dist: (N, K) squared distances. eps: entropic temperature, in the units of dist.
        init: (K,) biases to start from (a warm start).
        work: (N, K) a table to hold the kernel in (called sweep after sweep on large tables, a fresh
            one costs more in page faults than the arithmetic); its contents are overwritten.

    Returns:
        (K,) biases with mean 0.
    """
    n, k = dist.shape
    b = dist.new_zeros(k) if init is None else init.clone()
    a, kernel = b, None
    for _ in range(iters):
        if kernel is None or float((b - a).abs().max()) > ABSORB * eps:  # (re)make the kernel around b
            a = b.clone()
            kernel = torch.add(dist, a, out=work) if work is not None else dist + a  # (N, K) dist shifted by a
            torch.sub(kernel.min(1, keepdim=True).values, kernel, out=kernel)  # (N, K) <= 0
            kernel.div_(eps).exp_()  # (N, K) in [0, 1]
        w = torch.exp((a - b) / eps)  # (K,) within exp(+-ABSORB)
        s = kernel @ w  # (N,) each row's normaliser, >= exp(-ABSORB)
        usage = w * (kernel.T @ (1.0 / s)) / n  # (K,)
        b = b + eps * torch.log(usage.clamp_min(1e-12) * k)
    return b - b.mean()


ABSORB = 30.0
"""``sinkhorn_bias`` makes its kernel again once a bias moved this many eps from the kernel's."""


def balanced_kmeans(x: torch.Tensor, k: int, *, iters: int, balance: float, rounds: int = 3,
                    sample: int = 16384, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means, then ``rounds`` of: biases towards uniform usage (``uniform_potentials`` on a seeded sample
    of at most ``sample`` points, x ``balance``), reassign every point by ``nearest_code`` with the biases,
    move each centroid to the mean of its points; the biases are fitted once more at the end.

    Returns:
        (k, H) centroids and (k,) biases (zeros when ``balance`` is 0).
    """
    centroids = kmeans(x, k, iters=iters, generator=generator)
    bias = x.new_zeros(k)
    if balance <= 0:
        return centroids, bias
    sub = x if len(x) <= sample else x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    full = None  # the unscaled potentials, warm-started round to round
    for r in range(rounds + 1):
        full = uniform_potentials(sub, centroids, init=full, iters=50 if r == 0 else 20)  # later rounds: warm
        bias = balance * full
        if r == rounds:
            break
        assign = nearest_code(x, centroids, bias)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids, bias


def uniform_potentials(x: torch.Tensor, centroids: torch.Tensor, *, init: torch.Tensor | None = None,
                       iters: int = 50, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Sinkhorn's potentials (``sinkhorn_bias``) towards uniform usage of ``centroids`` (K, H) by the points
    x (S, H), at a temperature of 2% of the typical squared distance to the nearest code; x ``balance``,
    they are the codes' biases (``RQVAEConfig.balance``). ``init``: potentials to warm-start from.
    ``bias``: (K,) biases the codes already have, added to the distances (the potentials come on top).

    Returns:
        (K,) potentials with mean 0.
    """
    cost = ((x * x).sum(1, keepdim=True) + (centroids * centroids).sum(1)[None]
            - 2 * x @ centroids.T).clamp_min(0)  # (S, K)
    if bias is not None:
        cost = cost + bias
    eps = 0.02 * float(cost.min(dim=1).values.abs().mean())  # 2% of the typical cost of the nearest code
    return sinkhorn_bias(cost, max(eps, 1e-12), iters=iters, init=init)


# The residual quantizer
