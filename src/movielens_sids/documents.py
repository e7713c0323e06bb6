"""One text document per movie, rendered from the catalog with a small template language.

A template is a Python format string with named fields (``{title}``, ``{genres}``, any catalog
column) plus optional groups in square brackets: a group is kept only when every field in it is
non-empty, so a movie without a director gets no "Directed by ." fragment (the original project
wrote that noise into tens of thousands of documents). Example::

    {title}[ ({year})].[ Genres: {genres}.][ Tags: {tags}.]

renders "The Matrix (1999). Genres: Action, Sci-Fi, Thriller. Tags: cyberpunk, philosophy." and,
for a movie with no year, genres or tags, just "Some Title.".

Fields:
    - every catalog column by name; list columns are joined with ", ", a missing value is empty;
    - ``title`` is the display form ("The Matrix", from ``display_title`` when present);
      ``sort_title`` is MovieLens' own form ("Matrix, The");
    - ``tags`` holds at most ``max_tags`` of the most frequent tags;
    - ``extras``: every other text enrichment column that the template does not name, each as
      "Label: value." (``original_language`` -> "Original language: en."), in catalog order.

A field outside brackets must be a catalog column; one inside may be absent (its group is then
left out). Brackets cannot be nested and cannot appear literally in the template text (values may contain
anything). Rendering is deterministic: the same catalog and settings give the same bytes; runs
of spaces are collapsed and the result is stripped.

May import: the standard library only (``settings`` validates templates with it).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "{title}[ ({year})].[ Genres: {genres}.][ Directed by {director}.][ Starring {stars}.]"
    "[ Tags: {tags}.][ {extras}][ Plot: {plot_summary}]"
)
"""The default document. The plot comes last so that a model's token limit cuts it, not the tags."""

# Catalog columns that are identifiers or already covered by a named field: never part of {extras}.
_NOT_EXTRAS = frozenset({"movie_id", "title", "display_title", "sort_title", "year", "genres", "tags",
                         "imdb_id", "tmdb_id"})
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACES = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True)
class _Part:
    text: str
    """A format string without brackets."""
    fields: tuple[str, ...]
    """The fields it names."""
    optional: bool
    """A bracketed group: dropped unless every field is non-empty."""


class Template:
    """A parsed document template (see the module docstring for the syntax).

    Args:
        text: the template; ``None`` means ``DEFAULT_TEMPLATE``.

    Raises:
        ValueError: unbalanced or nested brackets, a positional or dotted field, a bad format spec.

    Example:
        >>> Template("{title}[ ({year})].").render({"title": "Heat", "year": ""})
        'Heat.'
    """

    def __init__(self, text: str | None = None):
        self.text = DEFAULT_TEMPLATE if text is None else text
        self.parts = _parse(self.text)
        self.fields = tuple(dict.fromkeys(f for p in self.parts for f in p.fields))
        # A dry render catches format specs that cannot apply to a string ("{year:d}").
        self.render({f: "x" for f in self.fields})

    def render(self, values: dict[str, str]) -> str:
        """Fill the template; missing or empty values drop their bracketed group."""
        blank = _Blank(values)
        out = []
        for p in self.parts:
            if p.optional:
                for f in p.fields:
                    if not values.get(f):
                        break
                else:
                    out.append(self._format(p, blank))
            else:
                out.append(self._format(p, blank))
        text = "".join(out)
        return (_SPACES.sub(" ", text) if "  " in text or "\t" in text else text).strip()

    @staticmethod
    def _format(p: _Part, values: _Blank) -> str:
        try:
            return p.text.format_map(values)
        except (ValueError, TypeError) as e:
            raise ValueError(f"template: cannot render {p.text!r}: {e}") from None


class _Blank(dict):
    """A mapping that renders a missing field as an empty string."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)

    def __missing__(self, key: str) -> str:
        return ""


def _parse(text: str) -> list[_Part]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("template: must be a non-empty string")
    parts: list[_Part] = []
    buf: list[str] = []
    in_group = False
    for ch in text:
        if ch == "[":
            if in_group:
                raise ValueError(f"template: nested '[' in {text!r} (groups cannot be nested)")
            if buf:
                parts.append(_part("".join(buf), optional=False))
            buf, in_group = [], True
        elif ch == "]":
            if not in_group:
                raise ValueError(f"template: ']' without a matching '[' in {text!r}")
            parts.append(_part("".join(buf), optional=True))
            buf, in_group = [], False
        else:
            buf.append(ch)
    if in_group:
        raise ValueError(f"template: '[' without a matching ']' in {text!r}")
    if buf:
        parts.append(_part("".join(buf), optional=False))
    if not any(p.fields for p in parts):
        raise ValueError(f"template: names no field, so every movie would get the same text: {text!r}")
    return parts


def _part(text: str, *, optional: bool) -> _Part:
    fields = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"template: {e} in {text!r}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"template: field {{{name}}} must be a plain column name like {{title}}")
        fields.append(name)
    return _Part(text, tuple(fields), optional)


def _text(v: Any, limit: int | None = None) -> str:
    """One value as document text: lists joined with ", ", whitespace collapsed, missing -> ""."""
    if v is None:
        return ""
    if isinstance(v, str):
        return " ".join(v.split())
    if isinstance(v, (list, tuple)):
        items = [t for t in (_text(x) for x in v) if t]
        return ", ".join(items[:limit] if limit is not None else items)
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v.is_integer():
            return str(int(v))
    if isinstance(v, bool):
        return "yes" if v else "no"
    return " ".join(str(v).split())


def _label(column: str) -> str:
    words = column.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _is_text_type(arrow_type) -> bool:
    import pyarrow as pa

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return True
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _is_text_type(arrow_type.value_type)
    return False


def extra_columns(table, template: Template) -> list[str]:
    """The catalog's text enrichment columns that ``{extras}`` renders (those the template does not name)."""
    return [f.name for f in table.schema
            if f.name not in _NOT_EXTRAS and f.name not in template.fields and _is_text_type(f.type)]


def check_fields(template: Template, columns: Sequence[str]) -> None:
    """Check a template's fields against the catalog's columns.

    A field outside brackets must be a column (or ``title``, ``sort_title``, ``extras``): raises
    ``ValueError`` otherwise. A field inside an optional group may be absent, like ``director`` on a
    catalog without enrichment: its group is left out of every document (a custom template gets a
    warning, since that may be a typo).
    """
    known = set(columns) | {"title", "sort_title", "extras"}
    required = {f for p in template.parts if not p.optional for f in p.fields}
    unknown = [f for f in template.fields if f not in known]
    if bad := [f for f in unknown if f in required]:
        raise ValueError(f"template names {', '.join('{' + f + '}' for f in bad)}, which the catalog does "
                         f"not have; columns: {', '.join(columns)}")
    if unknown and template.text != DEFAULT_TEMPLATE:
        log.warning("template fields %s are not catalog columns: their [groups] are left out of every document",
                    ", ".join("{" + f + "}" for f in unknown))


def build_documents(table, *, template: str | Template | None = None, max_tags: int = 10) -> list[str]:
    """Render one document per catalog row, in the table's row order.

    Args:
        table: the catalog as a ``pyarrow.Table`` (or a pandas DataFrame).
        template: a template string (module docstring) or ``Template``; ``None`` for the default.
        max_tags: how many of the most frequent tags to keep (the catalog lists them most frequent first).

    Returns:
        N strings.

    Raises:
        ValueError: a field outside the template's optional groups is not a catalog column.

    Example:
        >>> build_documents(catalog)[0]
        'Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, fun.'
    """
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tpl = template if isinstance(template, Template) else Template(template)
    columns = table.column_names
    check_fields(tpl, columns)
    n = table.num_rows
    extras = extra_columns(table, tpl) if "extras" in tpl.fields else []

    def col(name: str) -> list:
        return table.column(name).to_pylist() if name in columns else [None] * n

    values: dict[str, list[str]] = {}
    for f in tpl.fields:
        if f == "extras":
            continue
        if f == "title":
            disp, raw = col("display_title"), col("title")
            values[f] = [_text(d) or _text(r) for d, r in zip(disp, raw, strict=True)]
        elif f == "sort_title":
            values[f] = [_text(v) for v in col("title")]
        else:
            limit = max_tags if f == "tags" else None
            values[f] = [_text(v, limit) for v in col(f)]
    if extras:
        extra_values = [[_text(v) for v in col(c)] for c in extras]
        labels = [_label(c) for c in extras]
        values["extras"] = [
            " ".join(f"{lab}: {vals[i]}{'' if vals[i].endswith(('.', '!', '?')) else '.'}"
                     for lab, vals in zip(labels, extra_values, strict=True) if vals[i])
            for i in range(n)
        ]
    names = list(values)
    columns_data = [values[k] for k in names]
    return [tpl.render(dict(zip(names, row, strict=True))) for row in zip(*columns_data, strict=True)] \
        if names else [tpl.render({}) for _ in range(n)]


def document_hash(text: str) -> str:
    """The SHA-256 hex digest of a document's UTF-8 bytes (the embedding cache key)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
