"""Tiny MovieLens folders and zips in the official file formats, for tests.

Two formats exist (see the GroupLens READMEs):

- ``csv`` (ml-latest-small, ml-20m, ml-25m, ml-32m, ml-latest): UTF-8, a header line, standard CSV
  quoting (titles with commas are quoted): ``movies.csv`` movieId,title,genres; ``links.csv``
  movieId,imdbId,tmdbId (imdbId zero-padded to 7 digits, tmdbId may be empty); ``tags.csv``
  userId,movieId,tag,timestamp; ``ratings.csv`` userId,movieId,rating,timestamp.
- ``dat`` (ml-1m, ml-10m): Latin-1, no header, fields separated by ``::`` and never quoted:
  ``movies.dat`` MovieID::Title::Genres; ``ratings.dat`` UserID::MovieID::Rating::Timestamp;
  ``tags.dat`` (ml-10m only) UserID::MovieID::Tag::Timestamp. There is no links file.

Example:
    >>> folder = write_movielens(tmp_path / "ml", movies=[(1, "Matrix, The (1999)", "Action|Sci-Fi")])
    >>> zip_path = zip_movielens(folder, tmp_path / "ml-latest-small.zip", folder_name="ml-latest-small")
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

Movie = tuple[int, str, str]
"""(movieId, title, genres) as MovieLens writes them, e.g. (1, "Toy Story (1995)", "Animation|Comedy")."""
Tag = tuple[int, int, str, int] | tuple[int, int, str]
"""(userId, movieId, tag[, timestamp])."""
Link = tuple[int, int | None, int | None]
"""(movieId, imdbId, tmdbId); None writes an empty field."""
Rating = tuple[int, int, float, int] | tuple[int, int, float]
"""(userId, movieId, rating[, timestamp])."""

# A small catalog that exercises every title-parsing case the real data has.
MOVIES: list[Movie] = [
    (1, "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"),
    (2, "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    (3, "Bicycle Thieves (a.k.a. Bicycle Thief, The) (Ladri di biciclette) (1948)", "Drama"),
    (4, "Babylon 5", "Sci-Fi"),  # no year
    (5, "Death Note: Desu nôto (2006–2007)", "(no genres listed)"),  # year range, non-ASCII
    (6, "Heroes of Telemark, The (1965) ", "Action|Drama|War"),  # trailing space
    (7, "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)", "Action|Western"),
    (8, "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", "Comedy|Romance"),
    (9, "Armée des ombres, L' (1969)", "Drama|War"),
    (10, "Игра на выбывание", "Thriller"),
]



def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


LATIN1_MOVIES: list[Movie] = [m for m in MOVIES if _latin1(m[1])]
"""The rows of ``MOVIES`` a ``.dat`` file can hold (Latin-1 has no Cyrillic or en dash)."""

TAGS: list[Tag] = [
    (1, 2, "Cyberpunk", 1000),
    (2, 2, "cyberpunk ", 1001),
    (3, 2, "  CyberPunk", 1002),
    (1, 2, "philosophy", 1003),
    (2, 2, "Philosophy", 1004),
    (1, 2, "cyberpunk", 1005),  # same user again: counts once
    (4, 2, "keanu   reeves", 1006),
    (4, 2, "Keanu Reeves", 1007),  # same user, same normalised tag
    (5, 2, "action", 1008),
    (1, 1, "pixar", 1009),
    (1, 1, "Tom Hanks, Tim Allen", 1010),  # comma inside a quoted field
    (1, 99, "orphan tag", 1011),  # a movie that is not in movies.csv
]

LINKS: list[Link] = [
    (1, 114709, 862),
    (2, 133093, 603),
    (3, 40522, 5156),
    (4, 105946, None),  # tmdbId missing
    (5, 877057, 13916),
    (6, 59260, 15081),
    (7, 60196, 429),
    (8, 211915, 194),
    (9, 64040, 15383),
    (10, 10872600, None),  # an 8-digit IMDb id
]

RATINGS: list[Rating] = [(1, 1, 4.0, 964982703), (2, 1, 5.0, 964982704), (1, 2, 3.5, 964982705)]

HEADERS = {
    "movies": ["movieId", "title", "genres"],
    "links": ["movieId", "imdbId", "tmdbId"],
    "tags": ["userId", "movieId", "tag", "timestamp"],
    "ratings": ["userId", "movieId", "rating", "timestamp"],
}


def _fields(kind: str, row: Sequence) -> list[str]:
    if kind == "links":
        movie_id, imdb, tmdb = row
        return [str(movie_id), "" if imdb is None else f"{imdb:07d}", "" if tmdb is None else str(tmdb)]
    row = list(row)
    if kind in ("tags", "ratings") and len(row) == 3:
        row.append(1_000_000_000)
    return [str(v) for v in row]


def csv_text(kind: str, rows: Iterable[Sequence]) -> str:
    """One official CSV file (header + rows) as text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADERS[kind])
    for row in rows:
        w.writerow(_fields(kind, row))
    return buf.getvalue()


def dat_bytes(kind: str, rows: Iterable[Sequence]) -> bytes:
    """One official ``::``-separated, Latin-1 ``.dat`` file (no header) as bytes."""
    return "".join("::".join(_fields(kind, row)) + "\n" for row in rows).encode("latin-1")


def write_movielens(
    folder: str | Path,
    fmt: str = "csv",
    *,
    movies: Iterable[Movie] | None = None,
    tags: Iterable[Tag] | None = None,
    links: Iterable[Link] | None = None,
    ratings: Iterable[Rating] | None = None,
) -> Path:
    """Write a MovieLens folder in the official format and return it.

    Args:
        folder: created if needed.
        fmt: ``"csv"`` (ml-latest-small, ml-20m ... ml-32m) or ``"dat"`` (ml-1m, ml-10m).
        movies: rows of movies.csv/.dat (default: ``MOVIES``, which covers the parsing cases).
        tags, links, ratings: rows of the optional files; ``None`` leaves the file out
            (``links`` is ignored for ``dat``: ml-1m and ml-10m have no links file).
    """
    if fmt not in ("csv", "dat"):
        raise ValueError(f"fmt must be 'csv' or 'dat', got {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"movies": MOVIES if movies is None else movies, "tags": tags, "links": links, "ratings": ratings}
    for kind, rows in tables.items():
        if rows is None or (fmt == "dat" and kind == "links"):
            continue
        if fmt == "csv":
            (folder / f"{kind}.csv").write_text(csv_text(kind, rows), encoding="utf-8")
        else:
            (folder / f"{kind}.dat").write_bytes(dat_bytes(kind, rows))
    return folder


def zip_movielens(folder: str | Path, zip_path: str | Path, *, folder_name: str | None = None) -> Path:
    """Zip a folder the way GroupLens does: every file under one top folder (``ml-10M100K/movies.dat``)."""
    folder, zip_path = Path(folder), Path(zip_path)
    top = folder_name or folder.name
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", b"")
        for p in sorted(folder.iterdir()):
            if p.is_file():
                zf.write(p, f"{top}/{p.name}")
    return zip_path


def zip_bytes(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    """A zip built from raw entry names (which may be hostile, e.g. ``../x`` or ``/etc/x``) and contents.

    ``symlinks`` maps entry names to link targets; they are stored with the Unix symlink mode bits,
    as ``zip --symlinks`` does.
    """
    import stat

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode bits are honoured
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()
