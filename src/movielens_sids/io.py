"""Artifact I/O shared by every stage: atomic writes, the run-folder lock, content hashes.

Every file of a run folder is written under a temporary name in the same folder and renamed
into place (``os.replace`` is atomic on POSIX), so a crash, Ctrl-C or full disk never leaves a
half-written artifact that a later stage would read.

May import: errors and the standard library; pyarrow on first use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SidsError

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}
"""The write failures a user can fix (free space, a writable folder), each with its own message."""


def raise_write_error(e: OSError, path: Path) -> None:
    """Raise the one-line ``SidsError`` for a write that failed for want of space or permission (the
    artifact under ``path`` is untouched: atomic writes rename only a complete file); return otherwise."""
    what = WRITE_ERRORS.get(e.errno)
    if what is not None:
        raise SidsError(f"{what} while writing {path}; nothing was changed") from e


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path(run_dir / "sids.parquet") as tmp:
        ...     table.to_parquet(tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    except OSError as e:
        raise_write_error(e, path)
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get ordinary permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise_write_error(e, path)
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; swap it in for ``path`` when the block succeeds.

    The old folder (if any) is renamed away first and deleted after the new one is in place, so at
    every instant ``path`` is either the complete old folder or the complete new one (or, for the
    instant between two renames, absent — never half-written).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    except OSError as e:
        raise_write_error(e, path)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f"{TMP_PREFIX}{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_write_error(e, path)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, 2-space indent, trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


VECTOR_ROW_GROUP = 16384
"""Rows per Parquet row group of a vector file (``write_parquet(vectors=...)``): readers take one group at
a time (``artifacts.read_vector_file``), so reading N vectors needs about their own size."""


def write_parquet(path: str | Path, table, *, metadata: dict[str, str] | None = None,
                  vectors: str | None = None) -> None:
    """Write a ``pyarrow.Table`` (or DataFrame) to Parquet atomically, merging ``metadata`` into the schema.

    ``vectors``: the name of a column of float vectors, written without a dictionary (floats seldom repeat)
    in row groups of ``VECTOR_ROW_GROUP`` rows.
    Byte-for-byte deterministic for the same table and metadata (no creation time is written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): v.encode() if isinstance(v, str) else v for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        if vectors is None:
            pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        else:
            pq.write_table(table, tmp, compression="zstd", write_statistics=True, row_group_size=VECTOR_ROW_GROUP,
                           use_dictionary=[c for c in table.column_names if c != vectors])


def read_parquet(path: str | Path, what: str):
    """Read a Parquet artifact as a ``pyarrow.Table``; a missing or unreadable file is a ``SidsError``.

    Args:
        path: the file.
        what: the stage that writes it, used in the message ("run `movielens-sids <what>` first").
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise SidsError(f"{path} not found: run `movielens-sids {what}` first")
    try:
        return pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise SidsError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from e


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """The user key/value metadata of a Parquet file, decoded to ``str``."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:") and k != b"pandas"}


def file_hash(path: str | Path, *, algo: str = "sha256") -> str:
    """Hex digest of a file's content, or of a folder's files (names and contents, sorted, temp files skipped)."""
    path = Path(path)
    h = hashlib.new(algo)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not any(part.startswith(TMP_PREFIX) for part in p.relative_to(path).parts):
                h.update(str(p.relative_to(path)).encode() + b"\0")
                h.update(file_hash(p, algo=algo).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HASH_MEMO: dict[tuple[str, int, int, int], str] = {}


def memo_hash(path: str | Path) -> str:
    """``file_hash`` of a file, memoised within the process per (path, inode, size, mtime): the record of a
    stage and the readers that check it then hash a large artifact once per command."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = file_hash(path)
    return _HASH_MEMO[key]


def folder_digests(path: str | Path, *, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of each file of a folder, by path relative to it (sorted; temporary files and ``skip`` left out)."""
    path = Path(path)
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and rel not in skip and not any(part.startswith(TMP_PREFIX) for part in rel.split("/")):
            out[rel] = file_hash(p)
    return out


def _sweep_temp(run_dir: Path) -> None:
    """Remove temporary files and folders a killed predecessor left anywhere in the run folder (in
    ``.stages/``, ``model/``, ...; never read by any stage). Called under the lock, so no writer is live."""
    for top, dirs, files in os.walk(run_dir):  # does not follow links to folders
        for name in [d for d in dirs if d.startswith(TMP_PREFIX)]:
            dirs.remove(name)
            if os.path.islink(os.path.join(top, name)):
                os.unlink(os.path.join(top, name))
            else:
                shutil.rmtree(os.path.join(top, name), ignore_errors=True)
        for name in files:
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(top, name))


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on a run folder while a command writes to it.

    A second writer gets a ``SidsError`` at once instead of a mixed result. The folder is created
    if needed and removed again on exit when the command left nothing in it, so a command that
    fails on bad input leaves the file system as it found it.
    """
    run_dir = Path(run_dir)
    created = []  # folders this call creates, innermost first, removed again if left empty
    p = run_dir.absolute()
    while not p.exists():
        created.append(p)
        p = p.parent
    lock_path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise_write_error(e, lock_path)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = ""
        with contextlib.suppress(OSError):
            holder = f" (pid {lock_path.read_text().strip()})"
        raise SidsError(f"run folder {run_dir} is in use by another command{holder}; wait for it to finish") from None
    try:
        with contextlib.suppress(OSError):  # the holder's pid is for messages only (a full disk cannot take it)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        _sweep_temp(run_dir)
        yield run_dir
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)
        for d in created:
            try:
                d.rmdir()  # only succeeds when empty
            except OSError:
                break
