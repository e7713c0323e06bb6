"""`fetch` against a local HTTP server on 127.0.0.1: resume, checksums, hostile archives, no network."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
from pathlib import Path

import pytest
from movielens_fixtures import LINKS, MOVIES, TAGS, write_movielens, zip_bytes, zip_movielens

from movielens_sids.cli import main
from movielens_sids.data import fetch, registry
from movielens_sids.errors import SidsError


class _Server:
    """Serves ``files`` (URL path -> bytes); honours Range unless told not to; can cut transfers short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.truncate_first: int = 0
        """Cut this many transfers after half the body (the Content-Length still promises all of it)."""
        self.ranges = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and server.ranges:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_first > 0:
                    server.truncate_first -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, name: str, data: bytes, md5: str | None = None) -> str:
        """Serve ``<name>.zip`` and its ``.md5`` file in GroupLens' BSD format; return the MD5 served."""
        md5 = md5 or hashlib.md5(data).hexdigest()
        self.files[f"/movielens/{name}.zip"] = data
        self.files[f"/movielens/{name}.zip.md5"] = f"MD5 ({name}.zip) = {md5}\n".encode()
        return md5

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    monkeypatch.setattr(fetch, "RETRIES", 2)
    monkeypatch.delenv("MOVIELENS_SIDS_MD5", raising=False)
    monkeypatch.delenv("MOVIELENS_SIDS_DATA", raising=False)
    monkeypatch.delenv("MOVIELENS_SIDS_BASE_URL", raising=False)


def _release(tmp_path: Path, folder: str = "ml-25m") -> bytes:
    src = write_movielens(tmp_path / "src" / folder, movies=MOVIES, tags=TAGS, links=LINKS)
    return zip_movielens(src, tmp_path / f"{folder}.zip").read_bytes()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_verify_extract_then_reuse_without_network(tmp_path, server):
    data = _release(tmp_path)
    md5 = server.publish("ml-25m", data)
    cache = tmp_path / "cache"
    folder = fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    assert folder == cache / "ml-25m"
    assert (folder / "movies.csv").read_bytes() == (tmp_path / "src" / "ml-25m" / "movies.csv").read_bytes()
    assert json.loads((folder / fetch.MARKER).read_text())["md5"] == md5
    assert not list(cache.glob("*.part"))  # the zip is gone once extracted
    server.close()  # from now on, any network access would fail
    assert fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url) == folder


def test_unpinned_variant_is_checked_against_the_published_md5_file(tmp_path, server):
    assert registry.get("ml-latest").md5 is None
    data = _release(tmp_path, "ml-latest")
    server.publish("ml-latest", data)
    folder = fetch.fetch_dataset("ml-latest", tmp_path / "cache", base_url=server.url)
    assert (folder / "movies.csv").exists()
    assert [p for p, _ in server.requests] == ["/movielens/ml-latest.zip.md5", "/movielens/ml-latest.zip"]


def test_pinned_md5_comes_from_the_table(tmp_path, server):
    server.publish("ml-32m", _release(tmp_path, "ml-32m"))  # not the real release: its MD5 differs
    with pytest.raises(SidsError, match=f"but {registry.get('ml-32m').md5} is expected"):
        fetch.fetch_dataset("ml-32m", tmp_path / "cache", base_url=server.url)


def test_truncated_transfer_is_resumed_with_a_range_request(tmp_path, server):
    data = _release(tmp_path)
    md5 = server.publish("ml-25m", data)
    server.truncate_first = 1
    folder = fetch.fetch_dataset("ml-25m", tmp_path / "cache", md5=md5, base_url=server.url)
    assert (folder / "movies.csv").exists()
    zips = [(p, r) for p, r in server.requests if p.endswith(".zip")]
    assert len(zips) == 2 and zips[0][1] is None
    assert zips[1][1] == f"bytes={len(data) // 2}-"


def test_server_without_range_support_restarts_the_download(tmp_path, server):
    data = _release(tmp_path)
    md5 = server.publish("ml-25m", data)
    server.truncate_first, server.ranges = 1, False
    folder = fetch.fetch_dataset("ml-25m", tmp_path / "cache", md5=md5, base_url=server.url)
    assert (folder / "movies.csv").exists()


def test_partial_file_left_by_an_earlier_run_is_resumed(tmp_path, server):
    data = _release(tmp_path)
    md5 = server.publish("ml-25m", data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-25m.zip.part").write_bytes(data[:100])
    fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    assert server.requests[-1][1] == "bytes=100-"


def test_md5_mismatch_deletes_the_download_and_extracts_nothing(tmp_path, server):
    server.publish("ml-25m", _release(tmp_path))
    cache = tmp_path / "cache"
    with pytest.raises(SidsError, match="has MD5 .* but 0{32} is expected"):
        fetch.fetch_dataset("ml-25m", cache, md5="0" * 32, base_url=server.url)
    assert not (cache / "ml-25m").exists() and not list(cache.glob("*.part"))


def test_corrupt_archive_is_refused(tmp_path, server):
    data = b"PK\x03\x04" + b"garbage" * 100
    md5 = server.publish("ml-25m", data)
    cache = tmp_path / "cache"
    with pytest.raises(SidsError, match="not a readable zip"):
        fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    assert not (cache / "ml-25m").exists()


def test_archive_with_a_bad_crc_is_refused_and_leaves_no_folder(tmp_path, server):
    data = bytearray(_release(tmp_path))
    i = data.index(b"ml-25m/movies.csv") + len("ml-25m/movies.csv") + 5  # inside the compressed bytes
    data[i] ^= 0xFF
    md5 = server.publish("ml-25m", bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(SidsError, match="corrupt"):
        fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    assert not (cache / "ml-25m").exists()


@pytest.mark.parametrize(("files", "links", "message"), [
    ({"ml-25m/movies.csv": b"movieId,title,genres\n", "../x": b"escaped"}, {}, "outside the target folder"),
    ({"ml-25m/movies.csv": b"movieId,title,genres\n", "ml-25m/../../x": b"escaped"}, {}, "outside"),
    ({"ml-25m/movies.csv": b"movieId,title,genres\n", "/tmp/movielens-sids-x": b"abs"}, {}, "outside"),
    ({"ml-25m/movies.csv": b"movieId,title,genres\n"}, {"ml-25m/link": "/etc/passwd"}, "symbolic link"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_hostile_entries_are_refused_before_anything_is_written(tmp_path, server, files, links, message):
    md5 = server.publish("ml-25m", zip_bytes(files, symlinks=links))
    cache = tmp_path / "cache" / "deep"
    with pytest.raises(SidsError, match=message):
        fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    assert not (cache / "ml-25m").exists()
    assert not (cache / "x").exists() and not (tmp_path / "cache" / "x").exists()
    assert not Path("/tmp/movielens-sids-x").exists()


def test_oversized_entry_is_refused(tmp_path, server):
    md5 = server.publish("ml-25m", _release(tmp_path))
    with pytest.raises(SidsError, match="unpacks to"):
        fetch.fetch_dataset("ml-25m", tmp_path / "cache", md5=md5, base_url=server.url, max_entry_bytes=100)


def test_no_server_says_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(SidsError, match="--source") as e:
        fetch.fetch_dataset("ml-25m", tmp_path / "cache", base_url=f"http://127.0.0.1:{_free_port()}")
    assert "\n" not in str(e.value)


def test_http_404_is_not_retried(tmp_path, server):
    with pytest.raises(SidsError, match="HTTP 404"):
        fetch.fetch_dataset("ml-25m", tmp_path / "cache", md5="0" * 32, base_url=server.url)
    assert len(server.requests) == 1


def test_fetch_cli_with_env_overrides_then_catalog_offline(tmp_path, server, monkeypatch, capsys):
    md5 = server.publish("ml-25m", _release(tmp_path))
    monkeypatch.setenv("MOVIELENS_SIDS_BASE_URL", server.url)
    monkeypatch.setenv("MOVIELENS_SIDS_DATA", str(tmp_path / "cache"))
    assert main(["fetch", "--dataset", "ml-25m", "--md5", md5]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "ml-25m")
    server.close()
    # catalog finds the verified copy; without --md5 the marker's MD5 must match the table's, so
    # point the table at this test release
    monkeypatch.setitem(registry.VARIANTS, "ml-25m", registry.Variant("ml-25m", md5, "ml-25m", "csv",
                                                                          registry.VARIANTS["ml-25m"].files))
    run_dir = tmp_path / "run"
    assert main(["catalog", "--dataset", "ml-25m", "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "catalog.parquet").exists()


def test_catalog_without_network_fails_cleanly_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOVIELENS_SIDS_BASE_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MOVIELENS_SIDS_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    assert main(["catalog", "--dataset", "ml-10m", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download ml-10m.zip") and "--source" in err and "\n" not in err
    assert not run_dir.exists()


def test_fetch_bad_archive_leaves_an_existing_copy_alone(tmp_path, server):
    data = _release(tmp_path)
    md5 = server.publish("ml-25m", data)
    cache = tmp_path / "cache"
    fetch.fetch_dataset("ml-25m", cache, md5=md5, base_url=server.url)
    before = _files(cache / "ml-25m")
    bad = zip_bytes({"ml-25m/movies.csv": b"x", "../evil": b"x"})
    bad_md5 = server.publish("ml-25m", bad)
    with pytest.raises(SidsError, match="outside"):
        fetch.fetch_dataset("ml-25m", cache, md5=bad_md5, base_url=server.url, force=True)
    assert _files(cache / "ml-25m") == before


def test_fetch_bundled_dataset_needs_no_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOVIELENS_SIDS_BASE_URL", f"http://127.0.0.1:{_free_port()}")
    assert main(["fetch", "--dataset", "ml-latest-small"]) == 0
    assert Path(capsys.readouterr().out.strip(), "movies.csv").is_file()


def test_registry_lists_every_variant_with_its_official_url():
    assert registry.names() == ["ml-latest-small", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest"]
    for v in registry.VARIANTS.values():
        assert v.url(registry.DEFAULT_BASE_URL) == f"https://files.grouplens.org/datasets/movielens/{v.name}.zip"
        assert v.md5 is None or re.fullmatch(r"[0-9a-f]{32}", v.md5)
    assert registry.get("ml-10m").folder == "ml-10M100K" and registry.get("ml-1m").fmt == "dat"
    with pytest.raises(SidsError, match="unknown dataset"):
        registry.get("ml-3m")


@pytest.mark.parametrize("layout", ["flat", "macos-junk"])
def test_archive_layouts_other_than_the_official_one(tmp_path, server, layout):
    write_movielens(tmp_path / "w", movies=MOVIES)
    movies = (tmp_path / "w" / "movies.csv").read_bytes()
    files = {"movies.csv": movies} if layout == "flat" else {
        "ml-25m/movies.csv": movies, "__MACOSX/ml-25m/._movies.csv": b"\x00\x05\x16\x07"}
    md5 = server.publish("ml-25m", zip_bytes(files))
    folder = fetch.fetch_dataset("ml-25m", tmp_path / "cache", md5=md5, base_url=server.url)
    assert sorted(p.name for p in folder.iterdir()) == [fetch.MARKER, "movies.csv"]
    assert (folder / "movies.csv").read_bytes() == movies
