"""The stage registry: what each stage reads, writes and depends on, and how it is run.

Every stage is a plain function ``fn(run_dir, cfg) -> dict`` that reads artifacts, calls pure
code and writes artifacts. ``execute`` wraps it with the run-folder lock, a timer and a record
(``.stages/<name>.json``: the content hashes of its inputs, its settings, the hashes of its
outputs and its time), which is how ``run`` knows that a stage is already up to date.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import file_hash, run_lock, write_json

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

RECORDS = ".stages"
MODEL_FILES = ["model/config.json", "model/model.safetensors"]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage."""

    name: str
    target: str
    """``module:function`` of the stage function ``fn(run_dir, cfg) -> dict``."""
    sections: tuple[str, ...]
    """Config sections whose values decide the stage's output."""
    inputs: tuple[str, ...] = ()
    """Run-folder files the stage reads (hashed to decide whether it is up to date)."""
    outputs: tuple[str, ...] = ()
    """Run-folder files or folders the stage writes."""
    external_inputs: Callable[[Config], list[Path]] | None = field(default=None, compare=False)
    """Files outside the run folder the stage reads (the MovieLens files, an --enrich or --from file)."""

    def function(self) -> Callable[[Path, Config], dict]:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)


def _catalog_inputs(cfg: Config) -> list[Path]:
    from .data.catalog import input_files

    return input_files(cfg.data)


def _embed_inputs(cfg: Config) -> list[Path]:
    return [Path(p) for p in (cfg.embed.from_file, cfg.embed.from_ids) if p]


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("catalog", "movielens_sids.data.catalog:catalog_stage", ("data",),
          outputs=("catalog.parquet",), external_inputs=_catalog_inputs),
    Stage("embed", "movielens_sids.embed:embed_stage", ("embed",),
          inputs=("catalog.parquet",), outputs=("embeddings.parquet",), external_inputs=_embed_inputs),
    Stage("train", "movielens_sids.train:train_stage", ("model", "train"),
          inputs=("embeddings.parquet",), outputs=tuple(MODEL_FILES)),
    Stage("assign", "movielens_sids.assign:assign_stage", ("assign",),
          inputs=("embeddings.parquet", *MODEL_FILES), outputs=("sids.parquet",)),
    Stage("evaluate", "movielens_sids.evaluate:evaluate_stage", ("evaluate",),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet", *MODEL_FILES),
          outputs=("report.json", "report.md", "labels.parquet")),
    Stage("export", "movielens_sids.export:export_stage", ("export",),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet", "report.json", *MODEL_FILES),
          outputs=("dataset",)),
    Stage("visualize", "movielens_sids.visualize:visualize_stage", ("visualize",),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet"), outputs=("visualization.html",)),
]}
ORDER = list(STAGES)


def _settings(stage: Stage, cfg: Config) -> dict[str, Any]:
    """The settings that decide a stage's output; a section's ``RUNTIME_FIELDS`` (device, batch size,
    dry-run, ...) change how a stage runs, not what it writes, and are left out."""
    out = {}
    for s in stage.sections:
        section = getattr(cfg, s)
        skip = getattr(type(section), "RUNTIME_FIELDS", frozenset())
        out[s] = {k: v for k, v in dataclasses.asdict(section).items() if k not in skip}
    return out


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _hash(p: Path) -> str | None:
    """Content hash of a file or folder, memoised per (path, size, mtime) for files within a process."""
    if not p.exists():
        return None
    if p.is_dir():
        return file_hash(p)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = file_hash(p)
    return _HASH_MEMO[key]


def _hashes(run_dir: Path, names: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    return {n: _hash(run_dir / n) for n in names}


def _external_hashes(stage: Stage, cfg: Config) -> dict[str, str | None]:
    if stage.external_inputs is None:
        return {}
    return {str(p): _hash(Path(p)) for p in stage.external_inputs(cfg)}


def read_record(run_dir: Path, name: str) -> dict[str, Any] | None:
    p = Path(run_dir) / RECORDS / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def why_stale(name: str, cfg: Config, run_dir: Path) -> str | None:
    """``None`` when the stage's outputs are up to date with its inputs and settings, else the reason."""
    stage = STAGES[name]
    rec = read_record(run_dir, name)
    if rec is None:
        return "never ran"
    if rec.get("settings") != json.loads(json.dumps(_settings(stage, cfg), default=str)):
        return "settings changed"
    if rec.get("inputs") != _hashes(run_dir, stage.inputs):
        return "inputs changed"
    if rec.get("external_inputs") != _external_hashes(stage, cfg):
        return "source files changed"
    if rec.get("outputs") != _hashes(run_dir, stage.outputs):
        return "outputs missing or modified"
    return None


def execute(name: str, cfg: Config, run_dir: Path, *, lock: bool = True) -> dict[str, Any]:
    """Run one stage under the run-folder lock and record what it read, wrote and took.

    Returns:
        The stage function's result dict, plus ``seconds``.
    """
    stage = STAGES[name]
    run_dir = Path(run_dir)
    if lock:
        with run_lock(run_dir):
            return execute(name, cfg, run_dir, lock=False)
    t0 = time.perf_counter()
    result = stage.function()(run_dir, cfg) or {}
    seconds = time.perf_counter() - t0
    record = {
        "stage": name,
        "settings": _settings(stage, cfg),
        "inputs": _hashes(run_dir, stage.inputs),
        "external_inputs": _external_hashes(stage, cfg),
        "outputs": _hashes(run_dir, stage.outputs),
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": result,
    }
    write_json(run_dir / RECORDS / f"{name}.json", record)
    log.info("%s done in %.1fs", name, seconds)
    return {**result, "seconds": seconds}


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """The recorded wall time of every stage that has run in ``run_dir``."""
    out = {}
    for name in ORDER:
        rec = read_record(run_dir, name)
        if rec is not None:
            out[name] = rec.get("seconds")
    return out
