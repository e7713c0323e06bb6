"""Hostile and broken input, property-based: never a traceback.

The catalog parser gets random and mutated MovieLens files (CSV and ``.dat``: bad encodings, stray
quotes, missing or extra columns, huge fields, empty files, BOMs, CRLF, NUL bytes, huge numbers);
the embedding importer gets random arrays and tables. Every outcome must be exit 0 with a valid
artifact, or exit 2 with ONE ``error:`` line and the run folder exactly as it was; exit 1 (an
unexpected exception) or an exception escaping ``main`` fails. ``tests/support/stress_faults.py`` runs the
same idea on more than a thousand inputs.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from movielens_sids.cli import main
from movielens_sids.io import file_hash

# Not shrunk: a failing input is reported as generated (shrinking re-runs the CLI hundreds of times).
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _folder_state(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_hash(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _assert_outcome(rc: int, err: str, before: dict[str, str], run: Path) -> None:
    assert rc in (0, 2), f"exit {rc}: {err[-500:]}"
    assert "Traceback" not in err, err[-800:]
    if rc == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, err[-500:]
        assert _folder_state(run) == before, "a refused input changed the run folder"


def _check_catalog(path: Path) -> None:
    t = pq.read_table(path)
    assert t.num_rows > 0
    for col, pred in (("movie_id", pa.types.is_int64), ("title", pa.types.is_string),
                      ("display_title", pa.types.is_string), ("year", pa.types.is_int64),
                      ("genres", pa.types.is_list), ("tags", pa.types.is_list), ("imdb_id", pa.types.is_string),
                      ("tmdb_id", pa.types.is_int64)):
        assert pred(t.schema.field(col).type), col
    ids = t.column("movie_id").to_numpy()
    assert np.all(np.diff(ids) > 0), "movie_id must be unique and sorted"
    assert t.column("title").null_count == 0


# ------------------------------------------------------------------------------------------ catalog

_title = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=30)
_genres = st.lists(st.sampled_from(["Action", "Drama", "Sci-Fi", "(no genres listed)", "Comedy"]),
                   max_size=3).map("|".join)
_rows = st.lists(st.tuples(st.integers(-3, 10**6), _title, st.one_of(st.none(), st.integers(1880, 2030)), _genres),
                 min_size=0, max_size=12)

MUTATIONS = ["none", "bom", "crlf", "cr", "latin1", "utf16", "invalid_utf8", "stray_quote", "drop_column",
             "extra_column", "huge_field", "huge_number", "nul", "truncate", "empty", "header_only",
             "no_header", "tabs", "blank_lines", "random_bytes"]


def _movies_csv(rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["movieId", "title", "genres"])
    for mid, title, year, genres in rows:
        w.writerow([mid, f"{title} ({year})" if year is not None else title, genres])
    return buf.getvalue().encode("utf-8")


def _movies_dat(rows) -> bytes:
    return "".join(f"{mid}::{title}{f' ({year})' if year else ''}::{genres}\n"
                   for mid, title, year, genres in rows).encode("latin-1", "replace")


def _mutate(data: bytes, op: str, pos: int, blob: bytes) -> bytes:
    lines = data.split(b"\n")
    i = pos % max(1, len(lines))
    sep = b"::" if b"::" in data else b","
    if op == "none":
        return data
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    if op == "crlf":
        return data.replace(b"\n", b"\r\n")
    if op == "cr":
        return data.replace(b"\n", b"\r")
    if op == "latin1":
        return data.decode("utf-8", "replace").encode("latin-1", "replace")
    if op == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if op == "invalid_utf8":
        lines[i] += b"\xc3("
    elif op == "stray_quote":
        return data[: pos % (len(data) + 1)] + b'"' + data[pos % (len(data) + 1):]
    elif op == "drop_column":
        lines = [sep.join(ln.split(sep)[:-1]) if ln else ln for ln in lines]
    elif op == "extra_column":
        lines = [ln + sep + b"x" if ln else ln for ln in lines]
    elif op == "huge_field":
        lines[i] += b"y" * 300_000
    elif op == "huge_number":
        lines[i] = b"99999999999999999999999" + sep + b"Huge (2000)" + sep + b"Drama"
    elif op == "nul":
        return data[: pos % (len(data) + 1)] + b"\x00" + data[pos % (len(data) + 1):]
    elif op == "truncate":
        return data[: pos % (len(data) + 1)]
    elif op == "empty":
        return b""
    elif op == "header_only":
        return lines[0] + b"\n"
    elif op == "no_header":
        lines = lines[1:]
    elif op == "tabs":
        return data.replace(b",", b"\t")
    elif op == "blank_lines":
        return b"\n\n".join(lines) + b"\n  \n"
    elif op == "random_bytes":
        return blob
    return b"\n".join(lines)


@FUZZ
@given(rows=_rows, fmt=st.sampled_from(["csv", "dat"]),
       ops=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6)), min_size=1, max_size=3),
       blob=st.binary(max_size=200), links=st.one_of(st.none(), st.binary(max_size=120)),
       skip=st.booleans())
def test_catalog_parser_gives_a_catalog_or_one_line_error(rows, fmt, ops, blob, links, skip, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        src = root / "ml"
        src.mkdir()
        data = _movies_csv(rows) if fmt == "csv" else _movies_dat(rows)
        for op, pos in ops:
            data = _mutate(data, op, pos, blob)
        (src / f"movies.{fmt}").write_bytes(data)
        if links is not None and fmt == "csv":
            (src / "links.csv").write_bytes(b"movieId,imdbId,tmdbId\n" + links)
        run = root / "run"
        run.mkdir()
        (run / "catalog.parquet").write_bytes(b"an earlier catalog that must stay as it is")
        before = _folder_state(run)
        rc, err = _run(["catalog", "--source", str(src), "--run-dir", str(run), *(["--skip-bad-rows"] * skip)],
                       capsys)
        _assert_outcome(rc, err, before, run)
        if rc == 0:
            _check_catalog(run / "catalog.parquet")


# ------------------------------------------------------------------------------------------ embedding importer

N_MOVIES = 6


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory) -> Path:
    from movielens_fixtures import MOVIES, write_movielens

    root = tmp_path_factory.mktemp("cat")
    src = write_movielens(root / "ml", movies=MOVIES[:N_MOVIES])
    assert main(["catalog", "--source", str(src), "--run-dir", str(root / "run")]) == 0
    return root / "run"


_dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_, np.complex64])
_ids = st.sampled_from(["exact", "missing", "extra", "duplicate", "floats", "halves", "text", "bad_text"])


def _ids_file(folder: Path, kind: str, ids: np.ndarray) -> Path:
    if kind == "missing":
        ids = ids[:-1]
    elif kind == "extra":
        ids = np.append(ids, 10**9)
    elif kind == "duplicate":
        ids = np.append(ids[:-1], ids[0])
    if kind in ("floats", "halves"):
        p = folder / "ids.npy"
        np.save(p, ids.astype(np.float64) + (0.5 if kind == "halves" else 0.0))
    elif kind in ("text", "bad_text"):
        p = folder / "ids.txt"
        p.write_text("\n".join(map(str, ids)) + ("\nseven\n" if kind == "bad_text" else "\n"))
    else:
        p = folder / "ids.npy"
        np.save(p, ids)
    return p


@FUZZ
@given(x=hnp.arrays(_dtypes, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=N_MOVIES + 1)),
       ids_kind=_ids, normalize=st.booleans(), fmt=st.sampled_from(["npy", "parquet", "parquet-list"]))
def test_embedding_importer_gives_embeddings_or_one_line_error(catalog_run, x, ids_kind, normalize, fmt, capsys):
    cat_ids = pq.read_table(catalog_run / "catalog.parquet").column("movie_id").to_numpy()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = root / "run"
        shutil.copytree(catalog_run, run)
        (run / "embeddings.parquet").write_bytes(b"earlier embeddings that must stay as they are")
        before = _folder_state(run)
        ids_path = _ids_file(root, ids_kind, cat_ids)
        if fmt == "npy":
            np.save(root / "v.npy", x)
            argv = ["--from", str(root / "v.npy"), "--ids", str(ids_path)]
        else:
            ids = np.load(ids_path) if ids_path.suffix == ".npy" else cat_ids
            rows = x.reshape(len(x), -1) if x.size else np.zeros((len(x), 0))
            vals = [list(map(float, np.real(r))) for r in rows][: len(ids)]
            col = pa.array(vals, pa.list_(pa.float64()))
            if fmt == "parquet" and vals and len({len(v) for v in vals}) == 1 and len(vals[0]):
                col = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([np.asarray(v) for v in vals])),
                                                        len(vals[0]))
            pq.write_table(pa.table({"movie_id": pa.array(ids[: len(vals)]), "embedding": col}), root / "v.parquet")
            argv = ["--from", str(root / "v.parquet")]
        rc, err = _run(["embed", *argv, "--run-dir", str(run), *([] if normalize else ["--no-normalize"])], capsys)
        _assert_outcome(rc, err, before, run)
        if rc == 0:
            t = pq.read_table(run / "embeddings.parquet")
            assert t.column("movie_id").to_numpy().tolist() == sorted(cat_ids.tolist())
            v = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
            assert v.dtype == np.float32 and np.isfinite(v).all()
            if normalize:
                assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


@FUZZ
@given(x=hnp.arrays(np.float32, st.tuples(st.just(N_MOVIES), st.integers(1, 5)),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_non_finite_vectors_are_refused_and_finite_ones_are_kept(catalog_run, x, capsys):
    cat_ids = pq.read_table(catalog_run / "catalog.parquet").column("movie_id").to_numpy()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = root / "run"
        shutil.copytree(catalog_run, run)
        before = _folder_state(run)
        np.save(root / "v.npy", x)
        np.save(root / "ids.npy", cat_ids)
        rc, err = _run(["embed", "--from", str(root / "v.npy"), "--ids", str(root / "ids.npy"), "--run-dir",
                        str(run), "--no-normalize"], capsys)
        _assert_outcome(rc, err, before, run)
        assert (rc == 0) == bool(np.isfinite(x).all())
        if rc == 0:
            v = np.stack(pq.read_table(run / "embeddings.parquet").column("embedding").to_numpy(zero_copy_only=False))
            assert np.array_equal(v, x)


# ------------------------------------------------------------------------------------------ found by fuzzing

_KNOWN = {
    "huge movieId": {"movies.csv": b"movieId,title,genres\n1,A (2000),Drama\n99999999999999999999999,B (2001),Drama\n"},
    "huge tmdbId": {"movies.csv": b"movieId,title,genres\n1,A (2000),Drama\n",
                    "links.csv": b"movieId,imdbId,tmdbId\n1,0114709,99999999999999999999999\n"},
    "huge .dat id": {"movies.dat": b"1::A (2000)::Drama\n99999999999999999999999::B (2001)::Drama\n"},
    "carriage returns only": {"movies.csv": b"movieId,title,genres\r1,A (2000),Drama\r2,B (2001),Drama\r"},
    "huge field in a bad file": {"movies.csv": b"movieId,title,genres\n1,A (2000),Drama\n2,B,C,D\n3,"
                                 + b"x" * 200_000 + b",Drama\n"},
    "invalid UTF-8 in a bad row": {"movies.csv": b"movieId,title,genres\n1,A (2000),Drama\n2,\xc3(x\n"},
}


@pytest.mark.parametrize("case", list(_KNOWN))
def test_inputs_that_once_gave_a_traceback(tmp_path, capsys, monkeypatch, case):
    # pyarrow reports an exception in its row handler through sys.unraisablehook: a traceback on stderr.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    src = tmp_path / "ml"
    src.mkdir()
    for name, data in _KNOWN[case].items():
        (src / name).write_bytes(data)
    run = tmp_path / "run"
    rc, err = _run(["catalog", "--source", str(src), "--run-dir", str(run)], capsys)
    assert rc in (0, 2) and "Traceback" not in err and not unraisable, err[-500:]
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and not run.exists(), err
    else:
        _check_catalog(run / "catalog.parquet")
