"""evaluate(model, dataset) → EvalResult, as DESIGN.md §4 defines every figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES, make_model, random_ids

from textvae.config import EvalConfig
from textvae.data import TextDataset
from textvae.evaluation import EvalResult, evaluate
from textvae.metrics import perplexity

KEYS = {"nll", "nll_stderr", "ppl", "elbo", "rec", "kl", "mi", "mi_ceiling", "mi_batch", "au", "iw_samples",
        "num_sequences", "num_tokens", "nll_per_word", "ppl_per_word", "num_words", "svi_steps"}


def test_eval_result_fields_follow_the_protocol(informative_model, tiny_dataset):
    result = evaluate(informative_model, tiny_dataset, EvalConfig(iw_samples=20, batch_size=5), progress=False)
    assert isinstance(result, EvalResult)
    d = result.to_dict()
    assert set(d) == KEYS
    n = len(tiny_dataset)
    assert d["num_sequences"] == n
    # predicted tokens = words + </s>, not <s>
    assert d["num_tokens"] == sum(len(s) + 1 for s in tiny_dataset.ids)
    assert d["iw_samples"] == 20
    assert d["ppl"] == pytest.approx(math.exp(d["nll"] * n / d["num_tokens"]), rel=1e-6)
    assert d["elbo"] == pytest.approx(-(d["rec"] + d["kl"]), abs=1e-4)
    assert d["mi_ceiling"] == pytest.approx(math.log(n))
    assert d["mi"] <= d["mi_ceiling"] + 1e-6
    assert d["kl"] > 0 and d["nll_stderr"] > 0
    assert 0 <= d["au"] <= informative_model.latent_dim
    # the IW bound is tighter than the ELBO on a model whose z matters
    assert d["nll"] < -d["elbo"]


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_is_reproducible_and_restores_training_mode(informative_model, tiny_dataset, device):
    cfg = EvalConfig(iw_samples=10, batch_size=4)
    informative_model.to(device).train()
    a = evaluate(informative_model, tiny_dataset, cfg, device, seed=3, progress=False)
    assert informative_model.training
    b = evaluate(informative_model, tiny_dataset, cfg, device, seed=3, progress=False)
    c = evaluate(informative_model, tiny_dataset, cfg, device, seed=4, progress=False)
    assert a == b
    assert a.nll != c.nll  # the seed does drive the samples


def test_evaluate_without_iw_reports_negative_elbo(informative_model, tiny_dataset):
    """Without IW the nll is the one-sample −ELBO: a bound above the IW-NLL, and K is reported as 1."""
    cfg = EvalConfig(iw_samples=200)
    bound = evaluate(informative_model, tiny_dataset, cfg, iw=False, progress=False)
    iw = evaluate(informative_model, tiny_dataset, cfg, progress=False)
    assert bound.iw_samples == 1 and iw.iw_samples == 200
    assert bound.nll > iw.nll  # log E[w] ≥ E[log w]: K = 200 sits well below the bound on this model
    assert bound.nll == pytest.approx(iw.rec + iw.kl, abs=3 * bound.nll_stderr)  # same posterior, new samples


def test_more_iw_samples_tighten_the_estimate(informative_model, tiny_dataset):
    few = evaluate(informative_model, tiny_dataset, EvalConfig(iw_samples=1), progress=False)
    many = evaluate(informative_model, tiny_dataset, EvalConfig(iw_samples=200), progress=False)
    # same sequences, so the between-sequence spread (nll_stderr) cancels; the expected gap here is ≈ 2 nats
    assert many.nll < few.nll - 0.5


def test_small_logit_chunks_give_the_same_distribution(informative_model, tiny_dataset):
    """max_chunk_logits only bounds memory: one sample per chunk gives statistically the same IW-NLL."""
    big = evaluate(informative_model, tiny_dataset, EvalConfig(iw_samples=30), progress=False)
    small = evaluate(informative_model, tiny_dataset, EvalConfig(iw_samples=30, max_chunk_logits=1), progress=False)
    assert small.nll == pytest.approx(big.nll, abs=0.5)
    assert small.iw_samples == 30


@pytest.mark.parametrize("device", DEVICES)
def test_lm_evaluation_is_exact_and_batch_independent(lm_model, tiny_dataset, device):
    lm_model.to(device)
    a = evaluate(lm_model, tiny_dataset, EvalConfig(batch_size=1), device, progress=False)
    b = evaluate(lm_model, tiny_dataset, EvalConfig(batch_size=5), device, progress=False)  # padded batches
    assert a.nll == pytest.approx(b.nll, rel=1e-5)
    assert a.nll == pytest.approx(a.rec, rel=1e-6) == pytest.approx(-a.elbo, rel=1e-6)
    assert a.kl == 0 and a.mi == 0 and a.mi_batch == 0 and a.au == 0
    assert a.iw_samples == 0
    # exact: the mean over sequences of the summed token NLLs, computed one sequence at a time
    with torch.no_grad():
        per_seq = [float(lm_model(*(lambda bt: (bt.input_ids, bt.attention_mask))(tiny_dataset.collate([i]).to(device))).rec)
                   for i in range(len(tiny_dataset))]
    assert a.nll == pytest.approx(sum(per_seq) / len(per_seq), rel=1e-5)


def test_evaluate_mi_and_au_of_a_near_collapsed_model(tiny_model, tiny_dataset):
    """A fresh model (U(±0.01) weights) has q(z|x) ≈ N(0, I) for every x: no active units, MI ≈ 0."""
    result = evaluate(tiny_model, TextDataset(random_ids([4, 6, 8, 10] * 8, seed=5)), EvalConfig(iw_samples=2),
                      progress=False)
    assert result.au == 0
    assert abs(result.mi) < 0.05
    assert result.kl < 0.01


def test_evaluate_leaves_the_callers_random_stream_alone(tiny_model, tiny_dataset):
    after = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        evaluate(tiny_model, tiny_dataset, EvalConfig(iw_samples=2), seed=0, progress=False)
        after.append(torch.randn(4))
    # the stream after evaluate depends on what the caller seeded, not on evaluate's own seed
    assert not torch.equal(after[0], after[1])


def test_nll_per_word_counts_whitespace_words_plus_end_of_sequence(lm_model):
    """A uniform LM over V tokens: every predicted token costs log V nats, whatever the tokenization."""
    with torch.no_grad():
        lm_model.decoder.pred_linear.weight.zero_()  # logits 0 (no output bias): uniform over the V = 30 tokens
    texts = ["a b c", "d e"]  # 3 + 2 whitespace words
    subwords = [[4, 5, 6, 7, 8], [9, 10, 11]]  # as a BPE might cut them: 5 + 3 tokens
    result = evaluate(lm_model, TextDataset(subwords, texts=texts), EvalConfig(), progress=False)
    log_v = math.log(30)
    assert result.nll == pytest.approx((6 + 4) / 2 * log_v, rel=1e-5)  # (tokens + </s>) · log V per sequence
    assert result.num_tokens == 10 and result.num_words == (3 + 1) + (2 + 1)
    assert result.nll_per_word == pytest.approx(10 * log_v / 7, rel=1e-5)
    assert result.ppl_per_word == pytest.approx(30 ** (10 / 7), rel=1e-5)
    assert result.ppl == pytest.approx(30, rel=1e-5)
    # without texts (a dataset built from ids alone) there are no words to count
    bare = evaluate(lm_model, TextDataset(subwords), EvalConfig(), progress=False)
    assert bare.nll_per_word is None and bare.ppl_per_word is None and bare.num_words is None


def test_word_level_nll_per_word_is_log_ppl(informative_model):
    from textvae.config import TokenizerConfig
    from textvae.tokenization import train_tokenizer

    texts = ["the cat sat on the mat .", "a dog ran", "the <unk> sat"]
    tokenizer = train_tokenizer(texts, TokenizerConfig(type="word"))
    dataset = TextDataset.from_texts(texts, tokenizer)
    result = evaluate(informative_model, dataset, EvalConfig(iw_samples=3), progress=False)
    assert result.num_words == result.num_tokens
    assert result.ppl_per_word == pytest.approx(result.ppl, rel=1e-9)
    assert result.nll_per_word == pytest.approx(math.log(result.ppl), rel=1e-9)


def test_mi_batch_is_he_et_al_calc_mi_on_their_batches(informative_model):
    """A re-derivation of He et al.'s figure: their create_data_batch (exact-length groups of mi_batch_size,
    numpy's argsort order), their calc_mi_q per batch, weighted by batch size; the same z draws."""
    lengths = [4, 6, 4, 5, 4, 6, 4, 4, 5, 4, 7, 6]
    dataset = TextDataset(random_ids(lengths, seed=8))
    cfg = EvalConfig(iw_samples=2, batch_size=5, mi_batch_size=3)
    result = evaluate(informative_model, dataset, cfg, seed=4, progress=False)
    # their batches: length 4 → 6 sentences → 3 + 3; 5 → 2; 6 → 3; 7 → 1 (a single sentence still counts)
    order = np.argsort(np.array(lengths))
    groups = {}
    for i in order.tolist():
        groups.setdefault(lengths[i], []).append(i)
    batches = [g[j : j + 3] for _, g in sorted(groups.items()) for j in range(0, len(g), 3)]
    assert [len(b) for b in batches] == [3, 3, 2, 3, 1]
    with torch.no_grad():
        whole = dataset.collate(list(range(len(lengths))))
        q = informative_model.encode(whole.input_ids, whole.attention_mask).base_dist
        mu, logvar = q.loc, 2 * q.scale.log()
    gen = torch.Generator().manual_seed(4)
    torch.randn(mu.shape, generator=gen)  # the whole-split mi's draw comes first
    total = 0.0
    for b in batches:
        m, lv = mu[b], logvar[b]
        nz = m.size(1)
        neg_entropy = (-0.5 * nz * math.log(2 * math.pi) - 0.5 * (1 + lv).sum(-1)).mean()
        z = m + torch.randn(m.shape, generator=gen) * (0.5 * lv).exp()  # one sample per sentence
        dev = z[:, None] - m[None]  # (B, B, nz)
        log_density = -0.5 * (dev**2 / lv.exp()[None]).sum(-1) - 0.5 * (nz * math.log(2 * math.pi) + lv.sum(-1))[None]
        log_qz = torch.logsumexp(log_density, dim=1) - math.log(len(b))
        total += float(neg_entropy - log_qz.mean()) * len(b)
    assert result.mi_batch == pytest.approx(total / len(lengths), abs=1e-4)


def test_a_diverged_model_evaluates_to_infinite_ppl_not_an_error(tiny_dataset):
    """A posterior whose KL is astronomically large (a diverged run's validation) gives ppl = inf: exp of its
    −ELBO per token exceeds a float, and that must not stop training with an OverflowError."""
    model = make_model(posterior_bias=True)
    with torch.no_grad():
        model.posterior.linear.weight.zero_()
        model.posterior.linear.bias.zero_()
        model.posterior.linear.bias[model.latent_dim:] = 80.0  # log σ² = 80: KL ≈ 2 · e^80 nats, finite in fp32
    result = evaluate(model, tiny_dataset, EvalConfig(iw_samples=0, batch_size=6), iw=False, progress=False)
    assert math.isfinite(result.nll) and result.nll > 1e4
    assert result.ppl == math.inf


def test_perplexity_is_exp_and_inf_past_a_float():
    assert perplexity(1.0) == math.e and perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
