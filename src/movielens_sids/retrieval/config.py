"""Settings of the generative-retrieval benchmark (torch-free, so that the CLI and ``Config`` load fast).

May import: nothing of the package (settings sit at the bottom).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

METHODS = ("semantic_id", "semantic_id_tokens", "joint", "random_id", "sasrec_ce", "most_popular", "content_knn")
DEFAULT_METHODS = tuple(m for m in METHODS if m != "joint")
"""What runs unless ``retrieval.methods`` says otherwise (``joint`` needs a run of the ``joint`` preset)."""
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@50")
PROTOCOLS = ("temporal", "leave_one_out")
MAX_K = 50
"""The longest cut-off: every method ranks this many movies per event."""
BOOTSTRAP_UNITS = ("user", "event")
CANDIDATES = ("existing", "all")


@dataclass
class RetrievalConfig:
    """Settings of the generative-retrieval benchmark (`movielens-sids retrieval`)."""

    dataset: str | None = None
    """MovieLens variant whose ratings are used (default: the run's `data.dataset`)."""
    ratings: str | None = None
    """A ratings.csv / ratings.dat file to use instead of a named dataset."""
    protocol: str = "temporal"
    """temporal (a global time split: every interaction after the cut-off is a test event) or leave_one_out."""
    test_fraction: float = 0.1
    """temporal: the cut-off is the time after which this share of the interactions remain."""
    valid_fraction: float = 0.05
    """temporal: the share of interactions just before the cut-off that are validation events."""
    cutoff: int | None = None
    """temporal: the cut-off as a Unix timestamp, instead of test_fraction."""
    folds: int = 1
    """temporal: rolling origin. With F > 1, F successive cut-offs (the times after which F x test_fraction, ...,
    1 x test_fraction of the interactions remain), each fold with its own training, validation and test window
    and its own models; the folds' test events are pooled, a user of each fold one bootstrap cluster. A run's
    collaborative vectors come from the earliest fold's training interactions."""
    candidates: str = "existing"
    """Which movies may be recommended at an event at time t: existing (released in t's year or earlier, or rated
    by anyone before t; a movie without a year always exists) or all (every movie with a SID, even one released
    after the event)."""
    validation_only: bool = False
    """Score the validation events instead of the test events (every validation event, not only the sample that
    early stopping watches), and never rank a test event: for choosing settings of a preset."""
    min_ratings: int = 5
    """leave_one_out: users with fewer ratings (of movies with a SID) are dropped."""
    max_users: int | None = None
    """Evaluate a seeded random sample of this many users (for ml-20m and larger); None keeps all."""
    max_valid_events: int | None = 1000
    """Validate on a seeded sample of this many validation events (None: all); early stopping watches their loss
    (the same events every epoch, so epoch-to-epoch changes are not sampling noise)."""
    max_test_events: int | None = None
    """Score a seeded sample of this many test events (None: all); for ml-20m and larger."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One full comparison per seed (model init, batch order, the random IDs)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Which of semantic_id, semantic_id_tokens, joint, random_id, sasrec_ce, most_popular, content_knn to run
    (joint: the recommender a ``joint`` run trained with its tokenizer, fine-tuned on the run's SIDs as the
    token-only model is trained)."""
    compare_sids: list[str] = field(default_factory=list)
    """Other run folders whose SIDs are benchmarked too (as ``semantic_id@<folder>``), trained exactly like
    ``semantic_id`` on the same events and paired against it: tokenizers compared downstream."""
    max_history: int = 50
    """M: how many past movies the models see."""
    max_train_items: int | None = 100
    """Train on at most this many of each user's most recent training movies (None: all); caps heavy raters."""
    d_model: int = 64
    """Transformer width (all learned models)."""
    n_layers: int = 2
    """Transformer blocks (all learned models)."""
    n_heads: int = 2
    """Attention heads (all learned models)."""
    dropout: float = 0.2
    """Dropout of the generative models."""
    sasrec_dropout: float = 0.2
    """Dropout of SASRec."""
    lr: float = 3e-3
    """AdamW learning rate of the generative models."""
    sasrec_lr: float = 3e-3
    """AdamW learning rate of SASRec."""
    weight_decay: float = 0.01
    """AdamW weight decay on the weight matrices."""
    batch_size: int = 64
    """Training windows per step."""
    max_epochs: int = 200
    """A safety bound on training epochs; validation decides when to stop (the report flags a run that hit it)."""
    patience: int = 4
    """Stop after this many epochs in which neither the validation loss nor validation Recall@10 improved (the
    weights of the best-Recall@10 epoch are kept)."""
    exclude_seen: bool = True
    """Never recommend a movie the user has already rated (every method; MovieLens has no repeat ratings)."""
    valid_beam_size: int = 20
    """Beams of the constrained beam search on validation events (>= 10, the monitored cut-off)."""
    beam_size: int = 50
    """Beams of the constrained beam search at test time (>= 50, the largest cut-off)."""
    content_input: bool = True
    """semantic_id (and random_id, compare_sids): a movie's input is its SID tokens' embeddings plus a learned
    projection of its vector (the run tokenizer's input: its content embedding, and its collaborative vector
    where the tokenizer read one). semantic_id_tokens never reads vectors."""
    dense_weight: float = 1.0
    """semantic_id (and random_id, compare_sids): weight of the dense head's loss (predict the next movie's
    vector) beside the SID-token loss; 0: no dense head, the beam search alone ranks (as semantic_id_tokens)."""
    dense_negatives: int | None = 4096
    """Movies sampled per training step, among those of the training windows, for the dense head's softmax (None:
    all of them). A movie nobody rated in training is never a negative: it is never taught to lose."""
    dense_window: int = 3
    """With a dense head: its prediction of the next movie's vector starts from the mean vector of this many of
    the latest movies (the content baseline's profile) and learns a correction."""
    dense_age: bool = True
    """With a dense head: it learns a bias per range of a movie's age at the event (the event's year minus the
    catalog's release year; a range for a movie without one), so that new releases can be told from old films."""
    dense_positions: int | None = 1024
    """With a dense head: its loss is computed on at most this many sampled positions of each training batch
    (None: all)."""
    dense_candidates: int = 50
    """With a dense head: the best movies by dense score, and as many of the movies with no training interaction
    by content similarity, added to the beam search's candidates."""
    mix_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 64.0])
    """With a dense head: candidate weights w of the dense logit beside log P(SID), which together rank the movies
    with training interactions (0: by their SIDs alone; a large w: by the dense head alone, as LIGER does). The
    mix (w, warm_scales, cold_scales, gate_shifts) chosen on the validation events is used (cold_floor; ties: the
    smaller w, the gate off, then the smaller shift and scales); see docs/retrieval.md."""
    warm_scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    """With a dense head and the gate on: candidate scales of the warm movies' score in their softmax (how fast
    their probability falls along their list, against the cold movies')."""
    cold_scales: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 40.0])
    """With a dense head: candidate scales of the content cosine that ranks the movies with no training
    interaction (cold) among themselves, the user's profile being the mean content vector of its latest movies
    (the window chosen on validation from content_windows)."""
    gate_shifts: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0, 2.0, 3.0])
    """With a dense head: candidate shifts of the gate's logit (the chance that the next movie is cold, a logistic
    regression on the history's cold movies fitted on the validation events). The gate off, so that no cold movie
    is ranked, is always a candidate; [] keeps it off."""
    cold_floor: float = 1.0
    """With a dense head: the mix is the best on validation Recall@10 among those that score, on the validation
    events whose movie is cold, at least this share of what content similarity alone scores there (the cold
    profile's ranking of every movie); 0: the best on Recall@10 alone. When no mix reaches it, the best on
    Recall@10 is used."""
    cold_bonuses: list[float] = field(default_factory=lambda: [float(b) for b in range(13)])
    """semantic_id_tokens: candidate log-probability bonuses for movies with no training interaction, the best
    on validation Recall@10 is used. Such a movie's last token was never a target, so a plain beam search all
    but never ranks it; a second search over only these movies, merged with the main list after adding the
    bonus, is TIGER's cold-start share (its epsilon) chosen by validation. [] searches every movie once, as
    before; ID-based models cannot do this."""
    content_windows: list[int] = field(default_factory=lambda: [1, 3, 10, 30])
    """content_knn (and the cold movies' ranking of a model with a dense head): how many of the user's latest
    movies make the profile; the best on validation is used."""
    bootstrap_samples: int = 10_000
    """Bootstrap resamples of every interval."""
    bootstrap_unit: str = "user"
    """user (resample whole users with all their events: events of one user are not independent) or event."""
    eval_batch_size: int = 128
    """Users per evaluation batch."""
    device: str = "cpu"
    """Where the models train and rank: cpu, cuda, cuda:N, mps or auto."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default); 1 is fastest on a busy machine."""
    workers: int | None = None
    """Processes that train the (seed, method) models in parallel (None: one per CPU core on a CPU, 1 on a GPU);
    each gets threads / workers threads. The lists do not depend on it."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"eval_batch_size", "device", "threads", "workers"})

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown {bad or '(none given)'}; choose from {', '.join(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if self.min_ratings < 3:
            raise ValueError(f"min_ratings: need at least 3 (train, valid, test), got {self.min_ratings}")
        if self.folds < 1:
            raise ValueError(f"folds: must be positive, got {self.folds}")
        if self.candidates not in CANDIDATES:
            raise ValueError(f"candidates: expected one of {', '.join(CANDIDATES)}, got {self.candidates!r}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users: must be positive, got {self.max_users}")
        for name in ("max_history", "d_model", "n_layers", "n_heads", "batch_size", "max_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.max_train_items is not None and self.max_train_items < 2:
            raise ValueError(f"max_train_items: must be at least 2, got {self.max_train_items}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers: must be positive, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be positive, got {self.threads}")
        if self.patience < 0:
            raise ValueError(f"patience: must be >= 0, got {self.patience}")
        if self.beam_size < 50:
            raise ValueError(f"beam_size: must be at least 50 (the largest cut-off), got {self.beam_size}")
        if self.valid_beam_size < 10:
            raise ValueError(f"valid_beam_size: must be at least 10, got {self.valid_beam_size}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        for name in ("test_fraction", "valid_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in (0, 1), got {getattr(self, name)}")
        if self.test_fraction + self.valid_fraction >= 1.0:
            raise ValueError("test_fraction + valid_fraction: must be below 1")
        for name in ("max_valid_events", "max_test_events"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        self._check_dense()
        if not self.content_windows or min(self.content_windows) < 1:
            raise ValueError(f"content_windows: give positive window sizes, got {self.content_windows}")
        if self.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples: need at least 100, got {self.bootstrap_samples}")
        if self.bootstrap_unit not in BOOTSTRAP_UNITS:
            raise ValueError(f"bootstrap_unit: expected user or event, got {self.bootstrap_unit!r}")
        for name in ("dropout", "sasrec_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.lr <= 0 or self.sasrec_lr <= 0:
            raise ValueError("lr: learning rates must be positive")
        if self.device == "gpu":  # the spelling of earlier versions
            self.device = "cuda"
        if self.device not in ("cpu", "cuda", "mps", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: expected cpu, cuda, cuda:N, mps or auto, got {self.device!r}")

    def _check_dense(self) -> None:
        """The content input's, the dense head's and the ranking mix's settings."""
        if not self.mix_weights or min(self.mix_weights) < 0:
            raise ValueError(f"mix_weights: give weights >= 0, got {self.mix_weights}")
        if self.dense_weight < 0:
            raise ValueError(f"dense_weight: must be >= 0, got {self.dense_weight}")
        if self.dense_window < 1 or (self.dense_positions is not None and self.dense_positions < 1):
            raise ValueError("dense_window and dense_positions: must be positive")
        if self.dense_candidates < 0:
            raise ValueError(f"dense_candidates: must be >= 0, got {self.dense_candidates}")
        if self.dense_negatives is not None and self.dense_negatives < 1:
            raise ValueError(f"dense_negatives: must be positive or null, got {self.dense_negatives}")
        for name in ("cold_scales", "warm_scales"):
            scales = getattr(self, name)
            if any(t <= 0 for t in scales) or (self.gate_shifts and not scales):
                raise ValueError(f"{name}: give positive scales, got {scales}")
        if self.cold_floor < 0:
            raise ValueError(f"cold_floor: must be >= 0, got {self.cold_floor}")
        if any(b < 0 for b in self.cold_bonuses):
            raise ValueError(f"cold_bonuses: must be >= 0, got {self.cold_bonuses}")


def settings_dict(cfg: RetrievalConfig) -> dict:
    """The settings that decide the numbers (runtime-only fields left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RetrievalConfig.RUNTIME_FIELDS}
