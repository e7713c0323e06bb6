"""The `export` stage: the enriched dataset (Parquet shards + dataset card), the model card, the Hub.

``dataset/`` holds ``data/train-0000i-of-0000n.parquet`` shards (every catalog column, then
``embedding``, ``semantic_id``, ``sid``) and a ``README.md`` dataset card with YAML front matter,
the layout the Hub and ``datasets.load_dataset("parquet", data_dir=...)`` read. When the dataset has
ratings (``export.sequences``), ``sequences/`` and ``instructions/`` hold the benchmark's split as
training data (``movielens_sids.sequence_data``), shards named ``{split}-0000i-of-0000n.parquet`` for
the splits train, validation and test: ``load_dataset("parquet", data_dir="dataset/sequences")``
reads them, while ``data_dir="dataset"`` still reads only ``data/`` (``datasets`` takes the
``data/{split}-*`` shards first), and the card declares each folder as a config of its own.
It is written as a whole (``atomic_dir``). ``model/README.md`` is the model card; the weights are not touched.

``--push-to-hub`` then uploads ``model/`` (config, weights, card, train metrics) and ``dataset/``
to two repos, one commit each, tagged with the experiment name (see `movielens_sids.hub`);
``--dry-run`` lists what would be uploaded and writes nothing in the run folder. Smoke runs (a catalog
built with ``--limit``) go to repos suffixed ``-smoke-test`` so they never overwrite the real ones.

May import: artifacts, hub, io, errors, settings, sequence_data, reports.cards. Never another stage.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .. import hub
from ..artifacts import (
    CATALOG,
    EMBEDDINGS,
    SIDS,
    check_recorded,
    check_same_movies,
    decoded_metadata,
    read_catalog,
    require_columns,
    require_model,
    sorted_by_id,
)
from ..errors import SidsError
from ..io import atomic_dir, parquet_metadata, read_parquet, write_parquet, write_text
from ..labels import labels_for_run
from ..reports.cards import dataset_card, dataset_name, labels_card, model_card, sequences_card
from ..sequence_data import SPLITS, SequenceData, benchmark_ratings, instruction_data, sequence_data
from ..settings import ExportConfig

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- dataset


def dataset_table(run_dir: Path) -> pa.Table:
    """Catalog + embedding + semantic_id + sid, one row per movie, sorted by movie_id (validated)."""
    run_dir = Path(run_dir)
    cat = read_catalog(run_dir)
    check_recorded(run_dir, EMBEDDINGS)
    check_recorded(run_dir, SIDS)
    emb = sorted_by_id(read_parquet(run_dir / EMBEDDINGS, "embed"))
    sids = sorted_by_id(read_parquet(run_dir / SIDS, "assign"))
    require_columns(emb, run_dir / EMBEDDINGS, ("movie_id", "embedding"), "embed")
    require_columns(sids, run_dir / SIDS, ("movie_id", "semantic_id", "sid"), "assign")
    ids = cat.column("movie_id").to_numpy()
    check_same_movies(ids, run_dir / CATALOG, emb.column("movie_id").to_numpy(), run_dir / EMBEDDINGS, "embed")
    check_same_movies(ids, run_dir / CATALOG, sids.column("movie_id").to_numpy(), run_dir / SIDS, "assign")
    cols = {c: cat.column(c) for c in cat.column_names}
    cols["embedding"] = emb.column("embedding")
    cols["semantic_id"] = sids.column("semantic_id")
    cols["sid"] = sids.column("sid")
    return pa.table(cols, metadata={SHARD_METADATA: json.dumps(shard_metadata(run_dir))}).combine_chunks()


SHARD_METADATA = "movielens_sids"
"""The shards' schema key holding how the vectors and the SIDs were made (``SemanticIds.from_pretrained``)."""


def shard_metadata(run_dir: Path) -> dict[str, Any]:
    """The embedding model and settings (``embeddings.parquet``'s metadata, without the per-document hashes)
    and the SIDs' shape (``sids.parquet``'s ``assign``), so that the dataset alone can embed new text."""
    emb = decoded_metadata(run_dir / EMBEDDINGS)
    keep = ("model", "dimension", "normalized", "template", "max_tags")
    return {"embeddings": {k: emb[k] for k in keep if k in emb},
            "assign": decoded_metadata(run_dir / SIDS).get("assign") or {}}


def write_shards(table, folder: Path, *, shard_size_mb: int, name: str = "data/train") -> list[Path]:
    """Write ``{name}-0000i-of-0000n.parquet`` shards (default ``data/train-...``) of about ``shard_size_mb`` each."""
    n = table.num_rows
    per_row = max(1, table.nbytes // max(n, 1))
    rows = max(1, (shard_size_mb * 1_000_000) // per_row)
    n_shards = max(1, math.ceil(n / rows))
    rows = math.ceil(n / n_shards)  # even shards
    out = []
    for i in range(n_shards):
        p = folder / f"{name}-{i:05d}-of-{n_shards:05d}.parquet"
        write_parquet(p, table.slice(i * rows, rows))
        out.append(p)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _provenance(run_dir: Path) -> dict[str, Any]:
    """How the run was made, read from its artifacts (the truth) rather than from today's settings."""
    def meta(name: str) -> dict[str, Any]:
        return decoded_metadata(run_dir / name) if (run_dir / name).exists() else {}

    model_cfg = _read_json(run_dir / "model" / "config.json") or {}
    return {"catalog": meta("catalog.parquet"), "embeddings": meta("embeddings.parquet"),
            "sids": meta("sids.parquet"), "model": model_cfg,
            "train_metrics": _read_json(run_dir / "model" / "train_metrics.json"),
            "report": _read_json(run_dir / "report.json")}


def _example(table: pa.Table) -> str:
    """A movie of the catalog for the cards' snippets, as ``lookup`` names it: Toy Story when it is there."""
    ids = table.column("movie_id").to_pylist()
    row = ids.index(1) if 1 in ids else 0
    title = (table.column("display_title") if "display_title" in table.column_names else table.column("title"))[row]
    year = table.column("year")[row].as_py() if "year" in table.column_names else None
    return f"{title.as_py()} ({year})" if year is not None else str(title.as_py())


def _is_smoke(run_dir: Path, cfg: Config) -> bool:
    """A run on a `--limit` catalog (its metadata says so, or the setting does)."""
    if cfg.data.limit is not None:
        return True
    try:
        summary = json.loads(parquet_metadata(run_dir / "catalog.parquet").get("summary", "{}"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("limit") is not None



def repo_ids(run_dir: Path, cfg: Config, user: str | None) -> tuple[str | None, str | None]:
    """(model repo, dataset repo): the settings, or ``{user}/movielens-rqvae`` and ``{user}/movielens-sids``;
    smoke runs get ``-smoke-test`` appended so they never overwrite the real repos. A repo whose account is
    unknown (no ``user``, and the setting names none) is ``None``."""
    ecfg: ExportConfig = cfg.export
    suffix = "-smoke-test" if _is_smoke(run_dir, cfg) else ""

    def full(name: str | None, default: str) -> str | None:
        rid = name or default
        if "/" not in rid:
            if user is None:
                return None
            rid = f"{user}/{rid}"
        return rid if rid.endswith(suffix) else rid + suffix

    return full(ecfg.model_repo, "movielens-rqvae"), full(ecfg.dataset_repo, "movielens-sids")


def _account(run_dir: Path, ecfg: ExportConfig) -> tuple[str | None, str, str | None]:
    """(token, where it came from, account name or None): the account is asked of the Hub only for a push,
    or for a dry run that has a token and needs the name."""
    if not (ecfg.push_to_hub or ecfg.dry_run):
        return None, "", None
    token, where = hub.resolve_token([run_dir])
    if ecfg.push_to_hub and not ecfg.dry_run:
        if token is None:
            raise SidsError("no Hugging Face token: set HF_TOKEN, put HF_TOKEN=... in a .env file, or run "
                            "`hf auth login`; or use --dry-run to see what would be uploaded")
        return token, where, hub.hub_user(token, where)  # checks the network and the token before any write
    named = ecfg.model_repo and "/" in ecfg.model_repo and ecfg.dataset_repo and "/" in ecfg.dataset_repo
    if token is not None and not named:
        try:
            return token, where, hub.hub_user(token, where)
        except SidsError as e:
            log.info("dry run: account name unknown (%s)", e)
    return token, where, None


TrainingData = tuple[SequenceData, dict[str, pa.Table]]
"""The sequence rows and the instruction pairs of each split."""


def training_data(run_dir: Path, cfg: Config) -> TrainingData | None:
    """The benchmark's split as sequence rows and instruction pairs, or None (``export.sequences`` is never,
    or auto and the dataset has no ratings)."""
    mode = cfg.export.sequences
    if mode == "never":
        return None
    ratings = benchmark_ratings(cfg)
    if ratings is None:
        source = cfg.retrieval.dataset or cfg.data.source or cfg.data.dataset
        if mode == "always":
            raise SidsError(f"{source} has no ratings file, and the sequence datasets need one (--sequences always):"
                            " name one with --set retrieval.ratings=FILE, or pass --sequences auto or never")
        log.info("no sequence datasets: %s has no ratings file", source)
        return None
    data = sequence_data(run_dir, cfg, ratings)
    return data, instruction_data(data, run_dir, cfg.export.prompt_history)


def _training_configs(training: TrainingData | None) -> list[tuple[str, Any, dict[str, int]]]:
    """(config name, schema, rows per split) of the sequence and instruction folders, for the card."""
    if training is None:
        return []
    data, pairs = training
    return [(folder, tables["train"].schema, {s: tables[s].num_rows for s in SPLITS})
            for folder, tables in (("sequences", data.tables), ("instructions", pairs))]


def _write_training(folder: Path, training: TrainingData | None, shard_size_mb: int) -> None:
    """``sequences/{split}-*.parquet`` and ``instructions/{split}-*.parquet`` (nothing without training data)."""
    if training is None:
        return
    data, pairs = training
    for name, tables in (("sequences", data.tables), ("instructions", pairs)):
        for split in SPLITS:
            write_shards(tables[split], folder, shard_size_mb=shard_size_mb, name=f"{name}/{split}")


def _write_outputs(run_dir: Path, dest: Path, cfg: Config, table: pa.Table, prov: dict[str, Any],
                   repos: tuple[str | None, str | None], revision: str, training: TrainingData | None = None) -> int:
    """Write ``dest/dataset/`` and ``dest/model/README.md`` (dest: the run folder, or a dry run's scratch
    folder); returns the number of shards."""
    pretty = f"MovieLens {dataset_name(prov)} Semantic IDs ({cfg.experiment})"
    with atomic_dir(dest / "dataset") as tmp:
        shards = write_shards(table, tmp, shard_size_mb=cfg.export.shard_size_mb)
        _write_training(tmp, training, cfg.export.shard_size_mb)
        write_text(tmp / "README.md", dataset_card(table, prov, model_repo=repos[0], pretty_name=pretty,
                                                   n_shards=len(shards), dataset_repo=repos[1],
                                                   configs=_training_configs(training))
                   + (sequences_card(training[0].info, repos[1]) if training else "")
                   + labels_card(labels_for_run(run_dir)))
    write_text(dest / "model" / "README.md",
               model_card(prov, model_repo=repos[0], dataset_repo=repos[1], revision=revision))
    return len(shards)


def _dry_run(run_dir: Path, cfg: Config, table: pa.Table, prov: dict[str, Any],
             repos: tuple[str | None, str | None], revision: str, training: TrainingData | None) -> dict[str, Any]:
    """What a push would upload, built in a scratch folder: the run folder is left as it is."""
    shown = (repos[0] or f"{hub.PLACEHOLDER_USER}/movielens-rqvae",
             repos[1] or f"{hub.PLACEHOLDER_USER}/movielens-sids")
    with tempfile.TemporaryDirectory(prefix="movielens-sids-dry-run-") as scratch:
        dest = Path(scratch)
        (dest / "model").mkdir()
        for name in hub.MODEL_FILES:  # the weights and config as they are; the card as export would write it
            if name != "README.md" and (run_dir / "model" / name).is_file():
                (dest / "model" / name).symlink_to((run_dir / "model" / name).resolve())
        shards = _write_outputs(run_dir, dest, cfg, table, prov, repos, revision, training)
        uploads = hub.plan_uploads(dest, model_repo=shown[0], dataset_repo=shown[1])
        listing = hub.format_plan(uploads, revision=revision, private=cfg.export.private)
        plan = json.loads(json.dumps([u.describe() for u in uploads]).replace(str(dest), str(run_dir)))
    return {"rows": table.num_rows, "columns": table.column_names, "shards": shards, "dry_run": True,
            "upload_plan": plan, "upload_listing": listing.replace(str(dest), str(run_dir))}


def export_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Write ``dataset/`` and ``model/README.md``; with ``push_to_hub``, upload them. A dry run writes
    nothing: it lists what a push would upload (built in a scratch folder).

    Returns:
        A summary: rows, shards, files; ``upload_plan`` (dry run) or ``uploaded`` (push).
    """
    run_dir = Path(run_dir)
    ecfg: ExportConfig = cfg.export
    require_model(run_dir)
    table = dataset_table(run_dir)  # validates every input before anything is written
    training = training_data(run_dir, cfg)  # and the ratings' split, when the dataset has ratings
    # the snippets' movie and run folder (the experiment's default folder: the same card wherever the run is)
    prov = {**_provenance(run_dir), "example": _example(table), "run_dir": f"runs/{cfg.experiment}"}
    revision = ecfg.revision or cfg.experiment
    token, where, user = _account(run_dir, ecfg)
    repos = repo_ids(run_dir, cfg, user)
    if ecfg.dry_run:
        result = _dry_run(run_dir, cfg, table, prov, repos, revision, training)
        log.info("dry run: nothing written, nothing uploaded (token: %s)", f"found in {where}" if token else
                 "none found")
        return result
    shards = _write_outputs(run_dir, run_dir, cfg, table, prov, repos, revision, training)
    result: dict[str, Any] = {"rows": table.num_rows, "columns": table.column_names, "shards": shards}
    log.info("dataset/: %d movies in %d shard(s), %d columns", table.num_rows, shards, table.num_columns)
    if training is not None:
        result["sequences"] = {s: training[0].tables[s].num_rows for s in SPLITS}
        result["instructions"] = {s: training[1][s].num_rows for s in SPLITS}
        log.info("dataset/sequences/: %s rows (train, validation, test; %s split); dataset/instructions/: %s pairs",
                 ", ".join(f"{n:,}" for n in result["sequences"].values()), training[0].info.get("protocol"),
                 ", ".join(f"{n:,}" for n in result["instructions"].values()))
    if ecfg.push_to_hub:
        uploads = hub.plan_uploads(run_dir, model_repo=repos[0], dataset_repo=repos[1])
        result["uploaded"] = hub.push(uploads, token=token, where=where, private=ecfg.private,
                                      revision=revision, message=f"movielens-sids export ({cfg.experiment})")
    return result
