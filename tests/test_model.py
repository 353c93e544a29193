"""TextVAE (model.py, modules/): padding invariance, the ELBO terms, save → load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, random_ids

from textvae.checkpoint import load_model_dir, save_model_dir
from textvae.config import PRESETS, ModelConfig, TextVAEError, TokenizerConfig
from textvae.data import TextDataset
from textvae.model import TextVAE
from textvae.modules.decoders import word_dropout
from textvae.tokenization import train_tokenizer


def framed(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of one sequence, ``<s> ids </s>``, no padding."""
    batch = TextDataset([ids]).collate([0])
    return batch.input_ids, batch.attention_mask


@pytest.fixture
def padded_batch():
    """Sequences of 3, 10 and 6 tokens in one batch: the short ones carry padding."""
    seqs = random_ids([3, 10, 6], seed=11)
    batch = TextDataset(seqs).collate([0, 1, 2])
    assert batch.input_ids.shape == (3, 12)
    assert (batch.input_ids == 0).sum() > 0  # there is padding to ignore
    return seqs, batch


def test_padding_changes_neither_encoder_nor_reconstruction(informative_model, padded_batch):
    model = informative_model
    seqs, batch = padded_batch
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q_batch = model.encode(batch.input_ids, batch.attention_mask)
        rec_batch = model.reconstruction_nll(batch.input_ids, z)
        for i, seq in enumerate(seqs):
            ids, mask = framed(seq)
            q_alone = model.encode(ids, mask)
            torch.testing.assert_close(q_batch.base_dist.loc[i], q_alone.base_dist.loc[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q_batch.base_dist.scale[i], q_alone.base_dist.scale[0], atol=1e-5, rtol=1e-5)
            rec_alone = model.reconstruction_nll(ids, z[i : i + 1])
            torch.testing.assert_close(rec_batch[i], rec_alone[0], atol=1e-4, rtol=1e-5)
    # the sequences really differ, so equality above is not a coincidence of a constant model
    assert q_batch.base_dist.loc.std(0).max() > 0.05
    assert rec_batch.std() > 0.5


def test_padding_does_not_change_kl_or_lm_loss(informative_model, lm_model, padded_batch):
    seqs, batch = padded_batch
    with torch.no_grad():
        torch.manual_seed(0)
        kl_batch = informative_model(batch.input_ids, batch.attention_mask).kl
        lm_batch = lm_model(batch.input_ids, batch.attention_mask).rec
        for i, seq in enumerate(seqs):
            ids, mask = framed(seq)
            torch.testing.assert_close(kl_batch[i], informative_model(ids, mask).kl[0], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(lm_batch[i], lm_model(ids, mask).rec[0], atol=1e-4, rtol=1e-5)


def test_reconstruction_nll_is_summed_token_cross_entropy(informative_model, padded_batch):
    """−log p(x|z) = Σ over real target positions 1..len-1 of −log softmax(logits)[target]."""
    model = informative_model
    _, batch = padded_batch
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rec = model.reconstruction_nll(batch.input_ids, z)
        logp = F.log_softmax(model.decode(batch.input_ids[:, :-1], z), dim=-1)  # (B, T-1, V)
    for i, n in enumerate(batch.lengths.tolist()):
        targets = batch.input_ids[i, 1:n]
        expected = -logp[i, torch.arange(n - 1), targets].sum()
        torch.testing.assert_close(rec[i], expected, atol=1e-4, rtol=1e-5)


def test_reconstruction_nll_with_sample_dimension(informative_model, padded_batch):
    """z of shape (K, B, D) gives the same as decoding each of the K samples separately."""
    model = informative_model
    _, batch = padded_batch
    z = torch.randn(4, 3, model.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        together = model.reconstruction_nll(batch.input_ids, z)
        apart = torch.stack([model.reconstruction_nll(batch.input_ids, zk) for zk in z])
    assert together.shape == (4, 3)
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=1e-5)
    assert apart.std(0).max() > 0.1  # the samples do matter


def test_kl_equals_closed_form(informative_model, padded_batch):
    _, batch = padded_batch
    torch.manual_seed(0)
    with torch.no_grad():
        out = informative_model(batch.input_ids, batch.attention_mask)
    mu, sigma = out.posterior.base_dist.loc, out.posterior.base_dist.scale
    closed = 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)
    assert out.kl.shape == (3,)
    torch.testing.assert_close(out.kl, closed, atol=1e-5, rtol=1e-5)
    assert closed.min() > 0.1  # a non-trivial posterior, far from N(0, I)


def test_forward_shapes_and_lm_has_no_latent(informative_model, lm_model, padded_batch):
    _, batch = padded_batch
    torch.manual_seed(0)
    out = informative_model(batch.input_ids, batch.attention_mask)
    assert out.rec.shape == out.kl.shape == (3,)
    assert out.z.shape == (3, 4)
    assert out.posterior.batch_shape == (3,) and out.posterior.event_shape == (4,)
    lm = lm_model(batch.input_ids, batch.attention_mask)
    assert lm.z is None and lm.posterior is None
    assert torch.equal(lm.kl, torch.zeros(3))
    assert lm_model.encoder is None
    with pytest.raises(TextVAEError, match="latent_dim 0"):
        lm_model.encode(batch.input_ids, batch.attention_mask)


def test_decoder_conditions_on_z(informative_model, padded_batch):
    """Different z give different logits (z enters the decoder), the same z the same logits."""
    _, batch = padded_batch
    z1 = torch.zeros(3, 4)
    z2 = torch.full((3, 4), 2.0)
    with torch.no_grad():
        a, b, c = (informative_model.decode(batch.input_ids, z) for z in (z1, z1.clone(), z2))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_he_initialisation_ranges():
    model = make_model(init_range=0.01, emb_init_range=0.1)
    for name, p in model.named_parameters():
        bound = 0.1 if "embed" in name else 0.01
        assert p.abs().max() <= bound, name
        assert p.abs().max() > bound / 2, name  # really drawn from the whole range


def test_model_config_from_a_preset_then_fields():
    cfg = ModelConfig.from_preset("lstm-ptb", latent_dim=8, vocab_size=40)
    assert cfg.embed_dim == PRESETS["lstm-ptb"]["embed_dim"] != ModelConfig().embed_dim - 1
    assert cfg.latent_dim == 8  # an explicit field beats the preset
    assert (cfg.vocab_size, cfg.preset) == (40, "lstm-ptb")
    with pytest.raises(TextVAEError, match="model.preset"):
        ModelConfig.from_preset("lstm-nope")
    with pytest.raises(TextVAEError, match=r"bad value for 'model.encoder': 'gru'"):
        ModelConfig.from_preset("lstm-tiny", encoder="gru")
    with pytest.raises(TextVAEError, match=r"bad value for 'model.latent_dim': -2 \(must be >= 0\)"):
        TextVAE(ModelConfig(vocab_size=40, latent_dim=-2))


# --- save → load ---------------------------------------------------------------------------------


def _logits(model: TextVAE, batch) -> torch.Tensor:
    z = torch.randn(batch.input_ids.size(0), model.latent_dim, generator=torch.Generator().manual_seed(5)) \
        if model.latent_dim else None
    with torch.no_grad():
        return model.decode(batch.input_ids, z)


@pytest.mark.parametrize("latent_dim", [4, 0], ids=["vae", "lm"])
def test_save_pretrained_from_pretrained_identical_logits(tmp_path, padded_batch, latent_dim):
    _, batch = padded_batch
    model = make_model(seed=7, latent_dim=latent_dim, init_range=0.5, emb_init_range=0.5)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["latent_dim"] == latent_dim
    loaded = TextVAE.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert torch.equal(_logits(model, batch), _logits(loaded, batch))
    if latent_dim:
        with torch.no_grad():
            q1 = model.encode(batch.input_ids, batch.attention_mask).base_dist
            q2 = loaded.encode(batch.input_ids, batch.attention_mask).base_dist
        assert torch.equal(q1.loc, q2.loc) and torch.equal(q1.scale, q2.scale)
    # a differently seeded model gives different logits: the comparison above can fail
    other = make_model(seed=8, latent_dim=latent_dim, init_range=0.5, emb_init_range=0.5)
    assert not torch.equal(_logits(model, batch), _logits(other, batch))


@pytest.mark.parametrize("latent_dim", [4, 0], ids=["vae", "lm"])
def test_save_model_dir_load_model_dir_identical_logits_and_tokenizer(tmp_path, latent_dim):
    texts = ["the cat sat on the mat .", "a dog ran after the cat ."]
    tokenizer = train_tokenizer(texts, TokenizerConfig(type="word"))
    model = make_model(seed=9, vocab_size=tokenizer.vocab_size, latent_dim=latent_dim,
                       init_range=0.5, emb_init_range=0.5)
    save_model_dir(model, tokenizer, tmp_path / "model")
    save_model_dir(model, tokenizer, tmp_path / "model")  # overwriting an existing directory works
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "model").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary siblings left behind
    loaded, tok2 = load_model_dir(tmp_path / "model")
    batch = TextDataset(tokenizer.encode_batch(texts)).collate([0, 1])
    assert torch.equal(_logits(model, batch), _logits(loaded.eval(), batch))
    assert tok2.encode_batch(texts) == tokenizer.encode_batch(texts)


def test_load_model_dir_rejects_non_model_directory(tmp_path):
    with pytest.raises(TextVAEError, match=str(tmp_path)):
        load_model_dir(tmp_path)


def test_model_args_roundtrip_through_config_json(tmp_path):
    model = make_model(latent_dim=3, dec_dropout_in=0.25)
    model.save_pretrained(tmp_path)
    assert ModelConfig(**json.loads((tmp_path / "config.json").read_text())) == model.config


# --- BN-VAE (Zhu et al. 2020) ---------------------------------------------------------------------


def test_bn_keeps_the_batch_mean_of_mu_at_the_shift_and_its_variance_at_gamma_squared(tmp_path):
    gamma = 0.7
    model = make_model(seed=3, bn_gamma=gamma, init_range=2.0, emb_init_range=2.0, posterior_bias=True).train()  # Var μ ≫ eps
    bn = model.posterior.mu_bn
    assert not bn.weight.requires_grad and torch.equal(bn.weight, torch.full((4,), gamma))  # γ fixed
    assert bn.bias.requires_grad and torch.equal(bn.bias, torch.zeros(4))  # the shift learns, from 0
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 1.0]))  # as if learnt
    batch = TextDataset(random_ids([3, 9, 5, 7, 4, 8, 6, 10], seed=4)).collate(list(range(8)))
    mu = model.encode(batch.input_ids, batch.attention_mask).base_dist.loc  # (8, 4)
    torch.testing.assert_close(mu.mean(0), bn.bias.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(mu.var(0, unbiased=False), torch.full((4,), gamma**2), atol=1e-4, rtol=0)
    raw = model.posterior.linear(model.encoder(batch.input_ids, batch.attention_mask))[:, :4]
    assert raw.var(0, unbiased=False).sub(gamma**2).abs().max() > 0.1  # without BN the variance is elsewhere
    # a step of training moves the shift but never γ
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(batch.input_ids, batch.attention_mask).kl.mean().backward()
    opt.step()
    assert torch.equal(bn.weight, torch.full((4,), gamma)) and bn.weight.grad is None
    assert not torch.equal(bn.bias, torch.tensor([0.3, -0.2, 0.0, 1.0]))
    # evaluation uses the running statistics (as BN-VAE's nn.BatchNorm1d does), saved with the model
    model.eval()
    with torch.no_grad():
        raw = model.posterior.linear(model.encoder(batch.input_ids, batch.attention_mask))[:, :4]
        mu_eval = model.encode(batch.input_ids, batch.attention_mask).base_dist.loc
        expected = (raw - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * gamma + bn.bias
        torch.testing.assert_close(mu_eval, expected)
        one = model.train().encode(batch.input_ids[:1], batch.attention_mask[:1]).base_dist.loc  # B = 1 trains
        torch.testing.assert_close(one, mu_eval[:1])
    model.eval().save_pretrained(tmp_path / "bn")
    loaded = TextVAE.from_pretrained(tmp_path / "bn").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(batch.input_ids, batch.attention_mask).base_dist.loc, mu_eval)


# --- word dropout (Bowman et al. 2016) --------------------------------------------------------------


def test_word_dropout_never_replaces_specials_or_padding():
    pad, bos, eos, unk = 0, 1, 2, 3
    ids = torch.tensor([[bos, 5, 6, 7, eos, pad, pad], [bos, 8, 9, 10, 11, 12, eos]])
    assert word_dropout(ids, 1.0, unk, (pad, bos, eos)).tolist() == [
        [bos, unk, unk, unk, eos, pad, pad], [bos, unk, unk, unk, unk, unk, eos]]
    assert torch.equal(word_dropout(ids, 0.0, unk, (pad, bos, eos)), ids)
    torch.manual_seed(0)
    many = torch.randint(0, 30, (200, 50))
    dropped = word_dropout(many, 0.3, unk, (pad, bos, eos))
    special = torch.isin(many, torch.tensor([pad, bos, eos]))
    assert torch.equal(dropped[special], many[special])
    changed = (dropped != many)[~special & (many != unk)].float().mean()
    assert 0.25 < changed < 0.35  # each ordinary word with probability p
    assert (dropped[dropped != many] == unk).all()


def test_word_dropout_applies_in_training_only(padded_batch):
    _, batch = padded_batch
    model = make_model(seed=4, word_dropout=1.0, init_range=0.5, emb_init_range=0.5)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    inputs = batch.input_ids[:, :-1]
    unked = word_dropout(inputs, 1.0, 3, (0, 1, 2))
    with torch.no_grad():
        eval_logits = model.eval().decode(inputs, z)
        train_logits = model.train().decode(inputs, z)
        expected = model.eval().decode(unked, z)  # every word <unk>, the specials kept
    torch.testing.assert_close(train_logits, expected)
    assert not torch.allclose(train_logits, eval_logits)
    plain = make_model(seed=4, word_dropout=0.0, init_range=0.5, emb_init_range=0.5)
    with torch.no_grad():
        torch.testing.assert_close(eval_logits, plain.decode(inputs, z))  # eval: no dropout at all
