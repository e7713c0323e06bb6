"""``fetch``: download a MovieLens variant from GroupLens, verify its MD5, extract it safely, cache it.

This module is the only place the data layer touches the network. A download goes to
``<data_dir>/<name>.zip.part`` (resumed with an HTTP ``Range`` request when a transfer breaks and
the server allows it), is checked against the published MD5, and is extracted into
``<data_dir>/<name>/`` only after every entry of the archive has been checked. A marker file
(``.movielens-sids.json``, holding the verified MD5) then lets every later call reuse the copy
without touching the network.

Environment:
    MOVIELENS_SIDS_DATA: the cache folder (default: the user cache dir, e.g. ``~/.cache/movielens-sids``).
    MOVIELENS_SIDS_BASE_URL: download from this base URL instead of files.grouplens.org.
    MOVIELENS_SIDS_MD5: the MD5 to verify against (same as ``--md5``).

May import: data.registry, io, errors and the standard library (the only network I/O besides
``hub``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import SidsError
from ..io import atomic_dir, write_json
from . import registry

log = logging.getLogger(__name__)


DATA_DIR_ENV = "MOVIELENS_SIDS_DATA"
MD5_ENV = "MOVIELENS_SIDS_MD5"
MARKER = ".movielens-sids.json"
MAX_ENTRY_BYTES = 8 << 30
"""Largest single file an archive may unpack to (ml-latest's ratings.csv is about 1 GB)."""
MAX_TOTAL_BYTES = 32 << 30
"""Largest total an archive may unpack to."""
RETRIES = 4
"""Attempts after the first one before a download is given up."""
BACKOFF_S = 2.0
"""Wait before the first retry; doubled after each."""
TIMEOUT_S = 60.0
"""Socket timeout of one request."""
_CHUNK = 1 << 20


def default_data_dir(data_dir: str | Path | None = None) -> Path:
    """The cache folder: ``data_dir``, else ``$MOVIELENS_SIDS_DATA``, else the user cache dir."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("movielens-sids", appauthor=False))


def bundled_path() -> Path:
    """The ml-latest-small folder shipped inside the package."""
    return Path(str(resources.files("movielens_sids").joinpath("data", registry.BUNDLED)))


def cached_dataset(name: str, data_dir: str | Path | None = None, *, md5: str | None = None) -> Path | None:
    """The folder of a verified, extracted copy of ``name``, or None; never touches the network.

    A copy counts when its marker holds ``md5`` (default: the table's MD5; for a variant without
    one, any verified copy counts) and its movies file is there.
    """
    variant = registry.get(name)
    folder = default_data_dir(data_dir) / name
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    wanted = md5 or os.environ.get(MD5_ENV) or variant.md5
    if wanted is not None and marker.get("md5") != wanted.strip().lower():
        return None  # extracted from another release than the one asked for
    if not (folder / variant.movies_file).is_file():
        return None
    return folder


def fetch_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    md5: str | None = None,
    force: bool = False,
    base_url: str | None = None,
    retries: int | None = None,
    backoff_s: float | None = None,
    max_entry_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> Path:
    """Make sure a verified, extracted copy of ``name`` is in the cache and return its folder.

    Args:
        name: a variant of ``registry.VARIANTS`` (``ml-32m``, ...).
        data_dir: the cache folder (default: ``default_data_dir()``).
        md5: verify against this MD5 instead of the table's (or ``$MOVIELENS_SIDS_MD5``).
        force: download again even when a verified copy exists.
        base_url: download from here instead of GroupLens (or ``$MOVIELENS_SIDS_BASE_URL``).
        retries, backoff_s: retry policy for broken or failed transfers (exponential backoff;
            default ``RETRIES``, ``BACKOFF_S``).
        max_entry_bytes, max_total_bytes: refuse archives that would unpack to more (default
            ``MAX_ENTRY_BYTES``, ``MAX_TOTAL_BYTES``).

    Returns:
        The folder holding ``movies.csv`` / ``movies.dat`` and the other files of the release.

    Raises:
        SidsError: no network (the message says how to use ``--source``), an HTTP error, a checksum
            mismatch, a corrupt archive, or an archive entry that would land outside the folder.
    """
    variant = registry.get(name)
    root = default_data_dir(data_dir)
    expected = _expected_md5(variant, md5)
    if not force and (cached := cached_dataset(name, root, md5=expected)) is not None:
        log.info("%s: using the verified copy in %s", name, cached)
        return cached
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SidsError(f"cannot create the data folder {root}: {e.strerror or e}") from e
    retries, backoff_s = (RETRIES if retries is None else retries), (BACKOFF_S if backoff_s is None else backoff_s)
    url = variant.url(base_url)
    with _lock(root / f".{name}.lock"):
        part = root / f"{name}.zip.part"
        if expected is None:
            expected = _published_md5(url, name, retries=retries, backoff_s=backoff_s)
        _download(url, part, name=name, retries=retries, backoff_s=backoff_s)
        actual = _verified_md5(part, expected, name=name, url=url)
        target = root / name
        try:
            extract_zip(part, target, folder=variant.folder, required=variant.movies_file,
                        max_entry_bytes=MAX_ENTRY_BYTES if max_entry_bytes is None else max_entry_bytes,
                        max_total_bytes=MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes,
                        marker={"dataset": name, "md5": actual, "url": url})
        finally:
            part.unlink(missing_ok=True)  # extracted, or refused: either way the zip is of no further use
    log.info("%s: verified (MD5 %s) and extracted to %s", name, actual, target)
    return target


def _expected_md5(variant: registry.Variant, md5: str | None) -> str | None:
    """The MD5 to verify against: ``md5``, else ``$MOVIELENS_SIDS_MD5``, else the table's; None when unknown."""
    expected = (md5 or os.environ.get(MD5_ENV) or variant.md5 or "").strip().lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise SidsError(f"--md5 must be 32 hex digits, got {expected!r}")
    return expected


def _verified_md5(part: Path, expected: str, *, name: str, url: str) -> str:
    """The download's MD5 when it is ``expected``; otherwise the download is deleted and a one-line error raised."""
    actual = md5_of(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise SidsError(f"{name}.zip from {url} has MD5 {actual} but {expected} is expected; "
                        "the download was deleted: run the command again, or pass --source with a "
                        "copy you trust")
    return actual


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One download of a variant at a time per cache folder."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SidsError(f"another process is downloading into {path.parent}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _offline_hint(name: str, url: str) -> str:
    return (f"download {url} on a machine with network and run `movielens-sids catalog --source "
            f"/path/to/{name}.zip` (the zip or its extracted folder)")


class _Incomplete(Exception):
    """The server closed the connection before sending the whole file."""


def _with_retries(fn, *, what: str, name: str, url: str, retries: int, backoff_s: float):
    for attempt in range(retries + 1):
        try:
            return fn()
        except urllib.error.HTTPError as e:
            if not (e.code >= 500 or e.code in (408, 429)) or attempt == retries:
                raise SidsError(f"cannot download {what}: HTTP {e.code} {e.reason} from {e.url or url}; "
                                f"{_offline_hint(name, url)}") from e
            err: BaseException = e
        except (urllib.error.URLError, http.client.HTTPException, OSError, _Incomplete) as e:
            if attempt == retries:
                reason = getattr(e, "reason", None) or e
                raise SidsError(f"cannot download {what} ({reason}): no network? {_offline_hint(name, url)}") from e
            err = e
        wait = backoff_s * 2**attempt
        log.warning("%s: %s; retrying in %.0fs (%d/%d)", what, getattr(err, "reason", None) or err, wait,
                    attempt + 1, retries)
        time.sleep(wait)
    raise AssertionError("unreachable")


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": f"movielens-sids/{__version__}", **(headers or {})})


def _published_md5(url: str, name: str, *, retries: int, backoff_s: float) -> str:
    """Read ``<url>.md5`` (``MD5 (x.zip) = <hex>`` or ``<hex>  x.zip``) for variants with no pinned MD5."""
    md5_url = url + ".md5"

    def get() -> str:
        with urllib.request.urlopen(_request(md5_url), timeout=TIMEOUT_S) as r:
            return r.read(4096).decode("ascii", "replace")

    text = _with_retries(get, what=f"{name}.zip.md5", name=name, url=url, retries=retries, backoff_s=backoff_s)
    m = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not m:
        raise SidsError(f"{md5_url} does not hold an MD5; pass --md5 HEX with a checksum you trust")
    log.info("%s: published MD5 %s (read from %s)", name, m.group(0).lower(), md5_url)
    return m.group(0).lower()


def _download(url: str, part: Path, *, name: str, retries: int, backoff_s: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size with a Range request when possible."""
    from tqdm.auto import tqdm

    def attempt() -> None:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = urllib.request.urlopen(_request(url, headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the part file is already complete
                return
            raise
        with resp:
            if have and resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    raise _Incomplete(f"server resumed at the wrong offset ({resp.headers.get('Content-Range')})")
                mode = "ab"
                log.info("%s: resuming the download at %d bytes", name, have)
            else:
                if have:
                    log.info("%s: the server does not resume downloads; starting again", name)
                have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            done = have
            with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                               unit_divisor=1024, desc=f"{name}.zip", disable=None) as bar:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except http.client.IncompleteRead as e:
                        f.write(e.partial)
                        raise _Incomplete(f"connection closed after {done + len(e.partial)} bytes") from e
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            if total is not None and done < total:
                raise _Incomplete(f"connection closed after {done} of {total} bytes")

    _with_retries(attempt, what=f"{name}.zip", name=name, url=url, retries=retries, backoff_s=backoff_s)


def check_zip_entries(zf: zipfile.ZipFile, *, max_entry_bytes: int = MAX_ENTRY_BYTES,
                      max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Refuse an archive with an entry that would extract outside its folder, a link, or too much data.

    Runs before anything is written. Raises ``SidsError`` naming the first bad entry.
    """
    total = 0
    for info in zf.infolist():
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
            raise SidsError(f"refusing archive {zf.filename}: entry {name!r} would extract outside the target folder")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise SidsError(f"refusing archive {zf.filename}: entry {name!r} is a symbolic link")
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
            raise SidsError(f"refusing archive {zf.filename}: entry {name!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise SidsError(f"refusing archive {zf.filename}: entry {name!r} is encrypted")
        if info.file_size > max_entry_bytes:
            raise SidsError(f"refusing archive {zf.filename}: entry {name!r} unpacks to {info.file_size:,} bytes "
                            f"(limit {max_entry_bytes:,})")
        total += info.file_size
        if total > max_total_bytes:
            raise SidsError(f"refusing archive {zf.filename}: it unpacks to more than {max_total_bytes:,} bytes")


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip; a missing, truncated or corrupt file is a one-line ``SidsError``."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise SidsError(f"{path} not found") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise SidsError(f"{path} is not a readable zip archive (corrupt or truncated: {e})") from e


def extract_zip(zip_path: Path, target: Path, *, folder: str, required: str, marker: dict,
                max_entry_bytes: int = MAX_ENTRY_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Check every entry, then extract into ``target`` atomically.

    What is extracted is the folder of the archive that holds ``required`` (``folder/`` in the
    official zips, e.g. ``ml-10M100K/``), with that folder's name dropped. ``target`` is replaced only
    when all of it extracted and its CRCs matched; ``marker`` is written into it as the proof of
    verification.
    """
    with open_zip(zip_path) as zf:
        check_zip_entries(zf, max_entry_bytes=max_entry_bytes, max_total_bytes=max_total_bytes)
        names = [i.filename for i in zf.infolist()]
        prefixes = [n[: -len(required)] for n in names if n == required or n.endswith("/" + required)]
        if not prefixes:
            raise SidsError(f"{zip_path} has no {required} (entries: {', '.join(names[:5])}...)")
        prefix = f"{folder}/" if f"{folder}/" in prefixes else min(prefixes, key=len)
        members = [i for i in zf.infolist() if not i.is_dir() and i.filename.startswith(prefix)]
        try:
            with atomic_dir(target) as tmp:
                for info in members:
                    dest = tmp.joinpath(*PurePosixPath(info.filename[len(prefix):]).parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                write_json(tmp / MARKER, marker)
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, zlib.error) as e:
            raise SidsError(f"{zip_path} is corrupt ({e}); delete it and download again") from e


# --- CLI --------------------------------------------------------------------------------------

