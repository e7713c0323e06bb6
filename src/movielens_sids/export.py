"""The `export` stage: the enriched dataset (Parquet shards + dataset card), the model card, the Hub.

``dataset/`` holds ``data/train-0000i-of-0000n.parquet`` shards (every catalog column, then
``embedding``, ``semantic_id``, ``sid``) and a ``README.md`` dataset card with YAML front matter,
the layout the Hub and ``datasets.load_dataset("parquet", data_dir=...)`` read. It is written as
a whole (``atomic_dir``). ``model/README.md`` is the model card; the weights are not touched.

``--push-to-hub`` then uploads ``model/`` (config, weights, card, train metrics) and ``dataset/``
to two repos, one commit each, tagged with the experiment name (see `movielens_sids.hub`);
``--dry-run`` lists what would be uploaded. Smoke runs (a catalog built with ``--limit``) go to
repos suffixed ``-smoke-test`` so they never overwrite the real ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import SidsError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

HELP = "write dataset/ (Parquet shards + dataset card) and the model card; --push-to-hub uploads both"

MOVIELENS_CITATION = """@article{harper2015movielens,
  author    = {F. Maxwell Harper and Joseph A. Konstan},
  title     = {The MovieLens Datasets: History and Context},
  journal   = {ACM Transactions on Interactive Intelligent Systems (TiiS)},
  volume    = {5},
  number    = {4},
  pages     = {19:1--19:19},
  year      = {2015},
  doi       = {10.1145/2827872},
  url       = {https://doi.org/10.1145/2827872}
}"""

TOKENIZER_NAMES = {"rqvae": "an RQ-VAE", "rqkmeans": "residual k-means"}
COLUMN_DOCS = {
    "movie_id": "MovieLens `movieId` (int64); join key with the ratings of the same MovieLens release.",
    "title": "Title without the year, as MovieLens writes it (article kept at the end, e.g. `Matrix, The`).",
    "display_title": "Title with the article moved to the front (`The Matrix`).",
    "year": "Release year parsed from the title (null when MovieLens gives none).",
    "genres": "MovieLens genres (empty list for `(no genres listed)`).",
    "tags": "User tags, most frequent first (empty when the release has no tags).",
    "imdb_id": "IMDb id like `tt0133093` (null when unknown).",
    "tmdb_id": "TMDB id (null when unknown).",
    "plot_summary": "Plot summary (enrichment file).",
    "director": "Director (enrichment file).",
    "stars": "Main cast (enrichment file).",
    "embedding": "Sentence-transformers embedding of the movie's document (float32, fixed length D).",
    "semantic_id": "The Semantic ID's tokens: L codes (one per RQ-VAE level), plus a collision token when used.",
    "sid": "The Semantic ID as one string, `<a_12><b_201><c_7>`: position letters a, b, c, ... then the code.",
}


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

    def __post_init__(self) -> None:
        if self.shard_size_mb < 1:
            raise ValueError(f"shard_size_mb: must be >= 1, got {self.shard_size_mb}")
        for name in ("model_repo", "dataset_repo"):
            v = getattr(self, name)
            if v is not None and (v.count("/") > 1 or not v.strip("/") or " " in v):
                raise ValueError(f"{name}: expected a repo id like user/name, got {v!r}")


# ---------------------------------------------------------------------------------------------- dataset


def dataset_table(run_dir: Path):
    """Catalog + embedding + semantic_id + sid, one row per movie, sorted by movie_id (validated)."""
    import pyarrow as pa

    from .io import read_parquet

    run_dir = Path(run_dir)
    cat = read_parquet(run_dir / "catalog.parquet", "catalog")
    emb = read_parquet(run_dir / "embeddings.parquet", "embed")
    sids = read_parquet(run_dir / "sids.parquet", "assign")
    for name, t, cols, stage in (("catalog.parquet", cat, ("movie_id",), "catalog"),
                                 ("embeddings.parquet", emb, ("movie_id", "embedding"), "embed"),
                                 ("sids.parquet", sids, ("movie_id", "semantic_id", "sid"), "assign")):
        for c in cols:
            if c not in t.column_names:
                raise SidsError(f"{run_dir / name} has no {c!r} column; run `movielens-sids {stage}` again")
    if cat.num_rows == 0:
        raise SidsError(f"{run_dir / 'catalog.parquet'} has no movies")

    def sort(t):
        return t.take(np.argsort(t.column("movie_id").to_numpy(), kind="stable"))

    cat, emb, sids = sort(cat), sort(emb), sort(sids)
    ids = cat.column("movie_id").to_numpy()
    for name, t, stage in (("embeddings.parquet", emb, "embed"), ("sids.parquet", sids, "assign")):
        other = t.column("movie_id").to_numpy()
        if len(other) != len(ids) or not np.array_equal(other, ids):
            n_missing = len(np.setdiff1d(ids, other))
            n_extra = len(np.setdiff1d(other, ids))
            raise SidsError(f"{name} does not hold the catalog's movies ({n_missing} missing, {n_extra} extra); "
                            f"run `movielens-sids {stage}` again")
    cols = {c: cat.column(c) for c in cat.column_names}
    cols["embedding"] = emb.column("embedding")
    cols["semantic_id"] = sids.column("semantic_id")
    cols["sid"] = sids.column("sid")
    return pa.table(cols).combine_chunks()


def write_shards(table, folder: Path, *, shard_size_mb: int) -> list[Path]:
    """Write ``data/train-0000i-of-0000n.parquet`` shards of about ``shard_size_mb`` each."""
    from .io import write_parquet

    n = table.num_rows
    per_row = max(1, table.nbytes // max(n, 1))
    rows = max(1, (shard_size_mb * 1_000_000) // per_row)
    n_shards = max(1, math.ceil(n / rows))
    rows = math.ceil(n / n_shards)  # even shards
    out = []
    for i in range(n_shards):
        p = folder / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet"
        write_parquet(p, table.slice(i * rows, rows))
        out.append(p)
    return out


def _features_yaml(schema) -> list[dict] | None:
    """The ``dataset_info.features`` of the card, as `datasets` itself writes them (None if unavailable)."""
    try:
        from datasets import Features

        return Features.from_arrow_schema(schema)._to_yaml_list()
    except Exception as e:  # a private helper of `datasets`; the card is still valid without it
        log.debug("no dataset_info features in the card: %s", e)
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _provenance(run_dir: Path) -> dict[str, Any]:
    """How the run was made, read from its artifacts (the truth) rather than from today's settings."""
    from .io import parquet_metadata

    def meta(name: str) -> dict[str, Any]:
        out = {}
        p = run_dir / name
        if p.exists():
            for k, v in parquet_metadata(p).items():
                try:
                    out[k] = json.loads(v)
                except ValueError:
                    out[k] = v
        return out

    model_cfg = _read_json(run_dir / "model" / "config.json") or {}
    return {"catalog": meta("catalog.parquet"), "embeddings": meta("embeddings.parquet"),
            "sids": meta("sids.parquet"), "model": model_cfg,
            "train_metrics": _read_json(run_dir / "model" / "train_metrics.json"),
            "report": _read_json(run_dir / "report.json")}


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _dataset_name(prov: dict[str, Any]) -> str:
    summary = prov["catalog"].get("summary") or {}
    src = str(summary.get("source") or prov["catalog"].get("source") or "")
    name = summary.get("dataset") or (Path(src).name if src else "MovieLens")
    return str(name).removesuffix(".zip")


def _metrics_md(report: dict[str, Any] | None) -> str:
    if not report:
        return "No `report.json` in the run folder when this was exported (run `movielens-sids evaluate`).\n"
    rows = []

    def add(name: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
        rows.append(f"| {name} | {value} |")

    rec = report.get("reconstruction") or {}
    add("reconstruction relative MSE", rec.get("relative_mse"))
    add("reconstruction mean cosine", rec.get("mean_cosine"))
    add("code utilization per level", report.get("utilization"))
    add("perplexity per level", report.get("perplexity"))
    col = report.get("collisions") or {}
    add("unique before dedup", col.get("unique_fraction_before_dedup"))
    add("largest collision group", col.get("max_group_size"))
    add("unique after dedup", col.get("unique_fraction_after_dedup"))
    nb = report.get("neighbors") or {}
    add("neighbour overlap@10 (embedding vs SID)", nb.get("overlap_at_10"))
    add("first-token match@10", nb.get("first_token_match_at_10"))
    add("first-token match, random pairs", nb.get("random_first_token_match"))
    add("level-1 genre purity", report.get("genre_purity_level1"))
    if not rows:
        return "`report.json` holds no metrics this card knows.\n"
    return "| metric | value |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def dataset_card(table, prov: dict[str, Any], *, model_repo: str, pretty_name: str, n_shards: int) -> str:
    """The dataset card: YAML front matter (license, configs, features) + what, how, metrics, citation."""
    n = table.num_rows
    size = ("n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000
            else "100K<n<1M")
    front: dict[str, Any] = {
        "license": "other",
        "license_name": "movielens",
        "license_link": "https://files.grouplens.org/datasets/movielens/ml-latest-README.html",
        "pretty_name": pretty_name,
        "tags": ["movielens", "semantic-ids", "rq-vae", "recommendation", "generative-retrieval"],
        "size_categories": [size],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    features = _features_yaml(table.schema)
    if features is not None:
        front["dataset_info"] = {"features": features,
                                 "splits": [{"name": "train", "num_examples": n}]}
    emb_meta, sid_meta = prov["embeddings"], prov["sids"]
    model = prov["model"]
    mcfg = model.get("config") or {}
    assign = sid_meta.get("assign") or {}
    stats = sid_meta.get("assign_stats") or {}
    dim = table.schema.field("embedding").type.list_size if hasattr(table.schema.field("embedding").type,
                                                                      "list_size") else "D"
    columns = "\n".join(f"| `{c}` | `{table.schema.field(c).type}` | {COLUMN_DOCS.get(c, 'Enrichment column.')} |"
                        for c in table.column_names)
    levels, k = assign.get("levels", mcfg.get("levels")), assign.get("codebook_size", mcfg.get("codebook_size"))
    strategy = assign.get("strategy", "?")
    dedup = ("colliding movies were moved to the nearest free code path (no extra token)"
             if strategy == "semantic" else "a collision token numbers the movies sharing a code path (TIGER)")
    catalog = dict(prov["catalog"].get("summary") or {})
    if catalog.get("source"):  # a local path says nothing to readers of the card; keep its name
        catalog["source"] = Path(str(catalog["source"])).name
    settings = {
        "catalog": catalog,
        "embedding model": emb_meta.get("model"),
        "embedding dimension": emb_meta.get("dimension", dim),
        "normalized": emb_meta.get("normalized"),
        "document template": emb_meta.get("template"),
        "tokenizer": model.get("tokenizer"),
        "tokenizer config": mcfg,
        "assign": {k2: v for k2, v in assign.items() if k2 != "model_fingerprint"},
        "dedup statistics": stats,
    }
    return f"""---
{_yaml(front)}
---

# {pretty_name}

Every movie of the MovieLens catalog with its text embedding and a **Semantic ID** (SID): a short
tuple of discrete tokens such that movies with similar content share prefixes, as used by
generative retrieval recommenders (TIGER, Rajput et al. 2023). {n:,} movies, {n_shards} Parquet
shard(s), one `train` split. The tokenizer that made the SIDs: [{model_repo}](https://huggingface.co/{model_repo}).

```python
from datasets import load_dataset

ds = load_dataset("parquet", data_dir="dataset")["train"]      # this folder, or the Hub repo id
ds[0]["sid"]                                                    # e.g. '<a_12><b_201><c_7>'
```

## Columns

| column | type | meaning |
| --- | --- | --- |
{columns}

## How it was made

1. **Catalog**: MovieLens `movies.csv` (+ links and tags when the release has them), titles and years parsed.
2. **Embeddings**: one text document per movie, embedded with `{emb_meta.get('model', '?')}` ({dim}-d).
3. **Tokenizer**: {TOKENIZER_NAMES.get(model.get('tokenizer'), 'a tokenizer')} with {levels} levels x {k} codes
   (encoder -> residual quantizer -> decoder), trained on these embeddings.
4. **Semantic IDs**: greedy residual codes for every movie; then, for uniqueness ({strategy}): {dedup}.
   {stats.get('n_collided_before', '?')} movies collided before dedup, {stats.get('n_moved', 0)} were moved,
   {stats.get('n_suffixed', 0)} needed a collision token; every SID is unique.

Settings and statistics of this export:

```yaml
{_yaml(settings)}
```

## Metrics

From the run's evaluation report (`report.json`), measured on the whole catalog:

{_metrics_md(prov['report'])}
## License and citation

The movie data comes from the [MovieLens](https://grouplens.org/datasets/movielens/) datasets of
GroupLens Research (University of Minnesota). They are provided for **research use**, under the
GroupLens usage license: no commercial use and no redistribution except under the same terms,
without separate permission from GroupLens; acknowledge the use of the dataset in publications by
citing:

> F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
> ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4: 19:1-19:19.
> https://doi.org/10.1145/2827872

```bibtex
{MOVIELENS_CITATION}
```

The embeddings and Semantic IDs are derived from that data and are shared under the same terms.
"""


def model_card(prov: dict[str, Any], *, model_repo: str, dataset_repo: str, revision: str) -> str:
    """The model card of ``model/``: what the tokenizer is, its config and metrics, how to load it."""
    model = prov["model"]
    mcfg = model.get("config") or {}
    kind = model.get("tokenizer", "rqvae")
    front = {
        "license": "other",
        "license_name": "movielens",
        "license_link": "https://files.grouplens.org/datasets/movielens/ml-latest-README.html",
        "library_name": "pytorch",
        "tags": ["semantic-ids", "rq-vae", "residual-quantization", "movielens", "recommendation"],
        "datasets": [dataset_repo],
    }
    metrics = prov["train_metrics"]
    metrics_md = f"```json\n{json.dumps(metrics, indent=2, sort_keys=True)}\n```\n" if metrics else \
        "No `train_metrics.json` in the model folder.\n"
    what = ("an RQ-VAE: MLP encoder -> residual vector quantizer -> MLP decoder (Lee et al. 2022; "
            "TIGER, Rajput et al. 2023)" if kind == "rqvae" else "residual k-means (centroids fitted level by level)")
    return f"""---
{_yaml(front)}
---

# {model_repo.split('/')[-1]}

A Semantic ID tokenizer for MovieLens movies: {what}, {mcfg.get('levels', '?')} levels x
{mcfg.get('codebook_size', '?')} codes, trained on `{prov['embeddings'].get('model', '?')}` embeddings
({mcfg.get('input_dim', '?')}-d). It maps a movie's embedding to a tuple of codes such as `(12, 201, 7)`.
The SIDs it gives every movie, made unique, are in the dataset
[{dataset_repo}](https://huggingface.co/datasets/{dataset_repo}).

## Use

```python
import torch
from huggingface_hub import snapshot_download
from movielens_sids.model import load_tokenizer   # pip install movielens-sids

tok = load_tokenizer(snapshot_download("{model_repo}", revision="{revision}"))
codes = tok.quantize(tok.encode(x))               # x: (B, {mcfg.get('input_dim', 'D')}) float32 -> (B, L) codes
x_hat = tok.decode_codes(codes)                   # (B, {mcfg.get('input_dim', 'D')}) reconstruction
```

The weights are `model.safetensors` (no pickle); `config.json` holds the architecture.
Unique SIDs for new movies: `movielens-sids assign --incremental`.

## Config

```json
{json.dumps(model, indent=2, sort_keys=True)}
```

## Training metrics

{metrics_md}
## Evaluation

{_metrics_md(prov['report'])}
## Data license and citation

Trained on data derived from the MovieLens datasets (GroupLens Research), which are provided for
research use; see the dataset card. Cite: F. Maxwell Harper and Joseph A. Konstan. 2015. The
MovieLens Datasets: History and Context. ACM TiiS 5, 4: 19:1-19:19. https://doi.org/10.1145/2827872
"""


# ---------------------------------------------------------------------------------------------- stage


def _is_smoke(run_dir: Path, cfg: Config) -> bool:
    """A run on a `--limit` catalog (its metadata says so, or the setting does)."""
    from .io import parquet_metadata

    if cfg.data.limit is not None:
        return True
    try:
        summary = json.loads(parquet_metadata(run_dir / "catalog.parquet").get("summary", "{}"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("limit") is not None


def repo_ids(run_dir: Path, cfg: Config, user: str) -> tuple[str, str]:
    """(model repo, dataset repo): the settings, or ``{user}/movielens-rqvae`` and ``{user}/movielens-sids``;
    smoke runs get ``-smoke-test`` appended so they never overwrite the real repos."""
    ecfg: ExportConfig = cfg.export
    suffix = "-smoke-test" if _is_smoke(run_dir, cfg) else ""

    def full(name: str | None, default: str) -> str:
        rid = name or default
        if "/" not in rid:
            rid = f"{user}/{rid}"
        return rid if rid.endswith(suffix) else rid + suffix

    return full(ecfg.model_repo, "movielens-rqvae"), full(ecfg.dataset_repo, "movielens-sids")


def export_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Write ``dataset/`` and ``model/README.md``; with ``push_to_hub``, upload (or list, with ``dry_run``).

    Returns:
        A summary: rows, shards, files; ``upload_plan`` (dry run) or ``uploaded`` (push).
    """
    from . import hub
    from .io import atomic_dir, write_text

    run_dir = Path(run_dir)
    ecfg: ExportConfig = cfg.export
    for f in ("config.json", "model.safetensors"):
        if not (run_dir / "model" / f).is_file():
            raise SidsError(f"{run_dir / 'model' / f} not found: run `movielens-sids train` first")
    table = dataset_table(run_dir)  # validates every input before anything is written
    prov = _provenance(run_dir)
    revision = ecfg.revision or cfg.experiment

    token, where, user = None, "", hub.PLACEHOLDER_USER
    if ecfg.push_to_hub or ecfg.dry_run:
        token, where = hub.resolve_token([run_dir])
        if ecfg.push_to_hub and not ecfg.dry_run:
            if token is None:
                raise SidsError("no Hugging Face token: set HF_TOKEN, put HF_TOKEN=... in a .env file, or run "
                                "`hf auth login`; or use --dry-run to see what would be uploaded")
            user = hub.hub_user(token, where)  # checks the network and the token before anything is written
        elif token is not None and not (ecfg.model_repo and "/" in ecfg.model_repo
                                        and ecfg.dataset_repo and "/" in ecfg.dataset_repo):
            try:
                user = hub.hub_user(token, where)
            except SidsError as e:
                log.info("dry run: account name unknown (%s)", e)
    model_repo, dataset_repo = repo_ids(run_dir, cfg, user)

    pretty = f"MovieLens {_dataset_name(prov)} Semantic IDs ({cfg.experiment})"
    with atomic_dir(run_dir / "dataset") as tmp:
        shards = write_shards(table, tmp, shard_size_mb=ecfg.shard_size_mb)
        from .labels import labels_card, labels_for_run

        write_text(tmp / "README.md", dataset_card(table, prov, model_repo=model_repo, pretty_name=pretty,
                                                   n_shards=len(shards)) + labels_card(labels_for_run(run_dir)))
    write_text(run_dir / "model" / "README.md",
               model_card(prov, model_repo=model_repo, dataset_repo=dataset_repo, revision=revision))
    result: dict[str, Any] = {"rows": table.num_rows, "columns": table.column_names, "shards": len(shards)}
    log.info("dataset/: %d movies in %d shard(s), %d columns", table.num_rows, len(shards), table.num_columns)

    if ecfg.push_to_hub or ecfg.dry_run:
        uploads = hub.plan_uploads(run_dir, model_repo=model_repo, dataset_repo=dataset_repo)
        if ecfg.dry_run:
            result["upload_plan"] = [u.describe() for u in uploads]
            result["upload_listing"] = hub.format_plan(uploads, revision=revision, private=ecfg.private)
            log.info("dry run: nothing uploaded (token: %s)", f"found in {where}" if token else "none found")
        else:
            result["uploaded"] = hub.push(uploads, token=token, where=where, private=ecfg.private,
                                          revision=revision, message=f"movielens-sids export ({cfg.experiment})")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import flag

    flag(p, "--push-to-hub", key="export.push_to_hub", action="store_true",
         help="upload model/ and dataset/ to the Hugging Face Hub (token: HF_TOKEN, .env or `hf auth login`)")
    flag(p, "--dry-run", key="export.dry_run", action="store_true",
         help="list every file --push-to-hub would upload, and where; upload nothing")
    flag(p, "--model-repo", key="export.model_repo", type=str, help="model repo id (default <user>/movielens-rqvae)")
    flag(p, "--dataset-repo", key="export.dataset_repo", type=str,
         help="dataset repo id (default <user>/movielens-sids)")
    flag(p, "--private", key="export.private", action="store_true", help="create the repos as private")
    flag(p, "--revision", key="export.revision", type=str, help="tag for the uploaded commits (default: experiment)")


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> None:
    from .stages import execute

    result = execute("export", cfg, run_dir)
    if "upload_listing" in result:
        print(result["upload_listing"])
    for up in result.get("uploaded", []):
        print(f"uploaded {up['repo_type']} {up['repo_id']} (tag {up['tag']}): {up['url']}")
