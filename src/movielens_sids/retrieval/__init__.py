"""Generative retrieval: do a run's Semantic IDs help a generative recommender predict the next movie?

``movielens-sids retrieval --run-dir R`` trains a small transformer that generates the next
movie's SID (constrained beam search over a trie of existing SIDs) and compares it, on the same
leave-one-out split and seeds, with the same model over random IDs of the same shape, SASRec over
movie ids, and most-popular. See ``bench.py`` for the protocol and ``generative.py`` for the model.
"""

from __future__ import annotations

from .bench import METHODS, METRICS, RetrievalConfig, run_benchmark
from .generative import GenerativeRetriever, Recommendations
from .metrics import ndcg_at_k, ranking_metrics, recall_at_k
from .sasrec import SASRec
from .sequences import Split, build_split, read_ratings
from .trie import SidTrie

__all__ = ["METHODS", "METRICS", "GenerativeRetriever", "Recommendations", "RetrievalConfig", "SASRec", "SidTrie",
           "Split", "build_split", "ndcg_at_k", "ranking_metrics", "read_ratings", "recall_at_k", "run_benchmark"]
