"""movielens-sids: Semantic IDs for every movie of a MovieLens catalog.

The Python API mirrors the CLI: stage functions live in their modules (``movielens_sids.embed``,
``movielens_sids.train``, ...); ``lookup`` functions are re-exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"
