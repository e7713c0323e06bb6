"""A prefix trie over the Semantic IDs that exist, for beam search that only produces real movies.

Stored level by level in CSR form (no Python dicts), so masking the next token for a batch of
beams is a handful of tensor ops and memory is O(N L) even for 87k movies and 1024 codes:
level ``l`` has one node per distinct SID prefix of length ``l`` (node ids follow lexicographic
order) and one edge per distinct prefix of length ``l + 1``; the edges of a node are contiguous
and sorted by token, so an edge's id is also the id of the child node it leads to. The edges of
the last level lead to items.

May import: errors; torch and numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SidsError


class SidTrie:
    """The trie of ``codes``: row ``i`` is item ``i``'s Semantic ID.

    Args:
        codes: (N, L) non-negative integer tokens; rows must be distinct.
        items: (N,) the item index of each row (default ``arange(N)``): a trie over a subset of a catalogue
            (e.g. its cold movies) still returns catalogue indices.
        level_sizes: K_l per level, at least the largest token + 1 (default: exactly that); a subset's
            trie takes the catalogue's, so its masks line up with a model's logits.

    Example:
        >>> trie = SidTrie(np.array([[0, 1], [0, 2], [3, 0]]))
        >>> trie.allowed(0, torch.tensor([0]))  # after the empty prefix, tokens 0 and 3
        tensor([[ True, False, False,  True]])
    """

    def __init__(self, codes: np.ndarray, *, items: np.ndarray | None = None, level_sizes: list[int] | None = None):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty (N, L) array, got shape {codes.shape}")
        if (codes < 0).any():
            raise ValueError("codes must be non-negative")
        n, levels = codes.shape
        self.levels = levels
        needed = [int(codes[:, j].max()) + 1 for j in range(levels)]
        if level_sizes is not None and (len(level_sizes) != levels or any(a < b for a, b in zip(level_sizes, needed))):
            raise ValueError(f"level_sizes {list(level_sizes)} do not cover the tokens (largest + 1: {needed})")
        self.level_sizes = list(level_sizes) if level_sizes is not None else needed
        """K_l: the vocabulary of each level (largest token + 1, unless given)."""
        if items is not None and np.shape(items) != (n,):
            raise ValueError(f"items must have one index per row ({n}), got shape {np.shape(items)}")
        order = np.lexsort(codes[:, ::-1].T)  # (N,) lexicographic order of the SIDs
        s = codes[order]
        differs = np.ones((n, levels), dtype=bool)  # differs[i, j]: s[i, :j+1] != s[i-1, :j+1]
        differs[1:] = np.logical_or.accumulate(s[1:] != s[:-1], axis=1)
        if not differs[:, -1].all():
            dup = s[np.flatnonzero(~differs[:, -1])[0]]
            raise SidsError(f"Semantic IDs are not unique (e.g. {dup.tolist()} appears twice); run `assign` again")
        self.n_items = n
        # node[j][i]: the level-j node of the i-th sorted SID (level 0 is the root).
        node = [np.zeros(n, dtype=np.int64)] + [np.cumsum(differs[:, j]) - 1 for j in range(levels)]
        self.offsets: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        for j in range(levels):
            first = np.flatnonzero(differs[:, j])  # one row per edge (= per level-(j+1) node)
            parent, token = node[j][first], s[first, j]
            n_nodes = int(node[j][-1]) + 1
            counts = np.bincount(parent, minlength=n_nodes)
            self.offsets.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])))
            self.tokens.append(torch.from_numpy(token))
            self.keys.append(torch.from_numpy(parent * self.level_sizes[j] + token))  # sorted: edge lookup key
        self.items = torch.from_numpy(order if items is None else np.asarray(items, dtype=np.int64)[order])
        """(N,) last-level edge id -> item index."""

    def to(self, device: torch.device | str) -> SidTrie:
        """Move the tables to ``device`` (in place); returns self."""
        for lst in (self.offsets, self.tokens, self.keys):
            lst[:] = [t.to(device) for t in lst]
        self.items = self.items.to(device)
        return self

    def root(self, batch: int) -> torch.Tensor:
        """(batch,) root node ids."""
        return torch.zeros(batch, dtype=torch.long, device=self.items.device)

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """Where each token leads from each prefix.

        Args:
            level: the level of the next token (0 for the first).
            nodes: (M,) level-``level`` node ids (``-1``: a dead beam, nothing allowed).

        Returns:
            (M, K_level) int64: the child node of each (prefix, token), ``-1`` where that prefix does not
            exist; at the last level the children are item indices.
        """
        off = self.offsets[level]
        alive = nodes >= 0
        safe = nodes.clamp(min=0)
        start, count = off[safe], (off[safe + 1] - off[safe]) * alive
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), count)  # (E,)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        edges = torch.repeat_interleave(start, count) + torch.arange(len(rows), device=nodes.device) - first
        out = torch.full((len(nodes), self.level_sizes[level]), -1, dtype=torch.long, device=nodes.device)
        out[rows, self.tokens[level][edges]] = self.items[edges] if level == self.levels - 1 else edges
        return out

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M, K_level) bool: which tokens may follow each of the (M,) level-``level`` prefixes (``-1``: dead)."""
        return self.children(level, nodes) >= 0

    def step(self, level: int, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Follow one token: (M,) level-``level`` nodes and (M,) tokens -> (M,) child nodes (``-1`` if absent).

        At the last level the children are item indices.
        """
        keys = self.keys[level]
        query = nodes * self.level_sizes[level] + tokens
        pos = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        found = (keys[pos] == query) & (nodes >= 0) & (tokens >= 0) & (tokens < self.level_sizes[level])
        child = self.items[pos] if level == self.levels - 1 else pos
        return torch.where(found, child, torch.full_like(child, -1))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(M, L) SIDs -> (M,) item indices, ``-1`` for a SID that does not exist."""
        nodes = self.root(len(codes))
        for j in range(self.levels):
            nodes = self.step(j, nodes, codes[:, j])
        return nodes
