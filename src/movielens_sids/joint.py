"""Joint training of the tokenizer with a generative recommender, so that the codes learn what the recommender needs.

After ETEGRec (Liu et al., SIGIR 2025). The tokenizer starts trained (its own recipe, ``stages/train.py``); a
token-only ``GenerativeRetriever`` then learns to write its codes (``warm_epochs``), and each of ``cycles``
cycles alternates:

1. one **tokenizer epoch**, the recommender frozen: the tokenizer's own loss (reconstruction, codebook,
   commitment and, with co-watched movies, the co-watch term) on the batch's target movies, plus the two
   alignment losses (``model/alignment.py``); then every movie's codes are computed again and the recommender
   reads them;
2. ``rec_epochs`` **recommender epochs**, the tokenizer frozen: the recommender's token loss plus the same
   alignment losses, which now train the recommender's two projections and its state.

The alignment losses read each training window's last position: its state (the history) against its target
movie. The data are the training windows of the benchmark's split only; there is no validation pass (no event
after the split's training cut may shape the IDs), so the schedule is fixed. Codes may collide during
training: the losses do not need distinct SIDs, and ``assign`` makes the final ones unique as for any run.

Shapes: B windows, M history length, N movies, D input dim, H latent dim, L levels, K codebook size, d model width.

May import: lightning, torch, numpy; of the package, model (rqvae, alignment), retrieval.generative,
retrieval.lightning_modules and settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .model.alignment import code_logits, info_nce, symmetric_kl
from .model.rqvae import RQVAE
from .retrieval.generative import GenerativeRetriever, next_item_pairs
from .settings import JointConfig

RECOMMENDER = "recommender.safetensors"
"""The recommender trained with the tokenizer, in the model folder (``retrieval`` scores it as ``joint``)."""

log = logging.getLogger(__name__)


@torch.no_grad()
def all_codes(tokenizer: RQVAE, x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """(N, D) inputs -> (N, L) int64 the tokenizer's codes."""
    return torch.cat([tokenizer.quantize(tokenizer.encode(chunk)) for chunk in x.split(batch_size)])


class JointModule(L.LightningModule):
    """Alternates tokenizer and recommender epochs (see the module's docstring); manual optimisation, two AdamW."""

    def __init__(self, tokenizer: RQVAE, recommender: GenerativeRetriever, data: torch.Tensor, cfg: JointConfig,
                 positives: torch.Tensor | None = None, collab_weight: float = 0.0, collab_temperature: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.tok, self.rec, self.cfg = tokenizer, recommender, cfg
        d, h = recommender.tok.embedding_dim, tokenizer.config.latent_dim
        self.seq_proj = nn.Linear(d, h)  # sequence-item: a history's state -> the tokenizer's latent space
        self.pref_proj = nn.Linear(d, data.shape[1])  # preference-semantic: state -> the input space
        self.register_buffer("data", data, persistent=False)  # (N, D)
        self.register_buffer("positives", positives if positives is not None
                             else torch.full((len(data), 1), -1, dtype=torch.long), persistent=False)  # (N, P)
        self.collab_weight, self.collab_temperature = collab_weight, collab_temperature
        self.pick_rng = torch.Generator().manual_seed(seed + 5)
        self.history: list[dict] = []
        self._sums: dict[str, list[float]] = {}

    def phase(self, epoch: int) -> str:
        """``warm``, ``tokenizer`` or ``recommender``: what epoch ``epoch`` trains."""
        if epoch < self.cfg.warm_epochs:
            return "warm"
        return "tokenizer" if (epoch - self.cfg.warm_epochs) % (1 + self.cfg.rec_epochs) == 0 else "recommender"

    def on_train_epoch_start(self) -> None:
        tokenizer_epoch = self.phase(self.current_epoch) == "tokenizer"
        for p in self.tok.parameters():
            p.requires_grad_(tokenizer_epoch)
        for p in [*self.rec.parameters(), *self.seq_proj.parameters(), *self.pref_proj.parameters()]:
            p.requires_grad_(not tokenizer_epoch)
        self.tok.train(tokenizer_epoch)
        self.rec.train(not tokenizer_epoch)
        self._sums = {}

    def alignment(self, state: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(B, d) the windows' last states and (B,) their targets (the first window of each target kept) ->
        (sequence-item loss, preference-semantic loss, the tokenizer's output for the targets)."""
        _, first = np.unique(target.cpu().numpy(), return_index=True)
        keep = torch.from_numpy(first).to(target.device)
        state, target = state[keep], target[keep]
        out = self.tok(self.data[target])
        item = symmetric_kl(code_logits(self.tok.quantizer, self.seq_proj(state), self.cfg.code_temperature),
                            code_logits(self.tok.quantizer, out.latent, self.cfg.code_temperature))
        pref = info_nce(self.pref_proj(state), out.reconstruction, self.cfg.temperature)
        return item, pref, out

    def cowatch(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor | None:
        """The tokenizer's co-watch term on the (B,) target movies' (B, H) latents (``train.collab_weight``)."""
        pos = self.positives[target]  # (B, P)
        n_pos = (pos >= 0).sum(1)
        has = n_pos > 0
        if self.collab_weight <= 0 or int(has.sum()) < 2:
            return None
        draw = (torch.rand(int(has.sum()), generator=self.pick_rng) * n_pos[has].cpu()).long().to(target.device)
        partner = pos[has].gather(1, draw[:, None]).squeeze(1)
        return info_nce(latent[has], self.tok.encode(self.data[partner]), self.collab_temperature)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        phase = self.phase(self.current_epoch)
        inp, tgt, keep = next_item_pairs(batch[0], self.rec.max_history)  # (B, M) each
        hidden = self.rec._hidden(inp)  # (B, M, d)
        parts = {}
        if phase != "tokenizer":
            parts["rec"] = self.rec.target_loss(hidden[keep], tgt[keep])
        last = keep[:, -1]
        if phase != "warm" and int(last.sum()) >= 2:
            parts["item"], parts["pref"], out = self.alignment(hidden[last, -1], tgt[last, -1])
            if phase == "tokenizer":
                parts["tokenizer"] = out.losses.total
                cw = self.cowatch(tgt[last, -1].unique(sorted=True), out.latent)
                if cw is not None:
                    parts["cowatch"] = self.collab_weight * cw
        if not parts:
            return
        loss = (sum(v for k, v in parts.items() if k not in ("item", "pref"))
                + self.cfg.item_weight * parts.get("item", 0.0) + self.cfg.preference_weight * parts.get("pref", 0.0))
        opt = self.optimizers()[0 if phase == "tokenizer" else 1]
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        for k, v in parts.items():
            self._sums.setdefault(k, []).append(float(v.detach()))

    def on_train_epoch_end(self) -> None:
        phase = self.phase(self.current_epoch)
        row = {"epoch": self.current_epoch + 1, "phase": phase, **{k: round(float(np.mean(v)), 5)
                                                                   for k, v in self._sums.items()}}
        if phase == "tokenizer":
            self.tok.eval()
            codes = all_codes(self.tok, self.data)  # (N, L)
            before = self.rec.item_tokens - self.rec.offsets[:-1]
            row["codes_changed"] = round(float((codes != before).any(1).float().mean()), 5)
            self.rec.set_item_codes(codes)
        self.history.append(row)
        log.info("joint epoch %s", row)

    def configure_optimizers(self):
        rec = [*self.rec.parameters(), *self.seq_proj.parameters(), *self.pref_proj.parameters()]
        return [torch.optim.AdamW(self.tok.parameters(), lr=self.cfg.tokenizer_lr, weight_decay=0.0),
                torch.optim.AdamW(rec, lr=self.cfg.rec_lr, weight_decay=0.01)]


def fit_joint(tokenizer: RQVAE, x: np.ndarray, windows: np.ndarray, cfg: JointConfig, *, seed: int,
              positives: np.ndarray | None = None, collab_weight: float = 0.0, collab_temperature: float = 0.1,
              accelerator: str = "cpu") -> tuple[RQVAE, GenerativeRetriever, dict]:
    """Train ``tokenizer`` (in place) jointly with a new recommender on (n, M+1) training ``windows`` of rows of
    (N, D) ``x``; returns it (on CPU, eval mode), the recommender and a summary (each epoch's phase and mean
    losses, the share of movies whose codes each tokenizer epoch changed, and against the start)."""
    L.seed_everything(seed + 3, verbose=False)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    start = all_codes(tokenizer.eval(), data)  # (N, L)
    levels, k = start.shape[1], tokenizer.config.codebook_size
    rec = GenerativeRetriever(start.numpy(), level_sizes=[k] * levels, shared_codes=True,
                              max_history=cfg.max_history, d_model=cfg.d_model, n_layers=cfg.n_layers,
                              n_heads=cfg.n_heads, dropout=cfg.dropout)
    module = JointModule(tokenizer, rec, data, cfg, None if positives is None else torch.from_numpy(positives),
                         collab_weight, collab_temperature, seed)
    loader = DataLoader(TensorDataset(torch.from_numpy(windows)), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    epochs = cfg.warm_epochs + cfg.cycles * (1 + cfg.rec_epochs)
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    if epochs and len(windows):
        trainer.fit(module.train(), loader)
    tok = tokenizer.cpu().eval()
    for p in tok.parameters():
        p.requires_grad_(True)
    end = all_codes(tok, data.cpu())
    summary = {"epochs": module.history, "windows": int(len(windows)), "seconds": round(time.perf_counter() - t0, 1),
               "codes_changed": round(float((end != start).any(1).float().mean()), 5)}
    return tok, rec.cpu().eval(), summary


def save_recommender(rec: GenerativeRetriever, cfg: JointConfig, path: Path) -> None:
    """Write the recommender's weights and shape (safetensors, the shape in its metadata)."""
    import safetensors.torch

    shape = {"levels": rec.levels, "level_sizes": rec.trie_sizes, "max_history": cfg.max_history,
             "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}
    tensors = {k: v.detach().cpu().contiguous() for k, v in rec.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path), metadata={"shape": json.dumps(shape)})


def load_recommender(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``save_recommender``'s (weights, shape)."""
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["shape"])
