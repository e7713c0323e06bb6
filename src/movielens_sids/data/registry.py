"""Every MovieLens variant the tool knows: official URL, published MD5, layout and format, in one table.

The archives live at ``https://files.grouplens.org/datasets/movielens/<name>.zip`` and GroupLens
publishes each one's MD5 beside it at ``<name>.zip.md5``. Set ``MOVIELENS_SIDS_BASE_URL`` to
download from a mirror (or, in tests, a local server) instead; names and checksums stay the same.

May import: errors (a table of constants; ``settings`` reads the dataset names from it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..errors import SidsError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "MOVIELENS_SIDS_BASE_URL"
BUNDLED = "ml-latest-small"
"""The variant shipped inside the package (works offline)."""


@dataclass(frozen=True)
class Variant:
    """One MovieLens release."""

    name: str
    """Name used on the command line and in the archive's file name (``ml-25m`` -> ``ml-25m.zip``)."""
    md5: str | None
    """The MD5 GroupLens publishes for the zip; None when it changes over time or was not pinned
    (then the ``<name>.zip.md5`` file published beside the zip is read at download time)."""
    folder: str
    """The one top-level folder inside the zip (``ml-10M100K`` for ml-10m)."""
    fmt: Literal["csv", "dat"]
    """``csv``: UTF-8 CSV with a header; ``dat``: Latin-1, ``::``-separated, no header."""
    files: tuple[str, ...]
    """The files of the release the catalog can use (movies first; the others are optional)."""

    @property
    def movies_file(self) -> str:
        return f"movies.{self.fmt}"

    def url(self, base_url: str | None = None) -> str:
        """The archive URL, from ``base_url``, else ``$MOVIELENS_SIDS_BASE_URL``, else GroupLens."""
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return f"{base.rstrip('/')}/{self.name}.zip"


_CSV_FILES = ("movies.csv", "links.csv", "tags.csv", "ratings.csv")

# MD5 sources (GroupLens' own `<name>.zip.md5` files, as quoted by public code that pins them):
# - ml-1m, ml-10m, ml-20m, ml-25m: the table of eli-osherovich/papers_with_code
#   (datasets/movielens/dl_config.py); ml-1m and ml-25m also appear verbatim as
#   "MD5 (ml-1m.zip) = c4d9..." / "MD5 (ml-25m.zip) = 6b51..." in scripts that quote the .md5 files.
# - ml-32m: "Official checksum from https://files.grouplens.org/datasets/movielens/ml-32m.zip.md5"
#   in several public repositories (pooch `known_hash="md5:d472..."`; one also records the zip as
#   238,950,008 bytes with 87,585 movies).
# - ml-latest-small: no pinned value was found in any source we could check, and GroupLens has
#   re-released it over the years; ml-latest changes by design. For both, the MD5 is read from the
#   `.zip.md5` file GroupLens publishes beside the zip when downloading, and `--md5 HEX` (or
#   $MOVIELENS_SIDS_MD5) lets a user verify against a value they obtained independently.
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("ml-latest-small", None, "ml-latest-small", "csv", _CSV_FILES),
    Variant("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "ml-1m", "dat", ("movies.dat", "ratings.dat")),
    Variant("ml-10m", "ce571fd55effeba0271552578f2648bd", "ml-10M100K", "dat",
            ("movies.dat", "tags.dat", "ratings.dat")),
    Variant("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "ml-20m", "csv", _CSV_FILES),
    Variant("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m", "csv", _CSV_FILES),
    Variant("ml-32m", "d472be332d4daa821edc399621853b57", "ml-32m", "csv", _CSV_FILES),
    Variant("ml-latest", None, "ml-latest", "csv", _CSV_FILES),
]}


def names() -> list[str]:
    """The known variant names, smallest first."""
    return list(VARIANTS)


def get(name: str) -> Variant:
    """The variant called ``name``; an unknown name is a ``SidsError`` listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise SidsError(f"unknown dataset {name!r}; known: {', '.join(VARIANTS)} "
                        "(or pass --source PATH for a local folder or zip)") from None
