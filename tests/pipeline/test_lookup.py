"""lookup: SID prefixes, finding movies by id/title/fuzzy title, neighbours by SID."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sids_fixtures import write_catalog

from movielens_sids import lookup_movie, lookup_prefix, neighbors
from movielens_sids.errors import SidsError
from movielens_sids.io import write_parquet
from movielens_sids.model import RQVAE, RQVAEConfig, save_pretrained
from movielens_sids.sid import format_sid, parse_sid, parse_sid_prefix
from movielens_sids.stages.assign import sids_table

MOVIES = [
    # movie_id, title, display_title, year, codes
    (1, "Matrix, The", "The Matrix", 1999, (0, 0)),
    (2, "Matrix Reloaded, The", "The Matrix Reloaded", 2003, (0, 1)),
    (3, "Toy Story", "Toy Story", 1995, (0, 2)),
    (4, "Toy Story 2", "Toy Story 2", 1999, (0, 3)),
    (5, "Godfather, The", "The Godfather", 1972, (1, 0)),
    (6, "Hamlet", "Hamlet", 1990, (2, 1)),
    (7, "Hamlet", "Hamlet", 1996, (3, 0)),
    (1917, "Amélie", "Amélie", 2001, (1, 1)),
]


@pytest.fixture
def run(tmp_path):
    """A run whose decoded vectors are known: identity decoder, 2 levels x 4 codes in 2-d."""
    write_catalog(tmp_path, [{"movie_id": m, "title": t, "display_title": d, "year": y, "genres": ["Drama"]}
                             for m, t, d, y, _ in MOVIES])
    tok = RQVAE(RQVAEConfig(input_dim=2, encoder="identity", levels=2, codebook_size=4))
    with torch.no_grad():
        tok.quantizer.codebooks[0] = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 10.0], [10.0, 10.0]])
        tok.quantizer.codebooks[1] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    save_pretrained(tok, tmp_path / "model")
    ids = np.array([m[0] for m in MOVIES])
    codes = np.array([m[4] for m in MOVIES])
    write_parquet(tmp_path / "sids.parquet", sids_table(ids, codes),
                  metadata={"assign": json.dumps({"levels": 2, "codebook_size": 4, "strategy": "semantic"})})
    return tmp_path


def test_sid_strings_round_trip():
    assert format_sid([12, 201, 7]) == "<a_12><b_201><c_7>"
    assert parse_sid("<a_12><b_201><c_7>") == (12, 201, 7)
    for text in ("12,201", "12 201", "(12, 201)", "<a_12><b_201>", " 12 , 201 "):
        assert parse_sid_prefix(text) == (12, 201)
    assert parse_sid_prefix("12") == (12,)
    for bad in ("", "a,b", "<b_12>", "<a_12><c_3>", "12,-3", "<a_x>"):
        with pytest.raises(SidsError):
            parse_sid_prefix(bad)


def test_lookup_movie_by_id_exact_and_fuzzy_title(run):
    assert lookup_movie(run, "3")["title"] == "Toy Story (1995)"
    assert lookup_movie(run, 1917)["title"] == "Amélie (2001)"
    rec = lookup_movie(run, "The Matrix")
    assert rec == {"movie_id": 1, "title": "The Matrix (1999)", "year": 1999, "genres": ["Drama"],
                   "sid": "<a_0><b_0>", "semantic_id": [0, 0]}
    assert lookup_movie(run, "Matrix, The (1999)")["movie_id"] == 1
    assert lookup_movie(run, "matrix reloaded")["movie_id"] == 2
    assert lookup_movie(run, "The Godfathr")["movie_id"] == 5  # typo
    assert lookup_movie(run, "amelie")["movie_id"] == 1917  # accents do not matter
    assert lookup_movie(run, "Hamlet (1996)")["movie_id"] == 7


def test_ambiguous_or_unknown_titles_list_the_candidates(run):
    with pytest.raises(SidsError) as e:
        lookup_movie(run, "Hamlet")
    msg = str(e.value)
    assert "6 Hamlet (1990)" in msg and "7 Hamlet (1996)" in msg and "\n" not in msg
    with pytest.raises(SidsError, match="ambiguous") as e:
        lookup_movie(run, "story")
    assert "3 Toy Story (1995)" in str(e.value) and "4 Toy Story 2 (1999)" in str(e.value)
    with pytest.raises(SidsError, match="no movie matches"):
        lookup_movie(run, "qqqq zzzz xxxx")


def test_lookup_prefix(run):
    assert [m["movie_id"] for m in lookup_prefix(run, "0")] == [1, 2, 3, 4]
    assert [m["movie_id"] for m in lookup_prefix(run, "<a_1>")] == [5, 1917]
    assert [m["movie_id"] for m in lookup_prefix(run, "0,2")] == [3]
    assert lookup_prefix(run, (3, 1)) == []  # in range, nobody there
    with pytest.raises(SidsError, match="9 is out of range: codes at level 1 run 0..3"):
        lookup_prefix(run, (9,))
    assert len(lookup_prefix(run, "0", limit=2)) == 2
    with pytest.raises(SidsError, match="tokens"):
        lookup_prefix(run, "0,0,0")


def test_neighbors_rank_shared_prefix_then_decoded_distance(run):
    got = neighbors(run, "The Matrix", k=6)
    # shared first token (2, 3, 4 at decoded distance 1, 2, 3) beats movie 5, which decodes
    # closer (0.5) but starts with another token; then 5, 1917 by distance
    assert [m["movie_id"] for m in got] == [2, 3, 4, 5, 1917, 6]
    assert [m["shared_prefix"] for m in got] == [1, 1, 1, 0, 0, 0]
    assert [round(m["distance"], 6) for m in got[:5]] == [1.0, 2.0, 3.0, 0.5, 1.5]
    assert [m["movie_id"] for m in neighbors(run, 1, k=2)] == [2, 3]
    assert 1 not in [m["movie_id"] for m in neighbors(run, 1, k=20)]


def test_cli_table_and_json(run, capsys):
    from movielens_sids.cli import main

    assert main(["lookup", "--run-dir", str(run), "--movie", "The Matrix"]) == 0
    out = capsys.readouterr().out
    assert "<a_0><b_0>" in out and "The Matrix (1999)" in out
    assert main(["lookup", "--run-dir", str(run), "--neighbors", "1", "--k", "2", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["movie_id"] for r in recs] == [2, 3]
    assert main(["lookup", "--run-dir", str(run), "--sid", "0,1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["sid"] == "<a_0><b_1>"
    assert main(["lookup", "--run-dir", str(run), "--movie", "Hamlet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "1990" in err


def test_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(SidsError, match="assign"):
        lookup_movie(tmp_path / "r", "1")
    with pytest.raises(SidsError, match="not found"):
        lookup_movie(tmp_path / "nope", "1")


def test_index_is_loaded_once_until_a_file_changes(run):
    from movielens_sids.lookup import load_index

    a = load_index(run)
    assert load_index(run) is a
    write_parquet(run / "sids.parquet", sids_table(np.array([m[0] for m in MOVIES]), np.array([m[4] for m in MOVIES])),
                  metadata={"assign": json.dumps({"levels": 2})})
    assert load_index(run) is not a
