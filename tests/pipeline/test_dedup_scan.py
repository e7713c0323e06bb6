"""The exhaustive scan's shortcut: the first free path in the scan's order, found without ordering every path."""

from __future__ import annotations

import numpy as np
import pytest

from movielens_sids import path_scan
from movielens_sids.path_scan import PathSpace


@pytest.mark.parametrize("levels", [3, 4])
@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_first_free_is_the_first_free_path_of_the_whole_order(seed, blocks, levels, monkeypatch):
    """Several movies at once, with equal distances, from an empty to a full space; ``blocks`` makes every range
    of more than 4 paths go through the bounded block reads."""
    if blocks:
        monkeypatch.setattr(path_scan, "WHOLE_RANGE", 4)
    rng = np.random.default_rng(seed)
    k, h = (24, 4) if levels == 3 else (10, 3)
    codebooks = rng.normal(size=(levels, k, h)) * 0.6 ** np.arange(levels)[:, None, None]  # residual-like scales
    codebooks[1, 1], codebooks[0, 3] = codebooks[1, 2], codebooks[0, 0]  # equal distances: the lower id wins
    if seed % 3 == 0:
        codebooks = codebooks.round(0)  # many equal distances, also between blocks and their bounds
    space = PathSpace(codebooks, rng.normal(size=(levels, k)) * 0.1 if seed % 2 else None)
    for fill in (0.0, 0.5, 0.9, 0.99, 1.0):
        taken = rng.random(k ** levels) < fill
        z, codes = rng.normal(size=(16, h)).round(1), rng.integers(0, k, size=(16, levels))  # (B, H), (B, L)
        taken[np.ravel_multi_index(codes.T, (k,) * levels)] = fill > 0  # the greedy paths themselves taken
        if seed % 2:  # and their whole first-level blocks: every movie scans the whole space
            taken.reshape(k, -1)[codes[:, 0]] = fill > 0
        want = [next((p for p in space.order(z[i], codes[i]) if not taken[p]), -1) for i in range(len(z))]
        assert space.first_free(z, codes, taken).tolist() == want
        assert [int(space.first_free(z[i:i + 1], codes[i:i + 1], taken)[0]) for i in range(len(z))] == want
