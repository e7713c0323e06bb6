"""The PNG charts of ``report.md`` (matplotlib, Agg backend: no display needed).

May import: io; matplotlib on first use (Agg backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", metadata={"Software": None})  # no version string: same data, same bytes
    plt.close(fig)


def code_usage_chart(code_counts: np.ndarray, path: Path) -> None:
    """Movies per code, each level's codes sorted from most to least used. code_counts: (L, K)."""
    plt, fig, ax = _figure()
    k = code_counts.shape[1]
    for level, counts in enumerate(code_counts):
        c = np.sort(counts)[::-1]
        used = int((c > 0).sum())
        ax.plot(np.arange(1, k + 1), np.maximum(c, 0.8), label=f"level {level + 1} ({used}/{k} used)")
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("movies (log)")
    ax.set_title("Code usage per level (flat = codes used evenly)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def collision_bars(group_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group size s, movies in groups of size s) for every size that occurs: the bars of the chart, placed
    at s itself on a numeric axis (a gap from 8 to 12 shows as a gap)."""
    sizes = np.bincount(np.asarray(group_sizes, dtype=np.int64))
    s = np.flatnonzero(sizes)
    return s, s * sizes[s]


def collision_chart(group_sizes: np.ndarray, path: Path) -> None:
    """How many movies sit in a raw code tuple shared by s movies, for each group size s."""
    from matplotlib.ticker import MaxNLocator

    plt, fig, ax = _figure()
    s, movies = collision_bars(group_sizes)
    ax.bar(s, movies, width=0.8, color="#4c72b0")
    ax.set_xlim(0.4, max(int(s.max()) if len(s) else 1, 1) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("movies sharing the same raw codes (group size)")
    ax.set_ylabel("movies (log)")
    ax.set_title("Collisions before making the IDs unique (1 = unique)")
    _save(plt, fig, path)


def shared_prefix_chart(hist: np.ndarray, levels: int, path: Path) -> None:
    """Share of (movie, embedding neighbour) pairs by the number of leading SID tokens they share."""
    plt, fig, ax = _figure()
    hist = np.asarray(hist, dtype=np.float64)
    share = hist / max(hist.sum(), 1.0)
    labels = [str(d) if d <= levels else f"{d} (suffix)" for d in range(len(hist))]
    ax.bar(np.arange(len(hist)), share, color="#55a868")
    ax.set_xticks(np.arange(len(hist)), labels)
    for i, v in enumerate(share):
        ax.text(i, v, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("SID tokens shared with an embedding neighbour")
    ax.set_ylabel("share of the 10 nearest neighbours")
    ax.set_title("Do embedding neighbours share SID prefixes?")
    _save(plt, fig, path)


def write_charts(run_dir: Path, data: dict, names: dict[str, str], *, levels: int) -> dict[str, str]:
    """Write the three charts into ``run_dir`` (atomically); returns ``{chart: file name}``."""
    run_dir = Path(run_dir)
    code_usage_chart(data["code_counts"], run_dir / names["code_usage"])
    collision_chart(data["group_sizes"], run_dir / names["collisions"])
    shared_prefix_chart(data["shared_hist"], levels, run_dir / names["shared_prefix"])
    return dict(names)


def recall_curve_chart(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Recall@K for K = 1..len, one line per method, one panel per slice. curves: {slice: {method: [values]}}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), dpi=110, squeeze=False)
    for ax, (slice_name, by_method) in zip(axes[0], curves.items()):
        for method, values in by_method.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=method)
        ax.set_xlabel("K")
        ax.set_title(f"{slice_name} events")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Recall@K")
    axes[0][-1].legend(fontsize=7)
    _save(plt, fig, path)
