"""movielens-sids: Semantic IDs for every movie of a MovieLens catalog.

The Python API mirrors the CLI: stage functions live in ``movielens_sids.stages`` (``stages.embed``,
``stages.train``, ...), the artifact readers in ``movielens_sids.artifacts``; ``lookup`` functions and
``SemanticIds`` (``api``: from text or movie ids to SIDs, Hugging Face style) are re-exported here.
ARCHITECTURE.md shows the layers.

May import: nothing at import time (``lookup`` and ``api`` are loaded on first use).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["SemanticIds", "__version__", "lookup_movie", "lookup_prefix", "neighbors"]

_LAZY = {"lookup_movie": "lookup", "lookup_prefix": "lookup", "neighbors": "lookup", "SemanticIds": "api"}


def __getattr__(name: str):
    # Imported on first use so that `movielens-sids --help` does not pay for numpy/pyarrow.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
