"""What a fault test checks in a run folder: shared by ``robustness/test_faults.py`` and ``stress_faults.py``.

``snapshot`` hashes every artifact under its final name, ``owned`` says which files a stage may
change, ``validate`` parses every artifact (Parquet, JSON, safetensors, dataset shards, Lightning
checkpoints, the embedding chunk cache) and lists what does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PREVIOUS = {"embed": "catalog", "train": "embed", "assign": "train", "evaluate": "assign", "export": "evaluate"}
"""The stage whose artifacts a stage reads (the snapshot a trial starts from)."""
OWN = {  # what a stage writes (besides its record in .stages/): may differ after a kill
    "catalog": ["catalog.parquet"],
    "embed": ["embeddings.parquet", ".embed-cache"],
    "collab": ["collab.parquet", "cowatch.parquet"],
    "train": ["model", ".train"],
    "assign": ["sids.parquet", "sids.previous.parquet", "sid_changes.parquet"],
    "evaluate": ["report.json", "report.md", "report-", "labels.parquet", ".cache"],
    "export": ["dataset", "model/README.md", "report.md"],  # report.md: the timings table gains a row
}
SHARED = ("config.yaml", "report.md")
"""Written by several stages (the folder's settings; the page with every stage's time): a stage may change
them, and the folder after the last stage holds later stages' part too, so they are not compared bit for bit."""
SCRATCH = (".lock", ".cache")
"""Not artifacts: the lock file and library caches."""


def is_tmp(rel: str) -> bool:
    return any(part.startswith(".tmp-") for part in rel.split("/"))


def snapshot(run_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under its final name (temporary files and the lock left out)."""
    from movielens_sids.io import file_hash

    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not is_tmp(rel) and not rel.startswith(SCRATCH):
            out[rel] = file_hash(p)
    return out


def owned(stage: str, rel: str) -> bool:
    if rel in (f".stages/{stage}.json", "config.yaml"):  # every stage keeps the settings it ran with there
        return True
    return any(rel == o or rel.startswith(o if o.endswith("-") else o + "/") for o in OWN[stage])


def validate(run_dir: Path) -> list[str]:
    """Every artifact under its final name parses; returns the problems found."""
    import pyarrow.parquet as pq
    import torch

    from movielens_sids.model import load_tokenizer

    problems: list[str] = []

    def check(what: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # any failure to parse is a corrupt artifact
            problems.append(f"{what}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")

    for name in ("catalog.parquet", "embeddings.parquet", "sids.parquet"):
        if (run_dir / name).exists():
            check(name, lambda n=name: pq.read_table(run_dir / n))
    for p in sorted(run_dir.rglob("*.json")):
        rel = p.relative_to(run_dir).as_posix()
        if not is_tmp(rel) and not rel.startswith(SCRATCH):
            check(rel, lambda p=p: json.loads(p.read_text(encoding="utf-8")))
    model = run_dir / "model"
    if model.exists():
        have = [(model / f).is_file() for f in ("config.json", "model.safetensors")]
        if not all(have):
            problems.append(f"model/ is incomplete (config.json, model.safetensors present: {have})")
        else:
            check("model/", lambda: load_tokenizer(model))
    dataset = run_dir / "dataset"
    if dataset.exists():
        shards = sorted((dataset / "data").glob("*.parquet"))
        if not shards or not (dataset / "README.md").is_file():
            problems.append("dataset/ is incomplete (no shard or no README.md)")
        for s in shards:
            check(f"dataset/{s.name}", lambda s=s: pq.read_table(s))
    for ckpt in sorted(run_dir.glob(".train/checkpoints/*.ckpt")):
        if not is_tmp(ckpt.name):
            check(f".train/checkpoints/{ckpt.name}",
                  lambda c=ckpt: torch.load(c, map_location="cpu", weights_only=True))
    for chunk in sorted(run_dir.glob(".embed-cache/*/*.npz")):
        if not is_tmp(chunk.name):
            check(f".embed-cache/{chunk.name}", lambda c=chunk: dict(np.load(c, allow_pickle=False)))
    return problems


def tiny_inputs(tmp: Path, n: int) -> Path:
    """A MovieLens folder of ``n`` films and their clustered 8-d vectors (``tmp/v.npy``, ``tmp/ids.npy``, for
    ``embed --from``); returns the folder."""
    from movielens_fixtures import write_movielens

    rng = np.random.default_rng(0)
    movies = [(i, f"Film {i} ({1950 + i})", "Drama|Comedy" if i % 2 else "Action") for i in range(1, n + 1)]
    src = write_movielens(tmp / "ml", movies=movies)
    centres = rng.normal(size=(5, 8))
    x = (centres[rng.integers(0, 5, n)] + 0.2 * rng.normal(size=(n, 8))).astype(np.float32)
    np.save(tmp / "v.npy", x)
    np.save(tmp / "ids.npy", np.arange(1, n + 1))
    return src
