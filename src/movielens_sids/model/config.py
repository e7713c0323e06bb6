"""The tokenizers' settings (torch-free, so that reading a config does not import torch).

``RQVAEConfig`` shapes the RQ-VAE (``rqvae.py``), ``RQKMeansConfig`` residual k-means (``rqkmeans.py``).

May import: the standard library only (torch-free: ``config`` reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RQVAEConfig:
    """Shape of the RQ-VAE and the settings of its quantizer."""

    input_dim: int = 384
    """D, read from the embeddings at train time (plus ``collab_dim`` when the input holds both signals)."""
    collab_input: float = 0.0
    """What the tokenizer reads, with ratings (``collab.parquet``): each movie's content embedding and,
    appended with this weight, its collaborative vector shrunk towards its content neighbours'
    (``collab.fused_input``), so that co-watched movies share codes where their content alone cannot
    say so. A movie with no rating gets its neighbours' vector and a SID like any other. 0, or a
    dataset without ratings: the content embedding alone."""
    collab_shrinkage: float = 0.0
    """With ``collab_input``: a movie with n training interactions keeps n / (n + this) of its own
    collaborative vector, the rest from its content neighbours'. 0: its own vector whenever it has one.
    Shrinking gives more unique IDs before dedup, not a better recommender (docs/retrieval.md)."""
    collab_dim: int = 0
    """F, the collaborative part of input_dim: set at train time (0: content only)."""
    encoder: Literal["mlp", "residual", "identity"] = "residual"
    """mlp: D -> hidden -> H. residual: x + MLP(x) with H = D, starting as the identity, so the k-means
    init is exactly residual k-means and training refines it. identity: the raw vector (the original
    project's design). With residual or identity H = D, and ``latent_dim`` must be left unset."""
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    """Widths of the MLP encoder's hidden layers (the decoder mirrors them)."""
    latent_dim: int | None = None
    """H, the width of the quantized latent: the mlp encoder's output (32 when unset). residual and
    identity keep H = D (``input_dim``), so a different width with them is an error."""
    levels: int = 3
    """L, residual quantization levels."""
    codebook_size: int = 256
    """K, codes per level."""
    gradient: Literal["rotation", "ste"] = "rotation"
    """How gradients cross the code lookup: the rotation trick (Fifty et al. 2024) or straight-through."""
    commitment_weight: float = 0.05
    """beta: weight of ||r - sg(e)||^2 pulling the encoder's residuals towards their codes (VQ-VAE uses
    0.25; a smaller pull lets movies that share a cell drift to different deep codes)."""
    codebook_weight: float = 1.0
    """Weight of ||sg(r) - e||^2 pulling the codes towards the residuals assigned to them."""
    dead_code_window: int = 20
    """A code unused for this many training steps is re-seeded from a residual of the batch; 0 turns it off."""
    kmeans_iters: int = 20
    """Lloyd iterations of the k-means that initialises each codebook level."""
    kmeans_clip_quantile: float = 0.2
    """Levels >= 2 fit k-means on residuals whose norm is clipped at this quantile of the norms: a few
    large residuals otherwise drag codes away from the dense core, where crowded cells need splitting
    (deeper levels use their codes more evenly: docs/how-it-works.md). 1.0 turns it off."""
    kmeans_max_points: int = 65536
    """At most this many movies (a seeded sample) feed the k-means initialisation."""
    balance: float = 0.0
    """How far each level's code usage is pushed towards uniform: a residual goes to the code with the
    smallest ||r - c_k||^2 + b_k (a power diagram), with biases b from semi-discrete optimal transport
    (Sinkhorn) to uniform usage, scaled by this factor, fitted with the codebooks at initialisation
    (balanced k-means, and again after each ``refine_rounds`` round) and fixed during training. 0: plain
    nearest code. With ``group_weight`` > 0 level 1 is fully balanced, so this must be 1.0
    (docs/benchmarks.md#tokenizers-on-movielens-32m)."""
    refine_rounds: int = 0
    """After the initialisation, rounds of joint refitting of levels 2..L for the actual encoding
    (``quantize``, beam included): each code becomes the mean of what the other levels leave; with
    ``balance``, the biases of those levels are then fitted again for the moved codes."""
    beam_width: int = 1
    """Levels 2..L are encoded jointly by a beam search of this width, minimising the final error
    (plus the codes' biases); level 1 keeps its own rule (nearest code, or nearest prototype when
    grouped), so the first token keeps its meaning.
    1: greedy, level by level."""
    group_weight: float = 0.0
    """Keep tight groups of movies under one first token: the price the level-1 fit pays for every
    split pair of embedding neighbours, in units of the mean squared distance to the nearest code
    (``model/groups.py``: a balanced partition with a Potts neighbour term, then ``group_prototypes``
    prototypes per code; a movie's first code is that of its nearest prototype). Level 1 is then fully
    balanced, so ``balance`` must be 1.0 with it (an error otherwise). 0: the plain power diagram."""
    group_link_weight: float = 0.5
    """With ``group_weight`` > 0 and the co-watch term on: the weight of a movie's link to each of its
    co-watched movies in the level-1 partition's neighbour graph (an embedding neighbour weighs 0.5 each
    way, a mutual pair 4 more), so that the first token keeps both kinds of group together."""
    group_prototypes: int = 32
    """Prototypes per level-1 code when ``group_weight`` > 0 (more: the rule follows the partition more
    closely, at K x this many distances per movie for level 1)."""
    prefix_balance: float = 0.0
    """Level 2's balance inside each level-1 code: every first code gets its own level-2 biases (Sinkhorn
    towards uniform level-2 usage among the movies under it, scaled by this factor), added to level 2's
    own, so that the movies under one first token spread over the level-2 codes and fewer share a whole
    path. Fitted after the initialisation (and its refine rounds), fixed during training. 0: off.
    assign's search of a free path for a collided movie ranks the alternatives without these biases.
    What it buys: docs/benchmarks.md#tokenizers-on-movielens-32m."""

    def __post_init__(self) -> None:
        self._resolve_latent_dim()
        for name in ("input_dim", "latent_dim", "levels", "codebook_size", "kmeans_iters", "kmeans_max_points",
                     "beam_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if any(int(h) < 1 for h in self.hidden_dims):
            raise ValueError(f"model.hidden_dims: widths must be >= 1, got {self.hidden_dims}")
        if self.encoder not in ("mlp", "residual", "identity"):
            raise ValueError(f"model.encoder: must be mlp, residual or identity, got {self.encoder!r}")
        if self.gradient not in ("rotation", "ste"):
            raise ValueError(f"model.gradient: must be rotation or ste, got {self.gradient!r}")
        if self.commitment_weight < 0 or self.codebook_weight < 0:
            raise ValueError("model.commitment_weight / model.codebook_weight: must be >= 0")
        if not 0.0 < self.kmeans_clip_quantile <= 1.0:
            raise ValueError(f"model.kmeans_clip_quantile: must be in (0, 1], got {self.kmeans_clip_quantile}")
        if self.refine_rounds < 0:
            raise ValueError(f"model.refine_rounds: must be >= 0, got {self.refine_rounds}")
        if not 0.0 <= self.balance <= 1.0:
            raise ValueError(f"model.balance: must be in [0, 1], got {self.balance}")
        if self.group_weight > 0 and self.balance != 1.0:
            raise ValueError(f"model.balance: a grouped level 1 (model.group_weight > 0) is fully balanced, so "
                             f"model.balance must be 1.0 with it (every level balanced), got {self.balance}")
        for name in ("group_weight", "group_link_weight", "collab_input", "collab_shrinkage", "collab_dim",
                     "prefix_balance"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name}: must be >= 0, got {getattr(self, name)}")
        if int(self.group_prototypes) < 1:
            raise ValueError(f"model.group_prototypes: must be >= 1, got {self.group_prototypes}")
        if self.dead_code_window < 0:
            raise ValueError(f"model.dead_code_window: must be >= 0, got {self.dead_code_window}")
        self.hidden_dims = [int(h) for h in self.hidden_dims]

    def for_input(self, input_dim: int, collab_dim: int = 0) -> RQVAEConfig:
        """These settings for embeddings of width ``input_dim`` (of which ``collab_dim`` collaborative)."""
        latent = self.latent_dim if self.encoder == "mlp" else None  # H = D follows the new D
        return dataclasses.replace(self, input_dim=input_dim, collab_dim=collab_dim, latent_dim=latent)

    def _resolve_latent_dim(self) -> None:
        """H as it is used: the mlp encoder's own width, else D (one name for the width, stored as used)."""
        if self.encoder == "mlp":
            self.latent_dim = 32 if self.latent_dim is None else self.latent_dim
            return
        if self.latent_dim is not None and self.latent_dim != self.input_dim:
            raise ValueError(f"model.latent_dim: only the mlp encoder has a latent width of its own; "
                             f"the {self.encoder} encoder keeps H = D, leave latent_dim unset "
                             f"(got {self.latent_dim})")
        self.latent_dim = self.input_dim


@dataclass
class RQKMeansConfig:
    """Shape of a residual k-means tokenizer."""

    input_dim: int = 384
    """D, read from the embeddings."""
    levels: int = 3
    """L, residual levels."""
    codebook_size: int = 256
    """K, centroids per level."""
    kmeans_iters: int = 20
    """Lloyd iterations per level (FAISS)."""

    def __post_init__(self) -> None:
        for name in ("input_dim", "levels", "codebook_size", "kmeans_iters"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def latent_dim(self) -> int:
        """H = D: residual k-means quantizes the raw vector."""
        return self.input_dim
