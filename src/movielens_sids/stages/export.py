"""The `export` stage: the enriched dataset (Parquet shards + dataset card), the model card, the Hub.

``dataset/`` holds ``data/train-0000i-of-0000n.parquet`` shards (every catalog column, then
``embedding``, ``semantic_id``, ``sid``) and a ``README.md`` dataset card with YAML front matter,
the layout the Hub and ``datasets.load_dataset("parquet", data_dir=...)`` read. It is written as
a whole (``atomic_dir``). ``model/README.md`` is the model card; the weights are not touched.

``--push-to-hub`` then uploads ``model/`` (config, weights, card, train metrics) and ``dataset/``
to two repos, one commit each, tagged with the experiment name (see `movielens_sids.hub`);
``--dry-run`` lists what would be uploaded. Smoke runs (a catalog built with ``--limit``) go to
repos suffixed ``-smoke-test`` so they never overwrite the real ones.

May import: artifacts, hub, io, errors, settings, reports.cards. Never another stage.
"""

from __future__ import annotations

import json
import logging
import math
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
from ..reports.cards import dataset_card, dataset_name, labels_card, model_card
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
    return pa.table(cols).combine_chunks()


def write_shards(table, folder: Path, *, shard_size_mb: int) -> list[Path]:
    """Write ``data/train-0000i-of-0000n.parquet`` shards of about ``shard_size_mb`` each."""
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


def _is_smoke(run_dir: Path, cfg: Config) -> bool:
    """A run on a `--limit` catalog (its metadata says so, or the setting does)."""
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
    run_dir = Path(run_dir)
    ecfg: ExportConfig = cfg.export
    require_model(run_dir)
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

    pretty = f"MovieLens {dataset_name(prov)} Semantic IDs ({cfg.experiment})"
    with atomic_dir(run_dir / "dataset") as tmp:
        shards = write_shards(table, tmp, shard_size_mb=ecfg.shard_size_mb)
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

