"""Semantic ID strings: ``(12, 201, 7)`` <-> ``"<a_12><b_201><c_7>"``, prefixes and integer paths.

Positions are named by letters (``a`` for level 1, ``b`` for level 2, ..., the optional collision
token after the last level gets the next letter), as in the TIGER-style token vocabularies that
language models are fine-tuned on: every position has its own token namespace.

May import: errors, numpy, pyarrow (pure formatting and parsing of SIDs).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

from .errors import SidsError

LETTERS = string.ascii_lowercase
_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def format_sid(codes: Sequence[int]) -> str:
    """The SID string of one code tuple.

    Example:
        >>> format_sid([12, 201, 7])
        '<a_12><b_201><c_7>'
    """
    if len(codes) > len(LETTERS):
        raise ValueError(f"a SID has at most {len(LETTERS)} positions, got {len(codes)}")
    return "".join(f"<{LETTERS[i]}_{int(c)}>" for i, c in enumerate(codes))


def format_sids(codes: np.ndarray):
    """SID strings of many code tuples at once, as a ``pyarrow.StringArray`` (vectorised).

    Args:
        codes: (N, T) non-negative integer tokens (T = L, or L + 1 with a collision token).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = np.asarray(codes)
    n, t = codes.shape
    if t > len(LETTERS):
        raise ValueError(f"a SID has at most {len(LETTERS)} positions, got {t}")
    if t == 0:
        return pa.array([""] * n, type=pa.string())
    parts: list = []
    for i in range(t):
        parts.append(pa.scalar(f"<{LETTERS[i]}_" if i == 0 else f"><{LETTERS[i]}_"))
        parts.append(pc.cast(pa.array(codes[:, i].astype(np.int64)), pa.string()))
    parts.append(pa.scalar(">"))
    # The last argument of binary_join_element_wise is the separator: empty.
    return pc.binary_join_element_wise(*parts, "")


def parse_sid(text: str) -> tuple[int, ...]:
    """Parse a full or partial SID string ``"<a_12><b_201>"`` into its tokens ``(12, 201)``.

    Raises:
        SidsError: when the text is not a run of ``<x_N>`` tokens with letters in order.
    """
    text = text.strip()
    tokens = _TOKEN.findall(text)
    if not tokens or "".join(f"<{a}_{b}>" for a, b in tokens) != text.replace(" ", ""):
        raise SidsError(f"cannot parse SID {text!r}: expected tokens like <a_12><b_201>")
    for i, (letter, _) in enumerate(tokens):
        if letter != LETTERS[i]:
            raise SidsError(f"cannot parse SID {text!r}: position {i + 1} must be <{LETTERS[i]}_N>, "
                            f"got <{letter}_...>")
    return tuple(int(v) for _, v in tokens)


def parse_sid_prefix(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse a SID prefix given as ``"12"``, ``"12,201"``, ``"12 201"``, ``"(12, 201)"`` or ``"<a_12><b_201>"``.

    Example:
        >>> parse_sid_prefix("12,201")
        (12, 201)
        >>> parse_sid_prefix("<a_12><b_201>")
        (12, 201)
    """
    if not isinstance(text, str):
        out = tuple(int(v) for v in text)
    elif "<" in text:
        out = parse_sid(text)
    else:
        body = text.strip().strip("()[]")
        parts = [p for p in re.split(r"[,\s]+", body) if p]
        if not parts or not all(p.isdigit() for p in parts):
            raise SidsError(f"cannot parse SID prefix {text!r}: expected e.g. 12 or 12,201 or <a_12><b_201>")
        out = tuple(int(p) for p in parts)
    if not out or any(v < 0 for v in out):
        raise SidsError(f"cannot parse SID prefix {text!r}: expected one or more non-negative integers")
    return out


def path_ids(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """Each code tuple as one integer ``sum_l code_l * K^(L-1-l)`` (a code path's id).

    Args:
        codes: (N, L) integer codes in ``[0, K)``.
        codebook_size: K.

    Returns:
        (N,) int64 path ids, ordered like the tuples (lexicographically).
    """
    codes = np.asarray(codes, dtype=np.int64)
    levels = codes.shape[1]
    if codebook_size ** levels >= 2 ** 62:
        raise ValueError(f"K^L = {codebook_size}^{levels} does not fit in int64 path ids")
    weights = codebook_size ** np.arange(levels - 1, -1, -1, dtype=np.int64)  # (L,)
    return codes @ weights


def path_codes(paths: np.ndarray, codebook_size: int, levels: int) -> np.ndarray:
    """Inverse of `path_ids`: (N,) path ids -> (N, L) int64 codes."""
    paths = np.asarray(paths, dtype=np.int64)
    weights = codebook_size ** np.arange(levels - 1, -1, -1, dtype=np.int64)  # (L,)
    return (paths[:, None] // weights[None, :]) % codebook_size
