"""The tokenizers: pure torch math (``rqvae.py``, ``rqkmeans.py``) and their model folder (``serialization.py``).

Example:
    >>> from movielens_sids.model import load_tokenizer
    >>> tok = load_tokenizer("runs/demo/model")
    >>> codes = tok.quantize(tok.encode(x))          # x (B, D) -> (B, L)
    >>> x_hat = tok.decode_codes(codes)               # (B, D)

May import: model.config only, at module level. The torch parts are looked up on first use (below), so
that ``import movielens_sids.config`` (which reads ``model.config``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import RQKMeansConfig, RQVAEConfig

__all__ = ["RQVAE", "RQVAEConfig", "RQKMeans", "RQKMeansConfig", "load_tokenizer", "save_pretrained",
           "TOKENIZERS"]

_LAZY = {"RQVAE": "rqvae", "RQKMeans": "rqkmeans", "load_tokenizer": "serialization",
         "save_pretrained": "serialization", "TOKENIZERS": "serialization"}


def __getattr__(name: str) -> Any:
    """Import the torch modules on first use (keeps ``import movielens_sids.config`` torch-free)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
