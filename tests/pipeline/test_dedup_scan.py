"""The exhaustive scan's shortcut: the first free path in the scan's order, found without ordering every path."""

from __future__ import annotations

import numpy as np
import pytest

from movielens_sids.dedup import _PathSpace


@pytest.mark.parametrize("seed", range(6))
def test_first_free_is_the_first_free_path_of_the_whole_order(seed):
    rng = np.random.default_rng(seed)
    levels, k, h = 3, 6, 4
    codebooks = rng.normal(size=(levels, k, h))
    codebooks[1, 3] = codebooks[1, 4]  # equal distances: the lower path id must win, as in the order
    space = _PathSpace(codebooks, rng.normal(size=(levels, k)) * 0.1 if seed % 2 else None)
    for fill in (0.0, 0.5, 0.9, 0.99, 1.0):
        taken = rng.random(k ** levels) < fill
        z, codes = rng.normal(size=h), rng.integers(0, k, size=levels)
        taken[int(np.ravel_multi_index(codes, (k,) * levels))] = fill > 0  # the greedy path itself taken
        want = next((p for p in space.order(z, codes) if not taken[p]), -1)
        assert space.first_free(z, codes, taken) == want
