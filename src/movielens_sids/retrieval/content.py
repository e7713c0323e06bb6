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


class Excluded:
    """Per event, the movies it may not recommend, as (b, N) bool masks: the movies its user rated before it
    (``seen``: anything sliced into (b, S) -1 padded blocks, such as ``sequences.Seen``) and, with ``available``,
    every movie that did not exist yet at the event's time.

    Args:
        n_items: N.
        seen: what each event's user rated before it, or None.
        times: (E,) int64 the events' Unix times (with ``available``).
        available: (N,) int64 the first second at which each movie is a candidate (``sequences.availability``).
    """

    def __init__(self, n_items: int, seen=None, times: np.ndarray | None = None, available: np.ndarray | None = None):
        if seen is None and available is None:
            raise ValueError("Excluded: give seen, available or both")
        self.n_items, self.seen = n_items, seen
        self.times = None if times is None else torch.from_numpy(np.asarray(times, dtype=np.int64))
        self.available = None if available is None else torch.from_numpy(np.asarray(available, dtype=np.int64))
        self._len = len(seen) if seen is not None else len(self.times)

    def __len__(self) -> int:
        return self._len

    @torch.no_grad()
    def mask(self, rows: slice | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """(b, N) bool on ``device``: True where the event of ``rows`` may not recommend the movie."""
        out = None
        if self.seen is not None:
            out = seen_mask(torch.from_numpy(self.seen[rows]).to(device), self.n_items)
        if self.available is not None:
            later = self.available.to(device)[None, :] > self.times[rows].to(device)[:, None]  # (b, N)
            out = later if out is None else out | later
        return out


def exclusion_mask(excluded, rows: slice | np.ndarray, n_items: int, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """(b, N) bool from an ``Excluded`` or from (E, S) -1 padded item lists (an array or a ``Seen``)."""
    if isinstance(excluded, Excluded):
        return excluded.mask(rows, device)
    return seen_mask(torch.as_tensor(np.asarray(excluded[rows])).to(device), n_items)


def content_profile(vectors: torch.Tensor, history: torch.Tensor, window: int) -> torch.Tensor:
    """(b, D) unit-norm profiles: the mean of (N, D) ``vectors`` over each (b, M) history's latest ``window`` movies
    (-1 pads left out; a history of pads only gets a zero profile)."""
    h = history[:, -window:]  # (b, w)
    valid = (h >= 0).to(vectors.dtype)[..., None]  # (b, w, 1)
    profile = (vectors[h.clamp(min=0)] * valid).sum(1)  # (b, D)
    return profile / profile.norm(dim=1, keepdim=True).clamp(min=1e-12)


def content_topk(vectors: np.ndarray, histories: np.ndarray, seen, *, window: int, k: int,
                 batch_size: int = 1024) -> np.ndarray:
    """(E, k) the top ``k`` movies for each event, best first, by similarity to its latest ``window`` movies
    (-1 where fewer than ``k`` may be recommended).

    Args:
        vectors: (N, D) unit-norm content embeddings, row ``i`` is item ``i``.
        histories: (E, M) right-aligned item histories, -1 pads on the left (M >= window).
        seen: what each event may not recommend: an ``Excluded``, or (E, S) every item the user has rated
            before each event, -1 padded, or anything sliced into such blocks (``sequences.Seen``).
        window: how many of the latest history items make the profile.
        k: the list length (at most N).
        batch_size: events scored at once.
    """
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))  # (N, D)
    k = min(k, len(x))
    out = np.empty((len(histories), k), dtype=np.int64)
    for start in range(0, len(histories), batch_size):
        profile = content_profile(x, torch.from_numpy(histories[start:start + batch_size]), window)  # (b, D)
        banned = exclusion_mask(seen, slice(start, start + batch_size), len(x))  # (b, N)
        scores = (profile @ x.T).masked_fill(banned, -torch.inf)  # (b, N)
        top = scores.topk(k, dim=1)
        out[start:start + batch_size] = top.indices.masked_fill(top.values == -torch.inf, -1).numpy()
    return out
