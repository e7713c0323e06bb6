"""The content baseline: movies ranked by embedding similarity to the user's latest movies.

A user's profile is the normalized mean of the content embeddings (the run's ``embeddings.parquet``)
of its ``window`` latest movies; every movie is scored by cosine similarity to the profile, and the
movies already in the user's history are left out (they are the most similar by construction, and
a MovieLens user never rates a movie twice). It needs no interaction data to score a movie, so, like
the Semantic-ID model and unlike ID-based models, it can recommend movies nobody has rated yet.

Shapes: E events, M history length, N movies, D embedding dimension.

May import: torch, numpy; nothing of the package.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def seen_mask(seen: np.ndarray | torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, S) item indices, -1 padded -> (B, N) bool, True at every listed item."""
    seen = torch.as_tensor(seen)
    mask = torch.zeros(len(seen), n_items + 1, dtype=torch.bool, device=seen.device)  # last column: padding
    mask.scatter_(1, seen.masked_fill(seen < 0, n_items), True)
    return mask[:, :n_items]


def content_topk(vectors: np.ndarray, histories: np.ndarray, seen, *, window: int, k: int,
                 batch_size: int = 1024) -> np.ndarray:
    """(E, k) the top ``k`` movies for each event, best first, by similarity to its latest ``window`` movies.

    Args:
        vectors: (N, D) unit-norm content embeddings, row ``i`` is item ``i``.
        histories: (E, M) right-aligned item histories, -1 pads on the left (M >= window).
        seen: (E, S) every item the user has rated before each event, -1 padded (excluded from the ranking);
            anything sliced into such blocks (``sequences.Seen``).
        window: how many of the latest history items make the profile.
        k: the list length (at most N).
        batch_size: events scored at once.
    """
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))  # (N, D)
    k = min(k, len(x))
    out = np.empty((len(histories), k), dtype=np.int64)
    for start in range(0, len(histories), batch_size):
        h = torch.from_numpy(histories[start:start + batch_size, -window:])  # (b, w)
        valid = (h >= 0).float()[..., None]  # (b, w, 1)
        profile = (x[h.clamp(min=0)] * valid).sum(1)  # (b, D)
        profile = profile / profile.norm(dim=1, keepdim=True).clamp(min=1e-12)
        scores = (profile @ x.T).masked_fill(seen_mask(seen[start:start + batch_size], len(x)), -torch.inf)  # (b, N)
        out[start:start + batch_size] = scores.topk(k, dim=1).indices.numpy()
    return out
