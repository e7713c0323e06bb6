"""The tokenizers' invariants: shapes, gradients, round trips, initialisation, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from movielens_sids.errors import SidsError
from movielens_sids.model import RQVAE, RQKMeans, RQKMeansConfig, RQVAEConfig, load_tokenizer, save_pretrained
from movielens_sids.model.kmeans import nearest_code_screened
from movielens_sids.model.rqvae import (
    ResidualQuantizer,
    beam_search,
    kmeans,
    nearest_code,
    rotate_to,
    sinkhorn_bias,
)

D = 16


def tiny(**kw) -> RQVAEConfig:
    base = dict(input_dim=D, encoder="mlp", hidden_dims=[32], latent_dim=8, levels=3, codebook_size=8, kmeans_iters=10)
    if kw.get("encoder", "mlp") != "mlp":
        base["latent_dim"] = None  # H = D
    return RQVAEConfig(**{**base, **kw})


def clustered(n: int = 400, d: int = D, centers: int = 12, seed: int = 0) -> torch.Tensor:
    """Points around a few well-separated centres, so k-means has something to find."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g) * 3
    x = c[torch.randint(centers, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return x


def init_model(cfg: RQVAEConfig, x: torch.Tensor, seed: int = 0) -> RQVAE:
    torch.manual_seed(seed)
    model = RQVAE(cfg)
    model.init_codebooks(x, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("encoder", ["mlp", "residual", "identity"])
def test_shapes(encoder):
    cfg = tiny(encoder=encoder)
    model = init_model(cfg, clustered())
    x = clustered(n=5, seed=1)
    out = model(x)
    h = cfg.latent_dim
    assert h == (8 if encoder == "mlp" else D)
    assert model.encode(x).shape == (5, h)
    assert model.codebooks.shape == (3, 8, h)
    assert out.codes.shape == (5, 3) and out.codes.dtype == torch.int64
    assert out.reconstruction.shape == (5, D)
    assert out.residuals.shape == (3, 5, h)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 8
    assert torch.isfinite(out.losses.total)


def test_straight_through_gradient_is_exactly_one():
    q = ResidualQuantizer(levels=3, codebook_size=8, dim=4, gradient="ste")
    z = torch.randn(6, 4, requires_grad=True)
    out = q(z)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    # The forward value is the codes' sum, not z.
    assert torch.equal(out.quantized.detach(), q.lookup(out.codes))


def test_rotation_trick_forward_is_the_code_and_gradient_is_a_scaled_rotation():
    r = torch.randn(5, 6, requires_grad=True)
    e = torch.randn(5, 6)
    out = rotate_to(r, e)
    assert torch.allclose(out, e, atol=1e-5)
    # The Jacobian of row i is (|e|/|r|) R with R orthogonal: a unit gradient keeps norm |e|/|r|.
    g = torch.zeros(5, 6)
    g[:, 0] = 1.0
    out.backward(g)
    expected = e.norm(dim=1) / r.detach().norm(dim=1)
    assert torch.allclose(r.grad.norm(dim=1), expected, rtol=1e-4)
    assert not torch.allclose(r.grad, g)  # not a plain copy, as straight-through would give


@pytest.mark.parametrize("gradient", ["rotation", "ste"])
@pytest.mark.parametrize("encoder", ["mlp", "residual", "identity"])
def test_encode_decode_round_trip(gradient, encoder):
    model = init_model(tiny(gradient=gradient, encoder=encoder), clustered()).eval()
    x = clustered(n=50, seed=2)
    out = model(x)
    codes = model.quantize(model.encode(x))
    assert torch.equal(codes, out.codes)
    assert torch.equal(model.decode_codes(codes), out.reconstruction)


def test_nearest_code_matches_brute_force():
    x, cb = torch.randn(100, 5), torch.randn(7, 5)
    assert torch.equal(nearest_code(x, cb), torch.cdist(x, cb).argmin(1))


@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_screened_nearest_code_is_exact(scale):
    """The bf16-screened search returns the fp32 search's answer, near-ties and biases included: codes come
    in clusters of four 1e-3 apart (far below bf16's resolution) and points lie close to them."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(512, 48, generator=g)
    cb = (base.repeat_interleave(4, 0) + 1e-3 * torch.randn(2048, 48, generator=g)) * scale  # (K, H)
    x = (base[torch.randint(0, 512, (3000,), generator=g)] + 0.05 * torch.randn(3000, 48, generator=g)) * scale
    x = torch.cat([x, cb[:5].clone()])  # points exactly on codes
    for bias in (None, 0.01 * scale ** 2 * torch.randn(2048, generator=g)):
        const = (cb * cb).sum(1) + (0 if bias is None else bias)
        d = (const[None].double() - 2 * x.double() @ cb.double().T)  # (N, K) exact
        got = nearest_code_screened(x, cb, const, rows=100)
        # Where the two best differ by more than fp32 can resolve, the answer is the true nearest; elsewhere
        # (a tie in fp32) it is one of the tied.
        two = d.topk(2, dim=1, largest=False).values  # (N, 2)
        tol = 1e-6 * ((x * x).sum(1).double() + const.abs().max())  # (N,) well above fp32's rounding
        clear = (two[:, 1] - two[:, 0]) > tol
        assert torch.equal(got[clear], d.argmin(1)[clear])
        assert ((d.gather(1, got[:, None])[:, 0] - two[:, 0]) <= tol).all()
        assert clear.float().mean() > 0.7  # most rows have one clear nearest: the check has teeth


def test_screened_nearest_code_breaks_ties_low_and_handles_empty_input():
    cb = torch.randn(6, 8).repeat(2, 1)  # codes i and i + 6 are the same
    x = cb[[7, 1, 11]] + 0.0
    assert nearest_code_screened(x, cb, (cb * cb).sum(1)).tolist() == [1, 1, 5]
    assert nearest_code(x, cb).tolist() == [1, 1, 5]
    assert nearest_code_screened(x[:0], cb, (cb * cb).sum(1)).shape == (0,)
    assert nearest_code(x[:0], cb).shape == (0,)


def test_kmeans_uses_every_centroid_and_is_seeded():
    x = clustered()
    a = kmeans(x, 12, iters=10, generator=torch.Generator().manual_seed(3))
    b = kmeans(x, 12, iters=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len(torch.unique(nearest_code(x, a))) == 12


def test_kmeans_init_lowers_the_initial_loss():
    x = clustered(n=600)
    cfg = tiny(levels=2, codebook_size=12)
    torch.manual_seed(0)
    random_init = RQVAE(cfg)
    kmeans_init = init_model(cfg, x)
    with torch.no_grad():
        loss_random = random_init(x).losses
        loss_kmeans = kmeans_init(x).losses
    assert loss_kmeans.total < loss_random.total
    # Quantization error in the (same) latent: the codes sit on the data.
    assert loss_kmeans.commit < 0.5 * loss_random.commit


def test_kmeans_init_uses_every_code():
    x = clustered(n=600)
    model = init_model(tiny(levels=2, codebook_size=12, encoder="identity"), x)
    codes = model.quantize(model.encode(x))
    assert len(torch.unique(codes[:, 0])) == 12


def test_same_seed_gives_bit_identical_codes_after_training():
    x = clustered(n=300)

    def train(seed: int) -> torch.Tensor:
        model = init_model(tiny(), x, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(5):
            out = model(x[torch.randperm(len(x), generator=g)[:64]])
            opt.zero_grad()
            out.losses.total.backward()
            opt.step()
            model.quantizer.reseed_dead_codes(out.codes, out.residuals, generator=g)
        with torch.no_grad():
            return model.quantize(model.encode(x))

    assert torch.equal(train(0), train(0))
    assert not torch.equal(train(0), train(1))


def test_the_gradient_is_bit_identical_from_call_to_call():
    # Indexing a codebook and back-propagating through it adds the rows in an order that varies with the
    # threads (index_put with accumulate on CPUs): ``run`` and a separate ``train`` then trained different
    # models from the same inputs. The lookups go through ``F.embedding``, whose gradient adds in row order.
    x = clustered(n=1024, d=96, centers=24)
    model = init_model(tiny(input_dim=96, latent_dim=96, codebook_size=16), x)
    grads = []
    for _ in range(8):
        model.zero_grad()
        model(x).losses.total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_dead_code_is_reseeded_from_a_batch_residual():
    q = ResidualQuantizer(levels=2, codebook_size=4, dim=3, dead_code_window=2)
    before = q.codebooks.detach().clone()
    codes = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 0]])  # code 3 of level 0 is never used
    residuals = torch.randn(2, 4, 3)
    assert q.reseed_dead_codes(codes, residuals) == 0  # idle for 1 step: not yet dead
    assert q.reseed_dead_codes(codes, residuals) == 1  # idle for 2 steps: re-seeded
    after = q.codebooks.detach()
    assert torch.equal(after[0, :3], before[0, :3]) and torch.equal(after[1], before[1])
    assert any(torch.equal(after[0, 3], r) for r in residuals[0])
    assert int(q.idle_steps[0, 3]) == 0


def test_save_load_gives_identical_codes(tmp_path):
    model = init_model(tiny(), clustered()).eval()
    x = clustered(n=40, seed=5)
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["tokenizer"] == "rqvae" and meta["config"]["levels"] == 3
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, RQVAE) and not loaded.training
    assert torch.equal(loaded.quantize(loaded.encode(x)), model.quantize(model.encode(x)))
    assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)
    assert isinstance(load_tokenizer(tmp_path, expect="rqvae"), RQVAE)
    with pytest.raises(SidsError, match="not rqkmeans"):
        load_tokenizer(tmp_path, expect="rqkmeans")


def test_from_pretrained_refuses_a_missing_or_mismatched_folder(tmp_path):
    model = init_model(tiny(), clustered())
    with pytest.raises(SidsError, match="missing config.json"):
        load_tokenizer(tmp_path / "nowhere")
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["codebook_size"] = 16
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(SidsError, match="does not match config.json") as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SidsError, match="safetensors"):
        load_tokenizer(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(SidsError, match="missing model.safetensors"):
        load_tokenizer(tmp_path)


def test_config_checks_name_the_setting():
    with pytest.raises(ValueError, match="model.levels"):
        RQVAEConfig(levels=0)
    with pytest.raises(ValueError, match="model.encoder"):
        RQVAEConfig(encoder="cnn")


def test_rqkmeans_round_trip_and_save_load(tmp_path):
    x = clustered(n=500).numpy()
    tok = RQKMeans.fit(x, RQKMeansConfig(input_dim=D, levels=2, codebook_size=12), seed=0).eval()
    xt = torch.from_numpy(x)
    out = tok(xt)
    codes = tok.quantize(tok.encode(xt))
    assert torch.equal(tok.encode(xt), xt)
    assert torch.equal(codes, out.codes) and codes.shape == (500, 2)
    assert torch.equal(tok.decode_codes(codes), out.reconstruction)
    assert tok.config.latent_dim == D and tok.codebooks.shape == (2, 12, D)
    assert len(torch.unique(codes[:, 0])) == 12  # clustered data: every centroid in use
    # residual k-means explains most of the variance of clustered data
    err = ((xt - out.reconstruction) ** 2).sum() / ((xt - xt.mean(0)) ** 2).sum()
    assert err < 0.1
    save_pretrained(tok, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, RQKMeans)
    assert torch.equal(loaded.quantize(xt), codes)
    again = RQKMeans.fit(x, RQKMeansConfig(input_dim=D, levels=2, codebook_size=12), seed=0)
    assert np.array_equal(again.quantize(xt).numpy(), codes.numpy())


def test_residual_encoder_starts_as_the_identity():
    model = RQVAE(tiny(encoder="residual"))
    x = clustered(n=10)
    assert torch.equal(model.encode(x), x)
    assert model.config.latent_dim == D  # the latent is the embedding space
    codes = model.quantize(x)
    assert torch.equal(model.decode_codes(codes), model.quantizer.lookup(codes))


def test_sinkhorn_biases_balance_code_usage():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(900, 4, generator=g) * 0.3, torch.randn(100, 4, generator=g) * 0.3 + 3])  # 9:1
    codes = kmeans(x, 8, iters=10, generator=g)
    dist = torch.cdist(x, codes).square()
    plain = torch.bincount(dist.argmin(1), minlength=8)
    bias = sinkhorn_bias(dist, eps=0.02 * float(dist.min(1).values.mean()))
    balanced = torch.bincount((dist + bias).argmin(1), minlength=8)
    assert abs(float(bias.mean())) < 1e-5
    assert balanced.max() - balanced.min() < plain.max() - plain.min()
    assert balanced.min() >= 0.5 * len(x) / 8 and balanced.max() <= 1.5 * len(x) / 8


@pytest.mark.parametrize("warm", [False, True])
def test_sinkhorn_scaling_gives_the_softmax_iterations_biases_even_far_from_its_kernel(warm):
    """The kernel form against the plain log-domain iteration, at a temperature so low that the biases spread
    over more than 30 eps (the kernel is made again) and a kernel without the shift would underflow."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(500, 3, generator=g) * 0.2, torch.randn(60, 3, generator=g) * 0.2 + 2.5])
    dist = torch.cdist(x, kmeans(x, 12, iters=10, generator=g)).square()
    eps = 0.002 * float(dist.min(1).values.mean())
    init = torch.linspace(-1, 1, 12) * 100 * eps if warm else None
    b = dist.new_zeros(12) if init is None else init.clone()
    for _ in range(60):
        b = b + eps * torch.log(torch.softmax(-(dist + b) / eps, dim=1).mean(0).clamp_min(1e-12) * 12)
    got = sinkhorn_bias(dist, eps, iters=60, init=init)
    assert torch.isfinite(got).all()
    assert float((got - (b - b.mean())).abs().max()) < 1e-3 * float(dist.mean())


def test_balance_raises_code_usage_perplexity_and_is_kept_by_save_load(tmp_path):
    from movielens_sids.metrics import perplexity
    from movielens_sids.model import save_pretrained

    x = clustered(600)
    plain = init_model(tiny(encoder="identity", levels=2), x)
    bal = init_model(tiny(encoder="identity", levels=2, balance=1.0), x)
    assert torch.count_nonzero(plain.code_bias) == 0 and torch.count_nonzero(bal.code_bias) > 0
    with torch.no_grad():
        p_plain = perplexity(plain.quantize(plain.encode(x)).numpy(), 8)
        c_bal = bal.quantize(bal.encode(x))
    assert perplexity(c_bal.numpy(), 8)[0] > p_plain[0]
    save_pretrained(bal, tmp_path / "m")
    back = load_tokenizer(tmp_path / "m")
    assert torch.equal(back.code_bias, bal.code_bias) and torch.equal(back.quantize(back.encode(x)), c_bal)


def test_a_model_folder_written_before_code_biases_loads_with_zero_biases(tmp_path):
    from safetensors.torch import load_file, save_file

    from movielens_sids.model import save_pretrained

    x = clustered(300)
    model = init_model(tiny(), x)
    save_pretrained(model, tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["quantizer.code_bias"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    back = load_tokenizer(tmp_path / "m")
    assert torch.count_nonzero(back.code_bias) == 0
    assert torch.equal(back.quantize(back.encode(x)), model.quantize(model.encode(x)))


def test_beam_search_never_ends_worse_than_greedy_and_keeps_the_first_code():
    g = torch.Generator().manual_seed(1)
    cbs = torch.randn(3, 16, 6, generator=g)
    z = torch.randn(500, 6, generator=g) * 2
    q = ResidualQuantizer(levels=3, codebook_size=16, dim=6, beam_width=1)
    qb = ResidualQuantizer(levels=3, codebook_size=16, dim=6, beam_width=4)
    with torch.no_grad():
        q.codebooks.copy_(cbs)
        qb.codebooks.copy_(cbs)
    greedy, beam = q.quantize(z), qb.quantize(z)
    err = lambda c: (z - cbs[torch.arange(3), c].sum(1)).square().sum(1)  # noqa: E731
    assert torch.equal(beam[:, 0], greedy[:, 0])  # level 1 is always the nearest code
    assert (err(beam) <= err(greedy) + 1e-5).all() and (err(beam) < err(greedy) - 1e-5).any()
    # exhaustive check on a few rows: the beam finds the best (c2, c3) when it is wide enough
    wide = beam_search(z[:20] - cbs[0][greedy[:20, 0]], cbs[1:], torch.zeros(2, 16), width=16).codes
    for i in range(20):
        r = z[i] - cbs[0][greedy[i, 0]]
        tot = (r[None, None] - cbs[1][:, None] - cbs[2][None]).square().sum(-1)  # (16, 16)
        assert tot.argmin().item() == wide[i, 0].item() * 16 + wide[i, 1].item()


def test_training_step_uses_the_quantizer_rule_with_beam_and_biases():
    x = clustered(300)
    model = init_model(tiny(encoder="identity", balance=0.5, beam_width=3), x)
    out = model(x)
    with torch.no_grad():
        assert torch.equal(out.codes, model.quantize(model.encode(x)))
    out.losses.total.backward()
    assert model.quantizer.codebooks.grad is not None


def test_refining_balanced_levels_fits_their_biases_again():
    """Biases fitted for codes that have since moved let a level crowd onto a few codes; refining with the
    balance fits them again for the moved codes, and usage is uniform again."""
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.2, 3, 16)
    cfg = tiny(encoder="identity", input_dim=16, levels=3, codebook_size=16, beam_width=4, balance=1.0)

    def perplexity(model: RQVAE) -> list[float]:
        with torch.no_grad():
            codes = model.quantize(model.encode(x))  # (N, L)
        p = torch.stack([torch.bincount(c, minlength=16) for c in codes.T]).float() / len(x)  # (L, K)
        return torch.exp(-(p * p.clamp_min(1e-12).log()).sum(1)).tolist()

    stale, refit = init_model(cfg, x), init_model(cfg, x)
    for model in (stale, refit):  # biases that no longer fit: usage crowds onto a few codes
        model.quantizer.code_bias[1:] = 10 * torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    before = perplexity(stale)
    stale.quantizer.refine_codebooks(stale.encode(x), rounds=1)
    refit.quantizer.refine_codebooks(refit.encode(x), rounds=1, balance=1.0)
    assert max(before[1:]) < 8 and max(perplexity(stale)[1:]) < 8  # of 16
    assert min(perplexity(refit)[1:]) > 14


def test_refining_the_deeper_levels_lowers_the_error_and_keeps_level_one():
    x = clustered(800, centers=30)
    base = init_model(tiny(encoder="identity", levels=3, beam_width=3), x)
    refined = init_model(tiny(encoder="identity", levels=3, beam_width=3, refine_rounds=2), x)
    assert torch.equal(base.codebooks[0], refined.codebooks[0])
    with torch.no_grad():
        err = [float((x - m.decode_codes(m.quantize(m.encode(x)))).square().sum(1).mean()) for m in (base, refined)]
    assert err[1] < err[0]
