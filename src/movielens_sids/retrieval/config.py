"""Settings of the generative-retrieval benchmark (torch-free, so that the CLI and ``Config`` load fast)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

METHODS = ("semantic_id", "random_id", "sasrec", "most_popular")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


@dataclass
class RetrievalConfig:
    """Settings of the generative-retrieval benchmark (`movielens-sids retrieval`)."""

    dataset: str | None = None
    """MovieLens variant whose ratings are used (default: the run's `data.dataset`)."""
    ratings: str | None = None
    """A ratings.csv / ratings.dat file to use instead of a named dataset."""
    min_ratings: int = 5
    """Users with fewer ratings (of movies with a SID) are dropped."""
    max_users: int | None = None
    """Evaluate a seeded random sample of this many users (for ml-20m and larger); None keeps all."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One full comparison per seed (model init, batch order, the random IDs)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which of semantic_id, random_id, sasrec, most_popular to run."""
    max_history: int = 50
    """M: how many past movies the models see."""
    max_train_items: int | None = 100
    """Train on at most this many of each user's most recent training movies (None: all); caps heavy raters."""
    d_model: int = 64
    """Transformer width (both models)."""
    n_layers: int = 2
    """Transformer blocks (both models)."""
    n_heads: int = 2
    """Attention heads (both models)."""
    dropout: float = 0.2
    """Dropout (both models)."""
    lr: float = 3e-3
    """AdamW learning rate of the generative models."""
    sasrec_lr: float = 3e-3
    """AdamW learning rate of SASRec."""
    weight_decay: float = 0.01
    """AdamW weight decay on the weight matrices."""
    batch_size: int = 64
    """Training windows per step."""
    max_epochs: int = 8
    """Upper bound on training epochs."""
    patience: int = 3
    """Stop after this many epochs without a better validation Recall@10 (the best epoch's weights are kept)."""
    beam_size: int = 20
    """Beams of the constrained beam search (>= 10, the largest cut-off)."""
    eval_batch_size: int = 128
    """Users per evaluation batch."""
    device: str = "cpu"
    """Lightning accelerator: cpu, gpu or auto."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default); 1 is fastest on a busy machine."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"eval_batch_size", "device", "threads"})

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown {bad or '(none given)'}; choose from {', '.join(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if self.min_ratings < 3:
            raise ValueError(f"min_ratings: need at least 3 (train, valid, test), got {self.min_ratings}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users: must be positive, got {self.max_users}")
        for name in ("max_history", "d_model", "n_layers", "n_heads", "batch_size", "max_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.max_train_items is not None and self.max_train_items < 2:
            raise ValueError(f"max_train_items: must be at least 2, got {self.max_train_items}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be positive, got {self.threads}")
        if self.patience < 0:
            raise ValueError(f"patience: must be >= 0, got {self.patience}")
        if self.beam_size < 10:
            raise ValueError(f"beam_size: must be at least 10 (the largest cut-off), got {self.beam_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.sasrec_lr <= 0:
            raise ValueError("lr: learning rates must be positive")
        if self.device not in ("cpu", "gpu", "cuda", "mps", "auto"):
            raise ValueError(f"device: expected cpu, gpu, cuda, mps or auto, got {self.device!r}")


def settings_dict(cfg: RetrievalConfig) -> dict:
    """The settings that decide the numbers (runtime-only fields left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RetrievalConfig.RUNTIME_FIELDS}
