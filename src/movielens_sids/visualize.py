"""``visualize``: ``visualization.html``, an interactive UMAP map of the catalog coloured by Semantic ID.

One self-contained page (SPEC section 3): plotly.js is inlined and nothing is fetched from the
network (no CDN, no MathJax, no web fonts), so it opens from a laptop, an e-mail attachment or a
Hub repo alike. The points are one WebGL (``scattergl``) trace coloured by first token, so the
87,585 movies of MovieLens-32M stay responsive; hovering shows title, year, genres and the full
SID. A drop-down highlights one first-token cluster and colours it by second token, and a search
box marks movies by title. Every string that comes from the data is HTML-escaped before plotly
renders it (plotly's hover labels understand a few HTML tags), so a title like
``<img src=x onerror=alert(1)>`` is shown as text and runs nothing.

UMAP (seeded, cosine) runs on the first ``pca_dims`` principal components of the embeddings
(default 50): on 87,585 x 384 vectors and two cores that keeps the whole stage near two minutes,
and the map's neighbourhoods barely change. The coordinates are cached in ``.cache/`` keyed by
the embeddings' hash and the UMAP settings, so re-running after a new ``assign`` only redraws.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import html
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import SidsError
from .io import atomic_path, file_hash, read_parquet, write_text

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

HELP = "write visualization.html: an interactive UMAP map of the movies coloured by Semantic ID (works offline)"

CACHE_DIR = ".cache"


@dataclass
class VisualizeConfig:
    """Settings of the visualize stage (UMAP and the page)."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"cache"})

    n_neighbors: int = 15
    """UMAP: size of the local neighbourhood (larger keeps more global structure)."""
    min_dist: float = 0.1
    """UMAP: how tightly points may be packed in the map."""
    metric: str = "cosine"
    """UMAP: distance between (PCA-reduced) embeddings."""
    pca_dims: int = 50
    """Reduce the embeddings to this many principal components before UMAP (0: use them as they are)."""
    n_epochs: int | None = None
    """UMAP optimisation epochs (None: UMAP's default, 200 for large catalogs)."""
    low_memory: bool = True
    """UMAP: the nearest-neighbour search variant that needs less memory."""
    seed: int = 0
    """Seed of the PCA, UMAP and the sample (same seed, same map)."""
    sample: int | None = None
    """Draw only this many movies, chosen reproducibly (for catalogs far larger than MovieLens-32M)."""
    point_size: float = 3.0
    """Marker size in pixels."""
    cache: bool = True
    """Reuse UMAP coordinates cached in ``.cache/`` for the same embeddings and settings."""

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors: must be >= 2, got {self.n_neighbors}")
        if not 0 <= self.min_dist <= 1:
            raise ValueError(f"min_dist: must be in [0, 1], got {self.min_dist}")
        if self.pca_dims < 0:
            raise ValueError(f"pca_dims: must be >= 0, got {self.pca_dims}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ValueError(f"n_epochs: must be >= 1 or None, got {self.n_epochs}")
        if self.sample is not None and self.sample < 2:
            raise ValueError(f"sample: must be >= 2 or None, got {self.sample}")
        if self.point_size <= 0:
            raise ValueError(f"point_size: must be > 0, got {self.point_size}")
        if self.metric not in ("cosine", "euclidean", "correlation", "manhattan"):
            raise ValueError(f"metric: must be cosine, euclidean, correlation or manhattan, got {self.metric!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import flag  # config imports this module for VisualizeConfig

    flag(p, "--sample", key="visualize.sample", type=int, metavar="N",
         help="draw only N movies, chosen reproducibly (for very large catalogs)")
    flag(p, "--n-neighbors", key="visualize.n_neighbors", type=int, help="UMAP neighbourhood size (default 15)")
    flag(p, "--seed", key="visualize.seed", type=int, help="seed of PCA, UMAP and the sample (default 0)")


def command(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    from .stages import execute

    result = execute("visualize", cfg, run_dir)
    log.info("%s: %d movies, %.1f MB", run_dir / "visualization.html", result["n_points"],
             result["html_bytes"] / 1e6)
    return 0


# --------------------------------------------------------------------------------------------------
# Inputs


def _load(run_dir: Path) -> dict[str, Any]:
    """Catalog, embeddings and SIDs of a run folder, aligned by movie_id and validated (writes nothing)."""
    from .evaluate import _check_same_movies, _embedding_matrix, _sorted_by_id, movielens_title

    cat_path, emb_path, sid_path = (run_dir / n for n in ("catalog.parquet", "embeddings.parquet", "sids.parquet"))
    catalog = _sorted_by_id(read_parquet(cat_path, "catalog"))
    emb = _sorted_by_id(read_parquet(emb_path, "embed"))
    sids = _sorted_by_id(read_parquet(sid_path, "assign"))
    for table, path, cols in ((catalog, cat_path, ("movie_id", "title", "year", "genres")),
                              (sids, sid_path, ("movie_id", "semantic_id", "sid"))):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise SidsError(f"{path} lacks columns {', '.join(missing)}")
    if catalog.num_rows == 0:
        raise SidsError(f"{cat_path} is an empty catalog")
    ids = _check_same_movies(catalog, cat_path, ((emb, emb_path, "embed"), (sids, sid_path, "assign")))
    x = _embedding_matrix(emb, emb_path)
    sem = sids.column("semantic_id")
    if sem.null_count or (np.asarray(sem.combine_chunks().value_lengths().fill_null(0)) == 0).any():
        raise SidsError(f"{sid_path}: some movies have an empty semantic_id: run `movielens-sids assign` again")
    shown = catalog.column("display_title").to_pylist() if "display_title" in catalog.column_names else None
    titles = catalog.column("title").to_pylist()
    years = catalog.column("year").to_pylist()
    return {
        "x": x,
        "movie_ids": ids,
        "titles": [movielens_title(t, y) for t, y in zip(titles, years)],
        "display": [(d or t) for d, t in zip(shown or titles, titles)],
        "years": years,
        "genres": [g or [] for g in catalog.column("genres").to_pylist()],
        "tokens": _token_matrix(sem),
        "emb_path": emb_path,
    }


def _token_matrix(column) -> np.ndarray:
    """(N, T) int64 SID tokens from a list<int> column, -1 past a movie's length (vectorised)."""
    col = column.combine_chunks()
    lengths = np.asarray(col.value_lengths().fill_null(0), dtype=np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full((len(col), int(lengths.max())), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(col)), lengths)
    out[rows, np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = values
    return out


# --------------------------------------------------------------------------------------------------
# UMAP


def sample_indices(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the movies to draw: all of them, or a seeded sample of ``sample``."""
    if sample is None or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def umap_coordinates(x: np.ndarray, cfg: VisualizeConfig) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) float32 UMAP coordinates (PCA first when ``cfg.pca_dims``)."""
    import umap  # slow import (numba): only when a map is computed

    n = len(x)
    if n <= cfg.n_neighbors:
        raise SidsError(f"UMAP needs more movies ({n}) than visualize.n_neighbors ({cfg.n_neighbors}); "
                        "lower it with --n-neighbors")
    z = x
    if cfg.pca_dims and x.shape[1] > cfg.pca_dims and n > cfg.pca_dims:
        from sklearn.decomposition import PCA

        z = PCA(n_components=cfg.pca_dims, random_state=cfg.seed).fit_transform(x)  # (N, pca_dims)
    reducer = umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=cfg.metric,
                        n_epochs=cfg.n_epochs, low_memory=cfg.low_memory, random_state=cfg.seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(z), dtype=np.float32)


def _umap_cache_key(emb_hash: str, cfg: VisualizeConfig, idx: np.ndarray) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k in (
        "n_neighbors", "min_dist", "metric", "pca_dims", "n_epochs", "low_memory", "seed")}
    h = hashlib.sha256(json.dumps({"embeddings": emb_hash, "umap": settings}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def cached_umap(x: np.ndarray, cfg: VisualizeConfig, *, emb_hash: str, idx: np.ndarray,
                cache_dir: Path | None) -> tuple[np.ndarray, bool]:
    """UMAP coordinates of ``x[idx]``, from ``cache_dir`` when the same embeddings and settings were mapped."""
    path = None
    if cache_dir is not None:
        path = cache_dir / f"umap-{_umap_cache_key(emb_hash, cfg, idx)}.npy"
        if path.is_file():
            try:
                coords = np.load(path, allow_pickle=False)
                if coords.shape == (len(idx), 2) and np.isfinite(coords).all():
                    log.info("UMAP coordinates read from %s", path)
                    return coords, True
            except (OSError, ValueError):
                pass
            log.info("ignoring invalid cache %s", path)
    t0 = time.perf_counter()
    coords = umap_coordinates(x[idx], cfg)
    log.info("UMAP of %d movies in %.1fs", len(idx), time.perf_counter() - t0)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, coords)
    return coords, False


# --------------------------------------------------------------------------------------------------
# The page


def palette(k: int) -> list[str]:
    """``k`` distinct colours: hues spaced by the golden angle, alternating lightness, so neighbouring
    code numbers (which mean nothing) never get similar colours."""
    out = []
    for i in range(k):
        h = (i * 0.618033988749895) % 1.0
        light = (0.42, 0.55, 0.66)[i % 3]
        sat = (0.85, 0.65)[(i // 3) % 2]
        r, g, b = colorsys.hls_to_rgb(h, light, sat)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element: with no ``<`` left, no ``</script>`` or ``<!--`` can appear.

    (The page's strings are HTML-escaped already, so this never costs a byte on real data.)
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def hover_fields(data: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    """The hover label's parts for the drawn movies, compact (the page assembles the labels).

    Titles and genres are HTML-escaped here (plotly renders a few tags in hover labels), genre lists
    are stored once each and referenced by number, and SIDs travel as their integer tokens.
    """
    esc = html.escape
    table: dict[str, int] = {}
    genre_ref = []
    for i in idx.tolist():
        g = esc(", ".join(data["genres"][i]) or "(no genres)")
        genre_ref.append(table.setdefault(g, len(table)))
    return {
        "title": [esc(data["display"][i]) for i in idx.tolist()],
        "year": [None if data["years"][i] is None else int(data["years"][i]) for i in idx.tolist()],
        "genre": genre_ref,
        "genres": list(table),
        "tokens": [col[idx].tolist() for col in data["tokens"].T],  # T lists, -1 past a movie's length
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { display: flex; flex-direction: column; }
  header { padding: 6px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: center;
           flex-wrap: wrap; }
  header h1 { font-size: 15px; margin: 0; }
  #map { width: 100%; flex: 1 1 auto; min-height: 300px; }
  #status { color: #555; }
</style>
<script>__PLOTLYJS__</script>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span>__SUBTITLE__</span>
  <label>Highlight first token <select id="cluster"><option value="-1">all clusters (colour = first token)</option>
  </select></label>
  <label>Find <input id="find" type="search" placeholder="title, e.g. Matrix" size="24"></label>
  <span id="status"></span>
</header>
<div id="map"></div>
<script type="application/json" id="sid-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("sid-data").textContent);
  var n = D.x.length, K = D.palette.length, gd = document.getElementById("map");
  // Hover labels from their parts; every string in D is HTML-escaped already, tokens are integers.
  var letters = "abcdefghijklmnopqrstuvwxyz", T = D.tokens.length;
  D.l1 = D.tokens[0];
  D.l2 = T > 1 ? D.tokens[1] : D.l1;
  D.text = new Array(n);
  D.search = new Array(n);
  for (var i = 0; i < n; i++) {
    var sid = "";
    for (var p = 0; p < T && D.tokens[p][i] >= 0; p++) sid += "&lt;" + letters[p] + "_" + D.tokens[p][i] + "&gt;";
    var named = D.labels[D.l1[i]] || "", named2 = T > 1 ? (D.labels2[D.l1[i] + "," + D.l2[i]] || "") : "";
    D.text[i] = "<b>" + D.title[i] + "</b>" + (D.year[i] === null ? "" : " (" + D.year[i] + ")") + "<br>" +
                D.genres[D.genre[i]] + "<br>" + sid + (named ? "<br><i>a_" + D.l1[i] + ": " + named + "</i>" : "") +
                (named2 ? "<br><i>b_" + D.l2[i] + ": " + named2 + "</i>" : "");
    D.search[i] = D.title[i].replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&").toLowerCase();
  }
  var scale = D.palette.map(function (c, i) { return [K > 1 ? i / (K - 1) : 0, c]; });
  if (K === 1) scale.push([1, D.palette[0]]);
  var sizes = {};
  for (i = 0; i < n; i++) sizes[D.l1[i]] = (sizes[D.l1[i]] || 0) + 1;
  var select = document.getElementById("cluster");
  Object.keys(sizes).map(Number).sort(function (a, b) { return a - b; }).forEach(function (c) {
    var o = document.createElement("option");
    o.value = String(c);
    o.textContent = "a_" + c + " (" + sizes[c] + " movies)" + (D.labels[c] ? ": " + D.labels[c] : "");
    select.appendChild(o);
  });
  function pick(idx, arr) { return idx.map(function (i) { return arr[i]; }); }
  var hover = "%{text}<extra></extra>";
  var base = { type: "scattergl", mode: "markers", x: D.x, y: D.y, text: D.text, hovertemplate: hover,
               showlegend: false, name: "movies",
               marker: { color: D.l1, colorscale: scale, cmin: 0, cmax: Math.max(K - 1, 1), size: D.size,
                         opacity: 0.85 } };
  var hi = { type: "scattergl", mode: "markers", x: [], y: [], text: [], hovertemplate: hover, showlegend: false,
             name: "cluster", marker: { color: [], colorscale: scale, cmin: 0, cmax: Math.max(K - 1, 1),
                                        size: D.size + 2, opacity: 1 } };
  var found = { type: "scattergl", mode: "markers", x: [], y: [], text: [], hovertemplate: hover,
                showlegend: false, name: "found",
                marker: { symbol: "star", size: 16, color: "#111", line: { color: "#fff", width: 1 } } };
  // Each first token's label at the median of its movies on the map (tags decoded: textContent-like).
  var names = { type: "scatter", mode: "text", x: D.centres.x, y: D.centres.y, text: D.centres.text,
                textfont: { size: 11, color: "#111" }, hoverinfo: "skip", showlegend: false, name: "labels" };
  var layout = { margin: { l: 8, r: 8, t: 8, b: 8 }, hovermode: "closest", dragmode: "pan",
                 xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" },
                 plot_bgcolor: "#fff", paper_bgcolor: "#fff" };
  var status = document.getElementById("status");
  function selectCluster(c) {
    select.value = String(c);
    if (c < 0) {
      status.textContent = "";
      return Plotly.update(gd, { "marker.color": [D.l1, []], "marker.opacity": [0.85, 1], x: [D.x, []],
                                 y: [D.y, []], text: [D.text, []] }, {}, [0, 1]);
    }
    var idx = [];
    for (var i = 0; i < n; i++) if (D.l1[i] === c) idx.push(i);
    status.textContent = "a_" + c + ": " + idx.length + " movies, coloured by second token";
    return Plotly.update(gd, { "marker.color": ["#c8c8c8", pick(idx, D.l2)], "marker.opacity": [0.25, 1],
                               x: [D.x, pick(idx, D.x)], y: [D.y, pick(idx, D.y)], text: [D.text, pick(idx, D.text)] },
                         {}, [0, 1]);
  }
  function find(q) {
    q = q.trim().toLowerCase();
    var idx = [];
    if (q) for (var i = 0; i < n; i++) if (D.search[i].indexOf(q) >= 0) idx.push(i);
    if (q) status.textContent = idx.length + " movies match \u201c" + q + "\u201d";
    return Plotly.restyle(gd, { x: [pick(idx, D.x)], y: [pick(idx, D.y)], text: [pick(idx, D.text)] }, [2]);
  }
  select.addEventListener("change", function () { selectCluster(Number(select.value)); });
  document.getElementById("find").addEventListener("change", function (e) { find(e.target.value); });
  var ready = Plotly.newPlot(gd, [base, hi, found, names], layout,
                             { responsive: true, displaylogo: false, scrollZoom: true, showLink: false,
                               showSendToCloud: false, modeBarButtonsToRemove: ["sendDataToCloud"],
                               toImageButtonOptions: { filename: "sid-map" } })
    .then(function () { document.body.setAttribute("data-ready", String(n)); return gd; });
  window.sidMap = { ready: ready, selectCluster: selectCluster, find: find, data: D, plot: gd };
})();
</script>
</body>
</html>
"""


def render_page(data: dict[str, Any], idx: np.ndarray, coords: np.ndarray, *, title: str, point_size: float,
                labels: dict[tuple[int, ...], dict[str, Any]] | None = None) -> str:
    """The self-contained HTML page for the movies ``idx`` at ``coords`` (N, 2); ``labels`` by prefix
    (``labels.py``) name the first tokens on the map and both levels in the hover."""
    from plotly.offline import get_plotlyjs

    from .labels import map_labels

    k = int(data["tokens"][:, :2].max()) + 1
    payload = {
        "x": np.round(coords[:, 0].astype(np.float64), 3).tolist(),
        "y": np.round(coords[:, 1].astype(np.float64), 3).tolist(),
        **hover_fields(data, idx),
        "palette": palette(k),
        "size": point_size,
        **map_labels(labels or {}, data["tokens"][idx], coords),
    }
    n_all = len(data["tokens"])
    shown = f"{len(idx):,} of {n_all:,} movies (sample)" if len(idx) < n_all else f"{n_all:,} movies"
    subtitle = f"{shown}, UMAP of the embeddings; colour = first SID token; hover for title, genres, SID and labels"
    plotlyjs = get_plotlyjs()
    if "</script" in plotlyjs.lower():  # never expected; it would end the inline script early
        raise SidsError("the installed plotly.js cannot be inlined safely")
    values = {"PLOTLYJS": plotlyjs, "TITLE": html.escape(title), "SUBTITLE": html.escape(subtitle),
              "DATA": _script_json(payload)}
    # One pass over the template: an inserted value is never scanned for placeholders.
    return re.sub(r"__([A-Z]+)__", lambda m: values[m.group(1)], _PAGE)


def visualize_stage(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Compute (or read from the cache) the UMAP map of a run folder and write ``visualization.html``.

    Returns:
        ``n_points``, ``html_bytes``, ``umap_cached``.
    """
    run_dir = Path(run_dir)
    vcfg: VisualizeConfig = cfg.visualize
    data = _load(run_dir)
    n = len(data["x"])
    idx = sample_indices(n, vcfg.sample, vcfg.seed)
    if len(idx) <= vcfg.n_neighbors:
        raise SidsError(f"UMAP needs more movies ({len(idx)}) than visualize.n_neighbors ({vcfg.n_neighbors}); "
                        "lower it with --n-neighbors")
    coords, cached = cached_umap(data["x"], vcfg, emb_hash=file_hash(data["emb_path"]), idx=idx,
                                 cache_dir=(run_dir / CACHE_DIR) if vcfg.cache else None)
    from .labels import labels_for_run

    page = render_page(data, idx, coords, title=f"Semantic IDs map: {run_dir.resolve().name}",
                       point_size=vcfg.point_size, labels=labels_for_run(run_dir))
    write_text(run_dir / "visualization.html", page)
    return {"n_points": int(len(idx)), "html_bytes": len(page.encode("utf-8")), "umap_cached": cached}
