"""Transformer encoder and decoder from scratch (modules/transformer.py, encoders.py, decoders.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_incrementally, make_model, random_ids
from torch import nn

from textvae.config import EvalConfig, TextVAEError, load_recipe
from textvae.data import TextDataset
from textvae.evaluation import evaluate
from textvae.metrics import iw_log_weights
from textvae.model import TextVAE
from textvae.training import fit

TRANSFORMER = dict(encoder="transformer", decoder="transformer", enc_hidden_dim=16, dec_hidden_dim=16, enc_layers=1,
                   dec_layers=2, num_heads=2, ffn_dim=32, dropout=0.0, posterior_bias=True, output_bias=True)
INJECTIONS = ["prefix", "embedding", "memory"]


def transformer(seed: int = 0, injection: str = "memory", **overrides) -> TextVAE:
    """A tiny Transformer VAE in eval mode whose latent map is large, so that z visibly matters."""
    model = make_model(seed, **{**TRANSFORMER, "latent_injection": injection, **overrides})
    if model.decoder.latent is not None:
        nn.init.normal_(model.decoder.latent.weight, std=1.0)
    return model


@pytest.fixture
def batch():
    """Three sequences of 3, 10 and 6 tokens: the short ones are padded to T = 12."""
    return TextDataset(random_ids([3, 10, 6], seed=11)).collate([0, 1, 2])


@pytest.mark.parametrize("injection", INJECTIONS)
def test_every_injection_conditions_the_decoder_on_z(batch, injection):
    model = transformer(injection=injection)
    z1, z2 = torch.zeros(3, 4), torch.full((3, 4), 1.0)
    with torch.no_grad():
        a, b, c = (model.decode(batch.input_ids, z) for z in (z1, z1.clone(), z2))
    assert a.shape == (3, 12, 30)  # the prefix position produces no logit
    assert torch.equal(a, b)
    assert (a - c).abs().amax(dim=(0, 2)).min() > 1e-3  # z changes the logits at every position, the first included


@pytest.mark.parametrize(("injection", "latent_dim", "positions"), [
    ("prefix", 4, "learned"), ("embedding", 4, "sinusoidal"), ("memory", 4, "learned"), ("memory", 0, "sinusoidal")])
def test_future_tokens_do_not_change_past_logits(batch, injection, latent_dim, positions):
    model = transformer(injection=injection, latent_dim=latent_dim, positions=positions)
    z = torch.randn(3, latent_dim) if latent_dim else None
    changed = batch.input_ids.clone()
    changed[:, 6:] = torch.randint(4, 30, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = model.decode(batch.input_ids, z), model.decode(changed, z)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert (before[:, 6:] - after[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize(("injection", "latent_dim", "positions"), [
    ("prefix", 4, "learned"), ("prefix", 4, "sinusoidal"), ("embedding", 4, "learned"), ("memory", 4, "learned"),
    ("memory", 4, "sinusoidal"), ("memory", 0, "learned")])
def test_kv_cache_gives_the_logits_of_one_full_pass(batch, injection, latent_dim, positions):
    model = transformer(injection=injection, latent_dim=latent_dim, positions=positions)
    z = torch.randn(3, latent_dim) if latent_dim else None
    ids = batch.input_ids
    with torch.no_grad():
        full = model.decode(ids, z)
        stepwise = decode_incrementally(model.decoder, ids, z, prompt=4)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)
    # reorder_state selects rows of the cache (beam search): row 2's continuation, alone
    with torch.no_grad():
        _, state = model.decoder(ids[:, :4], z, return_state=True)
        picked = model.decoder.reorder_state(state, torch.tensor([2]))
        nxt = model.decoder(ids[2:, 4:5], None if z is None else z[2:], state=picked)
    torch.testing.assert_close(nxt[0, 0], full[2, 4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_padding_changes_neither_encoder_nor_reconstruction(batch, pooling):
    model = transformer(pooling=pooling, init_range=0.5, encoder_init="default")
    z = torch.randn(3, 4)
    with torch.no_grad():
        q = model.encode(batch.input_ids, batch.attention_mask).base_dist
        rec = model.reconstruction_nll(batch.input_ids, z)
        for i, n in enumerate(batch.lengths.tolist()):
            ids, mask = batch.input_ids[i : i + 1, :n], batch.attention_mask[i : i + 1, :n]
            alone = model.encode(ids, mask).base_dist
            torch.testing.assert_close(q.loc[i], alone.loc[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q.scale[i], alone.scale[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(rec[i], model.reconstruction_nll(ids, z[i : i + 1])[0], atol=1e-4, rtol=1e-5)
    assert q.loc.std(0).max() > 1e-3  # the sequences do get different posteriors


def test_transformer_vae_loss_iw_nll_and_lm(tiny_dataset):
    model = transformer(encoder_init="default")
    b = tiny_dataset.collate([0, 1, 2, 3])
    model.train()
    out = model(b.input_ids, b.attention_mask)
    (out.rec + out.kl).mean().backward()
    assert out.rec.shape == out.kl.shape == (4,) and torch.isfinite(out.rec).all()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("encoder.", "decoder.latent")))
    model.eval()
    with torch.no_grad():
        log_w = iw_log_weights(model, model.encode(b.input_ids, b.attention_mask), b.input_ids, k=6, chunk=4)
    assert log_w.shape == (6, 4) and torch.isfinite(log_w).all()
    lm = transformer(latent_dim=0)
    assert lm.encoder is None
    one = evaluate(lm, tiny_dataset, EvalConfig(batch_size=1), progress=False)
    padded = evaluate(lm, tiny_dataset, EvalConfig(batch_size=5), progress=False)
    assert one.nll == pytest.approx(padded.nll, rel=1e-5) and one.kl == 0


def test_transformers_keep_their_own_initialisation_and_lstm_keeps_he_et_al():
    model = transformer(init_range=0.01)
    ln = model.decoder.stack.blocks[0].ln_attn
    assert torch.equal(ln.weight, torch.ones(16))  # not U(±0.01): a LayerNorm gain must start at 1
    assert 0.01 < model.decoder.stack.blocks[0].attn.qkv.weight.std() < 0.04  # GPT-2's N(0, 0.02)
    assert model.posterior.linear.weight.abs().max() <= 0.01  # the posterior head follows encoder_init
    lstm = make_model(init_range=0.01)
    assert lstm.decoder.lstm.weight_hh_l0.abs().max() <= 0.01


def test_save_load_round_trip_and_position_limit(tmp_path, batch):
    model = transformer(injection="prefix", positions="learned", max_positions=12)
    model.save_pretrained(tmp_path / "m")
    loaded = TextVAE.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    z = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(model.decode(batch.input_ids, z), loaded.decode(batch.input_ids, z))
    with pytest.raises(TextVAEError, match="model.max_positions"):
        model.decode(torch.ones(1, 13, dtype=torch.long), torch.zeros(1, 4))


@pytest.mark.parametrize("method", ["critic-self", "critic-neural", "critic-hybrid", "lm"])
def test_fit_with_transformers_and_every_critic(tmp_path, method):
    cfg = load_recipe("debug", [f"method={method}", "model.preset=transformer-tiny", "train.max_steps=3",
                                "eval.iw_samples=2"])
    run = fit(cfg, tmp_path / "run", progress=False)
    model = TextVAE.from_pretrained(run / "model")
    assert model.config.encoder == "transformer" or method == "lm"
    assert (run / "eval_test.json").is_file()
