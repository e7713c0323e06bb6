"""The UMAP map: a self-contained page that draws in headless Chromium with the network off and escapes titles."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from movielens_sids.config import Config
from movielens_sids.errors import SidsError
from movielens_sids.io import write_parquet
from movielens_sids.settings import VisualizeConfig
from movielens_sids.stages import visualize as viz
from movielens_sids.stages.visualize import sample_indices, visualize_stage

XSS = "<img src=x onerror=alert(1)>"
BREAKOUT = "</script><script>window.__pwned=1</script>"
N = 200


def make_map_run(run_dir: Path, *, n: int = N, d: int = 12, seed: int = 0) -> None:
    """catalog + embeddings (6 clusters) + sids (first token = cluster) with two hostile titles."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 6, n)
    x = rng.normal(size=(6, d))[cluster] + 0.3 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, n + 1, dtype=np.int64)
    titles = [f"Film {i}" for i in range(n)]
    titles[3], titles[4], titles[5] = XSS, BREAKOUT, "Fast & Furious"
    years = pa.array([None if i == 6 else 1960 + i % 60 for i in range(n)], pa.int64())
    genres = pa.array([["Drama", "Sci-Fi"] if i % 2 else [] for i in range(n)], pa.list_(pa.string()))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(run_dir / "catalog.parquet", pa.table({
        "movie_id": ids, "title": titles, "display_title": titles, "year": years, "genres": genres}))
    write_parquet(run_dir / "embeddings.parquet", pa.table({
        "movie_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)}),
        metadata={"model": "fake"})
    sem = [[int(c), int(i % 7), int(i)] for i, c in enumerate(cluster)]
    write_parquet(run_dir / "sids.parquet", pa.table({
        "movie_id": ids, "semantic_id": pa.array(sem, pa.list_(pa.int64())),
        "sid": ["".join(f"<{'abc'[j]}_{v}>" for j, v in enumerate(s)) for s in sem]}))


def _cfg(**kw) -> Config:
    return Config(visualize=VisualizeConfig(**{"n_neighbors": 10, "n_epochs": 60, "pca_dims": 8, **kw}))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """A run folder with its visualization already drawn (one real UMAP for the whole module)."""
    run_dir = tmp_path_factory.mktemp("viz") / "run"
    make_map_run(run_dir)
    result = visualize_stage(run_dir, _cfg())
    return run_dir, result


def _figure(page: str) -> dict:
    """The figure the page draws: the data and layout passed to ``Plotly.newPlot("map", data, layout, config)``."""
    dec, i = json.JSONDecoder(), page.index('"map",', page.index("Plotly.newPlot(")) + len('"map",')
    out = {}
    for key in ("data", "layout"):
        i = len(page) - len(page[i:].lstrip(" ,\n"))
        out[key], i = dec.raw_decode(page, i)
    return out


@pytest.mark.slow  # UMAP (numba compiles on first use): minutes on a loaded CPU
def test_page_is_self_contained_and_escapes_titles(mapped):
    run_dir, result = mapped
    page = (run_dir / "visualization.html").read_text(encoding="utf-8")
    assert result["n_points"] == N and result["html_bytes"] == len(page.encode())
    # Nothing is loaded from anywhere: no external scripts, stylesheets, fonts or MathJax.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", page, re.I)
    assert "mathjax" not in page[: page.find("<script>")].lower()
    assert "@import" not in page and "url(http" not in page
    # The hostile titles never appear as markup, anywhere in the page.
    assert XSS not in page and BREAKOUT not in page and "__pwned=1</script>" not in page
    fig = _figure(page)
    base, meta = fig["data"][0], fig["layout"]["meta"]
    hover = base["customdata"]  # title, " (year)", genres, SID, code names
    assert len(base["x"]) == len(base["y"]) == len(hover) == len(meta["l1"]) == len(meta["search"]) == N
    assert hover[3][0] == "&lt;img src=x onerror=alert(1)&gt;"
    assert hover[4][0] == "&lt;/script&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;"
    assert hover[5][0] == "Fast &amp; Furious" and meta["search"][5] == "fast & furious"
    assert [hover[i][2] for i in (0, 1)] == ["(no genres)", "Drama, Sci-Fi"]
    assert hover[0][1] == " (1960)" and hover[6][1] == ""
    assert hover[7][3] == f"&lt;a_{meta['l1'][7]}&gt;&lt;b_0&gt;&lt;c_7&gt;"  # movie 7's SID: <a_cluster><b_0><c_7>
    assert np.isfinite(base["x"]).all() and len(set(meta["l1"])) == 6
    # The picker lists every first token once, with its size.
    options = re.findall(r'<option value="(\d+)">a_\d+ \((\d+) movies\)', page)
    assert sorted(int(c) for c, _ in options) == sorted(set(meta["l1"])) and sum(int(m) for _, m in options) == N


@pytest.mark.slow  # the mapped fixture runs UMAP
def test_every_drawn_code_has_a_label_on_the_map_and_in_the_hover(mapped):
    run_dir, _ = mapped
    fig = _figure((run_dir / "visualization.html").read_text(encoding="utf-8"))
    meta, hover = fig["layout"]["meta"], fig["data"][0]["customdata"]
    first = set(meta["l1"])
    assert {int(c) for c in meta["labels"]} == first and all(meta["labels"].values())
    pairs = {f"{a},{b}" for a, b in zip(meta["l1"], meta["l2"])}
    assert set(meta["labels2"]) == pairs
    centres = meta["centres"]  # every name's place, largest cluster first; the page draws those apart
    assert len(centres["x"]) == len(centres["y"]) == len(centres["text"]) == len(first)
    assert all(t.startswith(f"a_{c} ") for t, c in zip(centres["text"], centres["code"]))
    sizes = [meta["l1"].count(c) for c in centres["code"]]
    assert sizes == sorted(sizes, reverse=True)
    # Every hover names both codes of its movie.
    assert all(h[4] == f"<br><i>a_{a}: {meta['labels'][str(a)]}</i><br><i>b_{b}: {meta['labels2'][f'{a},{b}']}</i>"
               for h, a, b in zip(hover, meta["l1"], meta["l2"]))
    # Labels are made from titles too: escaped like them.
    assert "<img" not in json.dumps(meta["labels"]) + json.dumps(meta["labels2"])


@pytest.mark.slow
def test_umap_coordinates_are_cached(mapped, monkeypatch):
    run_dir, _ = mapped
    before = _figure((run_dir / "visualization.html").read_text())["data"][0]

    def boom(*a, **k):
        raise AssertionError("UMAP should have come from the cache")

    monkeypatch.setattr(viz, "umap_coordinates", boom)
    result = visualize_stage(run_dir, _cfg())
    assert result["umap_cached"] is True
    assert _figure((run_dir / "visualization.html").read_text())["data"][0]["x"] == before["x"]
    with pytest.raises(AssertionError, match="cache"):  # other settings: a new map
        visualize_stage(run_dir, _cfg(min_dist=0.3))


def test_sample_is_reproducible_and_bounded():
    a, b = sample_indices(1000, 100, 3), sample_indices(1000, 100, 3)
    assert (a == b).all() and len(set(a.tolist())) == 100 and (np.diff(a) > 0).all()
    assert (sample_indices(50, 100, 3) == np.arange(50)).all()
    assert not (sample_indices(1000, 100, 4) == a).all()


def test_bad_input_is_one_line_error_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    make_map_run(run_dir, n=40)
    (run_dir / "sids.parquet").unlink()
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(SidsError, match="sids.parquet not found"):
        visualize_stage(run_dir, _cfg())
    make_map_run(run_dir, n=40)
    with pytest.raises(SidsError, match="n_neighbors"):
        visualize_stage(run_dir, _cfg(sample=8))
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*before, "sids.parquet"])
    with pytest.raises(ValueError, match="n_neighbors"):
        VisualizeConfig(n_neighbors=1)


# --------------------------------------------------------------------------------------------------
# The browser test: Playwright drives the system's headless Chromium (no browser download), offline.

CHROMIUM = next((p for p in (shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _drawn_screenshot(page) -> bytes:
    """A screenshot once the page has painted: WebGL points are drawn in animation frames after plotly's
    promise resolves, so a screenshot taken at once may catch part of them."""
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))")
    page.wait_for_timeout(200)
    return page.screenshot()


def _coloured_pixels(png: bytes) -> int:
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    spread = img.max(axis=2) - img.min(axis=2)  # 0 for white, grey and black
    return int((spread > 60).sum())


def _label_overlaps(page) -> list:
    """Pairs of first-token names whose drawn boxes intersect."""
    return page.evaluate("""(() => {
        const boxes = [...document.querySelectorAll('.textpoint text')].map(t => [t.textContent,
                                                                                t.getBoundingClientRect()]);
        const out = [];
        boxes.forEach(([a, p], i) => boxes.slice(i + 1).forEach(([b, q]) => {
            if (p.left < q.right && q.left < p.right && p.top < q.bottom && q.top < p.bottom) out.push([a, b]);
        }));
        return out;
    })()""")


@pytest.fixture
def map_in_browser(mapped, tmp_path):
    """The map page open in headless Chromium with the network off; yields (page, problems) where problems
    collects console errors, uncaught exceptions and every request that is not a local file."""
    from playwright.sync_api import sync_playwright

    run_dir, _ = mapped
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1000, "height": 700})
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "assert") else None)
            page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:", "about:"))
                    else problems.append(f"request: {r.url}"))
            # If the hostile title ever became markup, its handler would call alert: record it instead of blocking.
            page.add_init_script("window.__alerts = []; "
                                 "window.alert = function (m) { window.__alerts.push(String(m)); };")
            page.goto((run_dir / "visualization.html").resolve().as_uri())
            page.wait_for_function("document.body.getAttribute('data-ready') !== null")
            yield page, problems
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium); .ci/run installs it")
def test_map_draws_in_headless_chromium_offline(map_in_browser, tmp_path):
    page, problems = map_in_browser
    assert page.evaluate("window.sidMap.ready.then(() => document.body.getAttribute('data-ready'))") == str(N)
    state = page.evaluate("""(() => {
        const gd = window.sidMap.plot;
        return {points: gd._fullData[0].x.length, canvases: gd.querySelectorAll('canvas').length,
                webglNote: document.body.innerText.includes('WebGL is not supported'),
                pwned: window.__pwned === 1, title: document.title};
    })()""")
    assert state["points"] == N and state["canvases"] >= 1, state
    assert state["webglNote"] is False and state["pwned"] is False, state
    assert state["title"].startswith("Semantic IDs map: "), state
    l1 = page.evaluate("window.sidMap.data.l1")
    shown = page.evaluate("window.sidMap.plot._fullData[3].text")
    every = page.evaluate("window.sidMap.plot.layout.meta.centres.text")
    assert 0 < len(shown) <= len(every) == len(set(l1)) == 6 and set(shown) <= set(every)
    assert _label_overlaps(page) == [], "first-token names drawn on top of each other"
    ranges = page.evaluate("['xaxis', 'yaxis'].map(a => window.sidMap.plot.layout[a].range.slice())")
    page.evaluate("Plotly.relayout(window.sidMap.plot, {'xaxis.range': [-50, 50], 'yaxis.range': [-50, 50]})")
    assert _label_overlaps(page) == []  # zoomed out: names placed again, fewer, still apart
    page.evaluate(f"Plotly.relayout(window.sidMap.plot, {{'xaxis.range': {ranges[0]}, 'yaxis.range': {ranges[1]}}})")
    shot = _drawn_screenshot(page)
    (tmp_path / "map.png").write_bytes(shot)
    assert _coloured_pixels(shot) > 300, "no coloured points were drawn (see map.png)"

    # Hover the hostile movie: its title shows as text, no element is created, nothing runs.
    # Mark it with the search box and hover that mark (the map's other points may sit on top of it).
    assert page.evaluate("""window.sidMap.find('onerror').then(gd =>
        Plotly.restyle(gd, {visible: false}, [0]).then(() => gd.data[2].x.length))""") == 1
    xy = page.evaluate("""(() => {
        const gd = window.sidMap.plot, D = window.sidMap.data, fl = gd._fullLayout;
        const i = D.search.findIndex(t => t.includes('onerror')), r = gd.getBoundingClientRect();
        return [r.left + fl._size.l + fl.xaxis.l2p(D.x[i]), r.top + fl._size.t + fl.yaxis.l2p(D.y[i])];
    })()""")
    for dx in (-3, 0):  # move onto the point, as a mouse would
        page.mouse.move(xy[0] + dx, xy[1])
    page.wait_for_timeout(300)
    hover = page.evaluate("""({text: (document.querySelector('.hoverlayer') || {}).textContent || '',
                               imgs: document.querySelectorAll('img').length})""")
    (tmp_path / "map-hover.png").write_bytes(page.screenshot())
    # The hover template puts the parts together: title (year), genres, SID.
    assert f"{XSS} (1963)" in hover["text"] and "Drama, Sci-Fi" in hover["text"] and "<c_3>" in hover["text"], hover
    assert hover["imgs"] == 0

    page.evaluate("Plotly.restyle(window.sidMap.plot, {visible: true}, [0]).then(() => 1)")
    # Highlight one first-token cluster: it is redrawn on top, coloured by second token.
    sizes = page.evaluate("""window.sidMap.selectCluster(2).then(gd => ({
        hi: gd.data[1].x.length, want: window.sidMap.data.l1.filter(c => c === 2).length,
        base: gd.data[0].marker.color, picked: document.getElementById('cluster').value}))""")
    assert sizes["hi"] == sizes["want"] > 0 and sizes["base"] == "#c8c8c8" and sizes["picked"] == "2"
    assert [t.split()[0] for t in page.evaluate("window.sidMap.plot.data[3].text")] == ["a_2"]  # its name only
    shot2 = _drawn_screenshot(page)
    (tmp_path / "map-cluster.png").write_bytes(shot2)
    assert 0 < _coloured_pixels(shot2) < _coloured_pixels(shot)
    # The picker does the same through the page's own <select>.
    page.select_option("#cluster", "-1")
    assert page.evaluate("window.sidMap.plot.data[1].x.length") == 0
    # The search box: typing a title marks it (the hit carries its full hover parts).
    page.fill("#find", "fast &")
    page.press("#find", "Enter")
    a5 = l1[5]
    found = page.evaluate("window.sidMap.plot.data[2].customdata")
    labels = page.evaluate(f"[window.sidMap.data.labels[{a5}], window.sidMap.data.labels2['{a5},5']]")
    assert found == [["Fast &amp; Furious", " (1965)", "Drama, Sci-Fi", f"&lt;a_{a5}&gt;&lt;b_5&gt;&lt;c_5&gt;",
                      f"<br><i>a_{a5}: {labels[0]}</i><br><i>b_5: {labels[1]}</i>"]] and all(labels)
    assert page.text_content("#status") == "1 movies match \u201cfast &\u201d"

    assert page.evaluate("window.__alerts") == []
    assert problems == []


def test_umap_gets_an_exact_knn_graph_with_each_point_first():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(80, 6))
    idx, dist = viz.cosine_knn_graph(z, 7)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn @ zn.T
    np.fill_diagonal(sim, -np.inf)
    want = np.sort(1 - sim, axis=1)[:, :6]  # the 6 smallest cosine distances to others
    assert idx.shape == dist.shape == (80, 7) and dist.dtype == np.float32
    assert (idx[:, 0] == np.arange(80)).all() and (dist[:, 0] == 0).all()
    np.testing.assert_allclose(dist[:, 1:], want, atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_the_knn_graph_puts_each_point_first_among_its_exact_duplicates():
    rng = np.random.default_rng(2)
    z = np.concatenate([np.tile(rng.normal(size=(1, 5)), (9, 1)), rng.normal(size=(30, 5))])  # rows 0-8 alike
    idx, dist = viz.cosine_knn_graph(z, 4)
    assert (idx[:, 0] == np.arange(39)).all() and (dist[:, 0] == 0).all()
    assert all(len(set(row)) == 4 for row in idx.tolist())  # no point twice, itself included
    assert np.isin(idx[:9, 1:], np.arange(9)).all() and np.allclose(dist[:9], 0, atol=1e-6)  # its duplicates


def test_a_catalog_over_the_cap_is_drawn_as_a_recorded_sample(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    make_map_run(run_dir)
    seen = []

    def fake_umap(x, cfg):  # the page, not UMAP, is under test here
        seen.append(len(x))
        return np.asarray(x[:, :2], dtype=np.float32)

    monkeypatch.setattr(viz, "umap_coordinates", fake_umap)
    assert VisualizeConfig().sample is not None  # a default cap
    result = visualize_stage(run_dir, _cfg(sample=50))
    page = (run_dir / "visualization.html").read_text(encoding="utf-8")
    assert result["n_points"] == 50 and result["n_movies"] == N and seen == [50]
    assert f"a seeded sample of 50 of {N} movies" in page
    assert len(_figure(page)["data"][0]["x"]) == 50
    visualize_stage(run_dir, _cfg(sample=60))  # another sample: another cache entry, UMAP again
    assert seen == [50, 60] and len(list((run_dir / ".cache").glob("umap-*.npy"))) == 2
    result = visualize_stage(run_dir, _cfg(sample=None))
    assert result["n_points"] == N and f"{N} movies" in (run_dir / "visualization.html").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="sample"):
        VisualizeConfig(sample=1)


def test_umap_kernels_compile_as_before_where_numba_cannot_cache(monkeypatch):
    import umap.umap_ as uu

    calls = []

    class Kernel:  # a dispatcher whose source folder and user cache are both read-only
        def enable_caching(self):
            calls.append(1)
            raise RuntimeError("cannot cache function 'smooth_knn_dist': no locator available")

    monkeypatch.setattr(uu, "smooth_knn_dist", Kernel())
    viz._cache_umap_kernels.__wrapped__()  # no error: the map is computed, only slower
    assert calls == [1]
