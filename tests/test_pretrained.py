"""Pretrained models through ``transformers`` (BERT → GPT-2, Optimus-style), on tiny random local models."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL_TEXT, decode_incrementally, write_corpus

from textvae.checkpoint import load_model_dir, load_run, save_model_dir
from textvae.config import ModelConfig, load_recipe
from textvae.data import TextDataset
from textvae.latent import encode_texts, interpolate, load
from textvae.metrics import iw_log_weights
from textvae.model import TextVAE
from textvae.modules.critics import build_critic
from textvae.tokenization import PairedTokenizer, PretrainedTokenizer
from textvae.training import fit

TEXTS = ["the cat sat on the mat .", "a dog sat on the red car .", "my friend sat on the small house ."]


@pytest.fixture(scope="module")
def tokenizer(tiny_pretrained) -> PairedTokenizer:
    return PairedTokenizer(PretrainedTokenizer.from_name(str(tiny_pretrained.gpt2), "model.decoder_name"),
                           PretrainedTokenizer.from_name(str(tiny_pretrained.bert), "model.encoder_name"))


def optimus(tiny_pretrained, tokenizer, seed: int = 0, latent_dim: int = 4) -> TextVAE:
    torch.manual_seed(seed)
    args = ModelConfig(vocab_size=tokenizer.vocab_size, encoder="pretrained", decoder="pretrained", latent_dim=latent_dim,
                       encoder_name=str(tiny_pretrained.bert), decoder_name=str(tiny_pretrained.gpt2),
                       pooling="pooler", pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                       unk_id=tokenizer.unk_id, encoder_init="default")
    model = TextVAE(args).eval()
    if latent_dim:  # a large latent map, so that z visibly matters
        for linear in (model.decoder.latent_memory, model.decoder.latent_embedding):
            torch.nn.init.normal_(linear.weight, std=1.0)
    return model


def test_two_tokenizations_of_each_batch(tokenizer):
    gpt2, bert = tokenizer.decoder, tokenizer.encoder_tokenizer
    assert gpt2.bos_id == gpt2.eos_id and gpt2.pad_id not in (gpt2.bos_id, gpt2.unk_id)  # <pad> was added
    assert (bert.bos_id, bert.eos_id) == (bert.tok.cls_token_id, bert.tok.sep_token_id)
    batch = TextDataset.from_texts(TEXTS, tokenizer).collate([0, 1, 2])
    n = len(TEXTS[0].split())
    assert batch.input_ids[0, : n + 2].tolist() == [gpt2.bos_id, *gpt2.encode(TEXTS[0]), gpt2.eos_id]
    assert batch.encoder_input_ids[0, : n + 2].tolist() == [bert.bos_id, *bert.encode(TEXTS[0]), bert.eos_id]
    assert not torch.equal(batch.input_ids, batch.encoder_input_ids)  # different vocabularies
    assert batch.input_ids[0, n + 2 :].eq(gpt2.pad_id).all() and batch.encoder_input_ids[0, n + 2 :].eq(bert.pad_id).all()
    assert tokenizer.decode(batch.input_ids[2].tolist()) == TEXTS[2]  # GPT-2's <s> = </s>: a leading one is skipped
    one = TextDataset.from_texts(TEXTS, gpt2).collate([0, 1])  # with one tokenizer the encoder reads the decoder's ids
    assert one.encoder_input_ids is one.input_ids


def test_forward_loss_iw_nll_and_gradients(tiny_pretrained, tokenizer):
    model = optimus(tiny_pretrained, tokenizer).train()
    b = TextDataset.from_texts(TEXTS, tokenizer).collate([0, 1, 2])
    out = model(b.input_ids, b.attention_mask, b.encoder_input_ids, b.encoder_attention_mask)
    (out.rec + out.kl).mean().backward()
    assert out.rec.shape == (3,) and torch.isfinite(out.rec).all() and (out.kl > 0).all()
    for module in (model.encoder.hf, model.decoder.latent_memory, model.decoder.latent_embedding, model.decoder.hf):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    model.eval()
    with torch.no_grad():
        posterior = model.encode(b.encoder_input_ids, b.encoder_attention_mask)
    log_w = iw_log_weights(model, posterior, b.input_ids, k=5, chunk=2)
    assert log_w.shape == (5, 3) and torch.isfinite(log_w).all()
    critic = build_critic(load_recipe("debug", ["method=critic-hybrid"]).critic, model)
    assert critic.x_encoder.embed is model.encoder.hf.get_input_embeddings()  # BERT's word embedding, shared
    assert critic(out.z, out.posterior, b.encoder_input_ids, b.encoder_attention_mask).shape == (3, 3)


def test_latent_conditions_decoder_causally_and_the_cache_matches(tiny_pretrained, tokenizer):
    model = optimus(tiny_pretrained, tokenizer)
    ids = TextDataset.from_texts(TEXTS, tokenizer).collate([0, 1, 2]).input_ids
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 5:] = tokenizer.encode("red car")[0]
    with torch.no_grad():
        full = model.decode(ids, z)
        assert (model.decode(ids, z + 1.0) - full).abs().amax(dim=(0, 2)).min() > 1e-3  # z matters everywhere
        torch.testing.assert_close(model.decode(changed, z)[:, :5], full[:, :5])  # the future does not leak back
        for only in ("memory", "embedding"):  # each of Optimus's two injections alone conditions on z
            plain = optimus(tiny_pretrained, tokenizer)
            torch.nn.init.zeros_(getattr(plain.decoder, f"latent_{'embedding' if only == 'memory' else 'memory'}").weight)
            assert (plain.decode(ids, z) - plain.decode(ids, -z)).abs().max() > 1e-3, only
        stepwise = decode_incrementally(model.decoder, ids, z, prompt=3)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_offline(tmp_path, tiny_pretrained, tokenizer):
    """A saved BERT → GPT-2 model and its two tokenizers reload from their folder alone, the originals gone."""
    copies = SimpleNamespace(bert=tmp_path / "hub" / "bert", gpt2=tmp_path / "hub" / "gpt2")
    shutil.copytree(tiny_pretrained.bert.parent, tmp_path / "hub")  # the fixture is shared: delete a copy
    model = optimus(copies, tokenizer)
    save_model_dir(model, tokenizer, tmp_path / "model")
    shutil.rmtree(tmp_path / "hub")
    loaded, tok = load_model_dir(tmp_path / "model")
    loaded.eval()
    assert loaded.config == model.config
    assert isinstance(tok, PairedTokenizer) and tok.encode_batch(TEXTS) == tokenizer.encode_batch(TEXTS)
    assert tok.encoder_tokenizer.encode_batch(TEXTS) == tokenizer.encoder_tokenizer.encode_batch(TEXTS)
    assert (tok.pad_id, tok.encoder_tokenizer.pad_id) == (tokenizer.pad_id, tokenizer.encoder_tokenizer.pad_id)
    b = TextDataset.from_texts(TEXTS, tok).collate([0, 1, 2])
    z = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded.decode(b.input_ids, z), model.decode(b.input_ids, z))
        q1 = loaded.encode(b.encoder_input_ids, b.encoder_attention_mask).base_dist
        q2 = model.encode(b.encoder_input_ids, b.encoder_attention_mask).base_dist
    assert torch.equal(q1.loc, q2.loc) and torch.equal(q1.scale, q2.scale)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["decoder_hf_config"]["vocab_size"] == tokenizer.vocab_size  # resized for the added <pad>


def test_fit_bert_to_gpt2_with_a_critic_then_eval(tmp_path, tiny_pretrained, cli_main):
    corpus = write_corpus(tmp_path / "corpus", SMALL_TEXT)
    overrides = [f"data.dir={corpus}", "data.builtin=null", "model.preset=optimus", "model.latent_dim=4",
                 f"model.encoder_name={tiny_pretrained.bert}", f"model.decoder_name={tiny_pretrained.gpt2}",
                 "tokenizer.type=pretrained", "method=critic-hybrid", "train.max_steps=2", "train.batch_size=4",
                 "eval.iw_samples=2"]
    run = fit(load_recipe("debug", overrides), tmp_path / "run", progress=False)
    result = json.loads((run / "eval_test.json").read_text())
    words = sum(len(line.split()) + 1 for line in SMALL_TEXT.splitlines())
    assert result["num_words"] == words
    assert result["nll_per_word"] == pytest.approx(result["nll"] * result["num_sequences"] / words, rel=1e-6)
    cfg, model, tok = load_run(run)
    assert isinstance(tok, PairedTokenizer) and model.config.encoder == "pretrained"
    code, out, err = cli_main("eval", run, "--iw-samples", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["nll_per_word"] == pytest.approx(result["nll_per_word"], rel=1e-5)
    # the latent tools read BERT's ids for the encoder and decode with GPT-2's
    texts = SMALL_TEXT.splitlines()[:3]
    batch = TextDataset.from_texts(texts, tok).collate([0, 1, 2])
    expected = model.eval().encode(batch.encoder_input_ids, batch.encoder_attention_mask).base_dist.loc
    assert torch.allclose(encode_texts(load(run), texts), expected, atol=1e-5)
    path = interpolate(run, texts[0], texts[1], steps=3)
    assert path.endpoint_match == [True, True] and len(path.path) == 3
    lm_overrides = [o for o in overrides if not o.startswith(("method=", "model.latent_dim="))] + ["method=lm"]
    lm = fit(load_recipe("debug", lm_overrides), tmp_path / "lm", progress=False)  # GPT-2 alone
    _, lm_model, lm_tok = load_run(lm)
    assert isinstance(lm_tok, PretrainedTokenizer) and lm_model.encoder is None
    assert json.loads((lm / "eval_test.json").read_text())["kl"] == 0


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path, tiny_pretrained, cli_main, side):
    missing = tmp_path / f"no-such-{side}"
    names = {"encoder": tiny_pretrained.bert, "decoder": tiny_pretrained.gpt2, side: missing}
    code, out, err = cli_main("train", "debug", "model.preset=optimus", f"model.encoder_name={names['encoder']}",
                              f"model.decoder_name={names['decoder']}", "--output-dir", tmp_path / "run")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load pretrained")
    assert str(missing) in lines[0] and f"model.{side}_name=" in lines[0] and "local path" in lines[0]
