"""Estimators (metrics.py): IW-NLL, mutual information, active units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_ids
from hypothesis import given
from hypothesis import strategies as st

from textvae.data import TextDataset
from textvae.metrics import (
    active_units,
    he_eval_batches,
    iw_log_weights,
    iw_nll_from_log_weights,
    mutual_information,
    mutual_information_batched,
)


@pytest.fixture
def batch():
    return TextDataset(random_ids([5, 8, 10, 6, 9, 7], seed=21)).collate(list(range(6)))


# --- importance-weighted NLL --------------------------------------------------------------------


def _q(model, batch):
    with torch.no_grad():
        return model.encode(batch.input_ids, batch.attention_mask)


def test_iw_log_weights_shape_and_chunking_do_not_matter(informative_model, batch):
    k = 400
    torch.manual_seed(0)
    whole = iw_log_weights(informative_model, _q(informative_model, batch), batch.input_ids, k=k, chunk=k)
    torch.manual_seed(1)
    chunked = iw_log_weights(informative_model, _q(informative_model, batch), batch.input_ids, k=k, chunk=7)
    assert whole.shape == chunked.shape == (k, 6)
    assert torch.isfinite(whole).all() and torch.isfinite(chunked).all()
    # chunks only bound memory: the log weights have the same distribution (means within 5 standard errors)
    se = torch.sqrt((whole.var(0) + chunked.var(0)) / k)
    assert ((whole.mean(0) - chunked.mean(0)).abs() < 5 * se).all()
    assert not torch.equal(chunked[:7], chunked[7:14])  # every chunk draws fresh samples


def test_iw_log_weights_build_no_autograd_graph(informative_model, batch):
    """IW-NLL is evaluation: even called with gradients on and a model that has them, it keeps no graph (K × the
    decoder's activations would otherwise stay alive)."""
    assert all(p.requires_grad for p in informative_model.parameters())
    with torch.enable_grad():
        log_w = iw_log_weights(informative_model, _q(informative_model, batch), batch.input_ids, k=4, chunk=2)
    assert not log_w.requires_grad and log_w.grad_fn is None


def test_iw_log_weight_is_log_joint_minus_log_posterior(informative_model, batch):
    """With one sample, log w = −rec(z) + log p(z) − log q(z|x) for the z that was drawn."""
    model = informative_model
    torch.manual_seed(3)
    log_w = iw_log_weights(model, _q(model, batch), batch.input_ids, k=1, chunk=1)[0]
    torch.manual_seed(3)
    with torch.no_grad():
        q = model.encode(batch.input_ids, batch.attention_mask)
        z = q.sample((1,))[0]
        expected = -model.reconstruction_nll(batch.input_ids, z) + model.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_w, expected, atol=1e-4, rtol=1e-5)


def test_iw_nll_with_one_sample_is_negative_elbo_in_expectation(informative_model, batch):
    """E_q[−log w] = E_q[rec] + KL(q‖p) = −ELBO; compare means with a tolerance from their standard errors."""
    model = informative_model
    n = 400
    # n independent K=1 estimates per sequence, each from its own call
    iw1 = []
    for seed in range(n):
        torch.manual_seed(seed)
        log_w = iw_log_weights(model, _q(model, batch), batch.input_ids, k=1, chunk=1)
        iw1.append(iw_nll_from_log_weights(log_w))
    iw1 = torch.stack(iw1)  # (n, B)
    # −ELBO from the forward pass: analytic KL + many reconstruction samples
    with torch.no_grad():
        torch.manual_seed(10_000)
        q = model.encode(batch.input_ids, batch.attention_mask)
        recs = model.reconstruction_nll(batch.input_ids, q.sample((n,)))  # (n, B)
        torch.manual_seed(0)
        kl = model(batch.input_ids, batch.attention_mask).kl  # (B,)
    neg_elbo = recs.mean(0) + kl  # (B,)
    # per-sequence means are correlated across sequences only through the model; average over them
    diff = float(iw1.mean() - neg_elbo.mean())
    se = math.sqrt(float(iw1.mean(1).var() / n + recs.mean(1).var() / n))
    assert abs(diff) < 4 * se + 1e-3, (diff, se)
    # the test has power: dropping the KL (or the prior / posterior terms) would be noticed
    assert float(kl.mean()) > 10 * se


def test_iw_bound_never_worse_with_more_of_the_same_samples(informative_model, batch):
    """Jensen, deterministically: for the same 100 samples, IW_100 ≤ mean of ten IW_10 ≤ mean of IW_1."""
    torch.manual_seed(4)
    log_w = iw_log_weights(informative_model, _q(informative_model, batch), batch.input_ids, k=100, chunk=100)
    iw100 = iw_nll_from_log_weights(log_w)  # (B,)
    iw10 = torch.stack([iw_nll_from_log_weights(g) for g in log_w.view(10, 10, -1)]).mean(0)
    iw1 = (-log_w).mean(0)
    assert (iw100 <= iw10 + 1e-5).all()
    assert (iw10 <= iw1 + 1e-5).all()
    assert float((iw1 - iw100).mean()) > 0.5  # a real gap on this model


def test_iw_nll_from_log_weights_known_values():
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0]]))  # (K=2, B=2)
    torch.testing.assert_close(iw_nll_from_log_weights(log_w), -torch.log(torch.tensor([2.0, 2.0])))
    # numerically stable for very negative log weights (long sequences)
    big = torch.tensor([[-1000.0], [-1000.0]])
    torch.testing.assert_close(iw_nll_from_log_weights(big), torch.tensor([1000.0]))


def test_iw_estimate_decreases_with_k_in_expectation(informative_model, batch):
    """Independent draws with fixed seeds: mean IW-NLL over sequences for K=1 > K=10 > K=100."""
    model = informative_model
    repeats = {1: 200, 10: 40, 100: 8}
    means, ses = {}, {}
    for k, r in repeats.items():
        vals = []
        for seed in range(r):
            torch.manual_seed(1000 * k + seed)
            vals.append(iw_nll_from_log_weights(
                iw_log_weights(model, _q(model, batch), batch.input_ids, k=k, chunk=50)).mean())
        vals = torch.stack(vals)
        means[k], ses[k] = float(vals.mean()), float(vals.std() / math.sqrt(r))
    for small, large in ((1, 10), (10, 100)):
        assert means[large] < means[small] + 3 * math.hypot(ses[small], ses[large]), (means, ses)
    assert means[1] - means[100] > 5 * math.hypot(ses[1], ses[100]), (means, ses)


# --- mutual information -----------------------------------------------------------------------


def test_mi_zero_for_collapsed_posteriors():
    loc = torch.full((64, 3), 0.3)
    scale = torch.full((64, 3), 0.8)
    mi = mutual_information(loc, scale, generator=torch.Generator().manual_seed(0))
    assert abs(mi) < 1e-5
    # He et al.'s analytic-entropy form is noisier but zero in expectation (one sample per x)
    vals = torch.tensor([mutual_information(loc, scale, generator=torch.Generator().manual_seed(s),
                                            analytic_entropy=True) for s in range(20)])
    assert abs(float(vals.mean())) < 4 * float(vals.std()) / math.sqrt(20) + 1e-6


def test_mi_at_most_log_n_and_close_to_it_for_separated_posteriors():
    n = 50
    loc = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) * 100.0  # far apart
    scale = torch.full((n, 2), 1e-3)
    mi = mutual_information(loc, scale, generator=torch.Generator().manual_seed(0))
    assert mi <= math.log(n) + 1e-5
    assert mi == pytest.approx(math.log(n), abs=1e-3)
    # overlapping posteriors carry less information, still within the ceiling
    mid = mutual_information(loc / 100.0, torch.full((n, 2), 2.0), generator=torch.Generator().manual_seed(0))
    assert 0.0 < mid < math.log(n) - 0.5


def test_mi_of_two_clusters_is_log_two():
    """Half the posteriors at one point, half at another (tiny scale): I(x; z) = log 2."""
    loc = torch.cat([torch.full((20, 2), -5.0), torch.full((20, 2), 5.0)])
    scale = torch.full((40, 2), 1e-2)
    mi = mutual_information(loc, scale, chunk=7, generator=torch.Generator().manual_seed(1))
    assert mi == pytest.approx(math.log(2), abs=1e-4)


def test_mi_chunking_does_not_change_the_estimate():
    gen = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(37, 3, generator=gen), torch.rand(37, 3, generator=gen) + 0.2
    a = mutual_information(loc, scale, chunk=1024, generator=torch.Generator().manual_seed(5))
    b = mutual_information(loc, scale, chunk=4, generator=torch.Generator().manual_seed(5))
    assert a == pytest.approx(b, abs=1e-5)


def test_batched_mi_ceiling_is_log_batch_size():
    n, batch_size, d = 320, 32, 2
    loc = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * 1000.0  # separated
    scale = torch.full((n, d), 1e-3)
    full = mutual_information(loc, scale, generator=torch.Generator().manual_seed(1))
    batches = he_eval_batches([7] * n, batch_size)  # one length: consecutive batches of 32
    batched = [mutual_information_batched(loc, scale, batches, generator=torch.Generator().manual_seed(s))
               for s in range(5)]
    # analytic entropy vs a single sample: per-sequence noise sd = sqrt(d/2), averaged over n sequences
    tol = 5 * math.sqrt(d / 2) / math.sqrt(n * len(batched))
    assert sum(batched) / len(batched) <= math.log(batch_size) + tol
    assert sum(batched) / len(batched) == pytest.approx(math.log(batch_size), abs=tol)
    assert full == pytest.approx(math.log(n), abs=1e-3)  # the whole-split estimator sees all n


def test_batched_mi_weights_a_short_last_batch():
    """40 separated posteriors in batches of 32: (32·log 32 + 8·log 8) / 40, up to the estimator's noise."""
    n, d = 40, 2
    loc = torch.randn(n, d, generator=torch.Generator().manual_seed(2)) * 1000.0
    scale = torch.full((n, d), 1e-3)
    batches = he_eval_batches([5] * n, 32)
    assert [len(b) for b in batches] == [32, 8]
    vals = [mutual_information_batched(loc, scale, batches, generator=torch.Generator().manual_seed(s))
            for s in range(40)]
    expected = (32 * math.log(32) + 8 * math.log(8)) / 40
    tol = 5 * math.sqrt(d / 2) / math.sqrt(n * len(vals))
    assert sum(vals) / len(vals) == pytest.approx(expected, abs=tol)


def test_he_eval_batches_group_exactly_equal_lengths_in_numpy_argsort_order():
    lengths = [3, 5, 3, 3, 7, 5, 3, 3, 5, 9, 3]
    batches = he_eval_batches(lengths, 4)
    # every batch holds one length; each length group is cut into batches of at most 4, in length order
    assert [sorted({lengths[i] for i in b}) for b in batches] == [[3], [3], [5], [7], [9]]
    assert [len(b) for b in batches] == [4, 2, 3, 1, 1]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each sequence once
    assert [i for b in batches for i in b] == np.argsort(np.array(lengths)).tolist()  # their sort, their ties


@given(st.lists(st.integers(1, 6), min_size=1, max_size=60), st.integers(1, 8))
def test_he_eval_batches_properties(lengths, batch_size):
    batches = he_eval_batches(lengths, batch_size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size and len({lengths[i] for i in b}) == 1 for b in batches)
    # a batch is short only as the last of its length group
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert len(b) == batch_size or lengths[b[0]] != lengths[nxt[0]]
    assert len(batches) == sum(math.ceil(lengths.count(v) / batch_size) for v in set(lengths))


# --- active units -------------------------------------------------------------------------------


def test_active_units_counts_exactly_the_varying_dims():
    gen = torch.Generator().manual_seed(0)
    n = 100
    loc = torch.zeros(n, 6)
    loc[:, 0] = 3.0  # constant
    loc[:, 1] = torch.randn(n, generator=gen)  # varies (var ≈ 1)
    loc[:, 2] = -1.0  # constant
    loc[:, 3] = torch.randn(n, generator=gen) * 0.5  # varies (var ≈ 0.25)
    loc[:, 4] = torch.randn(n, generator=gen) * 0.01  # varies a little (var ≈ 1e-4): below 0.01
    loc[:, 5] = torch.linspace(-1, 1, n)  # varies (var ≈ 0.34)
    count, variances = active_units(loc)
    assert count == 3
    assert variances.shape == (6,)
    assert ((variances >= 0.01) == torch.tensor([False, True, False, True, False, True])).all()
    torch.testing.assert_close(variances, loc.var(0))
    assert active_units(loc, threshold=1e-6)[0] == 4
    assert active_units(loc[:1])[0] == 0  # one sequence: nothing can vary
