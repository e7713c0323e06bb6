"""Artifacts that prove themselves: checksums in the stage records, ``verify``, SIDs that never change
silently, and the one-line messages of a full disk and a read-only folder.

A tiny run folder (48 movies, a 2 x 4 RQ-VAE) is built once with ``run --until export``; each test works
on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_checks import snapshot, tiny_inputs

from movielens_sids.cli import main
from movielens_sids.io import file_hash

N = 48
SETTINGS = ["--set", "model.levels=2", "--set", "model.codebook_size=4",
            "--set", "model.hidden_dims=[16]", "--set", "train.max_epochs=2", "--set", "train.batch_size=16",
            "--set", "train.progress_bar=false", "--set", "train.accelerator=cpu", "--set", "assign.device=cpu",
            "--set", "evaluate.charts=false"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("checksums")
    src = tiny_inputs(tmp, N)
    run_args = ["--source", str(src), "--set", f"embed.from_file={tmp / 'v.npy'}", "--set",
                f"embed.from_ids={tmp / 'ids.npy'}", *SETTINGS]
    run = tmp / "run"
    assert main(["run", "--run-dir", str(run), "--until", "export", *run_args]) == 0
    return {"tmp": tmp, "run": run, "run_args": run_args}


def _copy(built: dict, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(built["run"], run)
    return run


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _record(run: Path, stage: str) -> dict:
    return json.loads((run / ".stages" / f"{stage}.json").read_text())


# (file flipped, the stage that wrote it, the next stage that reads it)
FLIPS = [("model/model.safetensors", "train", "assign"), ("embeddings.parquet", "embed", "train"),
         ("sids.parquet", "assign", "evaluate")]


@pytest.mark.parametrize(("rel", "writer", "reader"), FLIPS)
def test_a_flipped_byte_is_refused_by_the_next_reader_with_the_promised_message(built, tmp_path, capsys, rel,
                                                                                 writer, reader):
    run = _copy(built, tmp_path)
    _flip(run / rel)
    before = snapshot(run)
    assert main([reader, "--run-dir", str(run), *SETTINGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(run / rel) in err[0] and f"`{writer}` wrote" in err[0], err
    assert f"run `movielens-sids {writer}` again" in err[0] and "--accept-changed" in err[0], err
    assert {k: v for k, v in snapshot(run).items() if not k.startswith(".stages/")} == \
        {k: v for k, v in before.items() if not k.startswith(".stages/")}


@pytest.mark.parametrize(("rel", "writer", "reader"), FLIPS)
def test_verify_names_the_flipped_file_and_run_rebuilds_the_stage_that_wrote_it(built, tmp_path, capsys, caplog,
                                                                                 rel, writer, reader):
    run = _copy(built, tmp_path)
    good = file_hash(run / rel)
    _flip(run / rel)
    assert main(["verify", "--run-dir", str(run)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if f"({writer})" in ln)
    assert "FAIL" in line and rel.split("/")[-1] in line, out
    caplog.set_level("INFO")  # on the root: logs.setup leaves our logger's level to it
    assert main(["run", "--run-dir", str(run), "--until", "export", *built["run_args"]]) == 0
    said = caplog.text + capsys.readouterr().err  # the stage lines go to our handler (logs.setup) or the log capture
    assert f"{writer}" in said and f"{rel} changed since {writer} wrote it" in said, said
    if writer != "train":  # rebuilt: the deterministic stages give the same bytes again
        assert file_hash(run / rel) == good
    assert _record(run, writer)["outputs"] == _record(built["run"], writer)["outputs"] or writer == "train"
    assert main(["verify", "--run-dir", str(run)]) == 0, capsys.readouterr().out


def test_verify_tells_a_stale_stage_from_a_damaged_file(built, tmp_path, capsys):
    """A damaged model, then ``run --until assign``: train re-writes model/ (export's model card goes with it),
    so export is out of date, not damaged: verify lists it as stale and exits 0; ``run`` brings it back."""
    run = _copy(built, tmp_path)
    _flip(run / "model" / "model.safetensors")
    assert main(["run", "--run-dir", str(run), "--until", "assign", *built["run_args"]]) == 0
    assert not (run / "model" / "README.md").exists()
    capsys.readouterr()
    assert main(["verify", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    stale = {ln.split()[0] for ln in out.splitlines() if ln.split()[1:2] == ["(stage)"] and "stale" in ln}
    assert "export" in stale and "stale (not damaged): " in out.splitlines()[-1], out
    assert not {"catalog", "embed", "train", "assign"} & stale, out
    _flip(run / "sids.parquet")  # damage is still damage
    assert main(["verify", "--run-dir", str(run)]) == 1
    assert "FAIL" in next(ln for ln in capsys.readouterr().out.splitlines() if "(assign)" in ln)
    _flip(run / "sids.parquet")
    assert main(["run", "--run-dir", str(run), "--until", "export", *built["run_args"]]) == 0
    capsys.readouterr()
    assert main(["verify", "--run-dir", str(run)]) == 0
    assert "stale" not in capsys.readouterr().out


def test_accept_changed_takes_a_replaced_model_and_records_its_checksum(built, tmp_path, capsys):
    run = _copy(built, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert main(["train", "--run-dir", str(other), *SETTINGS, "--set", "train.seed=7"]) == 0
    for f in ("model.safetensors", "config.json"):  # "downloaded from the Hub"
        shutil.copyfile(other / "model" / f, run / "model" / f)
    new = file_hash(run / "model" / "model.safetensors")
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 2
    assert "--accept-changed" in capsys.readouterr().err
    assert main(["assign", "--run-dir", str(run), *SETTINGS, "--accept-changed"]) == 0
    rec = _record(run, "train")
    assert rec["outputs"]["model"]["model.safetensors"] == new
    assert any(a["file"] == "model/model.safetensors" and a["now"] == new for a in rec["accepted"])
    assert _record(run, "assign")["inputs"]["model/model.safetensors"] == new
    assert main(["verify", "--run-dir", str(run)]) == 0, capsys.readouterr().out


# ------------------------------------------------------------------------------------------ verify


def _rewrite_sids(run: Path, edit) -> None:
    """Rewrite sids.parquet with ``edit(movie_ids, list of token lists) -> (movie_ids, tokens)``, metadata kept."""
    from movielens_sids.sid import format_sid

    table = pq.read_table(run / "sids.parquet")
    ids, tokens = edit(table.column("movie_id").to_pylist(), table.column("semantic_id").to_pylist())
    new = pa.table({"movie_id": pa.array(ids, pa.int64()), "semantic_id": pa.array(tokens, pa.list_(pa.int32())),
                    "sid": pa.array([format_sid(t) for t in tokens])}).replace_schema_metadata(table.schema.metadata)
    pq.write_table(new, run / "sids.parquet")


def _duplicate(ids, tokens):
    return ids, [tokens[1], *tokens[1:]]


def _missing(ids, tokens):
    return ids[1:], tokens[1:]


def _out_of_range(ids, tokens):
    return ids, [[t[0], 4, *t[2:]] if i == 3 else t for i, t in enumerate(tokens)]


def _wrong_length(ids, tokens):
    return ids, [[*t, 0, 0] if i == 5 else t for i, t in enumerate(tokens)]


FAULTS = {
    "duplicate SID": (lambda run: _rewrite_sids(run, _duplicate), "all SIDs distinct"),
    "missing movie": (lambda run: _rewrite_sids(run, _missing), "one SID per catalog movie"),
    "code out of range": (lambda run: _rewrite_sids(run, _out_of_range), "codes within their codebooks"),
    "wrong length": (lambda run: _rewrite_sids(run, _wrong_length), "SID length"),
    "tampered model": (lambda run: _flip(run / "model" / "model.safetensors"), "model/ (train)"),
    "tampered catalog": (lambda run: _flip(run / "catalog.parquet"), "catalog.parquet (catalog)"),
}


def test_verify_passes_a_healthy_run(built, capsys):
    assert main(["verify", "--run-dir", str(built["run"])]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "all SIDs distinct" in out and "model codes agree" in out, out


@pytest.mark.parametrize("fault", list(FAULTS))
def test_verify_fails_and_names_each_fault(built, tmp_path, capsys, fault):
    run = _copy(built, tmp_path)
    make, row = FAULTS[fault]
    make(run)
    assert main(["verify", "--run-dir", str(run)]) == 1
    out = capsys.readouterr().out
    line = next((ln for ln in out.splitlines() if ln.startswith(row)), "")
    assert "FAIL" in line, out
    assert "checks failed" in out.splitlines()[-1]


def test_verify_catches_sids_that_disagree_with_the_model(built, tmp_path, capsys):
    """A valid-looking SID on another free path (distinct, in range, right length) is still caught."""
    run = _copy(built, tmp_path)
    table = pq.read_table(run / "sids.parquet")
    held = {tuple(t) for t in table.column("semantic_id").to_pylist()}
    width = len(next(iter(held)))
    free = next(t for t in np.ndindex(*([4] * width)) if t not in held)
    _rewrite_sids(run, lambda ids, tokens: (ids, [list(free) if i == 0 else t for i, t in enumerate(tokens)]))
    assert main(["verify", "--run-dir", str(run)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("model codes agree"))
    assert "FAIL" in line and "first movie_id: 1" in line, out


def test_verify_catches_recorded_model_codes_that_are_not_the_models(built, tmp_path, capsys):
    run = _copy(built, tmp_path)
    assert main(["verify", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    table = pq.read_table(run / "sids.parquet")
    codes = table.column("model_codes").to_pylist()
    codes[0] = [(codes[0][0] + 1) % 4, *codes[0][1:]]  # what evaluate would read as movie 1's codes
    col = table.schema.get_field_index("model_codes")
    pq.write_table(table.set_column(col, "model_codes", pa.array(codes, pa.list_(pa.int32())))
                   .replace_schema_metadata(table.schema.metadata), run / "sids.parquet")
    assert main(["verify", "--run-dir", str(run)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model codes agree"))
    assert "FAIL" in line and "model_codes" in line and "first movie_id: 1" in line, line


# ------------------------------------------------------------------------------------------ SID versions


def test_a_retrain_then_assign_reports_keeps_and_maps_the_changed_sids(built, tmp_path, caplog):
    run = _copy(built, tmp_path)
    old = (run / "sids.parquet").read_bytes()
    old_table = pq.read_table(run / "sids.parquet")
    v1 = json.loads(old_table.schema.metadata[b"sid_version"])
    assert v1["number"] == 1
    assert main(["train", "--run-dir", str(run), *SETTINGS, "--set", "train.seed=3"]) == 0
    caplog.set_level("INFO", logger="movielens_sids")
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 0
    res = _record(run, "assign")["result"]
    changes = pq.read_table(run / "sid_changes.parquet")
    assert res["n_changed"] > 0 and changes.num_rows == res["n_changed"]
    assert f"{res['n_changed']} movies' SIDs changed" in caplog.text
    assert (run / "sids.previous.parquet").read_bytes() == old
    new = pq.read_table(run / "sids.parquet")
    before = dict(zip(old_table.column("movie_id").to_pylist(), old_table.column("sid").to_pylist()))
    after = dict(zip(new.column("movie_id").to_pylist(), new.column("sid").to_pylist()))
    for m, a, b in zip(*(changes.column(c).to_pylist() for c in ("movie_id", "old_sid", "new_sid"))):
        assert before[m] == a and after[m] == b and a != b
    assert sum(before[m] != after[m] for m in before) == res["n_changed"]
    v2 = json.loads(new.schema.metadata[b"sid_version"])
    assert v2["number"] == 2 and v2["content"] != v1["content"] and res["sid_version"] == v2["name"]
    # the cards say which SIDs: export after evaluate
    assert main(["evaluate", "--run-dir", str(run), *SETTINGS]) == 0
    assert main(["export", "--run-dir", str(run), *SETTINGS]) == 0
    assert v2["name"] in (run / "dataset" / "README.md").read_text()
    assert v2["name"] in (run / "model" / "README.md").read_text()
    # assigning again with the same model changes nothing: same version, same bytes
    same = (run / "sids.parquet").read_bytes()
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 0
    assert (run / "sids.parquet").read_bytes() == same


def test_incremental_assign_after_a_retrain_changes_no_sid(built, tmp_path):
    run = _copy(built, tmp_path)
    old = pq.read_table(run / "sids.parquet")
    assert main(["train", "--run-dir", str(run), *SETTINGS, "--set", "train.seed=3"]) == 0
    assert main(["assign", "--run-dir", str(run), *SETTINGS, "--incremental"]) == 0
    new = pq.read_table(run / "sids.parquet")
    assert new.column("sid").to_pylist() == old.column("sid").to_pylist()
    assert _record(run, "assign")["result"].get("n_changed", 0) == 0
    assert not (run / "sids.previous.parquet").exists() and not (run / "sid_changes.parquet").exists()
    assert json.loads(new.schema.metadata[b"sid_version"]) == json.loads(old.schema.metadata[b"sid_version"])


# ------------------------------------------------------------------------------------------ full disk, read-only


@pytest.fixture
def tmpfs_run(built, tmp_path):
    """A copy of the run (less dataset/) on its own 40 MB tmpfs; skipped unless root can mount one."""
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mount -t tmpfs failed: {r.stderr.strip()}")
    try:
        run = disk / "run"
        shutil.copytree(built["run"], run, ignore=shutil.ignore_patterns("dataset", ".cache"))
        yield disk, run
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_says_so_in_one_line_and_changes_nothing(tmpfs_run, capsys):
    disk, run = tmpfs_run
    old = (run / "sids.parquet").read_bytes()
    with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        size = 1 << 20
        while size:
            try:
                f.write(b"\0" * size)
            except OSError:
                size //= 2
    before = snapshot(run)
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no space left on device while writing {run / 'sids.parquet'}; nothing was changed"]
    assert (run / "sids.parquet").read_bytes() == old
    assert snapshot(run) == before


def test_a_read_only_folder_says_so_in_one_line(tmpfs_run, capsys):
    disk, run = tmpfs_run
    before = snapshot(run)
    r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: read-only file system while writing {run / '.lock'}; nothing was changed"]
    assert snapshot(run) == before


def test_write_errors_have_their_own_messages(tmp_path):
    import errno

    from movielens_sids.errors import SidsError
    from movielens_sids.io import atomic_path

    for code, words in [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
                        (errno.EROFS, "read-only file system")]:
        with pytest.raises(SidsError) as e, atomic_path(tmp_path / "x.parquet"):
            raise OSError(code, os.strerror(code))
        assert str(e.value) == f"{words} while writing {tmp_path / 'x.parquet'}; nothing was changed"
    with pytest.raises(OSError) as e, atomic_path(tmp_path / "x.parquet"):  # others pass through as they are
        raise OSError(errno.EIO, "I/O error")
    assert e.value.errno == errno.EIO and not list(tmp_path.iterdir())


def test_records_of_the_earlier_version_still_match(built, tmp_path, capsys):
    """Folders made before outputs were recorded file by file (model/ files as keys, one hash per dataset/)."""
    from movielens_sids import pipeline

    run = _copy(built, tmp_path)
    legacy = {"train": lambda o: {f"model/{f}": o["model"][f] for f in ("config.json", "model.safetensors")},
              "export": lambda o: {"dataset": file_hash(run / "dataset")}}
    for stage, edit in legacy.items():
        rec = _record(run, stage)
        rec["outputs"] = edit(rec["outputs"])
        (run / ".stages" / f"{stage}.json").write_text(json.dumps(rec))
    assert pipeline.changed_outputs(run, "train") == [] and pipeline.changed_outputs(run, "export") == []
    assert main(["verify", "--run-dir", str(run)]) == 0, capsys.readouterr().out
    _flip(run / "model" / "model.safetensors")
    assert [c[0] for c in pipeline.changed_outputs(run, "train")] == ["model/model.safetensors"]
    assert main(["assign", "--run-dir", str(run), *SETTINGS]) == 2
