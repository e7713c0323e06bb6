"""The pipeline: the stage registry, freshness records, and ``run`` (every stage in order).

Every stage is a plain function ``fn(run_dir, cfg) -> dict`` (``movielens_sids.stages``) that reads
artifacts, calls pure code and writes artifacts. ``execute`` wraps it with the run-folder lock, a
timer and a record (``.stages/<name>.json``: the content hashes of its inputs, its settings, the
hashes of its outputs and its time). A stage is up to date when its record holds the same settings
and the same content hashes as now (``why_stale``): changing only the RQ-VAE settings therefore
re-trains and re-assigns but does not re-embed. An interrupted run started again skips finished
stages; embedding resumes from its last chunk and training from its last checkpoint (those stages
keep their own progress).

May import: settings, config (the run folder's settings file), io, errors, artifacts, data.catalog (the
catalog stage's source files), reports.markdown (report.md after a stage) and the stage modules. Only
``cli`` imports this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .artifacts import MODEL, MODEL_FILES, RECORDS, read_record
from .config import RUN_SETTINGS
from .data.catalog import input_files
from .errors import SidsError
from .io import file_hash, folder_digests, memo_hash, run_lock, write_json, write_text
from .reports.markdown import write_page
from .settings import decisive
from .stages import assign, catalog, collab, embed, evaluate, export, train, visualize

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Stage:
    """One pipeline stage."""

    name: str
    function: Callable[[Path, Config], dict] = field(compare=False)
    """The stage function ``fn(run_dir, cfg) -> dict``."""
    sections: tuple[str, ...]
    """Config sections whose values decide the stage's output."""
    inputs: tuple[str, ...] = ()
    """Run-folder files the stage reads (hashed to decide whether it is up to date)."""
    outputs: tuple[str, ...] = ()
    """Run-folder files or folders the stage writes (recorded as a sha256, or a folder's file -> sha256 map)."""
    external_inputs: Callable[[Config], list[Path]] | None = field(default=None, compare=False)
    """Files outside the run folder the stage reads (the MovieLens files, an --enrich or --from file)."""


def _catalog_inputs(cfg: Config) -> list[Path]:
    return input_files(cfg.data)


def _collab_inputs(cfg: Config) -> list[Path]:
    return input_files(cfg.data) + ([Path(cfg.retrieval.ratings)] if cfg.retrieval.ratings else [])


def _embed_inputs(cfg: Config) -> list[Path]:
    return [Path(p) for p in (cfg.embed.from_file, cfg.embed.from_ids) if p]


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("catalog", catalog.catalog_stage, ("data",),
          outputs=("catalog.parquet",), external_inputs=_catalog_inputs),
    Stage("embed", embed.embed_stage, ("embed",),
          inputs=("catalog.parquet",), outputs=("embeddings.parquet",), external_inputs=_embed_inputs),
    # The split's settings (retrieval.protocol, cut-offs) decide which interactions the vectors see.
    Stage("collab", collab.collab_stage, ("data", "collab", "retrieval"),
          inputs=("catalog.parquet",), outputs=("collab.parquet", "cowatch.parquet"),
          external_inputs=_collab_inputs),
    # joint training reads the training interactions that collab.parquet's split fingerprint stands for.
    Stage("train", train.train_stage, ("model", "train", "joint"),
          inputs=("embeddings.parquet", "collab.parquet"), outputs=(MODEL,)),
    Stage("assign", assign.assign_stage, ("assign",),
          inputs=("embeddings.parquet", "collab.parquet", *MODEL_FILES),
          outputs=("sids.parquet", "sids.previous.parquet", "sid_changes.parquet")),
    Stage("evaluate", evaluate.evaluate_stage, ("evaluate",),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet", "collab.parquet", "cowatch.parquet",
                  *MODEL_FILES),
          outputs=("report.json", "labels.parquet")),  # report.md is a page of the JSON reports (write_page)
    # dataset/sequences/ is the benchmark's split of the ratings: its settings and the ratings decide it too.
    Stage("export", export.export_stage, ("export", "data", "retrieval"),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet", "report.json", "collab.parquet",
                  *MODEL_FILES),
          outputs=("dataset", "model/README.md"), external_inputs=_collab_inputs),
    Stage("visualize", visualize.visualize_stage, ("visualize",),
          inputs=("catalog.parquet", "embeddings.parquet", "sids.parquet"), outputs=("visualization.html",)),
]}
ORDER = list(STAGES)


def _settings(stage: Stage, cfg: Config) -> dict[str, Any]:
    """The settings that decide a stage's output; a section's ``RUNTIME_FIELDS`` (device, batch size,
    dry-run, ...) change how a stage runs, not what it writes, and are left out."""
    return {s: decisive(getattr(cfg, s)) for s in stage.sections}


def _hash(p: Path) -> str | None:
    """Content hash of a file or folder, memoised per (path, inode, size, mtime) for files within a process."""
    if not p.exists():
        return None
    return file_hash(p) if p.is_dir() else memo_hash(p)


def _hashes(run_dir: Path, names: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    return {n: _hash(run_dir / n) for n in names}


def _output_hashes(run_dir: Path, stage: Stage) -> dict[str, Any]:
    """sha256 of each output; a folder's is a map file -> sha256 (less the files another stage writes into
    it: ``model/README.md`` is export's model card)."""
    out: dict[str, Any] = {}
    for name in stage.outputs:
        p = run_dir / name
        if p.is_dir():
            others = frozenset(o.split("/", 1)[1] for s in STAGES.values() if s is not stage for o in s.outputs
                               if o.startswith(name + "/"))
            out[name] = folder_digests(p, skip=others)
        else:
            out[name] = _hash(p)
    return out


def changed_outputs(run_dir: Path, name: str) -> list[tuple[str, Any, Any]]:
    """The outputs of stage ``name`` that are no longer what its record holds: (file, recorded, now),
    by file (a folder's changed, added or missing files one by one); empty when it never ran."""
    rec = read_record(run_dir, name)
    if rec is None:
        return []
    now = _output_hashes(Path(run_dir), STAGES[name])
    was = rec.get("outputs") or {}
    changed = []
    for out in STAGES[name].outputs:
        a, b = was.get(out), now.get(out)
        if out not in was:  # a record of an earlier version: a folder's files one by one, or no entry at all
            a = {k.split("/", 1)[1]: v for k, v in was.items() if k.startswith(out + "/")} or None
            b = {f: h for f, h in b.items() if f in a} if isinstance(a, dict) and isinstance(b, dict) else a
        elif isinstance(a, str) and isinstance(b, dict):  # an earlier version's single hash of a whole folder
            b = file_hash(Path(run_dir) / out)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [(f"{out}/{f}", a.get(f), b.get(f)) for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        elif a != b:
            changed.append((out, a, b))
    return changed


def _record_time(run_dir: Path, name: str) -> int:
    """When stage ``name`` last recorded its run (the record file's mtime in ns; 0 when it never ran)."""
    try:
        return (Path(run_dir) / RECORDS / f"{name}.json").stat().st_mtime_ns
    except OSError:
        return 0


def stale_because(run_dir: Path, name: str) -> str | None:
    """Why a stage that ran is out of date with the run folder, as ``run`` will find it (``None``: it is not):
    an input an earlier stage rewrote since, or an output inside another stage's folder that this stage
    re-ran after (train rewrites model/, so export's model card goes). Settings are not looked at: a run
    folder does not say which ones the next command will use."""
    rec = read_record(run_dir, name)
    if rec is None:
        return None
    stage = STAGES[name]
    moved = [f for f, h in _hashes(Path(run_dir), stage.inputs).items() if (rec.get("inputs") or {}).get(f) != h]
    if moved:
        return f"{moved[0]}{f' and {len(moved) - 1} more' if len(moved) > 1 else ''} changed since it ran"
    mine = _record_time(run_dir, name)
    for other in ORDER:
        holds = any(out.startswith(o + "/") for out in stage.outputs for o in STAGES[other].outputs)
        if other != name and holds and _record_time(run_dir, other) > mine:
            return f"{other} ran after it and rewrote its folder"
    return None


def accept_changed(run_dir: Path, *, only: tuple[str, ...] | None = None) -> list[str]:
    """Record the current sha256 of every output that no longer matches its stage's record (a model or
    file replaced on purpose; ``only``: just these files): the readers then trust it, and the stages
    that read it become stale. Missing outputs are not accepted (their stage must run again).
    Returns the files accepted."""
    run_dir = Path(run_dir)
    accepted = []
    for name, stage in STAGES.items():
        changed = [c for c in changed_outputs(run_dir, name) if c[2] is not None and (only is None or c[0] in only)]
        if not changed:
            continue
        rec = read_record(run_dir, name) or {}
        now = _output_hashes(run_dir, stage)
        for out in stage.outputs:
            if any(f == out or f.startswith(out + "/") for f, _, _ in changed):
                rec.setdefault("outputs", {})[out] = now[out]
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rec["accepted"] = [*rec.get("accepted", []), *({"file": f, "was": a, "now": b, "at": when}
                                                        for f, a, b in changed)]
        write_json(run_dir / RECORDS / f"{name}.json", rec)
        for f, _, _ in changed:
            log.log(logging.DEBUG if only else logging.INFO, "accepted the changed %s (written by %s): its new "
                    "sha256 is recorded", run_dir / f, name)
            accepted.append(f)
    return accepted


def _external_hashes(stage: Stage, cfg: Config) -> dict[str, str | None]:
    if stage.external_inputs is None:
        return {}
    return {str(p): _hash(Path(p)) for p in stage.external_inputs(cfg)}


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
    changed = changed_outputs(run_dir, name)
    if changed:
        f, _, now = changed[0]
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        return f"{f}{more} {'missing' if now is None else 'changed since ' + name + ' wrote it'}"
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
    result = stage.function(run_dir, cfg) or {}
    seconds = time.perf_counter() - t0
    if result.get("dry_run"):  # wrote nothing, so it records nothing
        return {**result, "seconds": seconds}
    record = {
        "stage": name,
        "settings": _settings(stage, cfg),
        "inputs": _hashes(run_dir, stage.inputs),
        "external_inputs": _external_hashes(stage, cfg),
        "outputs": _output_hashes(run_dir, stage),
        "seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": result,
    }
    write_json(run_dir / RECORDS / f"{name}.json", record)
    remember_settings(run_dir, cfg, stage.sections)
    if name in PAGE_STAGES and (run_dir / "report.json").is_file():
        try:
            write_page(run_dir)  # the timings table shows this stage too
        except (SidsError, KeyError, TypeError) as e:  # the page is a view: a bad report.json stops no stage
            log.warning("report.md not rewritten: %s", e)
    log.info("%s done in %.1fs", name, seconds)
    return {**result, "seconds": seconds}


PAGE_STAGES = ("export", "visualize")
"""Stages after which report.md is written again (its timings table lists every stage that ran)."""


def remember_settings(run_dir: Path, cfg: Config, sections: tuple[str, ...]) -> None:
    """Keep the settings a stage ran with in the run folder's ``config.yaml``, the defaults of every later
    command on that folder (``--probe`` once, and the next ``evaluate`` keeps the probe). A folder without
    one gets every setting; otherwise only the stage's sections change, and only their decisive fields."""
    path = run_dir / RUN_SETTINGS
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        values = None
    if not isinstance(values, dict):
        values = cfg.to_dict()
    for s in sections:
        section = values.get(s) if isinstance(values.get(s), dict) else {}
        values[s] = {**section, **json.loads(json.dumps(decisive(getattr(cfg, s)), default=str))}
    text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def run(cfg: Config, run_dir: Path, *, force: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Run the pipeline in ``run_dir``; returns ``{"stages": {name: status}, "seconds": {...}}``.

    Example:
        >>> from movielens_sids.config import load_config
        >>> run(load_config("demo"), Path("runs/demo"))  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    names = ORDER[: ORDER.index(until) + 1] if until else list(ORDER)
    status: dict[str, str] = {}
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    with run_lock(run_dir):
        write_text(run_dir / RUN_SETTINGS, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
        forced = False
        for i, name in enumerate(names, 1):
            forced = forced or name == force
            reason = "forced" if forced else why_stale(name, cfg, run_dir)
            if reason is None:
                status[name] = "up to date"
                log.info("[%d/%d] %-9s up to date, skipped", i, len(names), name)
                continue
            log.info("[%d/%d] %-9s running (%s)", i, len(names), name, reason)
            result = execute(name, cfg, run_dir, lock=False)
            status[name] = "ran"
            seconds[name] = result["seconds"]
    return {"stages": status, "seconds": seconds, "total_seconds": time.perf_counter() - t_all}


def summary(run_dir: Path, outcome: dict[str, Any]) -> str:
    """A short human summary: outputs, headline metrics, the time of each stage."""
    run_dir = Path(run_dir)
    lines = [f"run folder: {run_dir}"]
    for name in outcome["stages"]:
        stage = STAGES[name]
        rec = read_record(run_dir, name) or {}
        outs = ", ".join(sorted({o.split("/")[0] + ("/" if "/" in o or (run_dir / o).is_dir() else "")
                                 for o in stage.outputs if (run_dir / o).exists() or o == stage.outputs[0]}))
        took = f"{rec.get('seconds', 0):7.1f}s" if rec else "      -"
        lines.append(f"  {name:<9} {outcome['stages'][name]:<10} {took}  {outs}")
    report = run_dir / "report.json"
    if report.exists():
        r = json.loads(report.read_text())
        col = r.get("collisions", {})
        nb = r.get("neighbors", {})
        rec = r.get("reconstruction", {})
        util = r.get("utilization", [])
        lift = (nb.get("first_token_match_at_10", 0) / nb["random_first_token_match"]
                if nb.get("random_first_token_match") else float("nan"))
        lines += [
            f"{r.get('n_movies')} movies, {r.get('levels')} levels x {r.get('codebook_size')} codes "
            f"({r.get('embedding_model')})",
            f"  unique SIDs: {col.get('unique_fraction_after_dedup', float('nan')):.4f} "
            f"(before dedup {col.get('unique_fraction_before_dedup', float('nan')):.4f}, "
            f"largest collision group {col.get('max_group_size')})",
            "  code usage per level: " + ", ".join(f"{u:.3f}" for u in util),
            f"  reconstruction: relative MSE {rec.get('relative_mse', float('nan')):.4f}, "
            f"mean cosine {rec.get('mean_cosine', float('nan')):.4f}",
            f"  neighbours: overlap@10 {nb.get('overlap_at_10', float('nan')):.3f}, first-token match@10 "
            f"{nb.get('first_token_match_at_10', float('nan')):.3f} ({lift:.1f}x random)",
        ]
    outputs = ["catalog.parquet", "embeddings.parquet", "model", "sids.parquet", "dataset", "report.md",
               "visualization.html"]
    present = [o for o in outputs if (run_dir / o).exists()]
    lines.append("outputs: " + ", ".join(str(run_dir / o) for o in present))
    lines.append(f"total {outcome['total_seconds']:.1f}s")
    return "\n".join(lines)
