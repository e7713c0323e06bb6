"""Atomic artifacts, the run-folder lock and content hashes."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pytest

from movielens_sids.errors import SidsError
from movielens_sids.io import atomic_dir, atomic_path, file_hash, run_lock, write_parquet, write_text


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_full_disk_is_a_clear_error(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(SidsError, match="no space left"), atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "x").write_text("2")
        (tmp / "y").write_text("2")
        raise KeyboardInterrupt
    assert _snapshot(target) == {"x": b"1"}
    with atomic_dir(target) as tmp:
        (tmp / "y").write_text("3")
    assert _snapshot(target) == {"y": b"3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_run_lock_refuses_second_writer_and_cleans_up(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        with pytest.raises(SidsError, match="in use by another command"):
            with run_lock(run_dir):
                pass
    assert not run_dir.exists(), "a command that wrote nothing must not leave a new folder behind"
    run_dir.mkdir()
    (run_dir / "keep").write_text("k")
    with run_lock(run_dir):
        pass
    assert _snapshot(run_dir) == {"keep": b"k"}


def test_run_lock_sweeps_stale_temp_files(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".tmp-sids.parquet.abc").write_text("half-written by a killed process")
    (run_dir / ".stages").mkdir()
    (run_dir / ".stages" / ".tmp-embed.json.abc").write_text("{")
    (run_dir / ".stages" / "embed.json").write_text("{}")
    (run_dir / ".tmp-model.xyz" / "inner").mkdir(parents=True)
    (run_dir / ".tmp-model.xyz" / "inner" / ".tmp-w").write_text("w")
    with run_lock(run_dir):
        pass
    assert not [p for p in run_dir.rglob("*") if p.name.startswith(".tmp-")]
    assert (run_dir / ".stages" / "embed.json").read_text() == "{}"


def test_parquet_bytes_are_deterministic(tmp_path):
    table = pa.table({"movie_id": [3, 1, 2], "sid": ["<a_1>", "<a_2>", "<a_3>"]})
    write_parquet(tmp_path / "a.parquet", table, metadata={"k": "v"})
    write_parquet(tmp_path / "b.parquet", table, metadata={"k": "v"})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_folder_hash_tracks_content_and_ignores_temp_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_text("1")
    h1 = file_hash(d)
    (d / ".tmp-a.x").write_text("junk")
    assert file_hash(d) == h1
    (d / "a").write_text("2")
    assert file_hash(d) != h1
    os.remove(d / ".tmp-a.x")


def test_run_lock_removes_parents_it_created(tmp_path):
    with run_lock(tmp_path / "a" / "b" / "run"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_vector_file_is_read_group_by_group_into_the_same_matrix(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from movielens_sids.artifacts import read_embeddings, read_vector_file
    from movielens_sids.io import VECTOR_ROW_GROUP

    n, d = 2 * VECTOR_ROW_GROUP + 123, 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64) + 1  # not in id order
    table = pa.table({"movie_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)})
    write_parquet(tmp_path / "embeddings.parquet", table, vectors="embedding")
    meta = pq.ParquetFile(tmp_path / "embeddings.parquet").metadata
    assert meta.num_row_groups == 3 and meta.row_group(0).num_rows == VECTOR_ROW_GROUP
    assert "RLE_DICTIONARY" not in meta.row_group(0).column(1).encodings  # the floats are stored plainly
    rest, got, _ = read_vector_file(tmp_path / "embeddings.parquet", "embedding", "embed")
    assert rest.column_names == ["movie_id"] and np.array_equal(got, x)  # in file order
    emb = read_embeddings(tmp_path)  # sorted by movie_id, vectors moved with their ids
    order = np.argsort(ids)
    assert np.array_equal(emb.movie_ids, ids[order]) and np.array_equal(emb.x, x[order])
    assert emb.x.flags.writeable and emb.x.flags.c_contiguous


def test_a_vector_file_with_mixed_dimensions_or_no_vectors_is_a_clear_error(tmp_path):
    import pyarrow.parquet as pq

    from movielens_sids.artifacts import read_embeddings

    rows = [[0.1, 0.2]] * 3 + [[0.1, 0.2, 0.3]] * 3  # lists whose length changes between row groups
    table = pa.table({"movie_id": pa.array(range(1, 7), pa.int64()),
                      "embedding": pa.array(rows, pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "embeddings.parquet", row_group_size=3)
    with pytest.raises(SidsError, match="mixed dimensions"):
        read_embeddings(tmp_path)
    pq.write_table(table.drop_columns(["embedding"]), tmp_path / "embeddings.parquet")
    with pytest.raises(SidsError, match="no 'embedding' column"):
        read_embeddings(tmp_path)
