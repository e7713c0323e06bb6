"""``movielens-sids``: maps each subcommand to its module; the modules hold the work.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``command(args, cfg, run_dir) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from .errors import SidsError

COMMANDS = {
    "fetch": "movielens_sids.data.fetch",
    "catalog": "movielens_sids.data.catalog",
    "embed": "movielens_sids.embed",
    "train": "movielens_sids.train",
    "assign": "movielens_sids.assign",
    "export": "movielens_sids.export",
    "evaluate": "movielens_sids.evaluate",
    "visualize": "movielens_sids.visualize",
    "lookup": "movielens_sids.lookup",
    "run": "movielens_sids.pipeline",
    "retrieval": "movielens_sids.retrieval.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movielens-sids",
        description="Semantic IDs for MovieLens movies: catalog -> embeddings -> RQ-VAE -> unique SIDs.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        common = p.add_argument_group("common options")
        common.add_argument("--config", metavar="NAME_OR_FILE",
                            help="a preset name (demo, tiger, seed, ml-32m, ...) or a YAML file")
        common.add_argument("--run-dir", type=Path, metavar="DIR",
                            help="the run folder (default: runs/<experiment>)")
        common.add_argument("--experiment", dest="set:experiment", default=argparse.SUPPRESS, metavar="NAME",
                            help="experiment name (default run folder runs/<experiment>)")
        common.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override any setting, e.g. --set model.levels=4 (repeatable)")
        common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("lightning", "lightning.pytorch", "pytorch_lightning", "httpx", "urllib3", "numba", "filelock",
                  "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        from .config import load_config, overrides_from_args

        cfg = load_config(args.config, overrides_from_args(args))
        run_dir = args.run_dir if args.run_dir is not None else cfg.default_run_dir()
        return int(args._module.command(args, cfg, Path(run_dir)) or 0)
    except SidsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still gets one line unless --debug
        if args.debug or os.environ.get("MOVIELENS_SIDS_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: unexpected {type(e).__name__}: {msg} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
