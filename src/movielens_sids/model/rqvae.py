"""The RQ-VAE tokenizer: MLP encoder -> residual vector quantizer (L levels x K codes) -> MLP decoder.

Pure torch: no paths, devices, prints or Hub calls (saving and loading live in ``serialization.py``).
Reads top to bottom: the beam search, the quantizer, the encoder/decoder, the RQ-VAE (the k-means of
the codebook initialisation lives in ``kmeans.py``, the grouped first level in ``groups.py``).

Shapes: B batch, N movies, D embedding dim, H latent dim, L levels, K codebook size.

Why it does not collapse (the original project's residual quantizer used 1 of its 1,024 first-level
codes): codebooks start from residual k-means on the encoder's output for the data, level by level
(Zeghidour et al. 2021, SoundStream; TIGER, Rajput et al. 2023), so every code starts on a dense
region of the data; from level 2 on, the k-means fit clips long residuals so that a few outliers do not
pull codes off the dense core (more codes where crowded cells must be split: higher deep-level
perplexity, more unique IDs, lower error); a code left unused for ``dead_code_window`` training steps
is moved onto a residual of the current batch (Dhariwal et al. 2020, Jukebox); and gradients cross the
non-differentiable lookup by the rotation trick (Fifty et al. 2024), which keeps the angle between the
encoder output and its code in the gradient, or by the plain straight-through estimator (Bengio et al.
2013; van den Oord et al. 2017), as a setting.

Encoders: ``mlp`` (D -> hidden -> H, the TIGER shape), ``residual`` (x + MLP(x) in D, starting as the
identity so that training starts exactly where residual k-means ends: a narrow MLP latent throws
away variance that no codebook can give back; docs/benchmarks.md#tokenizers-on-movielens-32m), and
``identity`` (the original's design: quantize the raw vector).

May import: torch, model.config and model.kmeans; model.groups on first use (pure math).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import RQVAEConfig
from .kmeans import (  # noqa: F401 (also re-exported)
    SCREEN_MIN_CODES,
    balanced_kmeans,
    kmeans,
    native_bf16,
    nearest_code,
    sinkhorn_bias,
    uniform_potentials,
)

FirstLevel = Callable[[torch.Tensor], torch.Tensor]
"""Latents (B, H) -> their level-1 codes (B,) int64, by the quantizer's own rule (e.g. ``NearestPrototypeCache``)."""

# ---------------------------------------------------------------------------------------------------
# k-means, for the codebook initialisation


class Beam(NamedTuple):
    codes: torch.Tensor
    """(B, M) int64 the best path's codes."""
    close: torch.Tensor
    """(B,) bool: the final choice, or the cut of a beam, was within ``tol`` of going the other way
    (all False when no ``tol`` is given)."""


def beam_search(residual: torch.Tensor, codebooks: torch.Tensor, bias: torch.Tensor, width: int,
                tol: torch.Tensor | None = None, row_bias: torch.Tensor | None = None) -> Beam:
    """Codes for several residual levels at once: the path with the smallest final squared error plus
    the chosen codes' biases, found by a beam of ``width`` partial paths.

    Distances come from inner products: ``r.C_m`` once per level and code-code tables ``C_j.C_m``, so
    a beam entry costs O(K) per level instead of O(K H).

    Args:
        residual: (B, H) what the levels quantize.
        codebooks: (M, K, H) the levels' codes. bias: (M, K) their biases.
        width: partial paths kept after each level but the last.
        tol: (B,) if given, also report the rows where the final choice, or the cut of a beam, was
            within tol of going the other way (close calls, for callers that re-check them).
        row_bias: (B, K) more biases of the first level's codes, each row its own (``prefix_bias``).

    Returns:
        ``Beam(codes (B, M) int64, close (B,) bool)``.
    """
    b = residual.shape[0]
    close = torch.zeros(b, dtype=torch.bool, device=residual.device)
    levels, k = codebooks.shape[0], codebooks.shape[1]
    sq = (codebooks * codebooks).sum(-1)  # (M, K)
    # dots[m]: (B, W, K) inner products of each beam entry's residual with level m's codes
    dots = [(residual @ cb.T)[:, None, :] for cb in codebooks]
    score = (residual * residual).sum(1)[:, None]  # (B, W): ||residual||^2 + biases of the codes chosen so far
    paths = torch.zeros(b, 1, 0, dtype=torch.int64, device=residual.device)  # (B, W, m)
    for m in range(levels):
        d = score[..., None] - 2 * dots[m] + (sq[m] + bias[m])  # (B, W, K): squared error after this level + biases
        if m == 0 and row_bias is not None:
            d = d + row_bias[:, None, :]
        flat = d.reshape(b, -1)
        keep = 1 if m == levels - 1 else min(width, flat.shape[1])
        extra = int(tol is not None and keep < flat.shape[1])  # one more, to see how close the cut was
        vals, idx = flat.topk(keep + extra, dim=1, largest=False)  # (B, W')
        if extra:
            close |= vals[:, keep] - vals[:, keep - 1] <= tol
            vals, idx = vals[:, :keep], idx[:, :keep]
        beam, code = idx // k, idx % k
        paths = torch.cat([paths.gather(1, beam[..., None].expand(-1, -1, paths.shape[2])), code[..., None]], 2)
        score = vals
        for j in range(m + 1, levels):  # the residual lost code_m: r.C_j -= C_m[code].C_j
            table = codebooks[m] @ codebooks[j].T  # (K, K)
            dots[j] = dots[j].gather(1, beam[..., None].expand(-1, -1, k)) - table[code]
    return Beam(paths[:, 0], close)


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor
    """(B, H) sum of the chosen codes; its gradient goes to the encoder (straight-through or rotated)."""
    codes: torch.Tensor
    """(B, L) int64 code indices."""
    residuals: torch.Tensor
    """(L, B, H) the residual each level quantized (detached), for dead-code re-seeding."""
    codebook_loss: torch.Tensor
    """Sum over levels of mean ||sg(r) - e||^2."""
    commit_loss: torch.Tensor
    """Sum over levels of mean ||r - sg(e)||^2."""


def rotate_to(r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, "Restructuring vector quantization with the rotation trick").

    Forward: returns ``e`` (up to rounding). Backward: the gradient reaches ``r`` through the fixed
    rotation-and-rescale that maps ``r`` onto ``e``, so it keeps the angle between the encoder output and
    its code instead of copying the code's gradient as straight-through does.

    Args:
        r: (B, H) encoder residuals (with gradient).
        e: (B, H) their codes.

    Returns:
        (B, H) ``sg(lambda R) r`` with ``R r / |r| = e / |e|`` and ``lambda = |e| / |r|``.
    """
    eps = 1e-6
    r_norm = r.norm(dim=-1, keepdim=True).detach()  # (B, 1)
    e_norm = e.norm(dim=-1, keepdim=True).detach()  # (B, 1)
    u = (r.detach() / (r_norm + eps))  # (B, H) unit vector of r
    q = (e.detach() / (e_norm + eps))  # (B, H) unit vector of e
    w = F.normalize(u + q, dim=-1, eps=eps)  # (B, H) Householder axis between them
    # R = I - 2 w w^T + 2 q u^T, applied to r without forming the (H, H) matrix.
    rotated = r - 2 * w * (w * r).sum(-1, keepdim=True) + 2 * q * (u * r).sum(-1, keepdim=True)
    return rotated * (e_norm / (r_norm + eps))


class ResidualQuantizer(nn.Module):
    """L codebooks of K codes; level l quantizes what levels 1..l-1 left over (Zeghidour et al. 2021).

    Codebooks are trained by gradient on the codebook loss (not EMA) so that Adam drives them with the
    rest of the model; k-means initialisation and dead-code re-seeding keep every code in use.
    """

    def __init__(self, *, levels: int, codebook_size: int, dim: int, gradient: str = "rotation",
                 dead_code_window: int = 20, beam_width: int = 1, prototypes: int = 0,
                 prefix_bias: bool = False) -> None:
        super().__init__()
        self.gradient = gradient
        self.dead_code_window = dead_code_window
        self.beam_width = beam_width
        # Small random codes until init_codebooks puts them on the data (k-means).
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * dim ** -0.5)  # (L, K, H)
        # Steps since each code was last chosen in training; drives dead-code re-seeding.
        self.register_buffer("idle_steps", torch.zeros(levels, codebook_size, dtype=torch.long))  # (L, K)
        # Added to each code's squared distance when assigning (a power diagram); 0 = nearest code.
        self.register_buffer("code_bias", torch.zeros(levels, codebook_size))  # (L, K)
        if prefix_bias and levels > 1:  # level 2's biases per first code (RQVAEConfig.prefix_balance)
            self.register_buffer("prefix_bias", torch.zeros(codebook_size, codebook_size))  # (K first, K level 2)
        if prototypes:  # the first level by nearest prototype (``groups.py``; RQVAEConfig.group_weight)
            self.register_buffer("prototypes", torch.zeros(prototypes, dim))  # (M, H)
            self.register_buffer("prototype_codes", torch.arange(prototypes) % codebook_size)  # (M,)

    @property
    def grouped(self) -> bool:
        """Whether the first code is the code of the nearest prototype (else the nearest code + bias)."""
        return hasattr(self, "prototypes")

    def first_level_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the first code is chosen among: points (P, H), their biases (P,) and the code each
        stands for (P,): the prototypes when ``grouped``, else the level-1 codes themselves."""
        if self.grouped:
            return self.prototypes, self.prototypes.new_zeros(len(self.prototypes)), self.prototype_codes
        k = self.codebooks.shape[1]
        return self.codebooks[0], self.code_bias[0], torch.arange(k, device=self.codebooks.device)

    def first_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Level-1 codes of latents z (B, H) -> (B,) int64."""
        if self.grouped:
            fp32_cpu = z.dtype == torch.float32 and z.device.type == "cpu"  # float64: the reference, as it is
            if fp32_cpu and len(self.prototypes) >= SCREEN_MIN_CODES and not native_bf16():
                from .groups import nearest_prototype  # see init_codebooks

                return self.prototype_codes[nearest_prototype(z, self.prototypes)]
            return self.prototype_codes[nearest_code(z, self.prototypes)]
        return nearest_code(z, self.codebooks[0], self.code_bias[0])

    def quantize(self, z: torch.Tensor, first_level: FirstLevel | None = None) -> torch.Tensor:
        """Residual assignment: level 1 by ``first_codes`` (nearest code with the biases, or nearest
        prototype) or by ``first_level`` when given (the same rule, e.g. cached), levels 2..L greedily or,
        with ``beam_width`` > 1, jointly by ``beam_search``. z: (B, H) -> codes (B, L) int64."""
        cbs, bias = self.codebooks, self.code_bias
        first = self.first_codes(z) if first_level is None else first_level(z)  # (B,)
        residual = z - cbs[0][first]
        if len(cbs) == 1:
            return first[:, None]
        row_bias = self.prefix_bias[first] if hasattr(self, "prefix_bias") else None  # (B, K) or None
        if self.beam_width > 1:  # in blocks: the beam's (B, W, K) tables stay in cache
            blocks = residual.split(4096)
            row_blocks = [None] * len(blocks) if row_bias is None else row_bias.split(4096)
            rest = torch.cat([beam_search(r, cbs[1:], bias[1:], self.beam_width, row_bias=rb).codes
                              for r, rb in zip(blocks, row_blocks)])
            return torch.cat([first[:, None], rest], 1)
        codes = [first]
        for level, (codebook, b) in enumerate(zip(cbs[1:], bias[1:]), 1):  # (K, H), (K,)
            if level == 1 and row_bias is not None:
                const = (codebook * codebook).sum(1) + b  # (K,)
                idx = (torch.addmm(const[None, :], residual, codebook.T, alpha=-2.0) + row_bias).argmin(1)  # (B,)
            else:
                idx = nearest_code(residual, codebook, b)  # (B,)
            residual = residual - codebook[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)  # (B, L)

    @torch.no_grad()
    def fit_prefix_bias(self, z: torch.Tensor, weight: float, first: torch.Tensor | None = None) -> None:
        """``prefix_bias`` for latents z (N, H): for each first code, Sinkhorn's potentials towards uniform
        level-2 usage among its rows (of their level-2 squared distances plus level 2's own biases), x
        ``weight``. A first code with fewer than 2 rows keeps zeros. ``first``: z's level-1 codes (N,), if known."""
        first = self.first_codes(z) if first is None else first  # (N,)
        r = z - self.codebooks[0][first]  # (N, H) what level 2 quantizes
        k = self.codebooks.shape[1]
        out = torch.zeros(k, k, dtype=z.dtype, device=z.device)
        for c in range(k):
            rows = (first == c).nonzero().squeeze(1)
            if len(rows) >= 2:
                out[c] = weight * uniform_potentials(r[rows], self.codebooks[1], bias=self.code_bias[1], iters=100)
        self.prefix_bias.copy_(out)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the codes' vectors. codes: (B, L) -> (B, H)."""
        k = self.codebooks.shape[1]
        flat = codes + k * torch.arange(codes.shape[1], device=codes.device)  # (B, L) rows of the (L K, H) table
        # embedding, not indexing: the same values, but its gradient adds the rows in order (indexing's index_put
        # adds them in an order that varies with the threads on CPUs), and faster
        return F.embedding(flat, self.codebooks.flatten(0, 1)).sum(dim=1)  # (B, L, H) -> (B, H)

    def forward(self, z: torch.Tensor, first_level: FirstLevel | None = None) -> QuantizerOutput:
        residual = z  # (B, H)
        with torch.no_grad():
            all_codes = self.quantize(z.detach(), first_level)  # (B, L)
        codes, residuals = [], []
        codebook_loss = commit_loss = z.new_zeros(())
        for level, codebook in enumerate(self.codebooks):
            idx = all_codes[:, level]  # (B,)
            e = F.embedding(idx, codebook)  # (B, H) = codebook[idx], differentiable w.r.t. the codebook
            codebook_loss = codebook_loss + (residual.detach() - e).pow(2).sum(-1).mean()
            commit_loss = commit_loss + (residual - e.detach()).pow(2).sum(-1).mean()
            residuals.append(residual.detach())
            codes.append(idx)
            residual = residual - e.detach()
        codes = torch.stack(codes, 1)  # (B, L)
        z_q = self.lookup(codes)  # (B, H)
        # The gradient crosses the whole lookup once, from z_q to z: straight-through copies it (its
        # Jacobian is exactly the identity), the rotation trick turns it by the rotation taking z to z_q.
        path = rotate_to(z, z_q) if self.gradient == "rotation" else z
        # Forward value: exactly z_q (bit-identical to decode_codes), since path - sg(path) is 0. The
        # codebooks also get the reconstruction's gradient through z_q, so the levels are refined jointly
        # for the final reconstruction, not only each for its own residual (as additive quantization
        # refines residual k-means; Babenko & Lempitsky 2014).
        quantized = z_q + (path - path.detach())  # (B, H)
        return QuantizerOutput(quantized, codes, torch.stack(residuals), codebook_loss, commit_loss)

    @torch.no_grad()
    def refine_codebooks(self, z: torch.Tensor, rounds: int = 1, *, balance: float = 0.0, sample: int = 16384,
                         first: torch.Tensor | None = None) -> None:
        """Refit levels 2..L jointly for the encoding ``quantize`` does (beam included): each code moves to
        the mean of what the other levels leave of the residuals assigned to it (block coordinate descent
        on the reconstruction error, as additive quantization refines residual k-means; Babenko &
        Lempitsky 2014). With ``balance`` > 0 the biases of levels 2..L are then fitted again for the moved
        codes, on every (N // ``sample``)-th row's residual at that level: biases fitted for the old codes
        let a level drift towards a few codes (level 3 of the ml-32m preset fell to perplexity 151 of 256
        on one seed). Level 1 stays as it is, and so do z's level-1 codes: ``first`` (N,), if known."""
        levels = self.codebooks.shape[0]
        if first is None:
            first = self.first_codes(z)  # (N,)
        for _ in range(rounds):
            codes = self.quantize(z, lambda _: first)  # (N, L)
            parts = self.codebooks[torch.arange(levels, device=z.device), codes]  # (N, L, H)
            for level in range(1, levels):
                target = z - parts.sum(1) + parts[:, level]  # what the other levels leave, (N, H)
                idx = codes[:, level]
                k = self.codebooks.shape[1]
                sums = torch.zeros_like(self.codebooks[level]).index_add_(0, idx, target)
                counts = torch.bincount(idx, minlength=k).to(z.dtype)
                new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], self.codebooks[level])
                self.codebooks[level] = new
                parts[:, level] = new[idx]
            if balance > 0:
                rows = torch.arange(0, len(z), max(1, len(z) // sample), device=z.device)  # (S,)
                for level in range(1, levels):
                    residual = z[rows] - parts[rows, :level].sum(1)  # (S, H) what level l quantizes
                    warm = self.code_bias[level] / balance
                    self.code_bias[level] = balance * uniform_potentials(residual, self.codebooks[level], init=warm)

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor, *, iters: int, clip_quantile: float = 1.0, balance: float = 0.0,
                       group_weight: float = 0.0, graph_points: torch.Tensor | None = None,
                       links: torch.Tensor | None = None, link_weight: float = 0.5,
                       generator: torch.Generator | None = None, first_level: FirstLevel | None = None
                       ) -> torch.Tensor:
        """Residual k-means on latents z (N, H): level l's codes are the centroids of level l's residuals.

        From level 2 on, residuals longer than the ``clip_quantile`` quantile of their norms are shortened
        to it for the fit (not for the assignment), so that outliers do not pull codes off the dense core.
        When ``grouped``, level 1 is instead a neighbour-aware balanced partition with its prototypes
        (``groups.fit_first_level``; ``group_weight`` prices split neighbours: those of ``graph_points``
        (N, D), the content embeddings, when given, plus the (N, P) ``links`` at ``link_weight``) and each
        level-1 code is the mean of the latents its prototypes take; ``first_level`` then gives z's codes
        under the fitted rule when given (the same rule, e.g. cached).

        Returns:
            (N,) z's level-1 codes under the fitted rule (``first_codes``).
        """
        residual, first = z, None
        if hasattr(self, "prefix_bias"):  # fitted again after the codebooks (``fit_prefix_bias``)
            self.prefix_bias.zero_()
        for level in range(self.codebooks.shape[0]):
            if level == 0 and self.grouped:
                from .groups import fit_first_level  # on first use: `settings` imports this package's config

                first = fit_first_level(self, z, weight=group_weight, iters=iters, graph_points=graph_points,
                                        links=links, link_weight=link_weight, generator=generator,
                                        first_level=first_level)
                residual = residual - self.codebooks[0][first]
                continue
            fit = residual
            if level > 0 and clip_quantile < 1.0:
                norms = residual.norm(dim=1)  # (N,)
                cap = torch.quantile(norms, clip_quantile)
                fit = residual * (cap / norms.clamp_min(1e-12)).clamp(max=1.0)[:, None]
            centroids, bias = balanced_kmeans(fit, self.codebooks.shape[1], iters=iters, balance=balance,
                                              generator=generator)  # (K, H), (K,)
            self.codebooks[level] = centroids
            self.code_bias[level] = bias
            idx = nearest_code(residual, centroids, bias)  # (N,)
            first = idx if level == 0 else first
            residual = residual - centroids[idx]
        self.idle_steps.zero_()
        return first

    @torch.no_grad()
    def reseed_dead_codes(self, codes: torch.Tensor, residuals: torch.Tensor,
                          generator: torch.Generator | None = None) -> int:
        """Count a training step; move codes idle for ``dead_code_window`` steps onto batch residuals.

        Args:
            codes: (B, L) codes chosen in the step.
            residuals: (L, B, H) the residuals each level quantized.
            generator: the random source that picks the residuals.

        Returns:
            How many codes were re-seeded.
        """
        if self.dead_code_window <= 0:
            return 0
        levels, k = self.idle_steps.shape
        used = torch.zeros(levels, k, dtype=torch.bool, device=codes.device)
        used.scatter_(1, codes.T, True)  # (L, K)
        self.idle_steps.add_(1).masked_fill_(used, 0)
        dead = self.idle_steps >= self.dead_code_window  # (L, K)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        batch = residuals.shape[1]
        for level in torch.nonzero(dead.any(1)).flatten().tolist():
            if level == 0 and self.grouped:  # prototypes choose level 1: a moved code would stay unused
                continue
            slots = torch.nonzero(dead[level]).flatten()
            pick = torch.randint(batch, (len(slots),), generator=generator, device="cpu").to(codes.device)
            self.codebooks[level, slots] = residuals[level, pick]
            self.code_bias[level, slots] = 0.0  # an average bias: a dead code may have died of a large one
        self.idle_steps.masked_fill_(dead, 0)
        return n_dead


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (van den Oord et al. 2018): row i of ``anchor`` should be closest, by cosine, to
    row i of ``positive`` among all rows of ``positive``, and the other way round; the other rows of the
    batch are the negatives. anchor, positive: (B, H) -> scalar."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = a @ p.T / temperature  # (B, B)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ---------------------------------------------------------------------------------------------------
# Encoder / decoder and the RQ-VAE


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """x + MLP(x). The last layer starts at zero, so the block starts as the identity (He et al. 2016)."""

    def __init__(self, dim: int, hidden_dims: list[int]) -> None:
        super().__init__()
        self.net = mlp([dim, *hidden_dims, dim])
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Losses(NamedTuple):
    total: torch.Tensor
    """recon + codebook_weight * codebook + commitment_weight * commit."""
    recon: torch.Tensor
    """Mean over the batch of ||x - x_hat||^2."""
    codebook: torch.Tensor
    """Codebook loss, summed over levels."""
    commit: torch.Tensor
    """Commitment loss, summed over levels."""


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor
    """(B, D) the decoder's output."""
    codes: torch.Tensor
    """(B, L) int64 codes."""
    losses: Losses
    """The training losses."""
    latent: torch.Tensor
    """(B, H) the encoder's output."""
    residuals: torch.Tensor
    """(L, B, H) what each level quantized (detached)."""


class RQVAE(nn.Module):
    """RQ-VAE tokenizer (Lee et al. 2022; TIGER, Rajput et al. 2023): x -> z -> codes -> z_q -> x_hat.

    Example:
        >>> model = RQVAE(RQVAEConfig(input_dim=384))
        >>> model.init_codebooks(x)            # x (N, 384), residual k-means on the latents
        >>> out = model(x[:8])                 # out.codes (8, 3), out.reconstruction (8, 384)
        >>> torch.equal(model.decode_codes(out.codes), out.reconstruction)
        True
    """

    tokenizer = "rqvae"

    def __init__(self, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        d, h = config.input_dim, config.latent_dim
        if config.encoder == "identity":
            self.encoder: nn.Module = nn.Identity()
            self.decoder: nn.Module = nn.Identity()
        elif config.encoder == "residual":
            self.encoder = ResidualMLP(d, config.hidden_dims)  # D -> D
            self.decoder = ResidualMLP(d, list(reversed(config.hidden_dims)))  # D -> D
        else:
            self.encoder = mlp([d, *config.hidden_dims, h])  # D -> ... -> H
            self.decoder = mlp([h, *reversed(config.hidden_dims), d])  # H -> ... -> D
        self.quantizer = ResidualQuantizer(levels=config.levels, codebook_size=config.codebook_size, dim=h,
                                           gradient=config.gradient, dead_code_window=config.dead_code_window,
                                           beam_width=config.beam_width,
                                           prototypes=config.codebook_size * config.group_prototypes
                                           if config.group_weight > 0 else 0,
                                           prefix_bias=config.prefix_balance > 0)

    @property
    def codebooks(self) -> torch.Tensor:
        """(L, K, H) the code vectors."""
        return self.quantizer.codebooks.detach()

    @property
    def code_bias(self) -> torch.Tensor:
        """(L, K) added to each code's squared distance when assigning (0: plain nearest code)."""
        return self.quantizer.code_bias

    @property
    def beam_width(self) -> int:
        """Width of the beam over levels 2..L (1: greedy)."""
        return self.quantizer.beam_width

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) -> latent (B, H)."""
        return self.encoder(x)

    def quantize(self, z: torch.Tensor, first_level: FirstLevel | None = None) -> torch.Tensor:
        """latent (B, H) -> codes (B, L) int64 (``ResidualQuantizer.quantize``)."""
        return self.quantizer.quantize(z, first_level)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, L) int64 -> reconstruction (B, D)."""
        return self.decoder(self.quantizer.lookup(codes))

    def forward(self, x: torch.Tensor, first_level: FirstLevel | None = None) -> TokenizerOutput:
        """x (B, D) -> reconstruction, codes and losses; ``first_level``: see ``ResidualQuantizer.quantize``."""
        z = self.encoder(x)  # (B, H)
        q = self.quantizer(z, first_level)
        x_hat = self.decoder(q.quantized)  # (B, D)
        recon = (x - x_hat).pow(2).sum(-1).mean()
        total = recon + self.config.codebook_weight * q.codebook_loss + self.config.commitment_weight * q.commit_loss
        return TokenizerOutput(x_hat, q.codes, Losses(total, recon, q.codebook_loss, q.commit_loss), z, q.residuals)

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, *, links: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, batch_size: int = 8192,
                       first_level_for: Callable[[torch.Tensor], FirstLevel] | None = None) -> None:
        """Put the codebooks on the data: residual k-means, level by level, on the encoder's output for x.

        Args:
            x: (N, D) embeddings (a seeded sample of at most ``kmeans_max_points`` is used).
            links: (N, P) rows of x that each row should share a first code with besides its embedding
                neighbours (co-watched movies), -1 padded; used by a grouped first level only.
            generator: the random source of the sample and the k-means seeding.
            batch_size: rows encoded at a time.
            first_level_for: given the (S,) rows of x the fit reads, their level-1 rule (``FirstLevel``;
                e.g. ``RQVAEModule.first_level``, which keeps the nearest-prototype search for training).
        """
        rows = torch.arange(x.shape[0], device=x.device)  # (S,) the rows of x the fit reads
        if x.shape[0] > self.config.kmeans_max_points:
            keep = torch.randperm(x.shape[0], generator=generator)[: self.config.kmeans_max_points].to(x.device)
            x, rows = x[keep], keep
            if links is not None:
                from .groups import subset_links  # see ResidualQuantizer.init_codebooks

                links = subset_links(links, keep)
        z = torch.cat([self.encode(chunk) for chunk in x.split(batch_size)])  # (N, H)
        c = self.config
        first = self.quantizer.init_codebooks(z, iters=c.kmeans_iters, clip_quantile=c.kmeans_clip_quantile,
                                              balance=c.balance, group_weight=c.group_weight, graph_points=x,
                                              links=links, link_weight=c.group_link_weight, generator=generator,
                                              first_level=None if first_level_for is None else first_level_for(rows))
        if self.config.refine_rounds:
            self.quantizer.refine_codebooks(z, rounds=self.config.refine_rounds, balance=self.config.balance,
                                            first=first)
        if hasattr(self.quantizer, "prefix_bias"):
            self.quantizer.fit_prefix_bias(z, self.config.prefix_balance, first=first)

