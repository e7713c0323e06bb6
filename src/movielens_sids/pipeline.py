"""``run``: every stage in order, each skipped when its artifact is up to date.

A stage is up to date when its record (``.stages/<name>.json``) holds the same settings and the
same content hashes of its inputs and outputs as now (see ``stages.why_stale``). Changing only the
RQ-VAE settings therefore re-trains and re-assigns but does not re-embed. An interrupted run started
again skips finished stages; embedding resumes from its last chunk and training from its last
checkpoint (those stages keep their own progress).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import flag
from .errors import SidsError
from .io import run_lock, write_text
from .stages import ORDER, STAGES, execute, read_record, why_stale

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

HELP = "run every stage in order (catalog, embed, train, assign, evaluate, export, visualize), skipping up-to-date ones"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", metavar="STAGE", choices=ORDER,
                   help=f"re-run from this stage on, even if up to date ({', '.join(ORDER)})")
    p.add_argument("--until", metavar="STAGE", choices=ORDER, help="stop after this stage")
    flag(p, "--dataset", key="data.dataset", help="MovieLens variant by name (default from the config)")
    flag(p, "--source", key="data.source", help="a local MovieLens folder or official zip instead of --dataset")
    flag(p, "--enrich", key="data.enrich", help="CSV/Parquet/JSONL with plot, director, stars ... to join")
    flag(p, "--limit", key="data.limit", type=int, help="keep N movies, chosen reproducibly (smoke runs)")
    flag(p, "--model", key="embed.model", help="sentence-transformers model: Hub id or local folder")
    flag(p, "--device", key="embed.device", help="device for embedding: auto, cpu, cuda, mps")
    flag(p, "--tokenizer", key="train.tokenizer", choices=["rqvae", "rqkmeans"], help="rqvae or rqkmeans")
    flag(p, "--accelerator", key="train.accelerator", help="Lightning accelerator for training")
    flag(p, "--devices", key="train.devices", help="Lightning devices for training")
    flag(p, "--strategy", key="train.strategy", help="Lightning strategy for training (e.g. ddp)")
    flag(p, "--push-to-hub", key="export.push_to_hub", action="store_true",
         help="upload the model and dataset to the Hugging Face Hub at the end")


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
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
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
        outs = ", ".join(sorted({o.split("/")[0] + ("/" if "/" in o else "") for o in stage.outputs}))
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


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    if args.force and args.until and ORDER.index(args.force) > ORDER.index(args.until):
        raise SidsError(f"--force {args.force} comes after --until {args.until}")
    outcome = run(cfg, run_dir, force=args.force, until=args.until)
    print(summary(run_dir, outcome))
    return 0
