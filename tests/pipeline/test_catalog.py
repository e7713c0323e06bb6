"""`catalog`: MovieLens files (folder or zip, CSV or .dat) -> catalog.parquet, and every bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from movielens_fixtures import LATIN1_MOVIES, LINKS, MOVIES, RATINGS, TAGS, write_movielens, zip_bytes, zip_movielens

from movielens_sids.cli import main
from movielens_sids.data import catalog as cat_mod
from movielens_sids.data.catalog import MovieLensSource, display_titles, input_files, parse_titles
from movielens_sids.errors import SidsError
from movielens_sids.settings import DataConfig
from movielens_sids.stages.catalog import build_catalog


def _catalog(tmp_path: Path, *args: str, run: str = "run") -> pd.DataFrame:
    run_dir = tmp_path / run
    assert main(["catalog", "--run-dir", str(run_dir), *args]) == 0
    return pq.read_table(run_dir / "catalog.parquet").to_pandas()


def _snapshot(root: Path) -> dict[str, bytes] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- titles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "title", "display", "year"), [
    ("Matrix, The (1999)", "Matrix, The", "The Matrix", 1999),
    ("Toy Story (1995)", "Toy Story", "Toy Story", 1995),
    ("Babylon 5", "Babylon 5", "Babylon 5", None),
    ("Irwin & Fran 2013", "Irwin & Fran 2013", "Irwin & Fran 2013", None),  # a bare number is not a year
    ("Death Note: Desu nôto (2006–2007)", "Death Note: Desu nôto", "Death Note: Desu nôto", 2006),
    ("Stranger Things (2016- )", "Stranger Things", "Stranger Things", 2016),
    ("Heroes of Telemark, The (1965) ", "Heroes of Telemark, The", "The Heroes of Telemark", 1965),
    ("Bicycle Thieves (a.k.a. Bicycle Thief, The) (Ladri di biciclette) (1948)",
     "Bicycle Thieves (a.k.a. Bicycle Thief, The) (Ladri di biciclette)",
     "Bicycle Thieves (a.k.a. The Bicycle Thief) (Ladri di biciclette)", 1948),
    ("Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)",
     "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il)",
     "The Good, the Bad and the Ugly (Il Buono, il brutto, il cattivo)", 1966),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     "City of Lost Children, The (Cité des enfants perdus, La)",
     "The City of Lost Children (La Cité des enfants perdus)", 1995),
    ("Armée des ombres, L' (1969)", "Armée des ombres, L'", "L'Armée des ombres", 1969),
    ("Crow, The: Wicked Prayer (2005)", "Crow, The: Wicked Prayer", "The Crow: Wicked Prayer", 2005),
    ("I, Robot (2004)", "I, Robot", "I, Robot", 2004),
    ("Игра на выбывание", "Игра на выбывание", "Игра на выбывание", None),
    ("Mona and the Time of Burning Love (Mona ja palavan rakkauden aika) (1983))",
     "Mona and the Time of Burning Love (Mona ja palavan rakkauden aika)",
     "Mona and the Time of Burning Love (Mona ja palavan rakkauden aika)", 1983),
    ("The Naked Truth (1957) (Your Past Is Showing)", "The Naked Truth (Your Past Is Showing)",
     "The Naked Truth (Your Past Is Showing)", 1957),
    ("Don Quixote (1973) (1973)", "Don Quixote", "Don Quixote", 1973),
    ("(500) Days of Summer (2009)", "(500) Days of Summer", "(500) Days of Summer", 2009),
    ("1984 (1956)", "1984", "1984", 1956),
])
def test_parse_titles(raw, title, display, year):
    out = parse_titles(pd.Series([raw])).iloc[0]
    assert out["title"] == title
    assert out["display_title"] == display
    assert (pd.isna(out["year"]) and year is None) or out["year"] == year


@settings(max_examples=200, deadline=None)
@given(body=st.text(st.characters(blacklist_characters="()\r\n", blacklist_categories=("Cs",)), min_size=1)
       .filter(lambda t: t.strip() != ""), year=st.integers(1874, 2030))
def test_any_title_followed_by_a_year_splits_back_into_both(body, year):
    out = parse_titles(pd.Series([f"{body} ({year})"])).iloc[0]
    assert out["year"] == year
    assert out["title"] == body.strip()


def test_display_titles_leaves_titles_without_trailing_article_alone():
    titles = pd.Series(["Sex, Lies, and Videotape", "Me, Myself & Irene", "Crouching Tiger, Hidden Dragon"])
    assert display_titles(titles).tolist() == titles.tolist()


# --- whole catalogs -----------------------------------------------------------------------------


def test_csv_folder_catalog_has_the_promised_columns_and_values(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=MOVIES, tags=TAGS, links=LINKS)
    table = pq.read_table(_run(tmp_path, "--source", str(src)) / "catalog.parquet")
    assert table.schema.names == ["movie_id", "title", "display_title", "year", "genres", "tags", "imdb_id",
                                  "tmdb_id"]
    assert table.schema.field("movie_id").type == pa.int64()
    assert table.schema.field("year").type == pa.int64()
    assert table.schema.field("genres").type == pa.list_(pa.string())
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table.schema.field("imdb_id").type == pa.string()
    assert table.schema.field("tmdb_id").type == pa.int64()
    df = table.to_pandas().set_index("movie_id")
    assert df.index.tolist() == sorted(m[0] for m in MOVIES)
    assert df.loc[2, "title"] == "Matrix, The" and df.loc[2, "display_title"] == "The Matrix"
    assert df.loc[2, "year"] == 1999 and pd.isna(df.loc[4, "year"]) and df.loc[5, "year"] == 2006
    assert list(df.loc[2, "genres"]) == ["Action", "Sci-Fi", "Thriller"]
    assert list(df.loc[5, "genres"]) == []  # "(no genres listed)"
    assert df.loc[10, "title"] == "Игра на выбывание"
    # cyberpunk: users 1, 2, 3; philosophy: 1, 2; action and keanu reeves: one user each (alphabetical)
    assert list(df.loc[2, "tags"]) == ["cyberpunk", "philosophy", "action", "keanu reeves"]
    assert list(df.loc[1, "tags"]) == ["pixar", "tom hanks, tim allen"]
    assert list(df.loc[3, "tags"]) == []
    assert 99 not in df.index  # a tag of an unknown movie adds no movie
    assert df.loc[2, "imdb_id"] == "tt0133093" and df.loc[10, "imdb_id"] == "tt10872600"
    assert df.loc[2, "tmdb_id"] == 603 and pd.isna(df.loc[4, "tmdb_id"])


def _run(tmp_path: Path, *args: str, run: str = "run") -> Path:
    run_dir = tmp_path / run
    assert main(["catalog", "--run-dir", str(run_dir), *args]) == 0
    return run_dir


def test_official_zip_gives_the_same_catalog_as_its_folder(tmp_path):
    src = write_movielens(tmp_path / "ml-25m", movies=MOVIES, tags=TAGS, links=LINKS)
    zipped = zip_movielens(src, tmp_path / "ml-25m.zip")
    a = _catalog(tmp_path, "--source", str(src), run="a")
    b = _catalog(tmp_path, "--source", str(zipped), run="b")
    pd.testing.assert_frame_equal(a, b)


def test_dat_format_latin1_matches_csv(tmp_path):
    tags = [*TAGS, (7, 2, "matrix::sequel bait", 1)]  # '::' inside a tag survives
    movies = [*LATIN1_MOVIES, (11, "What?:: (2001)", "Comedy")]  # ... and inside a title
    csv_src = write_movielens(tmp_path / "csv", movies=movies, tags=tags)
    dat_src = write_movielens(tmp_path / "ml-10M100K", "dat", movies=movies, tags=tags, links=LINKS)
    assert not (dat_src / "links.dat").exists()
    assert "Amélie".encode("latin-1") in (dat_src / "movies.dat").read_bytes()
    a = _catalog(tmp_path, "--source", str(csv_src), run="a")
    b = _catalog(tmp_path, "--source", str(dat_src), run="b")
    pd.testing.assert_frame_equal(a, b)
    row = b.set_index("movie_id").loc[11]
    assert row["title"] == "What?::" and row["year"] == 2001
    assert "matrix::sequel bait" in list(b.set_index("movie_id").loc[2, "tags"])
    assert b["imdb_id"].isna().all()


def test_dat_zip_with_top_folder(tmp_path):
    src = write_movielens(tmp_path / "x", "dat", movies=LATIN1_MOVIES, tags=TAGS, ratings=RATINGS)
    zipped = zip_movielens(src, tmp_path / "ml-10m.zip", folder_name="ml-10M100K")
    df = _catalog(tmp_path, "--source", str(zipped), "--rating-stats")
    assert len(df) == len(LATIN1_MOVIES)
    r = df.set_index("movie_id")
    assert r.loc[1, "n_ratings"] == 2 and r.loc[1, "mean_rating"] == 4.5 and r.loc[3, "n_ratings"] == 0


def test_only_movies_file_is_required(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=MOVIES)
    df = _catalog(tmp_path, "--source", str(src))
    assert len(df) == len(MOVIES)
    assert all(len(t) == 0 for t in df["tags"]) and df["imdb_id"].isna().all()


def test_fast_reader_and_row_by_row_reader_agree(tmp_path):
    src = MovieLensSource(write_movielens(tmp_path / "ml", movies=MOVIES, tags=TAGS))
    for spec in (cat_mod.MOVIES, cat_mod.TAGS):
        header = cat_mod._csv_header(src, spec)
        fast = cat_mod._read_csv_fast(src, spec)
        slow, bad = cat_mod._read_csv_rows(src, spec, header)
        assert bad == []
        pd.testing.assert_frame_equal(fast, slow, check_dtype=False)


def test_bundled_ml_latest_small_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("MOVIELENS_SIDS_BASE_URL", "http://127.0.0.1:9")  # any download attempt would fail
    df = _catalog(tmp_path, "--dataset", "ml-latest-small")
    assert len(df) == 9742
    bundled = Path(cat_mod.registry.__file__).parent / "ml-latest-small"
    tagged = set(pd.read_csv(bundled / "tags.csv")["movieId"])
    has_tags = df["tags"].map(len) > 0
    assert set(df.loc[has_tags, "movie_id"]) == tagged
    assert df["imdb_id"].notna().all() and df["imdb_id"].str.fullmatch(r"tt\d{7,}").all()
    assert not df["genres"].map(lambda g: "(no genres listed)" in list(g)).any()


def test_limit_is_a_reproducible_sample(tmp_path):
    movies = [(i, f"Movie {i} (2000)", "Drama") for i in range(1, 201)]
    src = write_movielens(tmp_path / "ml", movies=movies)
    a = _catalog(tmp_path, "--source", str(src), "--limit", "20", run="a")
    b = _catalog(tmp_path, "--source", str(src), "--limit", "20", run="b")
    c = _catalog(tmp_path, "--source", str(src), "--limit", "20", "--seed", "1", run="c")
    assert len(a) == 20 and a["movie_id"].is_monotonic_increasing
    assert a["movie_id"].tolist() == b["movie_id"].tolist() != c["movie_id"].tolist()
    assert a["movie_id"].tolist() != list(range(1, 21))  # a sample, not the head


# --- enrichment ---------------------------------------------------------------------------------


def test_enrich_csv_on_imdb_id_with_pipe_lists_and_unmatched_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src = write_movielens(tmp_path / "ml", movies=MOVIES, links=LINKS)
    enrich = tmp_path / "plots.csv"
    pd.DataFrame({
        "imdbId": ["tt0133093", "0114709", "tt9999999", "not-an-id"],
        "plot_summary": ["A hacker learns the truth.", "Toys come alive.", "Nobody.", "Bad key."],
        "director": ["Lana Wachowski", "John Lasseter", "X", "Y"],
        "stars": ["Keanu Reeves|Laurence Fishburne", "Tom Hanks", "Z", ""],
    }).to_csv(enrich, index=False)
    run_dir = _run(tmp_path, "--source", str(src), "--enrich", str(enrich))
    table = pq.read_table(run_dir / "catalog.parquet")
    assert table.schema.field("plot_summary").type == pa.string()
    assert table.schema.field("stars").type == pa.list_(pa.string())
    df = table.to_pandas().set_index("movie_id")
    assert df.loc[2, "plot_summary"] == "A hacker learns the truth."
    assert list(df.loc[2, "stars"]) == ["Keanu Reeves", "Laurence Fishburne"]
    assert list(df.loc[1, "stars"]) == ["Tom Hanks"] and df.loc[1, "director"] == "John Lasseter"
    assert pd.isna(df.loc[3, "plot_summary"]) and list(df.loc[3, "stars"]) == []
    assert table.column("plot_summary").null_count == 8
    record = json.loads((run_dir / ".stages" / "catalog.json").read_text())["result"]
    assert record["enrich_rows_matched"] == 2
    assert record["enrich_rows_unmatched"] == 2 and record["enrich_rows_bad_key"] == 1
    assert "2 of 4 rows matched" in caplog.text


def test_enrich_jsonl_on_movie_id_with_json_lists(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=MOVIES)
    enrich = tmp_path / "extra.jsonl"
    rows = [{"movieId": 2, "cast_list": ["Keanu Reeves", "Carrie-Anne Moss"], "tagline": "Free your mind"},
            {"movieId": 1, "cast_list": ["Tom Hanks"], "tagline": "Toys!"}]
    enrich.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    df = _catalog(tmp_path, "--source", str(src), "--enrich", str(enrich)).set_index("movie_id")
    assert list(df.loc[2, "cast_list"]) == ["Keanu Reeves", "Carrie-Anne Moss"]
    assert df.loc[2, "tagline"] == "Free your mind"


def test_enrich_parquet_on_tmdb_id_with_json_list_strings(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=MOVIES, links=LINKS)
    enrich = tmp_path / "extra.parquet"
    pd.DataFrame({"tmdbId": [603, 862], "stars": ['["Keanu Reeves", "Hugo Weaving"]', '["Tom Hanks"]'],
                  "runtime": [136, 81]}).to_parquet(enrich)
    df = _catalog(tmp_path, "--source", str(src), "--enrich", str(enrich)).set_index("movie_id")
    assert list(df.loc[2, "stars"]) == ["Keanu Reeves", "Hugo Weaving"]
    assert df.loc[1, "runtime"] == 81


# --- bad input: one line, non-zero exit, run folder untouched ------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = write_movielens(tmp_path / "good", movies=MOVIES, tags=TAGS, links=LINKS)
    missing_col = tmp_path / "missing_col"
    missing_col.mkdir()
    (missing_col / "movies.csv").write_text("movieId,title\n1,Toy Story (1995)\n")
    bad_rows = write_movielens(tmp_path / "bad_rows", movies=MOVIES[:3])
    with open(bad_rows / "movies.csv", "a") as f:
        f.write("abc,Not an id (2000),Drama\n")  # line 5
        f.write('11,"Too, many (2001)",Drama,extra\n')  # line 6
    empty = write_movielens(tmp_path / "empty", movies=[])
    dup = write_movielens(tmp_path / "dup", movies=[*MOVIES[:2], (1, "Again (2000)", "Drama")])
    bad_tags = write_movielens(tmp_path / "bad_tags", movies=MOVIES, tags=TAGS)
    with open(bad_tags / "tags.csv", "a") as f:
        f.write("1,two,sometag,1000\n")
    bad_dat = write_movielens(tmp_path / "bad_dat", "dat", movies=LATIN1_MOVIES)
    with open(bad_dat / "movies.dat", "ab") as f:
        f.write(b"12::No genres field\n")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip")
    truncated = tmp_path / "truncated.zip"
    whole = zip_movielens(good, tmp_path / "whole.zip").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    crc = bytearray(whole)
    crc[crc.index(b"good/movies.csv") + len("good/movies.csv") + 5] ^= 0xFF  # inside the compressed bytes
    (tmp_path / "crc.zip").write_bytes(bytes(crc))
    hostile = tmp_path / "hostile.zip"
    hostile.write_bytes(zip_bytes({"ml/movies.csv": b"movieId,title,genres\n1,A (2000),Drama\n", "../x": b""}))
    no_movies = tmp_path / "no_movies"
    no_movies.mkdir()
    (no_movies / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    corrupt_parquet = tmp_path / "extra.parquet"
    corrupt_parquet.write_bytes(b"PAR1 not really parquet")
    bad_enrich = tmp_path / "bad_enrich.csv"
    bad_enrich.write_text("title,plot\nX,Y\n")
    return {
        "missing source": (["--source", str(tmp_path / "nope")], "not found"),
        "no movies file": (["--source", str(no_movies)], "no movies.csv or movies.dat"),
        "missing column": (["--source", str(missing_col)], "lacks column(s) genres"),
        "bad rows": (["--source", str(bad_rows)], "line 5: movieId 'abc' is not an integer; line 6: expected 3"),
        "bad tag rows": (["--source", str(bad_tags)], "line 14: movieId 'two'"),
        "bad dat rows": (["--source", str(bad_dat)],
                         f"line {len(LATIN1_MOVIES) + 1}: expected 3 '::'-separated fields"),
        "empty catalog": (["--source", str(empty)], "catalog would be empty"),
        "duplicate ids": (["--source", str(dup)], "appear more than once"),
        "corrupt zip": (["--source", str(corrupt)], "not a readable zip"),
        "truncated zip": (["--source", str(truncated)], "not a readable zip"),
        "bad crc zip": (["--source", str(tmp_path / "crc.zip")], "corrupt"),
        "hostile zip": (["--source", str(hostile)], "would extract outside"),
        "unknown dataset": (["--dataset", "ml-7m"], "unknown dataset 'ml-7m'"),
        "no network": (["--dataset", "ml-1m"], "run `movielens-sids catalog --source /path/to/ml-1m.zip`"),
        "enrich missing": (["--source", str(good), "--enrich", str(tmp_path / "nope.csv")], "not found"),
        "enrich no key": (["--source", str(good), "--enrich", str(bad_enrich)], "no movieId, imdbId or tmdbId"),
        "rating stats without ratings": (["--source", str(good), "--rating-stats"], "needs a ratings file"),
        "enrich unreadable": (["--source", str(good), "--enrich", str(corrupt_parquet)], "cannot be read"),
        "bad limit": (["--source", str(good), "--limit", "0"], "limit: must be at least 1"),
    }


@pytest.mark.parametrize("existing", [True, False], ids=["existing-run", "no-run-dir"])
def test_bad_input_is_one_line_and_leaves_the_run_folder_as_it_was(tmp_path, capsys, monkeypatch, existing):
    import socket

    from movielens_sids.data import fetch

    with socket.socket() as sock:  # a port nobody listens on: "no network"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MOVIELENS_SIDS_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MOVIELENS_SIDS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    good = write_movielens(tmp_path / "seed", movies=MOVIES[:2])
    run_dir = tmp_path / "run"
    if existing:
        assert main(["catalog", "--run-dir", str(run_dir), "--source", str(good)]) == 0
        (run_dir / "notes.txt").write_text("mine")
    before = _snapshot(run_dir)
    capsys.readouterr()
    for name, (args, message) in _bad_inputs(tmp_path).items():
        code = main(["catalog", "--run-dir", str(run_dir), *args])
        err = capsys.readouterr().err.strip()
        assert code != 0, name
        assert err.startswith("error: ") and "\n" not in err, (name, err)
        assert message in err, (name, err)
        assert "Traceback" not in err
        assert _snapshot(run_dir) == before, name
    assert run_dir.exists() == existing


def test_skip_bad_rows_drops_them_with_a_count(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src = write_movielens(tmp_path / "ml", movies=MOVIES[:3])
    with open(src / "movies.csv", "a") as f:
        f.write("abc,Not an id (2000),Drama\n")
        f.write("12,Fine (2001),Drama\n")
    df = _catalog(tmp_path, "--source", str(src), "--skip-bad-rows")
    assert df["movie_id"].tolist() == [1, 2, 3, 12]
    assert "skipped 1 row(s)" in caplog.text and "line 5" in caplog.text


def test_input_files_lists_what_is_read(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=MOVIES, tags=TAGS, ratings=RATINGS)
    files = input_files(DataConfig(source=str(src)))
    assert sorted(p.name for p in files) == ["movies.csv", "tags.csv"]  # ratings only with rating_stats
    assert input_files(DataConfig(dataset="ml-25m", data_dir=str(tmp_path / "cache"))) == []
    assert [p.name for p in input_files(DataConfig())] == ["movies.csv", "links.csv", "tags.csv"]


def test_build_catalog_raises_sids_error_on_empty_movies(tmp_path):
    src = write_movielens(tmp_path / "ml", movies=[])
    with pytest.raises(SidsError, match="empty"):
        build_catalog(DataConfig(source=str(src)))
