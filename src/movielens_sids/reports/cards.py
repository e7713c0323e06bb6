"""The dataset card (``dataset/README.md``) and the model card: the single writer of each card's text.

A repo id is ``None`` while the Hub account is unknown (an export without a token): the cards then name
the run folder's own ``model/`` and ``dataset/`` instead of a placeholder account.

Both are built from the run's provenance (what ``export`` read from the run folder) and the
enriched table; nothing here reads or writes files.

May import: labels (its file name), reports.markdown (its table helper); yaml and (for the features block)
datasets, on first use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..labels import LABELS_FILE
from .markdown import _md_table

log = logging.getLogger(__name__)

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


def _features_yaml(schema) -> list[dict] | None:
    """The ``dataset_info.features`` of the card, as `datasets` itself writes them (None if unavailable)."""
    try:
        from datasets import Features

        return Features.from_arrow_schema(schema)._to_yaml_list()
    except Exception as e:  # a private helper of `datasets`; the card is still valid without it
        log.debug("no dataset_info features in the card: %s", e)
        return None


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def dataset_name(prov: dict[str, Any]) -> str:
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


def sid_version_name(prov: dict[str, Any]) -> str:
    """The version of the run's SID assignment (``sids.parquet``'s ``sid_version``), or "unversioned"."""
    version = prov["sids"].get("sid_version")
    return str(version.get("name")) if isinstance(version, dict) and version.get("name") else "unversioned"


def _repo_link(repo: str | None, kind: str) -> str:
    """A link to a Hub repo, or (account unknown until `export --push-to-hub`) the run folder's own folder."""
    if repo is None:
        folder = "model/" if kind == "model" else "dataset/"
        return f"`{folder}` in the run folder (on the Hub after `movielens-sids export --push-to-hub`)"
    return f"[{repo}](https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo})"


def _load_line(dataset_repo: str | None) -> str:
    if dataset_repo is None:
        return 'ds = load_dataset("parquet", data_dir="dataset")["train"]     # this folder; on the Hub: its repo id'
    return f'ds = load_dataset("{dataset_repo}", split="train")         # or: "parquet", data_dir="dataset"'


def dataset_card(table, prov: dict[str, Any], *, model_repo: str | None, pretty_name: str, n_shards: int,
                 dataset_repo: str | None = None, configs: list[tuple[str, Any, dict[str, int]]] = ()) -> str:
    """The dataset card: YAML front matter (license, configs, features) + what, how, metrics, citation.
    A repo id is ``None`` while its Hub account is unknown (the card then points at the run folder).
    ``configs``: more configs beside the movies, as (folder name, schema, rows per split)."""
    n = table.num_rows
    field = table.schema.field("embedding").type
    dim = field.list_size if hasattr(field, "list_size") else "D"
    columns = "\n".join(f"| `{c}` | `{table.schema.field(c).type}` | {COLUMN_DOCS.get(c, 'Enrichment column.')} |"
                        for c in table.column_names)
    return f"""---
{_yaml(_dataset_front_matter(table, pretty_name, configs))}
---

# {pretty_name}

Every movie of the MovieLens catalog with its text embedding and a **Semantic ID** (SID): a short
tuple of discrete tokens such that movies with similar content share prefixes, as used by
generative retrieval recommenders (TIGER, Rajput et al. 2023). {n:,} movies, {n_shards} Parquet
shard(s), one `train` split. The tokenizer that made the SIDs: {_repo_link(model_repo, "model")}.

```python
from datasets import load_dataset

{_load_line(dataset_repo)}
ds[0]["sid"]                                                    # e.g. '<a_12><b_201><c_7>'
```

## Columns

| column | type | meaning |
| --- | --- | --- |
{columns}

{_how_it_was_made(prov, dim)}
## Metrics

From the run's evaluation report (`report.json`), measured on the whole catalog:

{_metrics_md(prov['report'])}
{_dataset_license()}"""


def _dataset_front_matter(table, pretty_name: str, configs: list[tuple[str, Any, dict[str, int]]] = ()
                          ) -> dict[str, Any]:
    """The card's YAML header: license, tags, size category, the `train` split and its features; each of
    ``configs`` (folder name, schema, rows per split) is a config of its own, the movies staying the default."""
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
    for name, _, rows in configs:
        front["configs"].append({"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}-*"}
                                                                     for split in rows]})
    infos = [{"config_name": name, "features": _features_yaml(schema),
              "splits": [{"name": split, "num_examples": k} for split, k in rows.items()]}
             for name, schema, rows in configs]
    if infos and features is not None and all(i["features"] is not None for i in infos):
        front["dataset_info"] = [{"config_name": "default", **front["dataset_info"]}, *infos]
    return front


def _how_it_was_made(prov: dict[str, Any], dim: Any) -> str:
    """The four steps from MovieLens files to unique SIDs, and the export's settings and statistics."""
    emb_meta, sid_meta, model = prov["embeddings"], prov["sids"], prov["model"]
    mcfg = model.get("config") or {}
    assign = sid_meta.get("assign") or {}
    stats = sid_meta.get("assign_stats") or {}
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
        "SID version": sid_version_name(prov),
        "dedup statistics": stats,
    }
    return f"""## How it was made

1. **Catalog**: MovieLens `movies.csv` (+ links and tags when the release has them), titles and years parsed.
2. **Embeddings**: one text document per movie, embedded with `{emb_meta.get('model', '?')}` ({dim}-d).
3. **Tokenizer**: {TOKENIZER_NAMES.get(model.get('tokenizer'), 'a tokenizer')} with {levels} levels x {k} codes
   (encoder -> residual quantizer -> decoder), trained on these embeddings.
4. **Semantic IDs**: greedy residual codes for every movie; then, for uniqueness ({strategy}): {dedup}.
   {stats.get('n_collided_before', '?')} movies collided before dedup, {stats.get('n_moved', 0)} were moved,
   {stats.get('n_suffixed', 0)} needed a collision token; every SID is unique.
   **SID version `{sid_version_name(prov)}`** (a counter that grows each time a movie's SID changes, and a
   hash of the movie -> SID mapping): a model trained on these SIDs should record it.

Settings and statistics of this export:

```yaml
{_yaml(settings)}
```
"""


def _dataset_license() -> str:
    """The MovieLens terms the data is shared under, and the citation they ask for."""
    return f"""## License and citation

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


def encoder_words(kind: str, mcfg: dict[str, Any]) -> str:
    """What the tokenizer is, in words, as its ``config.json`` says (encoder: mlp, residual or identity)."""
    if kind != "rqvae":
        return "residual k-means (centroids fitted level by level on the raw embeddings)"
    hidden = "-".join(str(h) for h in mcfg.get("hidden_dims") or [])
    encoder = {
        "mlp": f"MLP encoder ({mcfg.get('input_dim', 'D')} -> {hidden or '...'} -> {mcfg.get('latent_dim', 'H')}) "
               "-> residual vector quantizer -> MLP decoder",
        "residual": f"residual encoder (x + MLP(x), hidden {hidden or '...'}, width {mcfg.get('input_dim', 'D')}; "
                    "it starts as the identity) -> residual vector quantizer -> decoder",
        "identity": "no encoder (the raw embedding) -> residual vector quantizer -> decoder",
    }.get(str(mcfg.get("encoder")), f"{mcfg.get('encoder', '?')} encoder -> residual vector quantizer -> decoder")
    return f"an RQ-VAE: {encoder} (Lee et al. 2022; TIGER, Rajput et al. 2023)"


def use_section(prov: dict[str, Any], *, model_repo: str | None, dataset_repo: str | None, revision: str) -> str:
    """The model card's "Use": a movie's real SID (read, after dedup) and a new text's raw codes (computed)."""
    stats = (prov["sids"].get("assign_stats") or {})
    n, moved = stats.get("n_movies"), int(stats.get("n_moved", 0) or 0) + int(stats.get("n_suffixed", 0) or 0)
    share = f"{moved:,} of {n:,} movies ({moved / n:.1%})" if n else "some movies"
    source = json.dumps(model_repo or str(prov.get("run_dir") or "runs/demo"))  # the Hub repo, or the run folder
    mcfg = prov["model"].get("config") or {}
    dim = mcfg.get("input_dim", "D")
    what = "float32 embeddings"
    if mcfg.get("collab_dim"):  # a tokenizer of both signals (model.collab_input): collab.fused_input's rows
        what = (f"rows of [embedding, {mcfg.get('collab_input')} x collaborative vector] "
                "(movielens_sids.collab.fused_input)")
    example = prov.get("example") or "Toy Story (1995)"
    return f"""## Use

A movie's Semantic ID is **read, not recomputed**: two movies whose embeddings fall on the same code
path cannot share an ID, so {share} were moved to the nearest free code path (or given a collision
token) when the IDs were made unique. Their codes from the tokenizer are not their SIDs.

```python
from movielens_sids import SemanticIds     # pip install movielens-sids

sids = SemanticIds.from_pretrained({source})
sid = sids.sid_of({json.dumps(example)})   # its SID as assigned, after dedup (a movie_id works too)
sids.movies_under(sid[:sid.index(">") + 1])  # a DataFrame: the movies under its first token
sids.encode(["A new movie about ..."])     # a new text -> the SID of its raw codes (before dedup)
```

Without this package: the `sid` column of the dataset, {_repo_link(dataset_repo, "dataset")}, holds
every movie's real SID. The tokenizer alone gives raw codes:

```python
import torch
from huggingface_hub import snapshot_download
from movielens_sids.model import load_tokenizer

tok = load_tokenizer({f'snapshot_download("{model_repo}", revision="{revision}")' if model_repo
                      else json.dumps(str(prov.get("run_dir") or "runs/demo") + "/model")})
codes = tok.quantize(tok.encode(x))   # x: (B, {dim}) {what} -> (B, L) raw codes, before dedup
x_hat = tok.decode_codes(codes)       # (B, {dim}) reconstruction
```

A unique SID for a new movie: add it to the catalog and run `movielens-sids assign --incremental`.
"""


def model_card(prov: dict[str, Any], *, model_repo: str | None, dataset_repo: str | None, revision: str) -> str:
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
    }
    if dataset_repo:
        front["datasets"] = [dataset_repo]
    metrics = prov["train_metrics"]
    metrics_md = f"```json\n{json.dumps(metrics, indent=2, sort_keys=True)}\n```\n" if metrics else \
        "No `train_metrics.json` in the model folder.\n"
    what = encoder_words(kind, mcfg)
    title = model_repo.split("/")[-1] if model_repo else "movielens-rqvae"
    return f"""---
{_yaml(front)}
---

# {title}

A Semantic ID tokenizer for MovieLens movies: {what}, {mcfg.get('levels', '?')} levels x
{mcfg.get('codebook_size', '?')} codes, trained on `{prov['embeddings'].get('model', '?')}` embeddings
({mcfg.get('input_dim', '?')}-d). It maps a movie's embedding to a tuple of codes such as `(12, 201, 7)`.
The SIDs it gives every movie, made unique, are in the dataset {_repo_link(dataset_repo, "dataset")}.

{use_section(prov, model_repo=model_repo, dataset_repo=dataset_repo, revision=revision)}
The weights are `model.safetensors` (no pickle); `config.json` holds the architecture.
The SIDs of this export are version `{sid_version_name(prov)}` of the assignment (see the dataset card).

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


def labels_card(labels: dict[tuple[int, ...], dict[str, Any]]) -> str:
    """The dataset card's section naming every first token (level-2 labels stay in ``labels.parquet``)."""
    first = [r for p, r in sorted(labels.items()) if len(p) == 1]
    n2 = sum(len(p) == 2 for p in labels)
    return ("\n## What the first tokens hold\n\nEach first SID token named from its movies: the genres and tags "
            "most over-represented under it (by lift over the catalog), the 10th-90th percentile of its years, "
            f"and the three titles nearest its mean embedding. The run folder's `{LABELS_FILE}` also names the "
            f"{n2:,} second-level prefixes.\n\n"
            + _md_table(["token", "movies", "label", "representative titles"],
                        [[f"`{r['sid_prefix']}`", r["n_movies"], r["label"], "; ".join(r["titles"])] for r in first]))


SEQUENCE_COLUMNS = [
    ("user_id", "int64", "MovieLens `userId`."),
    ("history", "list<int64>", "The movies the user rated before the target, oldest first (at most `max_history`, "
                               "the latest)."),
    ("history_sid", "list<string>", "Their SIDs, in the same order."),
    ("target", "int64", "The movie to predict (`movie_id`)."),
    ("target_sid", "string", "Its SID: what a generative recommender writes."),
    ("timestamp", "int64", "When the user rated the target (Unix seconds)."),
    ("cold", "bool", "The target has no training interaction (always false in `train`)."),
]


def _protocol_words(info: dict[str, Any]) -> str:
    """The split's protocol in a sentence, with its cut-offs."""
    if info.get("protocol") == "leave_one_out":
        return (f"**leave-one-out** (SASRec, HSTU): users with fewer than {info.get('min_ratings', '?')} ratings "
                "dropped; each user's last movie is a test event, the one before a validation event, the rest "
                "is training.")
    end = f", up to {info['test_end_utc']}" if info.get("test_end_utc") else ""
    return (f"**temporal** (a global time split): every rating at or after {info.get('cutoff_utc', '?')} (UTC){end} "
            f"is a test event, predicted from the user's history before it; ratings from "
            f"{info.get('valid_start_utc', '?')} up to the cut-off are validation events; training holds only "
            "ratings before those, so nothing from the validation or test period reaches a train row.")


def sequences_card(info: dict[str, Any], dataset_repo: str | None) -> str:
    """The dataset card's section on ``sequences/`` and ``instructions/``: format, protocol, counts."""
    splits = info["splits"]
    counts = _md_table(["split", "rows", "users", "cold targets"],
                       [[s, f"{c['rows']:,}", f"{c['users']:,}", f"{c['cold']:,}"] for s, c in splits.items()])
    columns = "\n".join(f"| `{c}` | `{t}` | {d} |" for c, t, d in SEQUENCE_COLUMNS)
    load = (f'load_dataset("{dataset_repo}", "sequences")  # or: "parquet", data_dir="dataset/sequences"'
            if dataset_repo else
            'load_dataset("parquet", data_dir="dataset/sequences")  # on the Hub: REPO, "sequences"')
    valid_total = info.get("n_valid_events_total")
    sample = (f" (a seeded sample of the {valid_total:,} validation events, as the benchmark watches)"
              if valid_total and valid_total > splits["validation"]["rows"] else "")
    return f"""
## Sequences: the benchmark's split, to train a recommender on

`sequences/` (config `sequences`) holds the split the run's retrieval benchmark scores, one row per
prediction: `test` holds exactly the events `movielens-sids retrieval` ranks, `validation` the events
its early stopping watches{sample}, and `train` every training rating that has an earlier one of its
user, predicted from the training ratings before it. No validation or test rating appears in a train
row. Only movies with a SID count ({info.get('n_movies', 0):,} movies, {info.get('n_users', 0):,} users);
a movie rated twice counts once.

Protocol: {_protocol_words(info)}

```python
from datasets import load_dataset

seq = {load}
seq["train"][0]["history_sid"], seq["train"][0]["target_sid"]
```

| column | type | meaning |
| --- | --- | --- |
{columns}

`history` holds at most {info.get('max_history')} movies, the latest, as the benchmark's models see them.

{counts}

`instructions/` (config `instructions`) holds the same rows as prompt/response pairs for language
models (LC-Rec, Zheng et al. 2024), columns `task`, `prompt`, `response`, `movie_id`: the task
`next_movie` (the next movie's SID from the SIDs of the latest movies; row i is row i of the
sequence split) in every split, and, in `train` only, `sid_to_title` and `title_to_sid` for every movie.
A model fine-tuned on them writes SIDs; `SemanticIds.extend_tokenizer`, `prefix_allowed_tokens_fn`
and `movies_in` of `movielens-sids` add the tokens, keep generation to SIDs that exist, and map them
back to movies.
"""
