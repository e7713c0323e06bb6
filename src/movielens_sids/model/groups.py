"""A first level that keeps tight groups together: a neighbour-aware balanced partition, and the
prototypes that make it a rule for any vector.

Pure torch, like the rest of the model, but for the full search of ``NearestPrototypeCache``, which may be
FAISS's on the CPU. Used by ``ResidualQuantizer.init_codebooks`` when
``RQVAEConfig.group_weight`` > 0.

Why: a power diagram (nearest code plus a bias, the plain first level) cuts through tight groups of
movies wherever a cell boundary happens to pass (The Matrix and its sequels, the parts of a
franchise), and balancing the cells moves the boundaries into dense regions, where such groups are.
Here the first level is fitted in two steps:

1. ``neighbour_partition``: a balanced assignment of the fit vectors to K codes that pays a price
   for every pair of neighbours it splits: iterated conditional modes on a Potts energy (Besag
   1986) over the k-NN graph, ``||z_i - c_g(i)||^2 - weight * mean_d * (share of i's neighbour
   weight already in code g(i))``, with per-code biases from entropic optimal transport (Sinkhorn)
   keeping every code's share near 1/K, and the codes' centroids refitted after each sweep. Mutual
   nearest neighbours (the tightest pairs) weigh more than one-sided ones.
2. ``code_prototypes``: a few k-means prototypes inside each code. A movie's first code is the code
   of its nearest prototype (a nearest-prototype classifier), so a new movie gets its first code
   from its embedding alone, by the same rule as the movies the partition saw; the regions are
   unions of small Voronoi cells and can follow the gaps between groups, which one convex cell per
   code cannot.

Shapes: N vectors, H latent dim, K codes, P prototypes per code, M = K * P prototypes.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import torch

from .kmeans import BLOCK_ELEMENTS, balanced_kmeans, kmeans, native_bf16, nearest_code, sinkhorn_bias

log = logging.getLogger(__name__)


def knn_graph(z: torch.Tensor, k: int, *, block: int = 4096) -> torch.Tensor:
    """Nearest neighbours by squared L2 distance (each row excluded from its own list).

    Exact in fp32, ties to the lower index; on a CPU that multiplies bf16 natively, screened: one bf16 matrix
    product picks each row's ``max(16, 2k)`` nearest by approximate distance, and those are ranked by fp32
    distance. The screen is not a proof (unlike ``nearest_code_screened``): a neighbour it misses would have
    to fall behind 2k others on bf16 rounding alone, which happens only at near-ties
    (docs/benchmarks.md#training-the-ml-32m-tokenizer).

    Args:
        z: (N, H) vectors, N > k.
        k: neighbours per row.
        block: rows scored at a time (memory: block x N distances).

    Returns:
        (N, k) int64 indices, nearest first.
    """
    n = z.shape[0]
    sq = (z * z).sum(1)  # (N,)
    screen = z.dtype == torch.float32 and z.device.type == "cpu" and native_bf16() and n > 2 * max(16, 2 * k)
    if not screen:
        return _knn_symmetric(z, sq, k, block)
    z16, sq16 = z.to(torch.bfloat16), sq.to(torch.bfloat16)
    out = torch.empty(n, k, dtype=torch.int64, device=z.device)
    for s in range(0, n, block):
        q = z[s:s + block]  # (B, H)
        d = torch.addmm(sq16[None, :], q.to(z16.dtype), z16.T, alpha=-2.0)  # (B, N), ||q||^2 dropped: same for a row
        rows = torch.arange(s, s + len(q), device=z.device)
        d[torch.arange(len(q), device=z.device), rows] = float("inf")
        cand = d.topk(max(16, 2 * k), dim=1, largest=False).indices  # (B, C) by approximate distance
        exact = sq[cand] - 2 * torch.bmm(z[cand], q[:, :, None]).squeeze(2)  # (B, C) fp32
        out[s:s + len(q)] = cand.gather(1, exact.topk(k, dim=1, largest=False).indices)
    return out


def _knn_symmetric(z: torch.Tensor, sq: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """``knn_graph`` in fp32, exactly (ties to the lower index), from half the products: the block of products
    of row blocks i and j (i < j) offers block j's rows to block i's and, read by columns, block i's rows to
    block j's. Each row keeps its k nearest so far, and a pair is looked at only when it beats the row's
    k-th (after every block against itself, few do). z: (N, H); sq: (N,) squared norms -> (N, k) int64,
    nearest first."""
    n = z.shape[0]
    best = torch.full((n, k), float("inf"), device=z.device)  # (N, k) distances less the row's own |z|^2
    idx = torch.full((n, k), n, dtype=torch.int64, device=z.device)  # (N, k); n: none yet
    starts = list(range(0, n, block))
    b = min(block, n)
    prod, dist = torch.empty(b, b, device=z.device), torch.empty(b, b, device=z.device)  # reused: no page faults
    for i in starts:  # each block against itself first, so that every row has k neighbours to beat
        r = slice(i, min(i + block, n))
        bi = r.stop - i
        if bi < 2:  # a block of one row has no neighbour in it
            continue
        g = torch.mm(z[r], z[r].T, out=prod[:bi, :bi])  # (Bi, Bi)
        d = torch.add(sq[r][None, :], g, alpha=-2.0, out=dist[:bi, :bi]).fill_diagonal_(float("inf"))
        kth = d.topk(min(k, bi - 1), dim=1, largest=False).values[:, -1:]  # (Bi, 1)
        rows, cols = (d <= kth).nonzero(as_tuple=True)  # the k nearest and any tie of the k-th
        _merge_neighbours(best, idx, rows + i, d[rows, cols], cols + i)
    for a, i in enumerate(starts):
        ri = slice(i, min(i + block, n))
        for j in starts[a + 1:]:
            rj = slice(j, min(j + block, n))
            bi, bj = ri.stop - i, rj.stop - j
            g = torch.mm(z[ri], z[rj].T, out=prod[:bi, :bj])  # (Bi, Bj) dot products
            d = torch.add(sq[rj][None, :], g, alpha=-2.0, out=dist[:bi, :bj])  # (Bi, Bj) |z_j|^2 - 2 z_i.z_j
            rows, cols = (d <= best[ri, -1:]).nonzero(as_tuple=True)  # for block i's rows
            _merge_neighbours(best, idx, rows + i, d[rows, cols], cols + j)
            d = torch.add(sq[ri][:, None], g, alpha=-2.0, out=dist[:bi, :bj])  # (Bi, Bj) |z_i|^2 - 2 z_i.z_j
            rows, cols = (d <= best[rj, -1][None, :]).nonzero(as_tuple=True)  # for block j's rows
            _merge_neighbours(best, idx, cols + j, d[rows, cols], rows + i)
    return idx


def _merge_neighbours(best: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor,
                      cols: torch.Tensor) -> None:
    """Offer (C,) candidate neighbours ``cols`` at distances ``vals`` to ``rows``: each row of ``best`` / ``idx``
    (N, k) keeps its k nearest, by distance, then index, nearest first (in place)."""
    if len(rows) == 0:
        return
    k = best.shape[1]
    u, inv = torch.unique(rows, return_inverse=True)  # (U,) the rows offered to, (C,)
    group = torch.cat([torch.arange(len(u), device=rows.device).repeat_interleave(k), inv])  # (U k + C,)
    v, c = torch.cat([best[u].reshape(-1), vals]), torch.cat([idx[u].reshape(-1), cols])
    order = c.argsort(stable=True)  # sorted by row, then distance, then index: three stable sorts
    order = order[v[order].argsort(stable=True)]
    order = order[group[order].argsort(stable=True)]
    g = group[order]
    rank = torch.arange(len(g), device=g.device) - torch.searchsorted(g, g)  # place within the row
    keep = rank < k
    best[u[g[keep]], rank[keep]] = v[order[keep]]
    idx[u[g[keep]], rank[keep]] = c[order[keep]]


def neighbour_edges(nbrs: torch.Tensor, mutual_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The symmetric weighted edges of a k-NN graph: each one-sided edge 0.5 each way, a mutual pair
    (each among the other's k nearest) ``mutual_weight`` more.

    Args:
        nbrs: (N, k) neighbour indices.

    Returns:
        sources (E,), targets (E,), weights (E,) float32.
    """
    n, k = nbrs.shape
    i = torch.arange(n, device=nbrs.device).repeat_interleave(k)  # (N k,)
    j = nbrs.reshape(-1)
    mutual = (nbrs[j] == i[:, None]).any(1) & (i < j)  # each mutual pair once
    mi, mj = i[mutual], j[mutual]
    src = torch.cat([i, j, mi, mj])
    dst = torch.cat([j, i, mj, mi])
    w = torch.cat([torch.full((2 * len(i),), 0.5), torch.full((2 * len(mi),), float(mutual_weight))])
    return src, dst, w.to(nbrs.device)


def neighbour_partition(z: torch.Tensor, k: int, *, weight: float, neighbors: int = 5, mutual_weight: float = 4.0,
                        iters: int = 40, kmeans_iters: int = 20, update_share: float = 0.3,
                        graph_points: torch.Tensor | None = None, links: torch.Tensor | None = None,
                        link_weight: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """A balanced assignment of z to k codes that pays for splitting neighbours (see the module doc).

    Starts from balanced k-means; each sweep moves a seeded random ``update_share`` of the rows to
    their cheapest code (moving all at once makes neighbours swap codes in step and oscillate). The
    neighbour price ramps up over the first half of the sweeps, so the geometry sets the layout
    before the groups pull it.

    Args:
        z: (N, H) vectors, N >= k.
        k: codes.
        weight: price of a row's whole neighbourhood lying in other codes, in units of the mean
            squared distance to the nearest code (0: balanced k-means).
        neighbors: k of the k-NN graph.
        mutual_weight: extra weight of a mutual-neighbour pair.
        iters: sweeps.
        kmeans_iters: Lloyd iterations of the balanced k-means start.
        update_share: share of rows that may move in a sweep.
        graph_points: (N, D) the vectors whose k-NN graph says who the neighbours are (default z).
        links: (N, P) more neighbours of each row (e.g. co-watched movies), -1 padded: each link is an
            edge of ``link_weight`` each way.
        link_weight: weight of a link.
        generator: random source of the start and the sweeps.

    Returns:
        (N,) int64 codes.
    """
    n = z.shape[0]
    centroids, bias = balanced_kmeans(z, k, iters=kmeans_iters, balance=1.0, generator=generator)  # (K, H), (K,)
    codes = nearest_code(z, centroids, bias)  # (N,)
    if weight <= 0 or n <= neighbors:
        return codes
    graph = knn_graph(z if graph_points is None else graph_points, neighbors)  # (N, neighbors)
    src, dst, w = neighbour_edges(graph, mutual_weight)
    if links is not None:
        src, dst, w = _with_links(src, dst, w, links, link_weight)
    degree = torch.zeros(n, device=z.device).index_add_(0, src, w).clamp_min(1e-12)  # (N,)
    scale = float(((z - centroids[codes]) ** 2).sum(1).mean())  # the mean squared distance to the code
    zz, z2 = (z * z).sum(1, keepdim=True), 2 * z  # (N, 1), (N, H): the same every sweep
    full = None  # Sinkhorn's potentials, warm from the second sweep on
    dist, share, work = (torch.empty(n, k, dtype=z.dtype, device=z.device) for _ in range(3))  # reused: no page faults
    for sweep in range(iters):
        price = weight * scale * min(1.0, (sweep + 1) / max(1, iters // 2))
        share.zero_().view(-1).index_add_(0, src * k + codes[dst], w).view(n, k).div_(degree[:, None])  # (N, K) the
        # share of i's neighbour weight now in code c
        torch.add(zz, (centroids * centroids).sum(1)[None], out=work)  # (N, K) |z|^2 + |c|^2
        torch.sub(work, torch.mm(z2, centroids.T, out=dist), out=dist).clamp_min_(0)  # (N, K) squared distances
        cost = torch.sub(dist, share.mul_(price), out=share)  # (N, K) dist - price * share
        eps = max(0.02 * float(dist.min(1).values.mean()), 1e-12)
        full = sinkhorn_bias(cost, eps, iters=50 if full is None else 5, init=full, work=work)  # warm after sweep 1
        best = cost.add_(full[None]).argmin(1)  # (N,)
        move = torch.rand(n, generator=generator).to(z.device) < update_share
        codes = torch.where(move, best, codes)
        counts = torch.bincount(codes, minlength=k).to(z.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, codes, z)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return codes


def _with_links(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, links: torch.Tensor, weight: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges plus ``links`` (N, P; -1: none) as edges of ``weight`` each way."""
    i = torch.arange(len(links), device=links.device).repeat_interleave(links.shape[1])  # (N P,)
    j = links.reshape(-1)
    keep = (j >= 0) & (j != i)
    i, j = i[keep], j[keep]
    extra = torch.full((2 * len(i),), float(weight), device=w.device)
    return torch.cat([src, i, j]), torch.cat([dst, j, i]), torch.cat([w, extra])


def subset_links(links: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Links (N, P) between all N rows -> links (M, P) between the M ``rows`` (positions in ``rows``;
    -1 where a link leaves the subset)."""
    position = torch.full((len(links),), -1, dtype=torch.int64, device=links.device)  # (N,)
    position[rows] = torch.arange(len(rows), device=links.device)
    sub = links[rows]  # (M, P)
    return torch.where(sub >= 0, position[sub.clamp_min(0)], sub)


class Prototypes(NamedTuple):
    points: torch.Tensor
    """(M, H) prototype vectors, P per code, code by code."""
    codes: torch.Tensor
    """(M,) int64 the code each prototype stands for."""


def code_prototypes(z: torch.Tensor, codes: torch.Tensor, k: int, per_code: int, *, iters: int = 20,
                    generator: torch.Generator | None = None) -> Prototypes:
    """``per_code`` k-means prototypes inside each code's rows (a code with fewer rows repeats them), so
    that ``codes[nearest prototype]`` reproduces the partition for the rows it was fitted on and
    extends it to any vector.

    Args:
        z: (N, H) vectors. codes: (N,) their codes in 0..k-1; every code must have a row.
        k: codes. per_code: P.

    Returns:
        ``Prototypes`` with M = k * per_code rows.
    """
    points = []
    for c in range(k):
        rows = z[codes == c]  # (n_c, H)
        if len(rows) == 0:
            raise ValueError(f"code {c} has no rows to place prototypes on")
        if len(rows) <= per_code:  # every row is a prototype; repeat to fill the code's P slots
            points.append(rows[torch.arange(per_code, device=z.device) % len(rows)])
        else:
            points.append(kmeans(rows, per_code, iters=iters, generator=generator))
    proto_codes = torch.arange(k, device=z.device).repeat_interleave(per_code)
    return Prototypes(torch.cat(points), proto_codes)


def fit_first_level(quantizer, z: torch.Tensor, *, weight: float, iters: int, graph_points: torch.Tensor | None = None,
                    links: torch.Tensor | None = None, link_weight: float = 0.5,
                    generator: torch.Generator | None = None, first_level=None) -> torch.Tensor:
    """Fit a grouped quantizer's level 1 on latents z (N, H): the partition, its prototypes (written
    into ``quantizer.prototypes`` / ``prototype_codes``), and each code's vector as the mean of the
    latents whose nearest prototype is one of its own (biases 0). The neighbours whose splitting is
    priced are those of ``graph_points`` (N, D) when given (the content embeddings), else of z.
    ``first_level``: the fitted rule for z, computed another way (``rqvae.FirstLevel``, e.g. through a
    ``NearestPrototypeCache`` that keeps the search for the training epochs).

    Returns:
        (N,) the level-1 codes of z under the fitted rule (``quantizer.first_codes``).
    """
    k = quantizer.codebooks.shape[1]
    per_code = len(quantizer.prototypes) // k
    codes = neighbour_partition(z, k, weight=weight, kmeans_iters=iters, graph_points=graph_points,
                                links=links, link_weight=link_weight, generator=generator)
    protos = code_prototypes(z, codes, k, per_code, iters=iters, generator=generator)
    quantizer.prototypes.copy_(protos.points)
    quantizer.prototype_codes.copy_(protos.codes)
    first = (quantizer.first_codes if first_level is None else first_level)(z)  # (N,) the rule, which may
    # differ from the partition on a few rows
    counts = torch.bincount(first, minlength=k).to(z.dtype)
    sums = torch.zeros(k, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, first, z)
    proto_mean = protos.points.view(k, per_code, -1).mean(1)  # (K, H): for a code no row reached
    quantizer.codebooks[0] = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], proto_mean)
    quantizer.code_bias[0] = 0.0
    return first


def _version_key(points: torch.Tensor) -> tuple | object:
    """What tells one version of a tensor from another (an in-place change bumps its version); an inference
    tensor has no version counter, so its key matches nothing and whatever was computed from it is made again."""
    if points.is_inference():
        return object()
    return points.data_ptr(), points._version, tuple(points.shape)


def nearest_prototype(z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``nearest_code(z, points)`` (B,), the same answer, by ``NearestPrototypeCache``'s full search (on the
    CPU FAISS's or torch's, the faster) and its proof that no other point is nearer; faster on CPUs without
    native bf16."""
    return NearestPrototypeCache(len(z), z.shape[1], device=z.device).nearest(
        torch.arange(len(z), device=z.device), z, points)


class NearestPrototypeCache:
    """``nearest_code`` over a fixed set of points (the prototypes) for rows that come back with their latents
    moved a little (training epochs), exactly, without a full search for most of them.

    For each row the last full search keeps its anchor (the latent then), its ``candidates`` nearest points,
    and ``reach``: a lower bound on the anchor's distance to every other point. A latent z at distance
    delta from its anchor is at least ``reach - delta`` from every non-candidate (triangle inequality), so
    when the nearest candidate is clearly closer than that, the answer is among the candidates: they are
    scored with ``nearest_code``'s own fp32 formula, ties to the lowest index. Any other row gets a full
    search, which renews its anchor. A margin (``_slack``) covers the fp32 rounding of the scores.

    Most rows hit in the demo's training (docs/benchmarks.md#the-demo). Points that change (a re-fit) must
    be followed by ``clear``.

    Memory: N x (H + C) x 4-8 bytes (the anchors and candidates), on the latents' device (on the CPU
    for MPS, which has no float64).
    """

    def __init__(self, n: int, dim: int, *, candidates: int = 8, device: torch.device | str | None = None) -> None:
        self.anchor = torch.zeros(n, dim, device=device)  # (N, H) each row's latent at its last full search
        self.cand = torch.zeros(n, candidates, dtype=torch.int64, device=device)  # (N, C) its nearest points then
        self.reach = torch.full((n,), -1.0, dtype=torch.float64, device=device)  # (N,) < 0: no anchor
        self.hits = self.calls = 0
        self._norms_of: tuple | None = None  # which points ``_norms`` holds: (data pointer, version, shape)
        self._norms: tuple[torch.Tensor, float] = (torch.zeros(0), 0.0)
        self._index_of: tuple | None = None  # which points ``_index`` holds, the same way
        self._index = None  # FAISS's flat index over the points, on the CPU

    def clear(self) -> None:
        """Forget every anchor (the points changed)."""
        self.reach.fill_(-1.0)
        self._norms_of = self._index_of = self._index = None

    def _point_norms(self, points: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(M,) squared norms of the points and their largest norm, computed once per version of the points
        (they stay fixed for many steps; an in-place change bumps the tensor's version)."""
        key = _version_key(points)
        if key != self._norms_of:
            self._norms = ((points * points).sum(1), float(points.norm(dim=1).max()))
            self._norms_of = key
        return self._norms

    def nearest(self, rows: torch.Tensor, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Index of the nearest point for each latent: ``nearest_code(z, points)``.

        Args:
            rows: (B,) int64 the rows of z (which anchors apply); distinct.
            z: (B, H) latents.
            points: (M, H) the points, M > C; the same as at the anchors' searches (else ``clear`` first).

        Returns:
            (B,) int64 indices; ties go to the lowest index.
        """
        out_device = z.device
        home = torch.device("cpu") if z.device.type == "mps" else z.device  # the bounds need float64
        if self.anchor.device != home:
            self.anchor, self.cand, self.reach = (t.to(home) for t in (self.anchor, self.cand, self.reach))
        rows, z, points = rows.to(home), z.detach().float().to(home), points.float().to(home)
        sq, pmax = self._point_norms(points)  # (M,), max |p|
        idx = torch.zeros(len(rows), dtype=torch.int64, device=home)
        ok = torch.zeros(len(rows), dtype=torch.bool, device=home)
        known = (self.reach[rows] >= 0).nonzero().squeeze(1)  # (b,) the rows with an anchor
        if len(known):
            idx[known], ok[known] = self._from_candidates(rows[known], z[known], points, sq, pmax)
        self.calls += len(rows)
        self.hits += int(ok.sum())
        if not bool(ok.all()):
            miss = (~ok).nonzero().squeeze(1)  # (b,)
            self._search(rows[miss], z[miss], points, sq, pmax)
            idx_m, ok_m = self._from_candidates(rows[miss], z[miss], points, sq, pmax)
            if not bool(ok_m.all()):  # near-ties beyond the C candidates (repeated points): plain search
                hard = (~ok_m).nonzero().squeeze(1)
                idx_m[hard] = nearest_code(z[miss[hard]], points)
                self.reach[rows[miss[hard]]] = -1.0
            idx[miss] = idx_m
        return idx.to(out_device)

    @staticmethod
    def _slack(z: torch.Tensor, pmax: float) -> torch.Tensor:
        """(B,) twice a bound on the fp32 error of |z|^2 + |p|^2 - 2 z.p, in any summation order:
        (H + 3) 2^-24 (|z| + |p|)^2 (Higham's gamma_H for the dot products, and the two additions); float64."""
        return 2 * (z.shape[1] + 3) * 2.0 ** -24 * (z.double().norm(dim=1) + pmax) ** 2

    def _from_candidates(self, rows: torch.Tensor, z: torch.Tensor, points: torch.Tensor, sq: torch.Tensor,
                         pmax: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest among each row's candidates (B,), and whether it is the nearest of all (B,) bool.
        sq: (M,) the points' squared norms, as nearest_code's constant."""
        idx = torch.empty(len(z), dtype=torch.int64, device=z.device)
        low = torch.empty(len(z), device=z.device)  # (B,) each row's smallest score
        for s in range(0, len(z), 256):  # blocks: the gathered (b, C, H) candidates stay in cache
            cand = self.cand[rows[s:s + 256]]  # (b, C)
            score = sq[cand] - 2 * (z[s:s + 256, None, :] * points[cand]).sum(-1)  # (b, C): nearest_code's formula
            low[s:s + 256] = score.amin(1)
            idx[s:s + 256] = torch.where(score == low[s:s + 256, None], cand, len(points)).amin(1)  # lowest index
        # score = |z - p|^2 - |z|^2 up to fp32 rounding; the slack covers that rounding twice.
        zd = z.double()
        best = low.double() + (zd * zd).sum(1) + self._slack(z, pmax)  # (B,) above the chosen one's |z - p|^2
        delta = (zd - self.anchor[rows].double()).norm(dim=1)  # (B,) drift since the anchor
        floor = (self.reach[rows] - delta).clamp_min(0.0)  # (B,) every non-candidate is at least this far
        return idx, (self.reach[rows] >= 0) & (best < floor * floor)

    def _search(self, rows: torch.Tensor, z: torch.Tensor, points: torch.Tensor, sq: torch.Tensor,
                pmax: float) -> None:
        """Full search for rows: new anchors, candidates and reach. sq: (M,) the points' squared norms."""
        c = self.cand.shape[1]
        vals, top = self._nearest(z, points, sq, c + 1)  # (B, C + 1) ascending: the C nearest and the next one
        self.anchor[rows] = z
        self.cand[rows] = top[:, :c]
        self.reach[rows] = (vals[:, c] - self._slack(z, pmax)).clamp_min(0.0).sqrt()

    def _nearest(self, z: torch.Tensor, points: torch.Tensor, sq: torch.Tensor, count: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` nearest points of each latent: (B, count) squared distances as fp32 computes them
        (float64, ascending) and (B, count) int64 indices. On the CPU by whichever of FAISS's flat search and a
        torch product with ``topk`` runs faster there (``cpu_search_engine``); the answer's exactness does not
        rest on either (``_slack`` covers any fp32 summation order)."""
        if z.device.type != "cpu" or cpu_search_engine(points) == "torch":
            return product_nearest(z, points, sq, count)
        key = _version_key(points)
        if key != self._index_of:
            self._index, self._index_of = _flat_index(points), key
        d, i = self._index.search(z.contiguous().numpy(), count)
        return torch.from_numpy(d).double(), torch.from_numpy(i)


CALIBRATION_ROWS = 2048
"""Rows each engine searches while ``cpu_search_engine`` times them."""
_CPU_SEARCH: dict[str, str] = {}
"""``engine``: the faster exhaustive search on this CPU, once timed."""


def cpu_search_engine(points: torch.Tensor) -> str:
    """Which exhaustive nearest-point search runs faster on this CPU: ``"faiss"`` (FAISS's flat L2 index, one
    BLAS product and a heap per block of rows) or ``"torch"`` (a torch product and ``topk``). Their BLAS
    libraries differ, and so does which wins (docs/benchmarks.md#tokenizers-on-movielens-32m). Timed once per
    process, on the first call with at least ``CALIBRATION_ROWS`` (M, H) float32 CPU points: each engine finds
    the 2 nearest of ``CALIBRATION_ROWS`` of the points (picked by a fixed seed); "faiss" until then."""
    if "engine" in _CPU_SEARCH:
        return _CPU_SEARCH["engine"]
    if len(points) < CALIBRATION_ROWS:
        return "faiss"
    p = points.detach().float().contiguous()
    z = p[torch.randint(len(p), (CALIBRATION_ROWS,), generator=torch.Generator().manual_seed(0))]  # (R, H)
    t0 = time.perf_counter()
    _flat_index(p).search(z.numpy(), 2)
    t1 = time.perf_counter()
    product_nearest(z, p, (p * p).sum(1), 2)
    took = {"faiss": t1 - t0, "torch": time.perf_counter() - t1}
    _CPU_SEARCH["engine"] = min(took, key=took.get)
    log.info("exhaustive search on this CPU: %s (%d rows against %d points: %s)", _CPU_SEARCH["engine"],
             CALIBRATION_ROWS, len(p), ", ".join(f"{k} {v:.3f} s" for k, v in took.items()))
    return _CPU_SEARCH["engine"]


def _flat_index(points: torch.Tensor):
    """FAISS's flat L2 index over (M, H) float32 CPU points."""
    import faiss

    index = faiss.IndexFlatL2(points.shape[1])
    index.add(points.contiguous().numpy())
    return index


def product_nearest(z: torch.Tensor, points: torch.Tensor, sq: torch.Tensor, count: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` nearest of (M, H) points for each of (B, H) latents by a torch product and ``topk`` per block
    of rows (a (rows, M) block stays a few MB), on any device: (B, count) float64 |z|^2 + sq - 2 z.p with the
    product in fp32, ascending, and (B, count) int64 indices. ``sq``: (M,) |p|^2 (plus a point's bias, if any)."""
    block = max(256, BLOCK_ELEMENTS // len(points))  # as nearest_code's: fewer rows multiply slower
    out = [torch.addmm(sq[None, :], zb, points.T, alpha=-2.0).topk(count, dim=1, largest=False)
           for zb in z.split(block)]  # (b, M) |p|^2 - 2 z.p, ranked
    vals = torch.cat([o.values for o in out]).double() + (z.double() ** 2).sum(1, keepdim=True)
    return vals, torch.cat([o.indices for o in out])
