"""Decoding (generation.py) and the latent tools (latent.py): strategies agree where they must, paths, the Python API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_TEXT, make_model

from textvae.config import TextVAEError, TokenizerConfig
from textvae.generation import DecodeConfig, generate, interpolation_path
from textvae.latent import interpolate, reconstruct, sample
from textvae.modules.decoders import select_rows
from textvae.tokenization import BOS_ID, EOS_ID, train_tokenizer

MAX_LEN = 10


@pytest.fixture
def eos_model():
    """Large random weights and a nudge towards </s>: some sentences end early, others run to MAX_LEN."""
    model = make_model(seed=1, init_range=1.0, emb_init_range=1.0, posterior_bias=True, output_bias=True)
    with torch.no_grad():
        model.decoder.pred_linear.bias[EOS_ID] += 0.6
    return model


@pytest.fixture
def latents():
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(0))


def decode(model, z, seed: int | None = None, **cfg) -> list[list[int]]:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return generate(model, z, DecodeConfig(**{"max_length": MAX_LEN, **cfg}), bos_id=BOS_ID, eos_id=EOS_ID,
                    generator=gen)


def test_greedy_is_deterministic_and_the_argmax_of_teacher_forcing(eos_model, latents):
    out = decode(eos_model, latents)
    assert out == decode(eos_model, latents)
    lengths = [len(seq) for seq in out]
    assert min(lengths) < MAX_LEN and max(lengths) == MAX_LEN  # both ways of stopping occur
    for seq, z in zip(out, latents, strict=True):
        with torch.no_grad():
            logits = eos_model.decode(torch.tensor([[BOS_ID, *seq]]), z[None])  # (1, L+1, V)
        argmax = logits[0].argmax(-1).tolist()  # the prediction after each prefix, L + 1 of them
        assert argmax[: len(seq)] == seq and EOS_ID not in seq
        if len(seq) < MAX_LEN:  # a sentence shorter than MAX_LEN ended on </s>
            assert argmax[len(seq)] == EOS_ID


def test_model_generate_uses_its_own_special_ids(latents):
    """Ids other than the tokenizer defaults: a generate that ignored the model's own would differ."""
    model = make_model(seed=1, init_range=1.0, emb_init_range=1.0, bos_id=5, eos_id=6, output_bias=True)
    with torch.no_grad():
        model.decoder.pred_linear.bias[6] += 2.0
    cfg = DecodeConfig(max_length=MAX_LEN)
    own = model.generate(latents, cfg)
    assert own == generate(model, latents, cfg, bos_id=5, eos_id=6)
    assert own != generate(model, latents, cfg, bos_id=BOS_ID, eos_id=EOS_ID)
    assert min(len(seq) for seq in own) < MAX_LEN and all(6 not in seq for seq in own)


def test_beam_one_and_top_k_one_are_greedy(eos_model, latents):
    greedy = decode(eos_model, latents)
    assert decode(eos_model, latents, strategy="beam", beam=1) == greedy
    assert decode(eos_model, latents, strategy="top-k", top_k=1, seed=3) == greedy
    assert decode(eos_model, latents, strategy="top-k", top_k=1, temperature=5.0, seed=4) == greedy


@pytest.mark.parametrize("strategy", ["sample", "top-k", "top-p"])
def test_sampling_is_reproducible_with_a_seed(eos_model, latents, strategy):
    opts = dict(strategy=strategy, top_k=5, top_p=0.8, temperature=1.5)
    first = decode(eos_model, latents, seed=7, **opts)
    assert decode(eos_model, latents, seed=7, **opts) == first
    assert decode(eos_model, latents, seed=8, **opts) != first
    assert all(len(seq) <= MAX_LEN and EOS_ID not in seq for seq in first)


def test_top_k_and_top_p_sample_only_from_their_sets(eos_model, latents):
    """One step: each drawn token is among the k most probable / the nucleus of its row."""
    with torch.no_grad():
        probs = F.softmax(eos_model.decode(torch.full((8, 1), BOS_ID), latents)[:, 0], dim=-1)  # (8, V)
    order = probs.argsort(-1, descending=True)
    for seed in range(5):
        top_k = decode(eos_model, latents, seed=seed, strategy="top-k", top_k=3, max_length=1)
        top_p = decode(eos_model, latents, seed=seed, strategy="top-p", top_p=0.3, max_length=1)
        for row in range(8):
            assert (top_k[row] or [EOS_ID])[0] in order[row, :3].tolist()
            cum = probs[row, order[row]].cumsum(0)
            nucleus = order[row, : int((cum < 0.3).sum()) + 1].tolist()
            assert (top_p[row] or [EOS_ID])[0] in nucleus


@pytest.mark.parametrize("cfg", [dict(strategy="greedy"), dict(strategy="beam", beam=3)])
def test_a_batch_decodes_as_its_sentences_one_at_a_time(eos_model, latents, cfg):
    batched = decode(eos_model, latents, **cfg)
    assert batched == [decode(eos_model, latents[i : i + 1], **cfg)[0] for i in range(len(latents))]


def test_beam_as_wide_as_the_vocabulary_is_exhaustive_over_two_tokens(eos_model, latents):
    """With K = V and two steps nothing is pruned: the answer is the best of every continuation."""
    model, vocab = eos_model, eos_model.config.vocab_size
    found = decode(model, latents[:3], strategy="beam", beam=vocab, max_length=2, length_penalty=0.0)
    with torch.no_grad():
        for z, best in zip(latents[:3], found, strict=True):
            first = F.log_softmax(model.decode(torch.tensor([[BOS_ID]]), z[None])[0, 0], -1)  # (V,)
            pairs = torch.tensor([[BOS_ID, w] for w in range(vocab)])
            second = F.log_softmax(model.decode(pairs, z[None].expand(vocab, -1))[:, 1], -1)  # (V, V)
            scores = {(w1, w2): float(first[w1] + second[w1, w2]) for w1 in range(vocab) if w1 != EOS_ID
                      for w2 in range(vocab)}
            scores[(EOS_ID,)] = float(first[EOS_ID])
            top = max(scores, key=scores.get)
            assert best == [w for w in top if w != EOS_ID]


def repeated_ngrams(seq: list[int], n: int) -> int:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("cfg", [dict(strategy="greedy"), dict(strategy="beam", beam=3),
                                 dict(strategy="top-k", top_k=2)])
def test_no_repeat_ngram_stops_loops(latents, cfg):
    """A decoder that prefers token 5, then 6, then 7 loops on 5; with the option no bigram occurs twice."""
    model = make_model(seed=1, output_bias=True)
    with torch.no_grad():
        model.decoder.pred_linear.bias.zero_()
        model.decoder.pred_linear.bias[[5, 6, 7, 8, EOS_ID]] = torch.tensor([6.0, 5.0, 4.0, 3.0, -9.0])
    looping = decode(model, latents, seed=0, **cfg)
    assert all(repeated_ngrams(seq, 2) > 0 for seq in looping)
    for n in (2, 3):
        out = decode(model, latents, seed=0, no_repeat_ngram=n, **cfg)
        assert all(repeated_ngrams(seq, n) == 0 and len(seq) == MAX_LEN for seq in out)
    if cfg["strategy"] == "greedy":  # still deterministic, and the first repeat is the one it avoids
        assert decode(model, latents, no_repeat_ngram=2)[0][:3] == [5, 5, 6]


def test_language_model_generation(lm_model):
    out = generate(lm_model, None, DecodeConfig(strategy="sample", max_length=6), bos_id=BOS_ID, eos_id=EOS_ID,
                   num_sequences=4, generator=torch.Generator().manual_seed(0))
    assert len(out) == 4 and all(len(seq) <= 6 for seq in out)
    with pytest.raises(TextVAEError, match="num_sequences"):
        generate(lm_model, None, bos_id=BOS_ID, eos_id=EOS_ID)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("strategy", "nucleus", "--strategy"), ("temperature", 0.0, "--temperature"), ("top_k", 0, "--top-k"),
    ("top_p", 1.5, "--top-p"), ("beam", 0, "--beam"), ("max_length", 0, "--max-length"),
    ("no_repeat_ngram", -1, "--no-repeat-ngram")])
def test_bad_decoding_options(field, value, needle):
    with pytest.raises(TextVAEError, match=needle):
        DecodeConfig(**{field: value}).validate()


def test_select_rows_reorders_nested_states():
    h = torch.arange(6.0).view(1, 3, 2)
    state = (h, [h + 10])
    out = select_rows(state, torch.tensor([2, 2, 0]))
    assert isinstance(out, tuple) and isinstance(out[1], list)
    assert out[0][0, :, 0].tolist() == [4.0, 4.0, 0.0] and out[1][0][0, :, 0].tolist() == [14.0, 14.0, 10.0]


# --- interpolation paths -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_endpoints_are_exact(method):
    a, b = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    path = interpolation_path(a, b, 7, method)
    assert path.shape == (7, 5)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    batched = interpolation_path(torch.stack([a, b]), torch.stack([b, a]), 7, method)  # (2, 7, 5)
    torch.testing.assert_close(batched[0], path)
    torch.testing.assert_close(batched[1], path.flip(0), atol=1e-5, rtol=1e-5)


def test_linear_midpoint_and_slerp_on_the_sphere():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(interpolation_path(a, b, 3, "linear")[1], torch.tensor([0.5, 0.5]))
    slerp = interpolation_path(a, b, 3, "slerp")
    torch.testing.assert_close(slerp[1], torch.tensor([0.5, 0.5]).sqrt())  # 45° on the unit circle
    torch.testing.assert_close(slerp.norm(dim=-1), torch.ones(3))


def test_slerp_keeps_norms_between_the_endpoint_norms():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, 8, generator=gen) * torch.rand(50, 1, generator=gen) * 4
    b = -0.7 * a + torch.randn(50, 8, generator=gen)  # many obtuse angles, where plain slerp overshoots
    norms = interpolation_path(a, b, 9, "slerp").norm(dim=-1)  # (50, 9)
    low = torch.minimum(a.norm(dim=-1), b.norm(dim=-1))[:, None]
    high = torch.maximum(a.norm(dim=-1), b.norm(dim=-1))[:, None]
    assert ((norms >= low - 1e-4) & (norms <= high + 1e-4)).all()


def test_bad_path_options():
    a = torch.zeros(3)
    with pytest.raises(TextVAEError, match="--method"):
        interpolation_path(a, a, 4, "cubic")
    with pytest.raises(TextVAEError, match="--steps"):
        interpolation_path(a, a, 1)


# --- the Python API on a model + tokenizer ---------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer(SMALL_TEXT.splitlines(), TokenizerConfig())
    return make_model(seed=1, init_range=1.0, emb_init_range=1.0, vocab_size=tok.vocab_size), tok


def test_interpolation_endpoints_are_the_reconstructions(model_and_tokenizer):
    model, tok = model_and_tokenizer
    a, b = "the cat sat on the mat .", "my friend sat on the red car ."
    for method in ("linear", "slerp"):
        result = interpolate(model, a, b, steps=6, method=method, tokenizer=tok)
        recs = reconstruct(model, [a, b], tokenizer=tok).outputs
        assert [p["t"] for p in result.path] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        assert [result.path[0]["text"], result.path[-1]["text"]] == recs
        assert result.endpoint_match == [True, True]
        assert 1 / 6 <= result.distinct_ratio <= 1 and result.mean_edit_distance >= 0


def test_reconstruct_maps_unknown_words_to_unk(model_and_tokenizer):
    model, tok = model_and_tokenizer
    result = reconstruct(model, ["the zebra sat on the mat ."], tokenizer=tok)
    assert result.references == ["the <unk> sat on the mat ."]
    assert 0 <= result.bleu <= 100 + 1e-9 and result.exact_match in (0.0, 1.0)


def test_sample_is_reproducible_and_scored(model_and_tokenizer):
    model, tok = model_and_tokenizer
    first = sample(model, 5, DecodeConfig(strategy="sample", max_length=8), seed=3, tokenizer=tok)
    assert first == sample(model, 5, DecodeConfig(strategy="sample", max_length=8), seed=3, tokenizer=tok)
    assert len(first.texts) == 5 and 0 < first.distinct_1 <= 1 and 0 <= first.self_bleu <= 100 + 1e-9
    with pytest.raises(TextVAEError, match="-n must be >= 1"):
        sample(model, 0, tokenizer=tok)
