"""Residual k-means on FAISS: the strong, training-free baseline tokenizer, behind the RQ-VAE's interface.

Level 1 clusters the raw embeddings into K groups; level l clusters what levels 1..l-1 left over.
No encoder or decoder (H = D): ``encode`` is the identity and a movie's reconstruction is the sum of
its codes' centroids. Fitting uses ``faiss.Kmeans`` (seeded); everything after fitting is torch.

Shapes: B batch, N movies, D embedding dim (= H), L levels, K codebook size.

May import: torch, numpy, faiss (inside ``fit``), model.config and model.rqvae (pure math).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import RQKMeansConfig
from .rqvae import Losses, TokenizerOutput, nearest_code


class RQKMeans(nn.Module):
    """Residual k-means tokenizer (greedy residual assignment, centroids fitted by FAISS).

    Example:
        >>> tok = RQKMeans.fit(x, RQKMeansConfig(input_dim=384), seed=0)   # x (N, 384) float32
        >>> codes = tok.quantize(tok.encode(torch.from_numpy(x)))         # (N, 3)
    """

    tokenizer = "rqkmeans"

    def __init__(self, config: RQKMeansConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("centroids", torch.zeros(config.levels, config.codebook_size, config.input_dim))

    @classmethod
    def fit(cls, x: np.ndarray, config: RQKMeansConfig, *, seed: int = 0) -> RQKMeans:
        """Fit the centroids level by level on x (N, D); needs N >= K."""
        import faiss

        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if len(x) < config.codebook_size:
            raise ValueError(f"residual k-means needs at least codebook_size={config.codebook_size} vectors, "
                             f"got {len(x)}")
        model = cls(config)
        residual = x.copy()
        for level in range(config.levels):
            # Each level gets its own seed so that levels do not share their random starts.
            km = faiss.Kmeans(x.shape[1], config.codebook_size, niter=config.kmeans_iters, seed=seed * 1000 + level + 1,
                              verbose=False)
            km.train(residual)
            centroids = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))  # (K, D)
            model.centroids[level] = centroids
            # Assign with the same torch code as `quantize`, so fitting and tokenizing agree exactly.
            idx = nearest_code(torch.from_numpy(residual), centroids).numpy()
            residual -= km.centroids[idx]
        return model

    @property
    def codebooks(self) -> torch.Tensor:
        """(L, K, D) the centroids."""
        return self.centroids

    @property
    def code_bias(self) -> torch.Tensor:
        """(L, K) zeros: plain nearest centroid (the RQ-VAE's interface)."""
        return self.centroids.new_zeros(self.centroids.shape[:2])

    beam_width = 1
    """Greedy, level by level."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: x (B, D) -> (B, D)."""
        return x

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Greedy residual assignment. z (B, D) -> codes (B, L) int64."""
        residual, codes = z, []
        for centroids in self.centroids:  # (K, D)
            idx = nearest_code(residual, centroids)  # (B,)
            residual = residual - centroids[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, L) int64 -> reconstruction (B, D), the sum of the codes' centroids."""
        levels = torch.arange(codes.shape[1], device=codes.device)
        return self.centroids[levels, codes].sum(dim=1)  # (B, L, D) -> (B, D)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        codes = self.quantize(x)  # (B, L)
        x_hat = self.decode_codes(codes)  # (B, D)
        recon = (x - x_hat).pow(2).sum(-1).mean()
        zero = recon.new_zeros(())
        levels = torch.arange(codes.shape[1], device=codes.device)
        chosen = self.centroids[levels, codes]  # (B, L, D)
        partial = chosen.cumsum(dim=1)  # (B, L, D) after each level
        residuals = torch.cat([x[:, None], x[:, None] - partial[:, :-1]], dim=1).transpose(0, 1)  # (L, B, D)
        # Commitment: how far each level's residual is from its centroid, summed over levels (as in RQVAE).
        commit = (residuals - chosen.transpose(0, 1)).pow(2).sum(-1).mean(-1).sum()
        # Nothing is trained by gradient: the total is the reconstruction error, and no codebook loss.
        return TokenizerOutput(x_hat, codes, Losses(recon, recon, zero, commit), x, residuals)

