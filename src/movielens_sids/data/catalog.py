"""``catalog``: MovieLens files (a folder or the official zip, CSV or ``.dat``) -> ``catalog.parquet``.

One row per movie, sorted by ``movie_id`` (docs/outputs.md)::

    movie_id int64 | title str | display_title str | year Int64 | genres list<str> | tags list<str>
    | imdb_id str ("tt0133093") | tmdb_id Int64 | [enrichment columns]

- ``title`` is MovieLens' title without the year, the article kept where MovieLens puts it
  ("Matrix, The"); ``display_title`` moves such articles back to the front in the title and in
  each parenthesised alternate title ("Bicycle Thieves (a.k.a. The Bicycle Thief) (Ladri di
  biciclette)"). ``year`` is the release year in parentheses at the end; for a range such as
  "(2006-2007)" (series) it is the first year. Titles with no year get a missing ``year``.
- ``genres`` drops "(no genres listed)"; ``tags`` are case-folded, whitespace-collapsed,
  de-duplicated and ordered by how many distinct users applied them (ties alphabetically).
- Only ``movies.csv`` / ``movies.dat`` is required; ``links`` gives ``imdb_id`` / ``tmdb_id``,
  ``tags`` gives ``tags``, and ``ratings`` gives ``n_ratings`` / ``mean_rating`` when
  ``--rating-stats`` asks for them.

Files are read with pyarrow (typed, multithreaded); when that fast path meets anything odd, the
file is re-read row by row to report the exact line numbers of the rows that cannot be parsed
(or to drop them with ``--skip-bad-rows``).

May import: data.registry, data.fetch, errors, settings, retrieval.sequences (a ratings file's reader); pandas and
pyarrow.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SidsError
from ..settings import DataConfig
from . import fetch, registry
from .fetch import check_zip_entries, open_zip

log = logging.getLogger(__name__)


CATALOG_COLUMNS = ("movie_id", "title", "display_title", "year", "genres", "tags", "imdb_id", "tmdb_id")
NO_GENRES = "(no genres listed)"
MAX_REPORTED = 5


# --- where the files are ------------------------------------------------------------------------


class MovieLensSource:
    """A MovieLens release on disk: a folder or the official zip, in CSV or ``.dat`` format.

    Finds ``movies`` (required), ``links``, ``tags`` and ``ratings`` at the top of the folder or zip,
    or in its one sub-folder that holds them (``ml-10M100K/movies.dat``).
    """

    STEMS = ("movies", "links", "tags", "ratings")

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path).expanduser()
        self.label = label or str(self.path)
        if not self.path.exists():
            raise SidsError(f"{self.path} not found (expected a MovieLens folder or zip)")
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            names = [p.relative_to(self.path).as_posix() for p in self.path.glob("*") if p.is_file()]
            names += [p.relative_to(self.path).as_posix() for p in self.path.glob("*/*") if p.is_file()]
        else:
            self._zip = open_zip(self.path)
            try:
                check_zip_entries(self._zip)  # the same rules as for a download, though nothing is extracted
            except SidsError:
                self._zip.close()
                raise
            names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
        self.fmt, self.members = self._locate(names)

    def _locate(self, names: list[str]) -> tuple[str, dict[str, str]]:
        for prefix in sorted({n.rsplit("/", 1)[0] + "/" if "/" in n else "" for n in names}, key=len):
            for fmt in ("csv", "dat"):
                if f"{prefix}movies.{fmt}" in names:
                    found = {s: f"{prefix}{s}.{fmt}" for s in self.STEMS if f"{prefix}{s}.{fmt}" in names}
                    return fmt, found
        kind = "folder" if self._zip is None else "zip"
        raise SidsError(f"no movies.csv or movies.dat in the {kind} {self.path} (nor in a sub-folder of it)")

    def has(self, stem: str) -> bool:
        return stem in self.members

    def describe(self, stem: str) -> str:
        """Where a file is, for messages: a path, or ``archive.zip:folder/file``."""
        if self._zip is None:
            return str(self.path / self.members[stem])
        return f"{self.path}:{self.members[stem]}"

    @contextlib.contextmanager
    def open(self, stem: str) -> Iterator[IO[bytes]]:
        try:
            if self._zip is None:
                with open(self.path / self.members[stem], "rb") as f:
                    yield f
            else:
                with self._zip.open(self.members[stem]) as f:
                    yield f
        except PermissionError as e:
            raise SidsError(f"cannot read {self.describe(stem)}: permission denied") from e
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise SidsError(f"{self.path} is corrupt or truncated ({e})") from e

    def read_bytes(self, stem: str) -> bytes:
        with self.open(stem) as f:
            return f.read()

    def files(self, stems: tuple[str, ...]) -> list[Path]:
        """The files on disk the given stems are read from (the zip itself for a zip)."""
        if self._zip is not None:
            return [self.path]
        return [self.path / self.members[s] for s in stems if s in self.members]

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _used_stems(cfg: DataConfig) -> tuple[str, ...]:
    return ("movies", "links", "tags", "ratings") if cfg.rating_stats else ("movies", "links", "tags")


def open_source(cfg: DataConfig, *, download: bool = True) -> MovieLensSource | None:
    """The MovieLens files ``cfg`` names: ``source``, the bundled set, or a cached (else downloaded) variant.

    With ``download=False`` a variant that is not in the cache gives None instead of a download.
    """
    if cfg.source:
        return MovieLensSource(cfg.source)
    if cfg.dataset == registry.BUNDLED:
        return MovieLensSource(fetch.bundled_path(), label=f"{registry.BUNDLED} (bundled)")
    folder = fetch.cached_dataset(cfg.dataset, cfg.data_dir)
    if folder is None:
        if not download:
            return None
        folder = fetch.fetch_dataset(cfg.dataset, cfg.data_dir)
    return MovieLensSource(folder, label=cfg.dataset)


def input_files(cfg: DataConfig) -> list[Path]:
    """The source files the catalog stage would read; [] while a named variant is not downloaded yet."""
    files: list[Path] = []
    try:
        src = open_source(cfg, download=False)
    except SidsError:
        src = None
    if src is not None:
        files += src.files(_used_stems(cfg))
        src.close()
    if cfg.enrich:
        files.append(Path(cfg.enrich))
    return files


# --- reading one table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """The columns of one MovieLens file that the catalog uses."""

    stem: str
    kinds: dict[str, str]
    """Column -> ``id`` (required integer), ``int?`` (optional integer), ``float`` or ``str``."""
    dat_columns: tuple[str, ...] = ()
    """Field names of the ``.dat`` form, in file order."""
    dat_regex: str = ""
    """Regex of one ``.dat`` line (text fields greedy, so a ``::`` inside a title or tag survives)."""


MOVIES = _Spec("movies", {"movieId": "id", "title": "str", "genres": "str"},
               ("movieId", "title", "genres"), r"^(\d+)::(.*)::([^:]*)$")
LINKS = _Spec("links", {"movieId": "id", "imdbId": "int?", "tmdbId": "int?"})
TAGS = _Spec("tags", {"userId": "id", "movieId": "id", "tag": "str"},
             ("userId", "movieId", "tag", "timestamp"), r"^(\d+)::(\d+)::(.*)::(-?\d+)$")
RATINGS = _Spec("ratings", {"userId": "id", "movieId": "id", "rating": "float"},
                ("userId", "movieId", "rating", "timestamp"), r"^(\d+)::(\d+)::([0-9.eE+-]+)::(-?\d+)$")


class _FastPathFailed(Exception):
    pass


def read_interactions(cfg: DataConfig) -> pd.DataFrame | None:
    """Every rating of ``cfg``'s MovieLens files as int64 ``user_id, movie_id, timestamp`` (the rating
    value dropped: every rating is an interaction), or None when the files have no ratings."""
    src = open_source(cfg)
    try:
        if "ratings" not in src.members:
            return None
        spec = dataclasses.replace(RATINGS, kinds={"userId": "id", "movieId": "id", "timestamp": "id"})
        df = read_table(src, spec, skip_bad_rows=cfg.skip_bad_rows)
    finally:
        src.close()
    if df.empty:
        raise SidsError(f"{src.label}: the ratings file holds no rating")
    df = df.rename(columns={"userId": "user_id", "movieId": "movie_id"})[["user_id", "movie_id", "timestamp"]]
    return df.astype("int64")


def benchmark_ratings(data: DataConfig, ratings: str | None = None, dataset: str | None = None
                      ) -> tuple[str, pd.DataFrame | None]:
    """``(label, ratings)``: the interactions the benchmark's split (and so a run's collaborative vectors) is
    built from: the file ``ratings`` (``retrieval.ratings``), else the variant ``dataset`` (``retrieval.dataset``),
    else the run's own MovieLens files; None when those have no ratings file."""
    from ..retrieval.sequences import read_ratings  # the reader of a ratings file given by path

    if ratings:
        return Path(ratings).name, read_ratings(ratings)
    if dataset:
        data = dataclasses.replace(data, dataset=dataset, source=None)
    return (data.source or data.dataset), read_interactions(data)


def read_table(src: MovieLensSource, spec: _Spec, *, skip_bad_rows: bool = False) -> pd.DataFrame:
    """Read the columns of ``spec`` from one file of ``src``, typed and validated.

    Raises:
        SidsError: missing columns, or rows that cannot be parsed (their line numbers, unless
            ``skip_bad_rows``, which drops them with a logged count).
    """
    what = src.describe(spec.stem)
    if src.fmt == "csv":
        header = _csv_header(src, spec)
        try:
            return _read_csv_fast(src, spec)
        except _FastPathFailed as e:
            log.debug("%s: fast reader gave up (%s); re-reading row by row", what, e)
        df, bad = _read_csv_rows(src, spec, header)
    elif spec.stem == "ratings":  # numbers only: '::' can be swapped for a one-byte separator
        try:
            return _read_dat_numeric(src, spec)
        except _FastPathFailed as e:
            log.debug("%s: fast reader gave up (%s); re-reading row by row", what, e)
        df, bad = _read_dat_rows(src, spec)
    else:
        df, bad = _read_dat_rows(src, spec)
    if bad:
        shown = "; ".join(f"line {n}: {why}" for n, why in bad[:MAX_REPORTED])
        more = f"; and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        if not skip_bad_rows:
            raise SidsError(f"{what}: {len(bad)} row(s) cannot be parsed ({shown}{more}); fix them or pass "
                            "--skip-bad-rows to drop them")
        log.warning("%s: skipped %d row(s) that cannot be parsed (%s%s)", what, len(bad), shown, more)
    return df


def _csv_header(src: MovieLensSource, spec: _Spec) -> list[str]:
    with src.open(spec.stem) as f:
        first = f.readline()
    if not first.strip():
        raise SidsError(f"{src.describe(spec.stem)} is empty (expected the header line "
                        f"{','.join(spec.kinds)})")
    try:
        header = [h.strip() for h in next(csv.reader([first.decode("utf-8-sig", "replace")]))]
    except csv.Error as e:
        raise SidsError(f"{src.describe(spec.stem)}: the header line cannot be parsed ({e})") from None
    missing = [c for c in spec.kinds if c not in header]
    if missing:
        raise SidsError(f"{src.describe(spec.stem)} lacks column(s) {', '.join(missing)} "
                        f"(header: {','.join(header)}; expected {','.join(spec.kinds)})")
    return header


_ARROW_TYPES = {"id": pa.int64(), "int?": pa.int64(), "float": pa.float64(), "str": pa.string()}


def _to_frame(table: pa.Table, spec: _Spec) -> pd.DataFrame:
    out = {}
    for col, kind in spec.kinds.items():
        arr = table.column(col)
        if kind == "id":
            if arr.null_count:
                raise _FastPathFailed(f"missing {col}")
            out[col] = arr.to_numpy()
        elif kind == "int?":
            out[col] = pd.array(arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), dtype="Int64")
        elif kind == "float":
            values = arr.to_numpy(zero_copy_only=False)
            if arr.null_count or not np.isfinite(values).all():
                raise _FastPathFailed(f"missing or non-finite {col}")
            out[col] = values
        else:
            out[col] = arr.to_pandas().astype(object)
    return pd.DataFrame(out)


def _read_csv_fast(src: MovieLensSource, spec: _Spec) -> pd.DataFrame:
    import pyarrow.csv as pacsv

    try:
        with src.open(spec.stem) as f:
            table = pacsv.read_csv(
                f,
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(spec.kinds),
                    column_types={c: _ARROW_TYPES[k] for c, k in spec.kinds.items()},
                ),
            )
    except (pa.ArrowException, KeyError) as e:  # odd rows, bad UTF-8, a header pyarrow reads differently
        raise _FastPathFailed(str(e)) from e
    return _to_frame(table, spec)


def _read_dat_numeric(src: MovieLensSource, spec: _Spec) -> pd.DataFrame:
    import pyarrow.csv as pacsv

    data = src.read_bytes(spec.stem).replace(b"::", b"\x1f")
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(spec.dat_columns)),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(spec.kinds), column_types={c: _ARROW_TYPES[k] for c, k in spec.kinds.items()}),
        )
    except (pa.ArrowException, KeyError) as e:  # odd rows, bad UTF-8, a header pyarrow reads differently
        raise _FastPathFailed(str(e)) from e
    return _to_frame(table, spec)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_value(value: str, kind: str, col: str) -> str | None:
    """Why ``value`` is not a valid ``kind``, or None."""
    v = value.strip()
    if kind == "id" or (kind == "int?" and v != ""):
        if not re.fullmatch(r"-?\d+", v):
            return f"{col} {value!r} is not an integer"
        return None if _INT64_MIN <= int(v) <= _INT64_MAX else f"{col} {value!r} is out of the 64-bit integer range"
    if kind == "int?":
        return None
    if kind == "float":
        try:
            return None if math.isfinite(float(v)) else f"{col} {value!r} is not a finite number"
        except ValueError:
            return f"{col} {value!r} is not a number"
    return f"{col} is not valid UTF-8" if "\ufffd" in value else None


def _frame_from_rows(rows: list[list[str]], spec: _Spec) -> pd.DataFrame:
    cols = list(zip(*rows)) if rows else [()] * len(spec.kinds)
    out = {}
    for (col, kind), values in zip(spec.kinds.items(), cols):
        if kind == "id":
            out[col] = np.array([int(v) for v in values], dtype=np.int64)
        elif kind == "int?":
            out[col] = pd.array([int(v) if v.strip() else None for v in values], dtype="Int64")
        elif kind == "float":
            out[col] = np.array([float(v) for v in values], dtype=np.float64)
        else:
            out[col] = pd.Series(list(values), dtype=object)
    return pd.DataFrame(out)


def _csv_rows(reader, what: str) -> Iterator[list[str]]:
    """``reader``'s rows; a line ``csv`` cannot split (a huge field, a stray carriage return) is a ``SidsError``."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 30))  # pyarrow's fast path takes any field size; so does this one
    try:
        while True:
            try:
                yield next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise SidsError(f"{what}: line {reader.line_num} cannot be parsed ({e}); fix the file") from None
    finally:
        csv.field_size_limit(limit)


def _read_csv_rows(src: MovieLensSource, spec: _Spec, header: list[str]) -> tuple[pd.DataFrame, list]:
    """The reference reader: every row through ``csv``, exact line numbers for the bad ones."""
    idx = [header.index(c) for c in spec.kinds]
    rows, bad = [], []
    with src.open(spec.stem) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text)
        try:
            next(reader, None)
        except csv.Error as e:
            raise SidsError(f"{src.describe(spec.stem)}: the header line cannot be parsed ({e})") from None
        line = reader.line_num
        for fields in _csv_rows(reader, src.describe(spec.stem)):
            start, line = line + 1, reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                bad.append((start, f"expected {len(header)} fields, got {len(fields)}"))
                continue
            values = [fields[i] for i in idx]
            why = next((w for v, (c, k) in zip(values, spec.kinds.items()) if (w := _check_value(v, k, c))), None)
            if why:
                bad.append((start, why))
            else:
                rows.append(values)
    return _frame_from_rows(rows, spec), bad


def _read_dat_rows(src: MovieLensSource, spec: _Spec) -> tuple[pd.DataFrame, list]:
    """``.dat`` lines matched with one vectorised regex; non-matching lines are reported by number."""
    lines = pd.Series(src.read_bytes(spec.stem).decode("latin-1").splitlines(), dtype=object)
    fields = lines.str.extract(spec.dat_regex)
    fields.columns = list(spec.dat_columns)
    blank = lines.str.strip() == ""
    bad_mask = fields.iloc[:, 0].isna() & ~blank
    bad = [(int(i) + 1, f"expected {len(spec.dat_columns)} '::'-separated fields")
           for i in np.flatnonzero(bad_mask.to_numpy())]
    good = fields[~bad_mask & ~blank]
    for col in (c for c, k in spec.kinds.items() if k == "id"):
        huge = good[col].map(lambda v: int(v) > _INT64_MAX).to_numpy(dtype=bool)
        bad += [(int(i) + 1, f"{col} {good[col].iloc[j]!r} is out of the 64-bit integer range")
                for j, i in enumerate(good.index[huge])]
        good = good[~huge]
    if spec.kinds.get("rating") == "float":
        bad_rating = ~np.isfinite(pd.to_numeric(good["rating"], errors="coerce").to_numpy(dtype=float))
        bad += [(int(i) + 1, f"rating {good['rating'].iloc[j]!r} is not a number")
                for j, i in enumerate(good.index[bad_rating])]
        good = good[~bad_rating]
    rows = good[list(spec.kinds)].to_numpy().tolist()
    bad.sort()
    return _frame_from_rows(rows, spec), bad


# --- parsing (pure functions of pandas/pyarrow columns) -----------------------------------------

_YEAR = r"(?:18|19|20)\d{2}"
# "Title (1999)", "Title (2006-2007)", "Title (2007- )", "Title (1983))": the year closes the title.
_TITLE_YEAR_END = re.compile(rf"^(?P<title>.*?)\s*\((?P<year>{_YEAR})(?:\s*[-–—]\s*(?:{_YEAR})?\s*)?\)+$")
# A year that is not last: "The Naked Truth (1957) (Your Past Is Showing)".
_TITLE_YEAR_INSIDE = re.compile(rf"^(?P<pre>.*?)\s*\((?P<year>{_YEAR})\)\s*(?P<post>.*)$")
_ARTICLES = ("The", "A", "An", "Les", "Le", "La", "L'", "Il", "Lo", "Gli", "I", "El", "Los", "Las", "Un", "Une",
             "Uno", "Una", "Der", "Die", "Das", "Den", "Det", "De", "Het", "Een", "Ein", "Eine", "O", "Os", "As",
             "En", "Ett")
# "X, The" at the end of the title or of a parenthesised alternate title (with an optional "a.k.a."),
# or before a subtitle ("Crow, The: Wicked Prayer").
_TRAILING_ARTICLE = re.compile(
    r"(?P<open>^|\()(?P<aka>a\.k\.a\. |aka )?(?P<body>[^()]+?), (?P<art>"
    + "|".join(re.escape(a) for a in sorted(_ARTICLES, key=len, reverse=True))
    + r")(?=\s*\)|\s*\(|:|\s*$)"
)


def _front_article(m: re.Match) -> str:
    sep = "" if m["art"].endswith("'") else " "
    return f"{m['open']}{m['aka'] or ''}{m['art']}{sep}{m['body']}"


def parse_titles(raw: pd.Series) -> pd.DataFrame:
    """Split MovieLens titles into ``title``, ``display_title`` and ``year`` (vectorised).

    Args:
        raw: (N,) titles as MovieLens writes them, e.g. "Matrix, The (1999)".

    Returns:
        (N, 3) frame: ``title`` "Matrix, The", ``display_title`` "The Matrix", ``year`` Int64 1999
        (missing when the title has no year; the first year of a range).

    Example:
        >>> out = parse_titles(pd.Series(["Matrix, The (1999)", "Babylon 5"]))
        >>> out["display_title"].tolist(), out["year"].tolist()
        (['The Matrix', 'Babylon 5'], [1999, <NA>])
    """
    s = raw.astype(object).fillna("").astype(str).str.strip()
    end = s.str.extract(_TITLE_YEAR_END)
    inside = s.str.extract(_TITLE_YEAR_INSIDE)
    has_end = end["year"].notna()
    has_inside = ~has_end & inside["year"].notna()
    title = s.copy()
    title[has_end] = end.loc[has_end, "title"]
    title[has_inside] = (inside.loc[has_inside, "pre"].str.strip() + " "
                         + inside.loc[has_inside, "post"].str.strip()).str.strip()
    year = end["year"].where(has_end, inside["year"].where(has_inside))
    # "Don Quixote (1973) (1973)": drop the repeated year left in the title.
    title = title.str.replace(rf"\s*\({_YEAR}\)$", "", regex=True).where(
        title.str.extract(rf"\(({_YEAR})\)$")[0] == year, title)
    title = title.str.strip().where(title.str.strip() != "", s)  # a title that is only "(1999)" stays whole
    return pd.DataFrame({
        "title": title.astype(object),
        "display_title": display_titles(title).astype(object),
        "year": pd.to_numeric(year, errors="coerce").astype("Int64"),
    }, index=raw.index)


def display_titles(title: pd.Series) -> pd.Series:
    """Move trailing articles to the front: "Matrix, The" -> "The Matrix", also inside alternate titles.

    "Armée des ombres, L'" -> "L'Armée des ombres"; "Bicycle Thieves (a.k.a. Bicycle Thief, The)" ->
    "Bicycle Thieves (a.k.a. The Bicycle Thief)".
    """
    return title.str.replace(_TRAILING_ARTICLE, _front_article, regex=True)


def _list_array(values: pa.Array, parents: np.ndarray, n: int) -> pa.ListArray:
    """Group ``values`` (sorted by ``parents``, each an index in [0, n)) into an (n,) list array."""
    offsets = np.searchsorted(parents, np.arange(n + 1), side="left").astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def split_genres(genres: pd.Series) -> pa.ListArray:
    """(N,) "Action|Sci-Fi" strings -> (N,) list<str>; "(no genres listed)" and empty items dropped."""
    arr = pa.array(genres.astype(object).fillna("").astype(str).tolist(), pa.string())
    split = pc.split_pattern(arr, "|")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(split))
    parents = pc.list_parent_indices(split).to_numpy()
    keep = pc.and_(pc.not_equal(flat, ""), pc.not_equal(flat, NO_GENRES)).to_numpy(zero_copy_only=False)
    return _list_array(flat.filter(pa.array(keep)), parents[keep], len(genres))


def normalize_tags(tags: pd.Series) -> pd.Series:
    """Case-fold, Unicode-normalise (NFC), collapse whitespace, strip; done once per distinct tag."""
    codes, uniques = pd.factorize(tags.astype(object).fillna(""))
    norm = pd.Series(uniques, dtype=object).map(lambda t: unicodedata.normalize("NFC", str(t)))
    norm = norm.str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()
    return pd.Series(norm.to_numpy(dtype=object)[codes], index=tags.index, dtype=object)


def aggregate_tags(tags: pd.DataFrame, movie_ids: np.ndarray) -> pa.ListArray:
    """Per movie, its distinct normalised tags, most users first (ties alphabetical).

    Args:
        tags: columns ``userId``, ``movieId``, ``tag`` (one row per application).
        movie_ids: (N,) sorted movie ids of the catalog.

    Returns:
        (N,) list<str>, empty for movies without tags.
    """
    norm = normalize_tags(tags["tag"])
    ok = (norm != "").to_numpy() & np.isin(tags["movieId"].to_numpy(), movie_ids)
    # Codes in sorted tag order, so integer sorts break ties alphabetically.
    codes, uniques = pd.factorize(norm[ok], sort=True)
    df = pd.DataFrame({"m": tags["movieId"].to_numpy()[ok], "t": codes, "u": tags["userId"].to_numpy()[ok]})
    users = df.drop_duplicates().groupby(["m", "t"], sort=False).size()
    m = users.index.get_level_values("m").to_numpy()
    t = users.index.get_level_values("t").to_numpy()
    n = users.to_numpy()
    order = np.lexsort((t, -n, m))
    values = pa.array(np.asarray(uniques, dtype=object)[t[order]], pa.string())
    parents = np.searchsorted(movie_ids, m[order])
    return _list_array(values, parents, len(movie_ids))


def imdb_strings(imdb: pd.Series) -> pd.Series:
    """Int64 IMDb numbers -> "tt0133093" strings (at least 7 digits), missing stays missing."""
    out = pd.Series(None, index=imdb.index, dtype=object)
    ok = imdb.notna().to_numpy()
    out[ok] = "tt" + imdb[ok].astype("int64").astype(str).str.zfill(7)
    return out


# --- the stage --------------------------------------------------------------------------------
