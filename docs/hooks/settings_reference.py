"""The configuration page, generated from the settings dataclasses' own field docstrings.

An MkDocs hook: ``on_page_markdown`` replaces the marker ``<!-- settings -->`` of ``configuration.md``
with one table per section of ``Config``. ``reference()`` is the same page as a string, and raises
``MissingDocstring`` when a field has no docstring, so a setting cannot go undocumented
(``tests/house/test_docs.py`` builds it).
"""

from __future__ import annotations

import ast
import dataclasses
import html
import inspect
import json
import re
import textwrap
from typing import Any

MARKER = "<!-- settings -->"


class MissingDocstring(Exception):
    """A settings field without the docstring the reference is made of."""


def field_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, from the string literal under each annotated field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def sections() -> list[tuple[str, type]]:
    """(section name, dataclass) of every section of a run's config, in ``Config``'s order, and ``Config``."""
    from movielens_sids.config import Config

    out = [("", Config)]
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.default_factory):
            out.append((f.name, f.default_factory))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _cell(text: str) -> str:
    """Text for a table cell: a pipe would end the cell (an escaped one shows its backslash in code)."""
    return text.replace("|", "&#124;")


def _code(text: str) -> str:
    return f"<code>{_cell(html.escape(text))}</code>"


def section_table(name: str, cls: type) -> str:
    """The markdown of one section: its docstring and a row per field (setting, type, default, meaning)."""
    docs = field_docstrings(cls)
    fields = [f for f in dataclasses.fields(cls) if not (name == "" and dataclasses.is_dataclass(f.default_factory))]
    missing = [f.name for f in fields if not docs.get(f.name)]
    if missing:
        raise MissingDocstring(f"{cls.__qualname__}: no docstring for {', '.join(missing)}")
    title = f"`{name}`" if name else "Top level"
    lines = [f"## {title}", "", inspect.cleandoc(cls.__doc__ or ""), "",
             "| setting | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields:
        key = f"{name}.{f.name}" if name else f.name
        default = json.dumps(_default(f), default=str)
        lines.append(f"| `{key}` | {_code(str(f.type))} | {_code(default)} | {_cell(docs[f.name])} |")
    return "\n".join(lines) + "\n"


def reference() -> str:
    """Every section's table, in order."""
    return "\n".join(section_table(name, cls) for name, cls in sections())


def settings_keys(page: str) -> set[str]:
    """The setting names a generated page lists (``section.field``, or ``field`` at the top level)."""
    return set(re.findall(r"^\| `([\w.]+)` \|", page, flags=re.M))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "configuration.md":
        return markdown.replace(MARKER, reference())
    return markdown
