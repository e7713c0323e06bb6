"""The generative-retrieval benchmark: do Semantic IDs help a generative recommender?

On one split of the ratings (``sequences.py``: temporal or leave-one-out), every method ranks
movies for the same test events:

- ``semantic_id``: ``GenerativeRetriever`` over the run's Semantic IDs, with each movie's vector
  added to its input and a dense head (``retrieval.content_input``, ``dense_weight``); it ranks
  the beam search's movies and the dense head's best movies, warm or cold, together
  and the cold movies most like the user's latest ones together, by a mixture whose gate and
  weights are chosen on validation (``fusion.py``, ``choose_mix``);
- ``semantic_id_tokens``: the token-only model over the same SIDs (no vectors, the beam search
  alone, with its cold-start share);
- ``random_id``: ``semantic_id``'s model and settings over random IDs of the same shape: the run's
  SIDs shuffled across movies (seeded per seed), so L, K per level, uniqueness and even the trie's
  shape are identical and only the link between a movie's content and its tokens is broken;
- ``sasrec_ce``: SASRec over plain movie ids trained with full softmax cross-entropy over every
  movie of its training windows ("SASRec+", Klenitskiy & Vasilev, RecSys 2023), ranking those;
- ``most_popular``: movies ranked by their number of training interactions;
- ``content_knn``: movies ranked by content-embedding similarity to the user's latest movies
  (``content.py``), its window chosen on validation.

Every learned model trains until neither its validation loss nor its validation Recall@10 has
improved for ``patience`` epochs, and keeps the epoch with the best validation Recall@10
(``max_epochs`` is only a safety bound, flagged when hit). Each
method returns the 0-based rank of every test event's target in its top ``MAX_K`` list (-1 when
absent), per seed; ``stats.py`` turns ranks into metrics and intervals. With ``exclude_seen``
(the default) no method recommends a movie the user has already rated (in MovieLens nobody rates
a movie twice, so such a slot is always a miss): SASRec and most-popular mask those movies'
scores, the generative models mask them at the beam search's last level, and the content
baseline, whose profile is made of them, always leaves them out.

ID-based methods (``sasrec_ce``, ``most_popular``) cannot recommend a movie that has no
training interaction (its embedding is never trained; its count is 0): their cold-slice scores
are near 0 by construction, not by a flaw of the benchmark. ``random_id`` can generate such a
movie, but its tokens carry nothing about it.

May import: devices, logs and this package (torch, Lightning).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import logs
from ..devices import resolve_device
from . import fusion
from .config import MAX_K, RetrievalConfig
from .content import Excluded, content_topk, exclusion_mask
from .generative import GenerativeRetriever, Recommendations
from .lightning_modules import fit, training_windows
from .metrics import ranking_metrics, target_ranks
from .sasrec import SASRec
from .sequences import Seen, Split
from .trie import SidTrie

log = logging.getLogger(__name__)

def random_codes(codes: np.ndarray, seed: int) -> np.ndarray:
    """Random IDs of the same shape: ``codes``' rows shuffled across movies (seeded).

    Same L, same tokens per level, still unique, and the trie has exactly the same shape; only
    which movie gets which ID is random.
    """
    perm = np.random.default_rng(seed).permutation(len(codes))
    return np.asarray(codes)[perm]


def most_popular(counts: np.ndarray, k: int, seen: np.ndarray | Seen | Excluded | None = None, *,
                 batch_size: int = 1024) -> np.ndarray:
    """(E, k) the ``k`` items with most training interactions (ties by item index), or (1, k) when ``seen`` is None.

    ``seen``: what each event may not recommend: an ``Excluded``, or (E, S) items, -1 padded (an array or a
    ``Seen``), sliced in batches; a slot with nothing left to recommend is -1.
    """
    order = np.argsort(-np.asarray(counts), kind="stable")
    if seen is None:
        return order[None, :k]
    rank = torch.empty(len(order), dtype=torch.float32)
    rank[torch.from_numpy(order)] = -torch.arange(len(order), dtype=torch.float32)  # higher is more popular
    out = []
    for i in range(0, len(seen), batch_size):
        banned = exclusion_mask(seen, slice(i, i + batch_size), len(order))  # (b, N)
        top = rank.expand(len(banned), -1).masked_fill(banned, -torch.inf).topk(min(k, len(order)), dim=1)
        out.append(top.indices.masked_fill(top.values == -torch.inf, -1).numpy())
    return np.concatenate(out)


Lists = tuple[np.ndarray, np.ndarray]
"""Ranked lists: (E, k) item indices (-1: none) and (E, k) their scores (-inf: none), best first."""


@torch.no_grad()
def recommend_all(model: torch.nn.Module, history: np.ndarray, *, k: int, beam_size: int, batch_size: int,
                  device: torch.device, seen: np.ndarray | Seen | Excluded | None = None,
                  cold_trie: SidTrie | None = None) -> tuple[Lists, Lists | None]:
    """The top ``k`` for (E, M) histories, in batches, and with ``cold_trie`` (a generative model's
    ``subset_trie``) also the top ``k`` among only its movies (one transformer pass serves both searches).

    ``seen``: what each event may not recommend (an ``Excluded``, or (E, S) items, -1 padded, or a ``Seen``).
    """
    model.eval().to(device)
    main: list[tuple[np.ndarray, np.ndarray]] = []
    cold: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(0, len(history), batch_size):
        hidden = model.last_hidden(torch.from_numpy(history[i:i + batch_size]).to(device))  # (B, d)
        exclude = None if seen is None else exclusion_mask(seen, slice(i, i + batch_size), model.n_items, device)
        rec: Recommendations = model.recommend_from(hidden, k, beam_size=beam_size, exclude=exclude)
        main.append((rec.items.cpu().numpy(), rec.scores.cpu().numpy()))
        if cold_trie is not None:
            rec = model.recommend_from(hidden, k, beam_size=beam_size, exclude=exclude, trie=cold_trie)
            cold.append((rec.items.cpu().numpy(), rec.scores.cpu().numpy()))

    def stacked(parts: list[tuple[np.ndarray, np.ndarray]]) -> Lists:
        if not parts:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])

    return stacked(main), (stacked(cold) if cold_trie is not None else None)


def merge_cold(main: Lists, cold: Lists, is_cold: np.ndarray, bonus: float, k: int) -> np.ndarray:
    """(E, k) items: the main list's warm movies and the cold list's movies with ``bonus`` added to their
    log-probabilities, merged by score (``is_cold``: (N,) bool per item). Bonus 0 gives the main list
    (up to beam-search ties): the cold list holds the best cold movies by the same score."""
    items = np.concatenate([main[0], cold[0]], axis=1)  # (E, 2W)
    main_cold = (main[0] >= 0) & is_cold[np.maximum(main[0], 0)]
    scores = np.concatenate([np.where(main_cold, -np.inf, main[1]), cold[1] + bonus], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(scores, order, 1)), np.take_along_axis(items, order, 1), -1)


def choose_cold_bonus(model: torch.nn.Module, sh: _Shared, cold_trie: SidTrie, device: torch.device
                      ) -> tuple[float, dict[str, float]]:
    """The bonus of ``cfg.cold_bonuses`` with the best validation Recall@10 (ties: the smallest), and the curve."""
    cfg = sh.cfg
    main, cold = recommend_all(model, sh.valid_windows[:, :-1], k=10, beam_size=cfg.valid_beam_size,
                               batch_size=cfg.eval_batch_size, device=device, seen=sh.valid_excluded,
                               cold_trie=cold_trie)
    target = sh.valid_windows[:, -1]
    curve = {b: float((merge_cold(main, cold, sh.is_cold, b, 10) == target[:, None]).any(1).mean())
             for b in sorted(cfg.cold_bonuses)}
    best = max(curve, key=lambda b: (curve[b], -b))
    return best, {f"{b:g}": round(r, 4) for b, r in curve.items()}


def choose_mix(model: GenerativeRetriever, sh: _Shared, device: torch.device) -> tuple[dict, dict]:
    """How a model with a dense head ranks (``fusion``): the cold profile window, the gate fitted on every
    validation event and the mix with the best validation Recall@10 over the candidates the test events get.
    Returns what ``_ranked`` needs (``mix``, ``gate``, ``window``) and the facts for the report. Reads only the
    validation events."""
    cfg, content = sh.cfg, sh.content
    window, by_window, plain = (1, {}, {}) if content is None else fusion.cold_window(
        content, sh.tune_hist, sh.tune_target, sh.is_cold, cfg.content_windows, sh.content_tune_excluded)
    c = fusion.fused_candidates(model, sh.tune_hist, beam_size=cfg.beam_size, dense_k=cfg.dense_candidates,
                                batch_size=cfg.eval_batch_size, device=device, seen=sh.tune_excluded,
                                cold=sh.is_cold, times=sh.tune_time, content=content, window=window)
    features = fusion.gate_features(sh.tune_hist, sh.is_cold)  # (E, F)
    gate = None if content is None or not cfg.gate_shifts else fusion.fit_gate(features,
                                                                                sh.is_cold[sh.tune_target])
    options = fusion.mixes(cfg.mix_weights, cfg.cold_scales, cfg.gate_shifts, cfg.warm_scales, gate is not None)
    floor = cfg.cold_floor * plain.get(window, 0.0)  # content similarity alone, on the same profile
    mix, curve = fusion.best_mix(c, sh.tune_target, sh.is_cold, options,
                                 None if gate is None else fusion.gate_logit(features, gate), floor)

    def best(keep) -> float:
        return round(max(v[0] for m, v in curve.items() if keep(m)), 4)

    facts = {"mix_weight": mix.weight, "gate_shift": mix.shift, "cold_scale": mix.cold_scale,
             "warm_scale": mix.warm_scale,
             "cold_window": window, "gate": None if gate is None else [round(float(g), 4) for g in gate],
             "valid_cold_floor": round(floor, 4), "valid_recall@10": round(curve[mix][0], 4),
             "valid_cold_recall@10": round(curve[mix][1], 4),
             "valid_recall@10_by_mix": {f"{w:g}": best(lambda m, w=w: m.weight == w)
                                        for w in sorted(cfg.mix_weights)},
             "valid_recall@10_by_gate_shift": {"off" if s is None else f"{s:g}": best(lambda m, s=s: m.shift == s)
                                               for s in dict.fromkeys(m.shift for m in options)},
             "valid_cold_recall@10_by_window": {str(w): round(v, 4) for w, v in by_window.items()}}
    return {"mix": mix, "gate": gate, "window": window}, facts


def _content(vectors: np.ndarray, sh: _Shared, valid_targets: np.ndarray) -> tuple[np.ndarray, dict]:
    """content_knn's test lists, its profile window chosen on validation Recall@10 (seen movies always left out)."""
    cfg, curve = sh.cfg, {}
    for w in cfg.content_windows:
        top = content_topk(vectors, sh.valid_windows[:, :-1], sh.content_valid_excluded, window=min(w, cfg.max_history),
                           k=10)
        curve[w] = ranking_metrics(top, valid_targets, ks=(10,))["recall@10"]
    best = max(curve, key=lambda w: (curve[w], -w))
    ranked = content_topk(vectors, sh.test_hist, sh.content_test_excluded, window=min(best, cfg.max_history), k=MAX_K)
    return ranked, {"window": int(best), "valid_recall@10_by_window": {str(w): round(v, 4) for w, v in curve.items()}}


@dataclass
class _Shared:
    """What every learned job of one fold reads: built once, sent once to each worker process."""

    codes: dict[str, np.ndarray]  # method -> (N, L) codes (random_id's are drawn per seed from semantic_id's)
    n_items: int
    windows: np.ndarray  # (n, M+1) training windows
    valid_windows: np.ndarray  # (E_valid, M+1)
    valid_excluded: Excluded | None  # what each validation event may not recommend (None: anything goes)
    test_hist: np.ndarray  # (E, M)
    test_excluded: Excluded | None
    content_valid_excluded: Excluded  # content_knn always leaves out the user's rated movies
    content_test_excluded: Excluded
    is_cold: np.ndarray  # (N,) bool: the item has no training interaction
    item_vectors: np.ndarray | None  # (N, D) what semantic_id's model reads of each movie (None: token-only models)
    content: np.ndarray | None  # (N, D') unit-norm content embeddings: the cold movies' ranking (None: no cold share)
    item_years: np.ndarray | None  # (N,) release years, NaN unknown (None: no age bias)
    window_times: np.ndarray  # (n, M+1) the Unix time of each training window movie (-1 pads)
    valid_time: np.ndarray  # (E_valid,) the validation events' Unix times
    test_time: np.ndarray  # (E,)
    tune_hist: np.ndarray  # (E_tune, M) every validation event's history (Split.tune): the ranking mix's choice
    tune_target: np.ndarray  # (E_tune,)
    tune_time: np.ndarray  # (E_tune,)
    tune_excluded: Excluded | None
    content_tune_excluded: Excluded
    cfg: RetrievalConfig
    joint: tuple[dict, dict] | None = None  # (weights, shape) of a joint run's recommender (method joint)

    @property
    def known(self) -> np.ndarray:
        """The movies of the training windows, sorted: SASRec's vocabulary and the dense head's softmax pool."""
        return np.unique(self.windows[self.windows >= 0])


def _shared(split: Split, codes: dict[str, np.ndarray], cfg: RetrievalConfig, available: np.ndarray | None,
            item_vectors: np.ndarray | None = None, item_years: np.ndarray | None = None,
            content: np.ndarray | None = None, joint: tuple[dict, dict] | None = None) -> _Shared:
    """One fold's ``_Shared``: its training windows, histories and the movies each event may not recommend."""
    m, cap, n = cfg.max_history, cfg.max_train_items, len(split.movie_ids)

    def excluded(events, seen: bool) -> Excluded | None:
        if not seen and available is None:
            return None
        return Excluded(n, split.seen(events) if seen else None, events.time, available)

    valid_hist = split.histories(split.valid, m)
    train_times = [t[:k] for t, k in zip(split.times, split.n_train)]
    tune = split.tune if split.tune is not None else split.valid
    return _Shared(codes=codes, n_items=n,
                   windows=training_windows([t[-cap:] if cap else t for t in split.train], m),
                   window_times=training_windows([t[-cap:] if cap else t for t in train_times], m),
                   valid_time=split.valid.time, test_time=split.test.time, item_years=item_years,
                   valid_windows=np.concatenate([valid_hist, split.valid.target[:, None]], axis=1),
                   valid_excluded=excluded(split.valid, cfg.exclude_seen), test_hist=split.histories(split.test, m),
                   test_excluded=excluded(split.test, cfg.exclude_seen),
                   content_valid_excluded=excluded(split.valid, True), content_test_excluded=excluded(split.test, True),
                   is_cold=split.train_counts() == 0, item_vectors=item_vectors, content=content,
                   tune_hist=split.histories(tune, m), tune_target=tune.target, tune_time=tune.time,
                   tune_excluded=excluded(tune, cfg.exclude_seen), content_tune_excluded=excluded(tune, True), cfg=cfg,
                   joint=joint)


_WORKER: dict = {}
"""The folds' ``_Shared`` of this worker process (set by ``_init_worker``)."""


def watch_parent(interval: float = 1.0) -> None:
    """Exit this (worker) process as soon as its parent is gone: a parent killed by a signal cannot shut its
    pool down, and its workers would go on training for minutes as orphans."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _init_worker(shared: list[_Shared], threads: int, verbosity: int) -> None:
    watch_parent()
    logs.setup(verbosity)  # a spawned process starts with no logging set up: the parent's verbosity
    torch.set_num_threads(threads)
    _WORKER["shared"] = shared


Job = tuple[int, int, str]
"""A learned model to train: (fold, seed, method)."""


def _learned_job(fold: int, seed: int, method: str, shared: list[_Shared] | None = None) -> tuple[np.ndarray, dict]:
    """Train ``method`` with ``seed`` on ``fold`` until validation stops improving; its (E, MAX_K) test lists."""
    import lightning as L

    sh = (shared or _WORKER["shared"])[fold]
    cfg = sh.cfg
    device = resolve_device(cfg.device, "retrieval.device")
    accelerator = {"cuda": "gpu"}.get(device.type, device.type)  # Lightning's name for the device type
    t0 = time.perf_counter()
    L.seed_everything(seed, workers=False, verbose=False)
    shape = dict(max_history=cfg.max_history, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)
    if method == "sasrec_ce":
        model, lr = SASRec(sh.n_items, known=sh.known, dropout=cfg.sasrec_dropout, **shape), cfg.sasrec_lr
    else:
        model, lr = _generative(method, seed, sh, shape), cfg.lr
    timed = getattr(model, "age_bias", None) is not None  # its dense head reads the events' times
    times = dict(window_times=sh.window_times, valid_times=sh.valid_time) if timed else {}
    info = {"seed": seed, "fold": fold, **fit(model, sh.windows, sh.valid_windows, sh.valid_excluded, lr=lr,
                                              weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                                              eval_batch_size=cfg.eval_batch_size, max_epochs=cfg.max_epochs,
                                              patience=cfg.patience, beam_size=cfg.valid_beam_size, seed=seed,
                                              accelerator=accelerator,
                                              devices=[device.index] if device.index is not None else 1, **times)}
    t1 = time.perf_counter()
    ranked = _ranked(model, sh, device, info)
    info["train_s"], info["rank_s"] = round(time.perf_counter() - t0, 1), round(time.perf_counter() - t1, 1)
    return ranked, info


def _generative(method: str, seed: int, sh: _Shared, shape: dict) -> GenerativeRetriever:
    """The generative model of ``method``: token-only for semantic_id_tokens, a joint run's recommender (its
    weights, on the run's SIDs) for joint, otherwise (with item vectors) with the content input and the dense head
    that ``cfg`` asks for."""
    cfg = sh.cfg
    if method == "joint":
        if sh.joint is None:
            raise ValueError("method joint needs the recommender a joint run trained (run_benchmark's joint=)")
        weights, saved = sh.joint
        codes = sh.codes["semantic_id"]
        if codes.shape[1] != saved["levels"] or (codes.max(0) >= saved["level_sizes"]).any():
            raise ValueError("method joint: the run's SIDs carry a collision token, which its recommender never "
                             "learned: give the tokenizer a larger code space")
        model = GenerativeRetriever(codes, level_sizes=saved["level_sizes"], dropout=cfg.dropout,
                                    **{k: saved[k] for k in ("max_history", "d_model", "n_layers", "n_heads")})
        model.load_state_dict(weights)
        return model
    ids = (random_codes(sh.codes["semantic_id"], seed) if method == "random_id"
           else sh.codes["semantic_id" if method == "semantic_id_tokens" else method])
    reads = _reads_vectors(method, cfg)
    if reads and sh.item_vectors is None:
        raise ValueError(f"{method} reads item vectors (retrieval.content_input, dense_weight): none were given")
    dense = dict(item_vectors=sh.item_vectors, dense_weight=cfg.dense_weight, dense_negatives=cfg.dense_negatives,
                 dense_pool=sh.known, dense_window=cfg.dense_window,
                 dense_positions=cfg.dense_positions, content_input=cfg.content_input,
                 item_years=sh.item_years if cfg.dense_age else None) if reads else {}
    return GenerativeRetriever(ids, dropout=cfg.dropout, **shape, **dense)


def _ranked(model: torch.nn.Module, sh: _Shared, device: torch.device, info: dict) -> np.ndarray:
    """A trained model's (E, MAX_K) test lists; its choices on validation go into ``info``."""
    cfg = sh.cfg
    if getattr(model, "dense", False):
        choice, facts = choose_mix(model, sh, device)
        info.update(facts)
        c = fusion.fused_candidates(model, sh.test_hist, beam_size=cfg.beam_size, dense_k=cfg.dense_candidates,
                                    batch_size=cfg.eval_batch_size, device=device, seen=sh.test_excluded,
                                    cold=sh.is_cold, times=sh.test_time, content=sh.content, window=choice["window"])
        gate = choice["gate"]
        logit = None if gate is None else fusion.gate_logit(fusion.gate_features(sh.test_hist, sh.is_cold), gate)
        return fusion.fused_ranking(c, sh.is_cold, choice["mix"], MAX_K, logit)
    cold_trie = None
    if isinstance(model, GenerativeRetriever) and cfg.cold_bonuses and sh.is_cold.any():
        cold_trie = model.subset_trie(np.flatnonzero(sh.is_cold))
        info["cold_bonus"], info["valid_recall@10_by_cold_bonus"] = choose_cold_bonus(model, sh, cold_trie, device)
    main, cold = recommend_all(model, sh.test_hist, k=MAX_K, beam_size=cfg.beam_size, batch_size=cfg.eval_batch_size,
                               device=device, seen=sh.test_excluded, cold_trie=cold_trie)
    return main[0] if cold is None else merge_cold(main, cold, sh.is_cold, info["cold_bonus"], MAX_K)


def _fixed_job(method: str, fold: int, split: Split, sh: _Shared, vectors: np.ndarray | None
               ) -> tuple[np.ndarray, dict]:
    """most_popular's or content_knn's (E, MAX_K) test lists on one fold (no training, no randomness)."""
    t0 = time.perf_counter()
    if method == "most_popular":
        top = most_popular(split.train_counts(), MAX_K, sh.test_excluded)
        ranked, info = np.broadcast_to(top, (len(split.test), top.shape[1])), {}
    else:
        ranked, info = _content(vectors, sh, split.valid.target)
    info = {"seed": sh.cfg.seeds[0], "fold": fold, **info, "train_s": round(time.perf_counter() - t0, 1)}
    return ranked, info


def _pool_size(cfg: RetrievalConfig, n_jobs: int) -> int:
    """Worker processes for the learned jobs: ``cfg.workers``, or on a CPU one per core (models this small
    use one core well and two badly), at most one per job; 1 on an accelerator."""
    if cfg.workers is not None:
        return max(1, min(cfg.workers, n_jobs))
    if resolve_device(cfg.device, "retrieval.device").type != "cpu":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      n_jobs))


def _cost_rank(method: str, cfg: RetrievalConfig) -> int:
    """Where a learned method's jobs go in the queue, the costliest first: a model that reads movie vectors (a
    softmax over them every step, when it has the dense head) before SASRec (a softmax over the movies) before a
    token-only model (a softmax over each level's codes)."""
    if method == "sasrec_ce":
        return 1
    return 0 if _reads_vectors(method, cfg) else 2


def _reads_vectors(method: str, cfg: RetrievalConfig) -> bool:
    """Whether a generative method's model reads movie vectors (the content input, the dense head)."""
    return method not in ("semantic_id_tokens", "joint") and (cfg.content_input or cfg.dense_weight > 0)


def _run_learned(jobs: list[Job], shared: list[_Shared]) -> dict[Job, tuple[np.ndarray, dict]]:
    """Every (fold, seed, method) job, in worker processes when there are several, in this one otherwise."""
    cfg = shared[0].cfg
    workers = _pool_size(cfg, len(jobs))
    if workers == 1:
        return {job: _learned_job(*job, shared=shared) for job in jobs}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (cfg.threads or torch.get_num_threads()) // workers)
    log.info("%d jobs on %d worker processes of %d thread(s)", len(jobs), workers, threads)
    # Longest first, so that the workers finish together instead of one running the last long job alone.
    longest_first = sorted(jobs, key=lambda job: _cost_rank(job[2], cfg))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(shared, threads, logs.current_level())) as pool:
        futures = {job: pool.submit(_learned_job, *job) for job in longest_first}
        return {job: f.result() for job, f in futures.items()}


def _check_rows(n: int, **arrays: np.ndarray | None) -> None:
    """Each given array has one row per movie of the split."""
    for name, a in arrays.items():
        if a is not None and len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows for {n} movies")


def run_benchmark(splits: Split | list[Split], codes: np.ndarray, cfg: RetrievalConfig,
                  vectors: np.ndarray | None = None, compared: dict[str, np.ndarray] | None = None,
                  available: np.ndarray | None = None, item_vectors: np.ndarray | None = None,
                  item_years: np.ndarray | None = None, joint: tuple[dict, dict] | None = None) -> dict:
    """Train and evaluate every method of ``cfg.methods`` for every seed on the test events of every fold.

    The learned (fold, seed, method) jobs are independent and seeded: they run in parallel worker processes
    (``retrieval.workers``) and give the same lists in any order.

    Args:
        splits: the split, or one per fold (``sequences.folds_of``), over the same items: item ``i`` is
            ``movie_ids[i]``.
        codes: (N, L) the Semantic ID of each item, rows distinct.
        cfg: the settings.
        vectors: (N, D) unit-norm content embeddings of the items (needed by ``content_knn``).
        compared: ``{"semantic_id@name": (N, L') codes}``: other SIDs of the same items, each run as a
            method trained exactly like ``semantic_id``.
        available: (N,) the first second at which each item may be recommended (``sequences.availability``);
            None: every item at every event.
        item_vectors: (N, D) what ``semantic_id``'s model reads of each item (default: ``vectors``).
        item_years: (N,) release years (NaN: unknown), for the dense head's age bias; None: no age bias.
        joint: (weights, shape) of the recommender a joint run trained with its tokenizer (method ``joint``).

    Returns:
        ``{method: {"ranks": (S, E) int64 target ranks of the folds' events in order (S = 1 for seed-free
        methods), "runs": [per-run facts, each with its seed and fold]}}``.
    """
    logs.adopt("lightning")  # Lightning's own console handler would print its lines twice
    splits = [splits] if isinstance(splits, Split) else list(splits)
    item_vectors = vectors if item_vectors is None else item_vectors
    _check_rows(len(splits[0].movie_ids), codes=codes, item_vectors=item_vectors, item_years=item_years)
    if "content_knn" in cfg.methods and (vectors is None or len(vectors) != len(splits[0].movie_ids)):
        raise ValueError("content_knn needs one content vector per movie of the split")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    shared = [_shared(split, {"semantic_id": codes, **(compared or {})}, cfg, available, item_vectors, item_years,
                      vectors, joint) for split in splits]
    for f, (split, sh) in enumerate(zip(splits, shared)):
        log.info("fold %d: %d users, %d movies, %d training windows of %d movies; %d validation and %d test events",
                 f, len(split.users), len(split.movie_ids), len(sh.windows), cfg.max_history + 1, len(split.valid),
                 len(split.test))
    methods = list(cfg.methods) + list(compared or {})
    fixed = {"most_popular", "content_knn"}
    learned = _run_learned([(f, seed, mt) for f in range(len(splits)) for seed in cfg.seeds for mt in methods
                            if mt not in fixed], shared)
    results: dict[str, dict] = {}
    for method in methods:
        seeds = cfg.seeds[:1] if method in fixed else cfg.seeds  # no randomness: one run serves every seed
        ranks, runs = [], []
        for seed in seeds:
            per_fold = []
            for f, (split, sh) in enumerate(zip(splits, shared)):
                ranked, info = (_fixed_job(method, f, split, sh, vectors) if method in fixed
                                else learned[(f, seed, method)])
                per_fold.append(target_ranks(ranked, split.test.target))
                runs.append(info)
                _log_run(method, per_fold[-1], info)
            ranks.append(np.concatenate(per_fold))
        results[method] = {"ranks": np.stack(ranks), "runs": runs}
    return results


def _log_run(method: str, ranks: np.ndarray, info: dict) -> None:
    facts = {k: v for k, v in info.items()
             if k not in ("seed", "fold", "valid_curve", "gate") and not k.startswith("valid_")}
    log.info("fold %d seed %d %-12s recall@10 %.4f (%s)", info["fold"], info["seed"], method,
             float(((ranks >= 0) & (ranks < 10)).mean()), ", ".join(f"{k} {v}" for k, v in facts.items()))
