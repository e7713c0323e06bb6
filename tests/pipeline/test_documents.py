"""Movie documents: the default template, empty fields left out, custom templates, determinism."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pytest

from movielens_sids.documents import DEFAULT_TEMPLATE, Template, build_documents, document_hash


def catalog(**overrides) -> pa.Table:
    """A one-movie catalog in catalog.parquet's schema; keyword arguments replace or add columns."""
    row = {
        "movie_id": 2571, "title": "Matrix, The", "display_title": "The Matrix", "year": 1999,
        "genres": ["Action", "Sci-Fi", "Thriller"], "tags": ["cyberpunk", "philosophy"],
        "imdb_id": "tt0133093", "tmdb_id": 603,
    }
    row.update(overrides)
    df = pd.DataFrame({k: [v] for k, v in row.items()})
    for c in ("year", "tmdb_id"):
        df[c] = df[c].astype("Int64")
    return pa.Table.from_pandas(df, preserve_index=False)


def doc(**overrides) -> str:
    return build_documents(catalog(**overrides))[0]


def test_default_document_reads_naturally():
    assert doc() == "The Matrix (1999). Genres: Action, Sci-Fi, Thriller. Tags: cyberpunk, philosophy."


def test_enrichment_fields_in_order_plot_last():
    text = doc(director="Lana Wachowski", stars=["Keanu Reeves", "Carrie-Anne Moss"],
               plot_summary="A hacker learns\n the truth.  ")
    assert text == ("The Matrix (1999). Genres: Action, Sci-Fi, Thriller. Directed by Lana Wachowski. "
                    "Starring Keanu Reeves, Carrie-Anne Moss. Tags: cyberpunk, philosophy. "
                    "Plot: A hacker learns the truth.")


@pytest.mark.parametrize(("field", "empty", "gone"), [
    ("year", None, "(1999)"),
    ("genres", [], "Genres:"),
    ("tags", [], "Tags:"),
    ("director", None, "Directed by"),
    ("director", "   ", "Directed by"),
    ("stars", [], "Starring"),
    ("stars", None, "Starring"),
    ("plot_summary", float("nan"), "Plot:"),
    ("plot_summary", "", "Plot:"),
])
def test_an_empty_field_is_left_out_entirely(field, empty, gone):
    text = doc(**{field: empty})
    assert gone not in text
    assert "  " not in text and ": ." not in text and "()" not in text and not text.endswith(" ")
    assert text.startswith("The Matrix")


def test_movie_with_nothing_but_a_title():
    assert doc(year=None, genres=[], tags=[]) == "The Matrix."


def test_max_tags_keeps_the_most_frequent_first():
    table = catalog(tags=["a", "b", "c", "d", "e"])
    assert build_documents(table, max_tags=3)[0].endswith("Tags: a, b, c.")
    assert "Tags" not in build_documents(table, max_tags=0)[0]


def test_title_falls_back_to_the_catalog_title():
    table = catalog().drop_columns(["display_title"])
    assert build_documents(table)[0].startswith("Matrix, The (1999).")
    assert build_documents(catalog(display_title=None))[0].startswith("Matrix, The (1999).")


def test_extras_render_other_text_columns_only():
    text = doc(writer="The Wachowskis", country=["USA", "Australia"], runtime=136, language="")
    assert text.endswith("Tags: cyberpunk, philosophy. Writer: The Wachowskis. Country: USA, Australia.")
    assert "136" not in text and "Language" not in text


def test_custom_template_with_optional_groups():
    tpl = "{sort_title}[ | {year}][ | {director}] :: {genres}"
    assert build_documents(catalog(), template=tpl)[0] == "Matrix, The | 1999 :: Action, Sci-Fi, Thriller"
    assert build_documents(catalog(director="X"), template=tpl)[0] == \
        "Matrix, The | 1999 | X :: Action, Sci-Fi, Thriller"


def test_group_with_two_fields_needs_both():
    tpl = "{title}[ by {director} with {stars}]"
    assert build_documents(catalog(director="D"), template=tpl)[0] == "The Matrix"
    assert build_documents(catalog(director="D", stars=["S"]), template=tpl)[0] == "The Matrix by D with S"


def test_custom_template_naming_an_unknown_column_is_rejected():
    with pytest.raises(ValueError, match=r"\{directr\}.*columns: movie_id"):
        build_documents(catalog(), template="{title} {directr}")


def test_unknown_column_in_an_optional_group_is_dropped_with_a_warning(caplog):
    assert build_documents(catalog(), template="{title}[ by {directr}]") == ["The Matrix"]
    assert "{directr}" in caplog.text


def test_default_template_tolerates_missing_enrichment_columns():
    assert "director" not in catalog().column_names
    assert build_documents(catalog(), template=DEFAULT_TEMPLATE)[0].startswith("The Matrix (1999)")


@pytest.mark.parametrize(("tpl", "match"), [
    ("{title}[ ({year})", "without a matching"),
    ("{title} ({year})]", "without a matching"),
    ("{title}[ [{year}]]", "nested"),
    ("no fields at all", "names no field"),
    ("{0} {title}", "plain column name"),
    ("{title.upper}", "plain column name"),
    ("{title", "template"),
    ("{year:d}", "cannot render"),
    ("", "non-empty"),
])
def test_bad_templates_raise_value_error(tpl, match):
    with pytest.raises(ValueError, match=match):
        Template(tpl)


def test_deterministic_and_dataframe_input():
    df = pd.DataFrame({
        "movie_id": [1, 2, 3], "title": ["Heat", "Amélie", "Alien"], "display_title": ["Heat", "Amélie", "Alien"],
        "year": pd.array([1995, None, 1979], dtype="Int64"),
        "genres": [["Crime"], [], ["Horror", "Sci-Fi"]], "tags": [[], ["paris"], ["space", "ripley"]],
    })
    a = build_documents(df, max_tags=1)
    assert a == build_documents(pa.Table.from_pandas(df, preserve_index=False), max_tags=1)
    assert a == ["Heat (1995). Genres: Crime.", "Amélie. Tags: paris.",
                 "Alien (1979). Genres: Horror, Sci-Fi. Tags: space."]


def test_document_hash_is_sha256_of_utf8():
    assert document_hash("Amélie.") == hashlib.sha256("Amélie.".encode()).hexdigest()
    assert document_hash("a") != document_hash("a ")
