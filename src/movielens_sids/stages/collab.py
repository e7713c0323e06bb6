"""The collab stage: the ratings' training interactions -> ``collab.parquet`` and ``cowatch.parquet``.

With ``collab.method: als`` and ratings (``retrieval.ratings``, else the dataset's own), builds the
benchmark's split (``retrieval.sequences.split_of`` with the run's ``retrieval.*`` settings: the same
split ``movielens-sids retrieval`` scores on, its earliest fold with ``retrieval.folds``) and, from its
training interactions only:

- ``collab.parquet``: an ALS vector per catalog movie (zeros for a movie nobody rated in training),
  its training interaction count, and in its metadata the split and its ``train_fingerprint``, which
  the benchmark checks before scoring SIDs built from these vectors;
- ``cowatch.parquet``: the ``collab.cowatch_pairs`` most co-watched movie pairs (for ``co_watch``).

Otherwise (``none``, or no ratings) the run is content only: the stage removes both files if an
earlier setting left them, so that no later stage reads stale vectors.

May import: artifacts, collab, data.catalog, retrieval.sequences, io, settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .. import collab
from ..artifacts import COLLAB, COWATCH, read_catalog
from ..data.catalog import benchmark_ratings
from ..io import write_parquet
from ..retrieval.sequences import split_of, train_fingerprint
from ..settings import decisive

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


def collab_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Write ``collab.parquet`` and ``cowatch.parquet`` for ``run_dir``'s catalog (or remove them: content only)."""
    run_dir = Path(run_dir)
    ratings = None
    if cfg.collab.method != "none":
        _, ratings = benchmark_ratings(cfg.data, cfg.retrieval.ratings, cfg.retrieval.dataset)
    if ratings is None:
        for name in (COLLAB, COWATCH):
            (run_dir / name).unlink(missing_ok=True)
        reason = "collab.method is none" if cfg.collab.method == "none" else "the dataset has no ratings"
        log.info("content only (%s): no collaborative vectors", reason)
        return {"method": "none", "reason": reason}
    t0 = time.perf_counter()
    ids = read_catalog(run_dir).column("movie_id").to_numpy().astype(np.int64)
    split = split_of(ratings, ids, cfg.retrieval)
    x = collab.interaction_matrix(split.train, len(split.movie_ids))  # (U, N) training interactions only
    c = cfg.collab
    vectors = collab.als_vectors(x, factors=c.factors, regularization=c.regularization, iterations=c.iterations,
                                 alpha=c.alpha, seed=c.seed, threads=c.threads)  # (N, F)
    counts = np.asarray(x.sum(0)).ravel().astype(np.int64)
    info = {k: split.info[k] for k in ("protocol", "cutoff", "valid_start", "min_ratings", "n_train_interactions")
            if k in split.info}
    info.update(train_fingerprint=train_fingerprint(split), n_users=int(len(split.users)))
    meta = {"split": json.dumps(info), "collab": json.dumps(decisive(c))}
    table = pa.table({"movie_id": split.movie_ids,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
                      "n_train": counts})
    a, b, users = collab.top_cowatch_pairs(x, c.cowatch_pairs)
    pairs = pa.table({"movie_a": split.movie_ids[a], "movie_b": split.movie_ids[b], "users": users})
    write_parquet(run_dir / COLLAB, table, metadata=meta, vectors="vector")
    write_parquet(run_dir / COWATCH, pairs, metadata={"split": json.dumps(info)})
    warm = int((counts > 0).sum())
    log.info("collab: ALS vectors of %d movies (%d with training ratings) from %d interactions in %.1fs",
             len(ids), warm, info["n_train_interactions"], time.perf_counter() - t0)
    return {"method": c.method, "movies_with_ratings": warm, "train_interactions": info["n_train_interactions"],
            "cowatch_pairs": int(len(users))}
