"""The UMAP map: a self-contained page that draws in headless Chromium with the network off and escapes titles."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
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


def _payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="sid-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


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
    data = _payload(page)
    assert len(data["x"]) == len(data["y"]) == len(data["title"]) == len(data["tokens"][0]) == N
    assert data["title"][3] == "&lt;img src=x onerror=alert(1)&gt;"
    assert data["title"][4] == "&lt;/script&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;"
    assert data["title"][5] == "Fast &amp; Furious"
    assert [data["genres"][data["genre"][i]] for i in (0, 1)] == ["(no genres)", "Drama, Sci-Fi"]
    assert data["year"][0] == 1960 and data["year"][6] is None
    assert [t[7] for t in data["tokens"]][1:] == [0, 7]  # movie 7's SID: <a_cluster><b_0><c_7>
    assert np.isfinite(data["x"]).all() and len(set(data["tokens"][0])) == 6


@pytest.mark.slow  # the mapped fixture runs UMAP
def test_every_drawn_code_has_a_label_on_the_map_and_in_the_hover(mapped):
    run_dir, _ = mapped
    data = _payload((run_dir / "visualization.html").read_text(encoding="utf-8"))
    first = set(data["tokens"][0])
    assert {int(c) for c in data["labels"]} == first and all(data["labels"].values())
    pairs = {f"{a},{b}" for a, b in zip(data["tokens"][0], data["tokens"][1])}
    assert set(data["labels2"]) == pairs
    centres = data["centres"]
    assert len(centres["x"]) == len(centres["y"]) == len(centres["text"]) == len(first)
    assert all(t.startswith("a_") for t in centres["text"])
    # Labels are made from titles too: escaped like them.
    assert "<img" not in json.dumps(data["labels"]) + json.dumps(data["labels2"])


@pytest.mark.slow
def test_umap_coordinates_are_cached(mapped, monkeypatch):
    run_dir, _ = mapped
    before = _payload((run_dir / "visualization.html").read_text())

    def boom(*a, **k):
        raise AssertionError("UMAP should have come from the cache")

    monkeypatch.setattr(viz, "umap_coordinates", boom)
    result = visualize_stage(run_dir, _cfg())
    assert result["umap_cached"] is True
    assert _payload((run_dir / "visualization.html").read_text())["x"] == before["x"]
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
# The browser test: headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

CHROMIUM = next((p for p in (shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")) if p), None)


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4, NUL-framed)."""

    def __init__(self, argv: list[str]):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child: chrome reads commands on fd 3 and answers on fd 4
            # Move both ends out of the way first: either may itself be fd 3 or 4.
            r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)  # dup2 makes the copies inheritable across exec
            os.dup2(w, 4)

        self.proc = subprocess.Popen([*argv, "--remote-debugging-pipe"], preexec_fn=wire_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.setdefault(msg["id"], queue.Queue())
                    q.put(msg)
                else:
                    self.events.append(msg)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 60):
        with self._lock:
            self._id += 1
            i = self._id
            q = self._replies.setdefault(i, queue.Queue())
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        reply = q.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e["method"] == method:
                    return e
            time.sleep(0.05)
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)


def _evaluate(cdp: DevTools, session: str, expr: str):
    res = cdp.send("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True},
                   session=session)
    if "exceptionDetails" in res:
        raise AssertionError(f"{expr}: {res['exceptionDetails']}")
    return res["result"].get("value")


def data_l1(cdp: DevTools, session: str, i: int) -> int:
    return _evaluate(cdp, session, f"window.sidMap.data.l1[{i}]")


def _coloured_pixels(png: bytes) -> int:
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    spread = img.max(axis=2) - img.min(axis=2)  # 0 for white, grey and black
    return int((spread > 60).sum())


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium); .ci/run installs it")
def test_map_draws_in_headless_chromium_offline(mapped, tmp_path):
    run_dir, _ = mapped
    page_url = (run_dir / "visualization.html").resolve().as_uri()
    cdp = DevTools([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
        f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--window-size=1000,700", "about:blank",
    ])
    try:
        targets = cdp.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = cdp.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Page", "Log", "Network"):
            cdp.send(f"{domain}.enable", session=session)
        # If the hostile title ever became markup, its handler would call alert: record it instead of blocking.
        cdp.send("Page.addScriptToEvaluateOnNewDocument", {"source":
                 "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"},
                 session=session)
        cdp.send("Page.navigate", {"url": page_url}, session=session)
        cdp.wait_event("Page.loadEventFired")
        drawn = _evaluate(cdp, session, "window.sidMap.ready.then(() => document.body.getAttribute('data-ready'))")
        assert drawn == str(N)
        state = _evaluate(cdp, session, """(() => {
            const gd = window.sidMap.plot;
            return {points: gd._fullData[0].x.length, canvases: gd.querySelectorAll('canvas').length,
                    webglNote: document.body.innerText.includes('WebGL is not supported'),
                    pwned: window.__pwned === 1};
        })()""")
        assert state["points"] == N and state["canvases"] >= 1, state
        assert state["webglNote"] is False and state["pwned"] is False, state
        names = _evaluate(cdp, session, "window.sidMap.plot._fullData[3].text.length")
        assert names == len(set(window_l1 := _evaluate(cdp, session, "window.sidMap.data.l1"))) and window_l1
        shot = base64.b64decode(cdp.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        (tmp_path / "map.png").write_bytes(shot)
        assert _coloured_pixels(shot) > 300, "no coloured points were drawn (see map.png)"

        # Hover the hostile movie: its title shows as text, no element is created, nothing runs.
        # Mark it with the search box and hover that mark (the map's other points may sit on top of it).
        assert _evaluate(cdp, session, """window.sidMap.find('onerror').then(gd =>
            Plotly.restyle(gd, {visible: false}, [0]).then(() => gd.data[2].x.length))""") == 1
        xy = _evaluate(cdp, session, """(() => {
            const gd = window.sidMap.plot, D = window.sidMap.data, fl = gd._fullLayout;
            const i = D.text.findIndex(t => t.includes('onerror')), r = gd.getBoundingClientRect();
            return [r.left + fl._size.l + fl.xaxis.l2p(D.x[i]), r.top + fl._size.t + fl.yaxis.l2p(D.y[i])];
        })()""")
        for dx in (-3, 0):  # move onto the point, as a mouse would
            cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": xy[0] + dx, "y": xy[1]}, session=session)
        hover = _evaluate(cdp, session, """new Promise(ok => setTimeout(() => {
            const layer = document.querySelector('.hoverlayer');
            ok({text: layer ? layer.textContent : '', imgs: document.querySelectorAll('img').length});
        }, 300))""")
        (tmp_path / "map-hover.png").write_bytes(base64.b64decode(
            cdp.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]))
        assert XSS in hover["text"] and hover["imgs"] == 0

        _evaluate(cdp, session, "Plotly.restyle(window.sidMap.plot, {visible: true}, [0]).then(() => 1)")
        # Highlight one first-token cluster: it is redrawn on top, coloured by second token.
        sizes = _evaluate(cdp, session, """window.sidMap.selectCluster(2).then(gd => ({
            hi: gd.data[1].x.length, want: window.sidMap.data.l1.filter(c => c === 2).length,
            base: gd.data[0].marker.color}))""")
        assert sizes["hi"] == sizes["want"] > 0 and sizes["base"] == "#c8c8c8"
        shot2 = base64.b64decode(cdp.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        (tmp_path / "map-cluster.png").write_bytes(shot2)
        assert 0 < _coloured_pixels(shot2) < _coloured_pixels(shot)
        a5 = data_l1(cdp, session, 5)
        found = _evaluate(cdp, session, "window.sidMap.find('fast &').then(gd => gd.data[2].text)")
        labels = _evaluate(cdp, session, f"[window.sidMap.data.labels[{a5}], window.sidMap.data.labels2['{a5},5']]")
        assert found == [f"<b>Fast &amp; Furious</b> (1965)<br>Drama, Sci-Fi<br>&lt;a_{a5}&gt;&lt;b_5&gt;&lt;c_5&gt;"
                         f"<br><i>a_{a5}: {labels[0]}</i><br><i>b_5: {labels[1]}</i>"] and all(labels)

        alerts = _evaluate(cdp, session, "window.__alerts")
        assert alerts == []
        errors = [e for e in cdp.events if
                  (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or e["method"] == "Runtime.exceptionThrown"
                  or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        assert errors == [], errors
        requests = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"]
        assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests
    finally:
        cdp.close()
