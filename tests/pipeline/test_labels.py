"""Names for SID prefixes (labels.py): deterministic, one for every used code, made as documented."""

from __future__ import annotations

import numpy as np

from movielens_sids.labels import build_labels, by_prefix, prefix_lines, prefix_string
from movielens_sids.reports.markdown import labels_markdown


def catalog(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = np.stack([rng.integers(0, 4, n), rng.integers(0, 5, n), np.arange(n)], axis=1)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    genres = [["Horror"] if t == 0 else (["Comedy", "Drama"] if t % 2 else ["Drama"]) for t in tokens[:, 0]]
    tags = [["zombies"] if (t == 0 and i % 2) else [] for i, t in enumerate(tokens[:, 0])]
    tags[5] = ["one-off"]  # one movie: never enough support to name a code
    years = [None if i % 11 == 0 else 1950 + (i % 60) for i in range(n)]
    titles = [f"Film {i} ({years[i]})" for i in range(n)]
    return tokens, x, titles, genres, years, tags


def test_every_used_code_and_second_level_code_has_a_label():
    tokens, x, titles, genres, years, tags = catalog()
    labels = by_prefix(build_labels(tokens, x, titles, genres, years, tags))
    for row in tokens:
        for d in (1, 2):
            r = labels[tuple(int(c) for c in row[:d])]
            assert r["label"] and r["sid_prefix"] == prefix_string(tuple(row[:d]))
            assert 1 <= len(r["titles"]) <= 3
    want = {(int(c),) for c in tokens[:, 0]} | {tuple(map(int, r)) for r in tokens[:, :2]}
    assert set(labels) == want
    assert sum(r["n_movies"] for p, r in labels.items() if len(p) == 1) == len(tokens)


def test_labels_are_deterministic_and_independent_of_row_order():
    tokens, x, titles, genres, years, tags = catalog()
    a = build_labels(tokens, x, titles, genres, years, tags)
    assert a == build_labels(tokens, x, titles, genres, years, tags)
    perm = np.random.default_rng(3).permutation(len(tokens))
    b = build_labels(tokens[perm], x[perm], [titles[i] for i in perm], [genres[i] for i in perm],
                     [years[i] for i in perm], [tags[i] for i in perm])
    assert a == b


def test_lift_support_years_and_titles():
    tokens, x, titles, genres, years, tags = catalog()
    labels = by_prefix(build_labels(tokens, x, titles, genres, years, tags))
    horror = labels[(0,)]
    assert horror["genres"][0] == "Horror" and horror["tags"] == ["zombies"]
    assert all("one-off" not in r["tags"] for r in labels.values())
    rows = np.flatnonzero(tokens[:, 0] == 0)
    known = sorted(years[i] for i in rows if years[i] is not None)
    assert known[0] <= horror["year_min"] <= horror["year_max"] <= known[-1]
    # The first title is the movie nearest (cosine) to the code's mean embedding.
    xn = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
    assert horror["titles"][0] == titles[rows[np.argmax(xn @ xn.mean(0))]]
    text = labels_markdown(list(labels.values()))
    assert "`<a_0>`" in text and "Horror" in text
    assert prefix_lines(labels, [0, 1, 2])[0].startswith("<a_0>")
