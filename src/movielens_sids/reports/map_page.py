"""``visualization.html``: the single writer of the UMAP map page (one self-contained HTML file).

plotly.js is inlined and nothing is fetched from the network (no CDN, no MathJax, no web fonts).
Every string that comes from the data is HTML-escaped before plotly renders it.

May import: errors, labels (the map's label data); plotly (for its bundled plotly.js, imported on first use:
it is large).
"""

from __future__ import annotations

import colorsys
import html
import json
import re
from typing import Any

import numpy as np

from ..errors import SidsError
from ..labels import map_labels


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


