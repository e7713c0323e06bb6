"""Generative retrieval: do a run's Semantic IDs help a generative recommender predict the next movie?

``movielens-sids retrieval --run-dir R`` trains a small transformer that generates the next
movie's SID (constrained beam search over a trie of existing SIDs) and compares it, on the same
test events (temporal or leave-one-out split, ``sequences.py``) and seeds, with the same model over
random IDs of the same shape, SASRec over movie ids, most-popular and a content baseline, on all,
warm and cold events, with paired bootstrap intervals (``stats.py``). See ``bench.py`` for the
methods and ``generative.py`` for the model.

May import: retrieval.config (eagerly); the rest of this package on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import METHODS, METRICS, RetrievalConfig

_LAZY = {"run_benchmark": "bench", "GenerativeRetriever": "generative", "Recommendations": "generative",
         "ndcg_at_k": "metrics", "ranking_metrics": "metrics", "recall_at_k": "metrics", "SASRec": "sasrec",
         "Split": "sequences", "Events": "sequences", "build_split": "sequences", "read_ratings": "sequences",
         "SidTrie": "trie", "bootstrap": "stats", "paired_differences": "stats", "content_topk": "content"}


def __getattr__(name: str) -> Any:
    """The torch/Lightning parts are imported on first use (``movielens-sids --help`` stays fast)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "METRICS", "Events", "GenerativeRetriever", "Recommendations", "RetrievalConfig", "SASRec",
           "SidTrie", "Split", "bootstrap", "build_split", "content_topk", "ndcg_at_k", "paired_differences",
           "ranking_metrics", "read_ratings", "recall_at_k", "run_benchmark"]
