"""Semantic IDs in a language model's vocabulary: tokens, generation that writes only real SIDs, and back.

A SID ``<a_12><b_201><c_7>`` is one token per position. ``token_texts`` lists them, level by level and
code by code (``<a_0>, ..., <a_{K-1}>, <b_0>, ...``, then the collision position's, if the run has one);
``extend_tokenizer`` adds them to a Hugging Face tokenizer as one block of consecutive ids (its order is
how a second call recognises the block, and how a tokenizer extended for another run is told apart).

``AllowedTokens`` is the ``prefix_allowed_tokens_fn`` of ``transformers``' ``generate``: a trie over the
run's SIDs, as token ids, allows after the prompt only a path that spells a SID that exists, then the
end-of-sequence token. It keeps nothing per beam, so beam search and batches work as they are.

``movies_in`` reads the SIDs back out of generated text.

May import: errors, sid; ``tokenizers`` (its ``AddedToken``) on first use. A tokenizer is used through its
own methods only (``get_vocab``, ``add_tokens``, ``convert_tokens_to_ids``, ``eos_token_id``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import SidsError
from .sid import LETTERS

_RUN = re.compile(r"<a_\d+>(?:\s*<[b-z]_\d+>)*")
"""A run of SID tokens that starts a SID (position a), whitespace allowed between tokens (some tokenizers
decode added tokens with spaces between them)."""


def token_texts(level_sizes: Sequence[int]) -> list[str]:
    """Every SID token, position by position: ``<a_0> .. <a_{K_1 - 1}>, <b_0>, ...``.

    Example:
        >>> token_texts([2, 3])
        ['<a_0>', '<a_1>', '<b_0>', '<b_1>', '<b_2>']
    """
    return [f"<{LETTERS[j]}_{k}>" for j, size in enumerate(level_sizes) for k in range(int(size))]


def extend_tokenizer(tokenizer: Any, texts: list[str]) -> Any:
    """Add the SID tokens ``texts`` to ``tokenizer`` as one block of consecutive ids; a no-op when it holds them.

    Raises:
        SidsError: the tokenizer already has one of the texts under an id outside that block (its own
            vocabulary uses the text, or it was extended for another run's SIDs).
    """
    vocab = tokenizer.get_vocab()  # text -> id, added tokens included
    present = [t for t in texts if t in vocab]
    if present:
        start = vocab.get(texts[0], -1)
        for i, t in enumerate(texts):
            if t in vocab and vocab[t] != start + i:
                raise SidsError(f"the tokenizer already has {t!r} as token {vocab[t]}, not where this run's SID "
                                f"tokens put it ({start + i if start >= 0 else 'after the vocabulary'}): start from "
                                "the base tokenizer, not one extended for another run's SIDs")
        if len(present) != len(texts):
            missing = next(t for t in texts if t not in vocab)
            raise SidsError(f"the tokenizer has {len(present)} of this run's {len(texts)} SID tokens (not {missing!r}):"
                            " it was extended for another run's SIDs; start from the base tokenizer")
        return tokenizer
    from tokenizers import AddedToken  # transformers' own dependency: only when tokens are added

    # normalized=False: matched in the raw text, so a lower-casing or prefix-space normaliser cannot break them
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in texts])
    ids = tokenizer.convert_tokens_to_ids(texts)
    if list(ids) != list(range(ids[0], ids[0] + len(texts))):
        raise SidsError(f"the tokenizer gave the {len(texts)} SID tokens ids that are not consecutive")
    return tokenizer


def token_ids(tokenizer: Any, texts: list[str]) -> dict[str, int]:
    """The id of each SID token text; a one-line error when the tokenizer lacks one."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in texts if t not in vocab]
    if missing:
        raise SidsError(f"the tokenizer lacks {len(missing)} SID tokens (first: {missing[0]!r}): call "
                        "SemanticIds.extend_tokenizer(tokenizer) first")
    return {t: vocab[t] for t in texts}


class AllowedTokens:
    """``prefix_allowed_tokens_fn(batch_id, input_ids) -> list[int]`` for ``generate``: after the first
    ``prompt_length`` tokens, the tokens of a SID that exists, then the end-of-sequence token.

    Args:
        sid_token_ids: each movie's SID as token ids (T tokens, or T_i when lengths differ).
        eos: the end-of-sequence token id.
        prompt_length: where generation starts: ``input_ids.shape[1]`` of the (left-padded) batch.
    """

    def __init__(self, sid_token_ids: list[tuple[int, ...]], *, eos: int, prompt_length: int):
        if not isinstance(prompt_length, int) or isinstance(prompt_length, bool) or prompt_length < 0:
            raise SidsError(f"prompt_length must be a token count (an int >= 0), got {prompt_length!r}")
        self.prompt_length = prompt_length
        self.eos = int(eos)
        self.width = max(len(s) for s in sid_token_ids)
        children: dict[tuple[int, ...], set[int]] = {}
        for sid in sid_token_ids:
            for j in range(len(sid)):
                children.setdefault(sid[:j], set()).add(sid[j])
            children.setdefault(sid, set()).add(self.eos)
        self.children = {prefix: sorted(nxt) for prefix, nxt in children.items()}
        """A generated prefix (token ids) -> the tokens allowed next."""

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        n = int(input_ids.shape[-1])
        if n < self.prompt_length:
            raise SidsError(f"prompt_length {self.prompt_length} is beyond the input ({n} tokens): pass "
                            "input_ids.shape[1] of the batch given to generate")
        generated = tuple(input_ids[self.prompt_length:].tolist())
        allowed = self.children.get(generated)
        if allowed is not None:
            return allowed
        head = generated[:self.width]
        if head in self.children and self.eos in self.children[head]:
            return [self.eos]  # a finished sequence, padded while the batch's others finish
        raise SidsError(f"the tokens after prompt_length {self.prompt_length} ({list(generated)[:8]}) do not "
                        "start a SID: pass input_ids.shape[1] of the (left-padded) batch given to generate")


class FoundMovies(list):
    """The movie ids of the SIDs in a text, in order; ``unknown`` counts the SIDs that are no movie of the run."""

    unknown: int = 0


def movies_in(text: str, movie_of: dict[str, int]) -> FoundMovies:
    """The movies whose SIDs ``text`` holds, in order (``movie_of``: SID string -> movie id); a run of SID
    tokens that is no SID of the run is skipped and counted, never guessed."""
    found = FoundMovies()
    for match in _RUN.finditer(text):
        movie = movie_of.get(re.sub(r"\s+", "", match.group()))
        if movie is None:
            found.unknown += 1
        else:
            found.append(movie)
    return found
