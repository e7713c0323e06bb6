"""``visualization.html``: the single writer of the UMAP map page (one self-contained HTML file).

plotly draws the map (``plotly.io.to_html`` with plotly.js inlined: nothing is fetched from the network,
no CDN, no MathJax, no web fonts); a short script run after the plot (``post_script``) wires the search
box and the first-token picker. Every string that comes from the data is HTML-escaped before plotly
renders it, and plotly's JSON escapes ``<``, so no title can end a script or become markup.

May import: errors, labels (the map's label data); plotly (imported on first use: it is large).
"""

from __future__ import annotations

import colorsys
import html
import itertools
from typing import Any

import numpy as np

from ..errors import SidsError
from ..labels import map_labels

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HOVER = "<b>%{customdata[0]}</b>%{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}%{customdata[4]}<extra></extra>"
"""The hover label from each movie's parts (`hover_parts`): title (year), genres, SID, the names of its codes."""
CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": True, "showSendToCloud": False,
          "modeBarButtonsToRemove": ["sendDataToCloud"], "toImageButtonOptions": {"filename": "sid-map"}}
"""plotly.js settings: no logo, no cloud button, zoom with the wheel."""


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


def hover_parts(data: dict[str, Any], idx: np.ndarray, labels: dict[str, Any]) -> list[list[str]]:
    """Each drawn movie's hover parts (`HOVER`): title, " (year)", genres, SID, and the names of its first
    two codes (``<br><i>a_3: ...</i>``, empty when unnamed).

    Titles and genres are HTML-escaped here (plotly renders a few tags in hover labels); ``labels`` come
    from `labels.map_labels`, escaped already.
    """
    esc, lab1, lab2 = html.escape, labels["labels"], labels["labels2"]
    out = []
    for i, row in zip(idx.tolist(), data["tokens"][idx].tolist()):
        year = data["years"][i]
        sid = "".join(f"&lt;{LETTERS[p]}_{t}&gt;" for p, t in enumerate(itertools.takewhile(lambda t: t >= 0, row)))
        named = f"<br><i>a_{row[0]}: {lab1[row[0]]}</i>" if lab1.get(row[0]) else ""
        if len(row) > 1 and lab2.get(f"{row[0]},{row[1]}"):
            named += f"<br><i>b_{row[1]}: {lab2[f'{row[0]},{row[1]}']}</i>"
        out.append([esc(data["display"][i]), "" if year is None else f" ({int(year)})",
                    esc(", ".join(data["genres"][i]) or "(no genres)"), sid, named])
    return out


def map_figure(data: dict[str, Any], idx: np.ndarray, coords: np.ndarray, *, point_size: float,
               labels: dict[tuple[int, ...], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The plotly figure (as a dict): every movie coloured by first token (trace 0), the highlighted
    cluster (1), the search hits (2) and first tokens' names at the median of their movies (3: the page's
    script keeps those that do not overlap, larger clusters first).
    ``layout.meta`` holds what the page's script needs: first and second tokens, lower-case titles, the
    code labels and every name's place (``centres``)."""
    tokens = data["tokens"][idx]
    named = map_labels(labels or {}, tokens, coords)
    centres = _by_size(named["centres"], tokens[:, 0])
    k = int(data["tokens"][:, :2].max()) + 1
    scale = [[i / (k - 1) if k > 1 else 0, c] for i, c in enumerate(palette(k))] + ([[1, palette(1)[0]]] if k == 1
                                                                                   else [])
    colour = {"colorscale": scale, "cmin": 0, "cmax": max(k - 1, 1)}
    l1 = tokens[:, 0].tolist()
    common = {"type": "scattergl", "mode": "markers", "hovertemplate": HOVER, "showlegend": False}
    traces = [
        {**common, "name": "movies", "x": np.round(coords[:, 0].astype(np.float64), 3).tolist(),
         "y": np.round(coords[:, 1].astype(np.float64), 3).tolist(), "customdata": hover_parts(data, idx, named),
         "marker": {"color": l1, **colour, "size": point_size, "opacity": 0.85}},
        {**common, "name": "cluster", "x": [], "y": [], "customdata": [],
         "marker": {"color": [], **colour, "size": point_size + 2, "opacity": 1}},
        {**common, "name": "found", "x": [], "y": [], "customdata": [],
         "marker": {"symbol": "star", "size": 16, "color": "#111", "line": {"color": "#fff", "width": 1}}},
        {"type": "scatter", "mode": "text", "name": "labels", "x": [], "y": [], "text": [],
         "textfont": {"size": LABEL_SIZE, "family": LABEL_FONT, "color": "#111"}, "hoverinfo": "skip",
         "showlegend": False},
    ]
    layout = {"margin": {"l": 8, "r": 8, "t": 8, "b": 8}, "hovermode": "closest", "dragmode": "pan",
              # fixed ranges (the names shown change, and must not move the axes they are placed on)
              "xaxis": {"visible": False, "range": _padded(coords[:, 0])},
              "yaxis": {"visible": False, "scaleanchor": "x", "range": _padded(coords[:, 1])},
              "plot_bgcolor": "#fff", "paper_bgcolor": "#fff",
              "meta": {"l1": l1, "l2": (tokens[:, 1] if tokens.shape[1] > 1 else tokens[:, 0]).tolist(),
                       "search": [str(data["display"][i]).lower() for i in idx.tolist()],
                       "labels": named["labels"], "labels2": named["labels2"], "centres": centres,
                       "label_size": LABEL_SIZE, "label_font": LABEL_FONT}}
    return {"data": traces, "layout": layout}


def _padded(v: np.ndarray) -> list[float]:
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    pad = 0.04 * (hi - lo or 1.0)
    return [round(lo - pad, 3), round(hi + pad, 3)]


LABEL_SIZE = 11
"""Font size of the first tokens' names on the map (px)."""
LABEL_FONT = "Arial, Helvetica, sans-serif"
"""Their font: the page measures the names in it to keep them apart."""


def _by_size(centres: dict[str, list], first: np.ndarray) -> dict[str, list]:
    """The names' places with each one's first code and movie count, the largest cluster first (the page
    places names in this order and skips one that would overlap a name already placed)."""
    codes = [int(t.split(" ", 1)[0][2:]) for t in centres["text"]]  # "a_12 Drama" -> 12
    counts = dict(zip(*np.unique(first, return_counts=True)))
    order = sorted(range(len(codes)), key=lambda i: (-int(counts.get(codes[i], 0)), codes[i]))
    return {"x": [centres["x"][i] for i in order], "y": [centres["y"][i] for i in order],
            "text": [centres["text"][i] for i in order], "code": [codes[i] for i in order]}


# Runs once the plot is drawn: the first-token picker and the search box restyle traces 1 and 2.
_WIRING = """
var gd = document.getElementById("{plot_id}"), M = gd.layout.meta, base = gd.data[0];
var D = {x: base.x, y: base.y, hover: base.customdata, l1: M.l1, l2: M.l2, search: M.search, labels: M.labels,
         labels2: M.labels2};
var n = D.x.length, select = document.getElementById("cluster"), status = document.getElementById("status");
function pick(idx, arr) { return idx.map(function (i) { return arr[i]; }); }
// The first tokens' names: placed at their clusters' centres, the largest cluster first, each one kept only if
// its box overlaps no name already placed (at the current zoom: placed again after every zoom or pan);
// with a cluster highlighted, only its name.
// Pixels from the public layout: the ranges plotly settled on and the plot area (the div less its margins).
var C = M.centres, shown = -1, ruler = document.createElement("canvas").getContext("2d");
function placeLabels() {
  var L = gd.layout, m = L.margin, xr = L.xaxis.range, yr = L.yaxis.range, boxes = [], x = [], y = [], t = [];
  var W = gd.clientWidth - m.l - m.r, H = gd.clientHeight - m.t - m.b;
  ruler.font = M.label_size + "px " + M.label_font;
  for (var i = 0; i < C.x.length; i++) {
    if (shown >= 0 && C.code[i] !== shown) continue;
    var px = (C.x[i] - xr[0]) / (xr[1] - xr[0]) * W, py = (yr[1] - C.y[i]) / (yr[1] - yr[0]) * H;
    var w = ruler.measureText(C.text[i]).width / 2 + 4, h = M.label_size;
    var b = [px - w, py - h / 2 - 2, px + w, py + h / 2 + 2];
    if (boxes.some(function (o) { return b[0] < o[2] && o[0] < b[2] && b[1] < o[3] && o[1] < b[3]; })) continue;
    boxes.push(b); x.push(C.x[i]); y.push(C.y[i]); t.push(C.text[i]);
  }
  return Plotly.restyle(gd, { x: [x], y: [y], text: [t] }, [3]);
}
function selectCluster(c) {
  select.value = String(c);
  shown = c;
  if (c < 0) {
    status.textContent = "";
    return Plotly.update(gd, { "marker.color": [D.l1, []], "marker.opacity": [0.85, 1], x: [D.x, []],
                               y: [D.y, []], customdata: [D.hover, []] }, {}, [0, 1]).then(placeLabels);
  }
  var idx = [];
  for (var i = 0; i < n; i++) if (D.l1[i] === c) idx.push(i);
  status.textContent = "a_" + c + ": " + idx.length + " movies, coloured by second token";
  return Plotly.update(gd, { "marker.color": ["#c8c8c8", pick(idx, D.l2)], "marker.opacity": [0.25, 1],
                             x: [D.x, pick(idx, D.x)], y: [D.y, pick(idx, D.y)],
                             customdata: [D.hover, pick(idx, D.hover)] }, {}, [0, 1]).then(placeLabels);
}
function find(q) {
  q = q.trim().toLowerCase();
  var idx = [];
  if (q) for (var i = 0; i < n; i++) if (D.search[i].indexOf(q) >= 0) idx.push(i);
  if (q) status.textContent = idx.length + " movies match \\u201c" + q + "\\u201d";
  return Plotly.restyle(gd, { x: [pick(idx, D.x)], y: [pick(idx, D.y)], customdata: [pick(idx, D.hover)] }, [2]);
}
select.addEventListener("change", function () { selectCluster(Number(select.value)); });
document.getElementById("find").addEventListener("change", function (e) { find(e.target.value); });
gd.on("plotly_relayout", placeLabels);
window.addEventListener("resize", function () { setTimeout(placeLabels, 100); });
var ready = placeLabels().then(function () { document.body.setAttribute("data-ready", String(n)); return gd; });
window.sidMap = { ready: ready, selectCluster: selectCluster, find: find, data: D, plot: gd,
                  placeLabels: placeLabels };
"""

_STYLE = """
  html, body { margin: 0; height: 100%; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { display: flex; flex-direction: column; }
  header { padding: 6px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: center;
           flex-wrap: wrap; }
  header h1 { font-size: 15px; margin: 0; }
  #plot { flex: 1 1 auto; min-height: 300px; }
  #status { color: #555; }
"""


def _cluster_options(meta: dict[str, Any]) -> str:
    """The first-token picker's options: each drawn first token with its number of movies and its name
    (escaped by `labels.map_labels`)."""
    codes, counts = np.unique(np.asarray(meta["l1"], dtype=np.int64), return_counts=True)
    return "".join(f'<option value="{c}">a_{c} ({m} movies)' + (f": {meta['labels'][c]}" if c in meta["labels"] else "")
                   + "</option>" for c, m in zip(codes.tolist(), counts.tolist()))


def render_page(data: dict[str, Any], idx: np.ndarray, coords: np.ndarray, *, title: str, point_size: float,
                labels: dict[tuple[int, ...], dict[str, Any]] | None = None) -> str:
    """The self-contained HTML page for the movies ``idx`` at ``coords`` (N, 2); ``labels`` by prefix
    (``labels.py``) name the first tokens on the map and both levels in the hover."""
    from plotly.offline import get_plotlyjs

    if "</script" in get_plotlyjs().lower():  # never expected; it would end the inline script early
        raise SidsError("the installed plotly.js cannot be inlined safely")
    import plotly.io

    fig = map_figure(data, idx, coords, point_size=point_size, labels=labels)
    plot = plotly.io.to_html(fig, config=CONFIG, include_plotlyjs=True, include_mathjax=False, full_html=False,
                             div_id="map", default_width="100%", default_height="100%", post_script=_WIRING,
                             validate=False)  # built from plain lists above; validating 10^5 points takes seconds
    n_all = len(data["tokens"])
    shown = f"a seeded sample of {len(idx):,} of {n_all:,} movies" if len(idx) < n_all else f"{n_all:,} movies"
    subtitle = f"{shown}, UMAP of the embeddings; colour = first SID token; hover for title, genres, SID and labels"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
  <h1>{html.escape(title)}</h1>
  <span>{html.escape(subtitle)}</span>
  <label>Highlight first token <select id="cluster"><option value="-1">all clusters (colour = first token)</option>
  {_cluster_options(fig["layout"]["meta"])}</select></label>
  <label>Find <input id="find" type="search" placeholder="title, e.g. Matrix" size="24"></label>
  <span id="status"></span>
</header>
<div id="plot">{plot}</div>
</body>
</html>
"""
