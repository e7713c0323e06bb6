"""A new user's first hour with a finished run: defaults, dry runs, lookups, probes, log lines, help, cards.

One run folder is made once with the CLI, as the quickstart makes runs/demo (``run --config demo``), on a
MovieLens folder in the official format with imported vectors (no embedding model needed); tests that
change a folder work on a copy.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from movielens_fixtures import write_movielens

from movielens_sids.cli import main
from movielens_sids.io import file_hash, write_parquet

NAMED = [
    (1, "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
    (3114, "Toy Story 2 (1999)", "Adventure|Animation|Children|Comedy|Fantasy"),
    (2571, "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    (6365, "Matrix Reloaded, The (2003)", "Action|Adventure|Sci-Fi|Thriller|IMAX"),
    (6934, "Matrix Revolutions, The (2003)", "Action|Adventure|Sci-Fi|Thriller|IMAX"),
    (1214, "Alien (1979)", "Horror|Sci-Fi"),
    (1200, "Aliens (1986)", "Action|Adventure|Horror|Sci-Fi"),
    (6400, "Nothing (2003)", "Comedy|Fantasy|Mystery|Sci-Fi"),
    (858, "Godfather, The (1972)", "Crime|Drama"),
    (296, "Pulp Fiction (1994)", "Comedy|Crime|Drama|Thriller"),
]
GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance", "Western"]
FILLERS = [(10_000 + i, f"Quiet River Number {i} ({1950 + i})", GENRES[i % len(GENRES)]) for i in range(110)]


def _write_vectors(path: Path, ids: list[int], dim: int = 16) -> None:
    """Clustered unit vectors, one per movie: the film and its sequels close together."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, dim))
    groups = [0 if i in (1, 3114) else 1 if i in (2571, 6365, 6934) else 2 if i in (1214, 1200) else 3 + i % 5
              for i in ids]
    x = centres[groups] + 0.3 * rng.normal(size=(len(ids), dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    write_parquet(path, pa.table({"movie_id": pa.array(ids, pa.int64()),
                                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """``runs/demo`` as the quickstart leaves it (catalog -> export; the map is left out: UMAP is slow)."""
    root = tmp_path_factory.mktemp("quickstart")
    movies = NAMED + FILLERS
    source = write_movielens(root / "ml", movies=movies)
    _write_vectors(root / "vectors.parquet", [m[0] for m in movies])
    run_dir = root / "runs" / "demo"
    assert main(["run", "--config", "demo", "--run-dir", str(run_dir), "--source", str(source), "--until", "export",
                 "--set", f"embed.from_file={root / 'vectors.parquet'}", "--set", "model.codebook_size=8",
                 "--set", "model.levels=2", "--set", "model.group_prototypes=4", "--set", "train.max_epochs=1",
                 "--set", "train.batch_size=64"]) == 0
    return run_dir


@pytest.fixture
def runs(demo, tmp_path, monkeypatch) -> Path:
    """A working folder holding a copy of the quickstart's ``runs/demo``, as the current folder."""
    shutil.copytree(demo, tmp_path / "runs" / "demo", symlinks=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs"


def _state(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (file_hash(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the quickstart's run folder ----------------------------------------------------------------------


def test_quickstart_folder_is_the_default(runs, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert main(["lookup", "--movie", "Toy Story"]) == 0
    assert "Toy Story (1995)" in capsys.readouterr().out
    assert "using runs/demo, the only run folder under runs/" in caplog.text
    # Two run folders: a one-line error that lists them
    shutil.copytree(runs / "demo", runs / "other", symlinks=True)
    assert main(["lookup", "--movie", "Toy Story"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "runs/demo" in err and "runs/other" in err and "--run-dir" in err


def test_quickstart_folder_settings_are_every_commands_default(runs, monkeypatch):
    """lookup, evaluate, export and visualize on --run-dir runs/demo use its settings without --config."""
    import movielens_sids.pipeline as pipeline

    seen: dict[str, tuple[str, int, int]] = {}

    def spy(name, cfg, run_dir, **kw):
        seen[name] = (cfg.experiment, cfg.model.codebook_size, cfg.train.max_epochs)
        return {"n_points": 0, "html_bytes": 0, "overlap_at_10": 0, "first_token_match_at_10": 0,
                "random_first_token_match": 0, "unique_fraction_after_dedup": 1, "rows": 0}

    monkeypatch.setattr(pipeline, "execute", spy)
    for command in ("evaluate", "export", "visualize"):
        assert main([command, "--run-dir", "runs/demo"]) == 0
    assert seen == {c: ("demo", 8, 1) for c in ("evaluate", "export", "visualize")}
    from movielens_sids.cli import build_parser, resolve_run

    cfg, run_dir = resolve_run(build_parser().parse_args(["lookup", "--sid", "0", "--run-dir", "runs/demo"]))
    assert (cfg.experiment, cfg.model.codebook_size, run_dir) == ("demo", 8, Path("runs/demo"))


# --- dry runs -----------------------------------------------------------------------------------------


def test_dry_run_writes_nothing(runs, capsys, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    before = _state(runs / "demo")
    assert main(["export", "--run-dir", "runs/demo", "--push-to-hub", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _state(runs / "demo") == before  # not one file rewritten, added or touched
    assert "tagged 'demo'" in out  # the folder's experiment, not 'default'
    for f in ("config.json", "model.safetensors", "README.md", "data/train-00000-of-00001.parquet"):
        assert f in out
    assert "runs/demo/dataset/README.md" in out and "dry-run-" not in out  # where export would write it


# --- fuzzy matches ------------------------------------------------------------------------------------


def test_fuzzy_matches_are_not_silent(runs, capsys, caplog):
    assert main(["lookup", "--run-dir", "runs/demo", "--movie", "Zzzzqqq nothing"]) != 0
    err = capsys.readouterr().err
    assert "no movie matches 'Zzzzqqq nothing'" in err and err.count("\n") == 1
    assert main(["lookup", "--run-dir", "runs/demo", "--movie", "matrix"]) == 0
    out, err = capsys.readouterr()
    assert "The Matrix (1999)" in out
    err = caplog.text  # a warning: shown even with --quiet
    assert "matches 3 titles" in err and "The Matrix Reloaded (2003)" in err and "The Matrix Revolutions (2003)" in err


# --- probes -------------------------------------------------------------------------------------------


def test_probes_take_lookup_title_forms_and_are_kept(runs, capsys):
    assert main(["evaluate", "--run-dir", "runs/demo", "--probe", "The Matrix (1999)", "--probe", "Alien"]) == 0
    report = json.loads((runs / "demo" / "report.json").read_text())
    assert {"Matrix, The (1999)", "Alien (1979)"} <= set(report["probes"])
    assert main(["evaluate", "--run-dir", "runs/demo"]) == 0  # no --probe: the folder keeps them
    report = json.loads((runs / "demo" / "report.json").read_text())
    assert {"Matrix, The (1999)", "Alien (1979)"} <= set(report["probes"])
    before = _state(runs / "demo")
    assert main(["evaluate", "--run-dir", "runs/demo", "--probe", "Qqqq Zzzz (1850)"]) != 0
    assert "probe 'Qqqq Zzzz (1850)': no movie matches" in capsys.readouterr().err
    assert _state(runs / "demo") == before  # bad input: artifacts untouched


def test_probes_use_lookups_matcher():
    from movielens_sids.stages import evaluate

    assert "resolve_movie" in evaluate.resolve_probes.__code__.co_names
    assert not hasattr(evaluate, "_probe_index")  # the second matcher is gone


# --- charts -------------------------------------------------------------------------------------------


def test_no_charts_removes_old_charts(runs):
    pngs = sorted(p.name for p in (runs / "demo").glob("report-*.png"))
    assert len(pngs) == 3
    assert main(["evaluate", "--run-dir", "runs/demo", "--no-charts"]) == 0
    assert not list((runs / "demo").glob("report-*.png"))
    md = (runs / "demo" / "report.md").read_text()
    assert ".png" not in md


# --- log lines ----------------------------------------------------------------------------------------


def _run_quickstart(tmp_path: Path, demo: Path, *flags: str) -> list[str]:
    """``movielens-sids run --config demo`` in a fresh folder, as a subprocess (stderr is not a terminal)."""
    import os
    import subprocess

    root = demo.parent.parent
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "HF_HUB_OFFLINE": "1"}
    env.pop("MOVIELENS_SIDS_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "movielens_sids", *flags, "run", "--config", "demo", "--run-dir",
                        str(tmp_path / "fresh"), "--source", str(root / "ml"), "--until", "evaluate",
                        "--set", f"embed.from_file={root / 'vectors.parquet'}", "--set", "model.codebook_size=8",
                        "--set", "model.levels=2", "--set", "model.group_prototypes=4", "--set",
                        "train.max_epochs=1", "--set", "train.batch_size=64"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return (r.stdout + r.stderr).splitlines()


@pytest.mark.parametrize("noise", ["Warning", "warn(", "litlogger", "LeafSpec", "faiss", "GPU available",
                                   "TPU available", "Epoch 0", "non-writable", "Loading weights"])
def test_log_noise_is_gone_at_ordinary_verbosity(noise, quickstart_lines):
    lines = quickstart_lines[""]
    assert not [line for line in lines if noise.lower() in line.lower()]


@pytest.fixture(scope="module")
def quickstart_lines(demo, tmp_path_factory) -> dict[str, list[str]]:
    out = {}
    for flag in ("", "--quiet", "--verbose"):
        out[flag] = _run_quickstart(tmp_path_factory.mktemp("q"), demo, *([flag] if flag else []))
    return out


def test_quiet_and_verbose(quickstart_lines):
    normal, quiet, verbose = quickstart_lines[""], quickstart_lines["--quiet"], quickstart_lines["--verbose"]
    assert any("[4/6] train" in line for line in normal)
    assert not any("[4/6] train" in line for line in quiet) and any("run folder:" in line for line in quiet)
    assert len(quiet) < len(normal) < len(verbose)
    # --verbose keeps the libraries' lines, each once (Lightning used to print its own twice)
    gpu = [line for line in verbose if "GPU available" in line]
    assert len(gpu) == 1
    # one line per stage, no progress bar off a terminal
    assert not any("━" in line or "it/s" in line for line in normal + verbose)


def test_quiet_and_verbose_are_on_every_command(capsys):
    from movielens_sids.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--quiet" in text and "--verbose" in text, command


def test_arrays_read_back_are_writable(demo):
    """torch.from_numpy warns about a read-only array: the readers hand out writable copies."""
    from movielens_sids.artifacts import read_embeddings, read_sids
    from movielens_sids.lookup import load_index

    emb, sids, index = read_embeddings(demo), read_sids(demo), load_index(demo)
    for a in (emb.x, emb.movie_ids, sids.tokens, sids.movie_ids, index.tokens, index.movie_ids):
        assert a.flags.writeable


# --- help texts and cards -----------------------------------------------------------------------------


def test_help_and_cards_point_somewhere(runs, capsys):
    from movielens_sids.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        # a help text names no document the user does not have (a contract file, its numbered sections)
        assert not re.search(r"\b[A-Z]{3,}\.md\b|\bsection \d", capsys.readouterr().out), command
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    export_help = capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "hf auth login" in export_help and "hf auth login" in readme and "huggingface-cli" not in readme
    with pytest.raises(SystemExit):
        main(["retrieval", "--help"])
    assert "cuda" in capsys.readouterr().out
    cards = [(runs / "demo" / "model" / "README.md").read_text(), (runs / "demo" / "dataset" / "README.md").read_text()]
    for card in cards:
        assert "<your-username>" not in card and "<user>" not in card
    encoder = json.loads((runs / "demo" / "model" / "config.json").read_text())["config"]["encoder"]
    assert encoder == "residual"
    assert "residual encoder (x + MLP(x)" in cards[0] and "MLP encoder" not in cards[0]


def test_retrieval_device_is_spelled_cuda():
    from movielens_sids.retrieval.config import RetrievalConfig

    assert RetrievalConfig(device="cuda").device == "cuda"
    assert RetrievalConfig(device="gpu").device == "cuda"  # the old spelling still works


# --- the model card's snippet -------------------------------------------------------------------------


def test_model_card_snippet_reproduces_the_ids(runs):
    """The card tells how to get a movie's real SID (after dedup), and its snippet gives it."""
    import re

    from movielens_sids.artifacts import read_sids

    card = (runs / "demo" / "model" / "README.md").read_text()
    assert "read, not recomputed" in card and "sid_of" in card and "before dedup" in card
    code = re.search(r"```python\n(from movielens_sids import SemanticIds.*?)```", card, re.S).group(1)
    code = code.replace("sids.encode([", "# sids.encode([")  # the embedding model is not needed here
    scope: dict = {}
    exec(compile(code, "model card", "exec"), scope)  # noqa: S102 - the card's own snippet, on this run
    sids = read_sids(runs / "demo")
    assert scope["sids"].sid_of("Toy Story (1995)") == sids.strings[list(sids.movie_ids).index(1)]
    assert scope["sid"] == scope["sids"].sid_of(1)
    assert scope["sid"].startswith(scope["sids"].movies_under(scope["sid"][:scope["sid"].index(">") + 1]).sid[0][:4])
    stats = json.loads((runs / "demo" / "report.json").read_text())["dedup"]["assign_stats"]
    assert f"{stats['n_moved'] + stats['n_suffixed']:,} of {stats['n_movies']:,} movies" in card


# --- prefix lookups -----------------------------------------------------------------------------------


def test_prefix_lookups_give_feedback(runs, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert main(["lookup", "--run-dir", "runs/demo", "--sid", "<a_99>"]) != 0
    assert "99 is out of range: codes at level 1 run 0..7" in capsys.readouterr().err
    under = [m for m in json.loads((runs / "demo" / "report.json").read_text())["probes"]]  # noqa: F841
    from movielens_sids import lookup_prefix

    first = max(range(8), key=lambda c: len(lookup_prefix(runs / "demo", (c,))))
    n = len(lookup_prefix(runs / "demo", (first,)))
    assert main(["lookup", "--run-dir", "runs/demo", "--sid", str(first), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert f"{n} movies match {first}; showing 5" in caplog.text
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 5


# --- charts and timings -------------------------------------------------------------------------------


def test_collision_chart_has_a_numeric_axis(monkeypatch, tmp_path):
    from movielens_sids.reports import charts

    figures = []
    monkeypatch.setattr(charts, "_save", lambda plt, fig, path: figures.append(fig))
    sizes = np.array([1] * 40 + [5] * 5 + [7] * 7 + [8] * 8 + [12] * 12)
    charts.collision_chart(sizes, tmp_path / "c.png")
    ax = figures[0].axes[0]
    centres = sorted(round(p.get_x() + p.get_width() / 2, 6) for p in ax.patches)
    assert centres == [1, 5, 7, 8, 12]  # each bar at its group size: 8 -> 12 is a gap, not one step
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [25, 40, 49, 64, 144]


def test_timings_table_lists_every_stage_that_ran(demo):
    md = (demo / "report.md").read_text()
    table = md[md.index("## Timings"):].splitlines()
    header = table[2]
    for stage in ("catalog", "embed", "train", "assign", "evaluate", "export"):
        assert f" {stage} " in header, stage
