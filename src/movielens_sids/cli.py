"""``movielens-sids``: the only module that knows about flags; it maps each command to a stage function.

Every setting flag is declared once, in ``FLAGS`` (flag name -> ``section.field``); each command lists
the flags it takes. A flag given on the command line overrides that setting; ``--set KEY=VALUE``
overrides any setting. The stages themselves (``movielens_sids.stages``) see only a ``Config``.

May import: everything in the package (it is the top layer). Nothing imports it but ``__main__``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import __version__, logs, pipeline
from .config import RUNS_ROOT, Config, find_run_dir, load_config, load_run_config
from .data import registry
from .data.fetch import DATA_DIR_ENV, MD5_ENV, bundled_path, fetch_dataset
from .errors import SidsError
from .io import run_lock
from .labels import labels_for_run, prefix_lines
from .lookup import lookup_movie, lookup_prefix, neighbors, render_table
from .reports.markdown import compare_runs
from .retrieval.config import METHODS as RETRIEVAL_METHODS
from .retrieval.report import markdown_table, paired_table
from .retrieval.stage import rescore_stage, retrieval_stage
from .settings import OFFLINE_MODEL
from .sid import parse_sid_prefix
from .verify import render, verify_run

log = logging.getLogger("movielens_sids")


@dataclass(frozen=True)
class Flag:
    """A command-line flag that overrides one setting (``key``: ``section.field``) only when given."""

    name: str
    key: str
    help: str
    type: Callable[[str], Any] | None = str
    action: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        if self.action:
            kwargs["action"] = self.action
        else:
            kwargs.update(type=self.type, choices=self.choices,
                          metavar=self.metavar or self.key.rsplit(".", 1)[-1].upper())
        if self.action == "append":
            kwargs.update(metavar=self.metavar)
        parser.add_argument(self.name, dest=f"set:{self.key}", default=argparse.SUPPRESS, **kwargs)


def _flags(*specs: Flag) -> dict[tuple[str, str], Flag]:
    return {(f.name, f.key): f for f in specs}


FLAGS = _flags(
    # data
    Flag("--dataset", "data.dataset", f"a MovieLens variant: {', '.join(registry.names())} (downloaded once, "
                                      "then cached)"),
    Flag("--source", "data.source", "a local MovieLens folder or official zip (only movies.csv/movies.dat is "
                                    "required)", metavar="PATH"),
    Flag("--enrich", "data.enrich", "CSV, Parquet or JSONL joined on movieId, imdbId or tmdbId; adds its columns",
         metavar="FILE"),
    Flag("--data-dir", "data.data_dir", f"download cache folder (default: ${DATA_DIR_ENV} or the user cache dir)",
         metavar="DIR"),
    Flag("--limit", "data.limit", "keep N movies, chosen reproducibly (smoke runs)", type=int, metavar="N"),
    Flag("--seed", "data.seed", "seed of --limit's sample", type=int),
    Flag("--skip-bad-rows", "data.skip_bad_rows", "drop rows that cannot be parsed (counted) instead of failing",
         action="store_true"),
    Flag("--rating-stats", "data.rating_stats", "add n_ratings and mean_rating columns from the ratings file",
         action="store_true"),
    # embed
    Flag("--model", "embed.model", f"Hub id, local folder, or {OFFLINE_MODEL} (bundled, offline; the default)"),
    Flag("--device", "embed.device", "auto (default: every GPU, else MPS, else CPU), cpu, cuda, cuda:N, mps, "
                                     "or a list cuda:0,cuda:1"),
    Flag("--batch-size", "embed.batch_size", "texts per encode batch (default 64)", type=int),
    Flag("--chunk-size", "embed.chunk_size", "documents between two flushes to disk (default 4096)", type=int),
    Flag("--max-tags", "embed.max_tags", "most frequent tags per document (default 10)", type=int),
    Flag("--template", "embed.template", "document template, e.g. '{title}[ ({year})].[ Genres: {genres}.]' "
                                         "(brackets: dropped when empty)"),
    Flag("--no-normalize", "embed.normalize", "keep vectors as the model gives them", action="store_false"),
    Flag("--trust-remote-code", "embed.trust_remote_code", "let a model run its own Python code (off unless given)",
         action="store_true"),
    Flag("--backend", "embed.backend", "auto (default: openvino on the CPU when installed, else torch), torch, "
                                       "openvino or onnx (ONNX Runtime): the last two run an ONNX export on the CPU",
         choices=("auto", "torch", "openvino", "onnx")),
    Flag("--quantization", "embed.quantization", "auto (default: bf16 for openvino on a CPU with native bf16, else "
                                                 "none), none (fp32), bf16 (openvino or torch) or int8 (onnx)",
         choices=("auto", "none", "bf16", "int8")),
    Flag("--from", "embed.from_file", "import vectors instead: Parquet with movie_id + a vector column, or .npy "
                                      "with --ids", metavar="FILE"),
    Flag("--from-column", "embed.from_column", "the vector column of the --from Parquet (default: its only list "
                                               "column)", metavar="COLUMN"),
    Flag("--ids", "embed.from_ids", "movie ids for a --from .npy, one per row (.npy, .txt or .csv)", metavar="FILE"),
    # train and model
    Flag("--tokenizer", "train.tokenizer", "rqvae (default) or rqkmeans (residual k-means on FAISS)",
         choices=("rqvae", "rqkmeans")),
    Flag("--max-epochs", "train.max_epochs", "upper bound on epochs", type=int),
    Flag("--batch-size", "train.batch_size", "movies per step", type=int),
    Flag("--lr", "train.lr", "peak learning rate", type=float),
    Flag("--collab-weight", "train.collab_weight", "weight of the co-watch term (0: content only)", type=float),
    # collab
    Flag("--method", "collab.method", "als (collaborative vectors from the ratings' training interactions) or none"),
    Flag("--factors", "collab.factors", "dimension of the ALS item vectors", type=int),
    Flag("--seed", "train.seed", "seed of the split, init and weights", type=int),
    Flag("--levels", "model.levels", "L, residual levels", type=int),
    Flag("--codebook-size", "model.codebook_size", "K, codes per level", type=int),
    Flag("--latent-dim", "model.latent_dim", "H, latent width", type=int),
    Flag("--accelerator", "train.accelerator", "Lightning accelerator (auto, cpu, gpu, mps)"),
    Flag("--devices", "train.devices", "Lightning devices (auto, 1, 2, 0,1)"),
    Flag("--strategy", "train.strategy", "Lightning strategy (auto, ddp, ...)"),
    Flag("--precision", "train.precision", "Lightning precision (32-true, bf16-mixed, ...)"),
    Flag("--no-progress-bar", "train.progress_bar", "hide the progress bar", action="store_false"),
    # assign
    Flag("--dedup", "assign.strategy", "semantic (default): move colliding movies to the nearest free code "
                                       "path; suffix: TIGER's extra collision token",
         choices=("semantic", "suffix")),
    Flag("--incremental", "assign.incremental", "keep every SID already in sids.parquet; give only new movies new "
                                                "SIDs", action="store_true"),
    Flag("--beam-width", "assign.beam_width", "beam of the semantic search (default 8)", type=int),
    Flag("--device", "assign.device", "auto, cpu, cuda, cuda:N or mps"),
    Flag("--batch-size", "assign.batch_size", "movies per encoder batch", type=int),
    # export
    Flag("--push-to-hub", "export.push_to_hub", "upload model/ and dataset/ to the Hugging Face Hub (token: "
                                                "HF_TOKEN, .env or `hf auth login`)", action="store_true"),
    Flag("--dry-run", "export.dry_run", "list every file --push-to-hub would upload, and where; upload nothing",
         action="store_true"),
    Flag("--model-repo", "export.model_repo", "model repo id (default: YOUR_HF_ACCOUNT/movielens-rqvae)"),
    Flag("--dataset-repo", "export.dataset_repo", "dataset repo id (default: YOUR_HF_ACCOUNT/movielens-sids)"),
    Flag("--private", "export.private", "create the repos as private", action="store_true"),
    Flag("--revision", "export.revision", "tag for the uploaded commits (default: experiment)"),
    Flag("--sequences", "export.sequences", "dataset/sequences/ and dataset/instructions/, the retrieval benchmark's "
                                            "split as training data: auto (when the dataset has ratings), always "
                                            "or never", choices=("auto", "always", "never")),
    # evaluate
    Flag("--probe", "evaluate.extra_probes", 'another probe movie, named as for `lookup --movie`: "The Matrix", '
                                             '"Alien (1979)" or a movie_id (repeatable; kept in the run folder\'s '
                                             'config.yaml for the next evaluate)', action="append", metavar="TITLE"),
    Flag("--no-charts", "evaluate.charts", "no PNG charts (and remove those of an earlier evaluate)",
         action="store_false"),
    # visualize
    Flag("--sample", "visualize.sample", "draw at most N movies: a larger catalog is drawn as a seeded sample "
                                         "(default 100000)",
         type=int, metavar="N"),
    Flag("--n-neighbors", "visualize.n_neighbors", "UMAP neighbourhood size (default 15)", type=int),
    Flag("--seed", "visualize.seed", "seed of PCA, UMAP and the sample (default 0)", type=int),
    # retrieval (the benchmark)
    Flag("--dataset", "retrieval.dataset", "MovieLens variant whose ratings to use (default: the run's "
                                           "data.dataset)"),
    Flag("--ratings", "retrieval.ratings", "a ratings.csv or ratings.dat file to use instead of a named dataset",
         metavar="FILE"),
    Flag("--protocol", "retrieval.protocol", "temporal (a global time split, the default) or leave_one_out",
         choices=("temporal", "leave_one_out")),
    Flag("--seeds", "retrieval.seeds", "seeds, comma-separated (default 0,1,2)", type=lambda v: _csv(v, int),
         metavar="0,1,2"),
    Flag("--methods", "retrieval.methods",
         f"comma-separated subset of {','.join(RETRIEVAL_METHODS)} (default: all but joint)",
         type=lambda v: _csv(v, str), metavar="LIST"),
    Flag("--folds", "retrieval.folds", "temporal: N rolling-origin folds, each its own cut-off and models, pooled "
                                       "(default 1)", type=int, metavar="N"),
    Flag("--candidates", "retrieval.candidates", "existing (default: movies that existed at the event) or all",
         choices=("existing", "all")),
    Flag("--validation-only", "retrieval.validation_only", "score every validation event and no test event "
                                                           "(to choose settings)", action="store_true"),
    Flag("--max-users", "retrieval.max_users", "evaluate a seeded sample of N users (for ml-20m and larger)",
         type=int, metavar="N"),
    Flag("--max-epochs", "retrieval.max_epochs", "a safety bound on training epochs per model (validation "
                                                 "decides when to stop)", type=int, metavar="N"),
    Flag("--beam-size", "retrieval.beam_size", "beams of the constrained beam search at test time (>= 50)",
         type=int, metavar="W"),
    Flag("--device", "retrieval.device", "cpu (default), cuda, mps or auto"),
    Flag("--threads", "retrieval.threads", "CPU threads for torch", type=int, metavar="N"),
)


def _csv(text: str, kind: Callable[[str], Any]) -> list[Any]:
    """A comma-separated flag value -> a list (``0,1,2`` -> [0, 1, 2])."""
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def _add(parser: argparse.ArgumentParser, *keys: str) -> None:
    """Add the setting flags named ``--flag=section.field`` (or just ``section.field`` when unambiguous)."""
    for spec in keys:
        name, _, key = spec.rpartition("=")
        matches = [f for (n, k), f in FLAGS.items() if k == key and (not name or n == name)]
        if len(matches) != 1:
            raise KeyError(f"no single flag for {spec!r}")
        matches[0].add_to(parser)


def _execute(name: str) -> Callable[[argparse.Namespace, Config, Path], None]:
    """The command of a stage that prints nothing beyond its own log lines."""

    def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> None:
        pipeline.execute(name, cfg, run_dir)

    return command


# ---------------------------------------------------------------------------------------------- commands


def fetch_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "data.dataset", "data.data_dir")
    p.add_argument("--md5", metavar="HEX", help=f"verify against this MD5 instead of the published one (or ${MD5_ENV})")
    p.add_argument("--force", action="store_true", help="download again even if a verified copy exists")


def fetch_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    name = cfg.data.dataset
    if name == registry.BUNDLED and not args.force:
        path = bundled_path()
        log.info("%s ships with the package (no download needed); use --force to download the current "
                 "release into the cache", name)
    else:
        path = fetch_dataset(name, cfg.data.data_dir, md5=args.md5, force=args.force)
    print(path)
    return 0


def catalog_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "data.dataset", "data.source", "data.enrich", "data.data_dir", "data.limit", "data.seed",
         "data.skip_bad_rows", "data.rating_stats")


def embed_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "embed.model", "embed.device", "embed.batch_size", "embed.chunk_size", "embed.max_tags",
         "embed.template", "embed.normalize", "embed.trust_remote_code", "embed.backend", "embed.quantization",
         "embed.from_file", "embed.from_column", "embed.from_ids")


def embed_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    result = pipeline.execute("embed", cfg, run_dir)
    if "imported" in result:
        log.info("embed: imported %d vectors (dimension %d)", result["imported"], result["dimension"])
    else:
        log.info("embed: %d movies, %d documents embedded, %d vectors reused, dimension %d",
                 result["movies"], result["embedded"], result["reused"], result["dimension"])
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "train.tokenizer", "train.max_epochs", "train.batch_size", "train.lr", "train.collab_weight",
         "train.seed", "model.levels",
         "model.codebook_size", "model.latent_dim", "train.accelerator", "train.devices",
         "train.strategy", "train.precision", "train.progress_bar")


def collab_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "data.dataset", "data.source", "collab.method", "collab.factors")


def assign_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "assign.strategy", "assign.incremental", "assign.beam_width", "assign.device", "assign.batch_size")


def export_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "export.push_to_hub", "export.dry_run", "export.model_repo", "export.dataset_repo", "export.private",
         "export.revision", "export.sequences")


def export_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    result = pipeline.execute("export", cfg, run_dir)
    if "upload_listing" in result:
        print(result["upload_listing"])
    for up in result.get("uploaded", []):
        print(f"uploaded {up['repo_type']} {up['repo_id']} (tag {up['tag']}): {up['url']}")
    return 0


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "evaluate.extra_probes", "evaluate.charts")
    p.add_argument("--compare", nargs="+", type=Path, metavar="RUN_DIR",
                   help="instead of evaluating, put the report.json of these runs (and --run-dir, when given) "
                        "side by side; the table goes to stdout and to --out")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where --compare writes its markdown (default: compare.md in the first run folder)")


def evaluate_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    if args.compare:
        runs = ([args.run_dir] if args.run_dir is not None else []) + list(args.compare)
        print(compare_runs(list(dict.fromkeys(Path(r) for r in runs)), out=args.out), end="")
        return 0
    result = pipeline.execute("evaluate", cfg, run_dir)
    log.info("overlap@10 %.3f, first-token match %.3f (random %.3f), unique after dedup %.4f -> %s",
             result["overlap_at_10"], result["first_token_match_at_10"], result["random_first_token_match"],
             result["unique_fraction_after_dedup"], run_dir / "report.md")
    return 0


def visualize_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "visualize.sample", "visualize.n_neighbors", "visualize.seed")


def visualize_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    result = pipeline.execute("visualize", cfg, run_dir)
    shown = f"{result['n_points']} movies" + (f" (a sample of {result['n_movies']})"
                                              if result["n_points"] < result.get("n_movies", 0) else "")
    log.info("%s: %s, %.1f MB", run_dir / "visualization.html", shown, result["html_bytes"] / 1e6)
    return 0


def lookup_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--movie", metavar="TITLE_OR_ID", help="a movie's SID (id, exact title, or fuzzy title)")
    what.add_argument("--sid", metavar="PREFIX", help="the movies under a SID prefix: 12, 12,201 or <a_12><b_201>")
    what.add_argument("--neighbors", metavar="TITLE_OR_ID", help="the movies nearest to this one by SID")
    p.add_argument("--k", type=int, default=10, help="how many neighbours (default 10)")
    p.add_argument("--limit", type=int, default=None, help="at most this many movies for --sid (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def lookup_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    named: list[str] = []  # the labels of the movie's / the prefix's codes (labels.py)
    if args.movie is not None:
        records, extra = [lookup_movie(run_dir, args.movie)], []
        labels = labels_for_run(run_dir)
        named = prefix_lines(labels, records[0]["semantic_id"][:2])
        records[0]["labels"] = {labels[p]["sid_prefix"]: labels[p]["label"] for p in
                                (tuple(records[0]["semantic_id"][:d]) for d in (1, 2)) if p in labels}
    elif args.sid is not None:
        under = lookup_prefix(run_dir, args.sid)
        records, extra = under[:args.limit] if args.limit is not None else under, []
        named = prefix_lines(labels_for_run(run_dir), parse_sid_prefix(args.sid)[:2]) if under else []
        shown = f"; showing {len(records):,} (--limit)" if len(records) < len(under) else ""
        if under:
            log.info("%s %s %s%s", f"{len(under):,}", "movie matches" if len(under) == 1 else "movies match",
                     args.sid, shown)
    else:
        records, extra = neighbors(run_dir, args.neighbors, k=args.k), ["shared_prefix", "distance"]
    if args.json:
        out = records[0] if args.movie is not None else records
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
    elif not records:
        print(f"no movies under SID prefix {args.sid}", file=sys.stderr)
    else:
        table = render_table(records, extra)
        print("\n".join([*named, ""]) + table if named else table)
    return 0


def retrieval_arguments(p: argparse.ArgumentParser) -> None:
    _add(p, "retrieval.dataset", "retrieval.ratings", "retrieval.protocol", "retrieval.seeds", "retrieval.methods",
         "retrieval.folds", "retrieval.candidates", "retrieval.validation_only", "retrieval.max_users",
         "retrieval.max_epochs", "retrieval.beam_size", "retrieval.device",
         "retrieval.threads")
    p.add_argument("--rescore", action="store_true", help="compute the intervals and paired differences of a "
                   "finished benchmark again from retrieval/events.parquet, without training")


def retrieval_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    if not (run_dir / "sids.parquet").exists():  # before taking the lock: a bad run folder is not created
        raise SidsError(f"{run_dir / 'sids.parquet'} not found: run `movielens-sids assign` first")
    with run_lock(run_dir):
        stage = rescore_stage if args.rescore else retrieval_stage
        report = stage(run_dir, cfg)  # report.md is a page of the JSON reports: no stage's recorded output
    sl = report["slices"]
    print(f"{report['dataset']}, {report['protocol']}: {sl['all']['events']:,} test events "
          f"({sl['warm']['events']:,} warm, {sl['cold']['events']:,} cold), {len(report['seeds'])} seeds\n")
    print(markdown_table(report["methods"]))
    if report["paired"]:
        print("\n" + paired_table(report["paired"]))
    print(f"\nwall time {report['wall_time_s']:.0f} s; wrote {run_dir / 'retrieval' / 'report.json'} and report.md")
    return 0


def run_arguments(p: argparse.ArgumentParser) -> None:
    order = pipeline.ORDER
    p.add_argument("--force", metavar="STAGE", choices=order,
                   help=f"re-run from this stage on, even if up to date ({', '.join(order)})")
    p.add_argument("--until", metavar="STAGE", choices=order, help="stop after this stage")
    _add(p, "data.dataset", "data.source", "data.enrich", "data.limit", "embed.model", "embed.device",
         "embed.backend", "embed.quantization", "train.tokenizer", "train.accelerator", "train.devices",
         "train.strategy", "export.push_to_hub")


def run_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    order = pipeline.ORDER
    if args.force and args.until and order.index(args.force) > order.index(args.until):
        raise SidsError(f"--force {args.force} comes after --until {args.until}")
    outcome = pipeline.run(cfg, run_dir, force=args.force, until=args.until)
    print(pipeline.summary(run_dir, outcome))
    return 0


def verify_arguments(p: argparse.ArgumentParser) -> None:
    """No flag of its own: ``--run-dir`` (or ``--config`` / ``--experiment``) names the folder."""


def verify_command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    rows = verify_run(run_dir)
    print(render(rows))
    return 0 if all(r.ok for r in rows) else 1


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, its flags, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config, Path], Any]


COMMANDS: dict[str, Command] = {
    "fetch": Command("download a MovieLens variant from GroupLens, verify its MD5, extract it (a verified copy is "
                     "reused)", fetch_arguments, fetch_command),
    "catalog": Command("build catalog.parquet from --dataset NAME or --source PATH (folder or official zip)",
                       catalog_arguments, _execute("catalog")),
    "embed": Command("embed one document per movie with a sentence-transformers model (or import vectors with "
                     "--from)", embed_arguments, embed_command),
    "collab": Command("collaborative movie vectors (ALS) and the most co-watched pairs from the ratings' training "
                      "interactions (collab.parquet, cowatch.parquet); content only without ratings",
                      collab_arguments, _execute("collab")),
    "train": Command("train the RQ-VAE (or residual k-means) on embeddings.parquet and write model/",
                     train_arguments, _execute("train")),
    "assign": Command("give every movie a unique Semantic ID (sids.parquet); --incremental keeps the existing ones",
                      assign_arguments, _execute("assign")),
    "export": Command("write dataset/ (Parquet shards + dataset card) and the model card; --push-to-hub uploads "
                      "both", export_arguments, export_command),
    "evaluate": Command("write report.json and report.md (README: 'What comes out'); --compare RUN_DIR... puts "
                        "several runs side by side", evaluate_arguments, evaluate_command),
    "visualize": Command("write visualization.html: an interactive UMAP map of the movies coloured by Semantic ID "
                         "(works offline)", visualize_arguments, visualize_command),
    "lookup": Command("find a movie's SID (--movie), the movies under a SID prefix (--sid), or a movie's nearest "
                      "by SID (--neighbors)", lookup_arguments, lookup_command),
    "run": Command("run every stage in order (catalog, embed, collab, train, assign, evaluate, export, visualize), "
                   "skipping up-to-date ones", run_arguments, run_command),
    "verify": Command("check every artifact against the sha256 its stage recorded, and the SIDs: one per catalog "
                      "movie, distinct, the right length, codes within their codebooks, agreeing with the model; "
                      "list the stages that are only stale (`run` brings them back); exit 1 on any damage",
                      verify_arguments, verify_command),
    "retrieval": Command("benchmark the SIDs in a generative recommender against random IDs, SASRec, most-popular "
                         "and a content baseline (temporal or leave-one-out split; all / warm / cold events; paired "
                         "bootstrap intervals)", retrieval_arguments, retrieval_command),
}
ON_A_RUN = frozenset({"lookup", "evaluate", "export", "visualize", "retrieval"})
"""Commands on a finished run: they start from the folder's config.yaml, and without --run-dir or --config
they find the folder under runs/. The others build a run, and take their settings from --config and flags
(the folder's remembered --source would otherwise shadow a new --dataset)."""


# ---------------------------------------------------------------------------------------------- parsing


def _verbosity_flags(group: Any, default: Any) -> None:
    """--quiet and --verbose: before the command (``movielens-sids -q run``) or after it."""
    how = group.add_mutually_exclusive_group() if isinstance(group, argparse.ArgumentParser) else group
    how.add_argument("-q", "--quiet", action="store_true", default=default,
                     help="print only results, warnings and errors")
    how.add_argument("-v", "--verbose", action="store_true", default=default,
                     help="also show the libraries' own lines (Lightning, FAISS, transformers) and their warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movielens-sids",
        description="Semantic IDs for MovieLens movies: catalog -> embeddings -> RQ-VAE -> unique SIDs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    _verbosity_flags(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        common = p.add_argument_group("common options")
        common.add_argument("--config", metavar="NAME_OR_FILE",
                            help="a preset name (demo, tiger, seed, ml-32m, ...) or a YAML file")
        common.add_argument("--run-dir", type=Path, metavar="DIR",
                            help="the run folder (default: runs/<experiment>)")
        common.add_argument("--experiment", dest="set:experiment", default=argparse.SUPPRESS, metavar="NAME",
                            help="experiment name (default run folder runs/<experiment>)")
        common.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override any setting, e.g. --set model.levels=4 (repeatable)")
        common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks and debug logs")
        _verbosity_flags(common, argparse.SUPPRESS)
        if name not in ("fetch", "verify"):
            common.add_argument("--accept-changed", action="store_true",
                                help="trust artifacts replaced on purpose (e.g. a model from the Hub): record their "
                                     "new sha256 first; the stages that read them become stale")
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the setting flags' values and ``--set key=value`` pairs from parsed arguments."""
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k.startswith("set:"):
            out[k[4:]] = v
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SidsError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return out


def verbosity(args: argparse.Namespace) -> int:
    """-1 with --quiet (warnings and errors only), 0 by default, 1 with --verbose, 2 with --debug."""
    if getattr(args, "debug", False):
        return 2
    if getattr(args, "verbose", False):
        return 1
    return -1 if getattr(args, "quiet", False) else 0


def resolve_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """The settings and the run folder of a command.

    A command on a finished run (``ON_A_RUN``) starts from the folder's ``config.yaml`` (``--run-dir``, or the
    only folder under ``runs/`` when neither ``--run-dir`` nor ``--config`` is given); flags override it.
    """
    overrides = overrides_from_args(args)
    run_dir: Path | None = args.run_dir
    on_a_run = args.command in ON_A_RUN and not getattr(args, "compare", None)
    if run_dir is None and args.config is None and "experiment" not in overrides and on_a_run:
        run_dir = find_run_dir(RUNS_ROOT)
        if run_dir != RUNS_ROOT / "default":
            log.info("using %s, the only run folder under %s/ (pass --run-dir to choose another)", run_dir,
                     RUNS_ROOT)
    if run_dir is not None and args.config is None and args.command in ON_A_RUN:
        return load_run_config(Path(run_dir), overrides), Path(run_dir)
    cfg = load_config(args.config, overrides)
    return cfg, Path(run_dir) if run_dir is not None else cfg.default_run_dir()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(verbosity(args))
    try:
        cfg, run_dir = resolve_run(args)
        if getattr(args, "accept_changed", False) and run_dir.is_dir():
            with run_lock(run_dir):
                pipeline.accept_changed(run_dir)
        return int(args._command.run(args, cfg, run_dir) or 0)
    except SidsError as e:
        if verbosity(args) >= 2:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still gets one line unless --debug
        if verbosity(args) >= 2 or os.environ.get("MOVIELENS_SIDS_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: unexpected {type(e).__name__}: {msg} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
