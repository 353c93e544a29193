"""Gradient clipping and sparse embedding gradients (textvae.gradients)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import assert_same_final_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import textvae.training as training
from textvae.config import TrainConfig, load_recipe
from textvae.errors import TextVAEError
from textvae.gradients import (
    AUTO_MIN_ELEMENTS,
    clip_gradients,
    has_sparse_embeddings,
    set_sparse_embeddings,
    use_sparse_embeddings,
)
from textvae.tracking import read_metrics
from textvae.training import fit, load_optimizer_state, make_optimizers, prepare_training

SGD = ["train.optimizer=sgd", "train.lr=0.5", "eval.iw_samples=2", "train.max_steps=30"]  # debug recipe, plain SGD


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-3, 50.0), min_size=1, max_size=4), st.floats(0.01, 20.0), st.integers(0, 1000))
def test_clip_gradients_is_clip_grad_norm(scales, max_norm, seed):
    """The same gradients and norm as torch's clip_grad_norm_, which multiplies by 1 when nothing is clipped."""
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.zeros(3, 2)) for _ in scales]
    theirs = [torch.nn.Parameter(torch.zeros(3, 2)) for _ in scales]
    for a, b, scale in zip(ours, theirs, scales, strict=True):
        a.grad = torch.randn(3, 2, generator=gen) * scale
        b.grad = a.grad.clone()
    norm = clip_gradients(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert torch.equal(norm, expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 19), min_size=1, max_size=12), st.floats(0.01, 20.0), st.floats(0.1, 30.0))
def test_clip_gradients_over_a_sparse_embedding_gradient_is_the_dense_clip(ids, max_norm, scale):
    """An embedding's sparse gradient (repeated ids: uncoalesced) is normed and clipped as its dense twin is."""
    grads = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        embed, linear = torch.nn.Embedding(20, 3, sparse=sparse), torch.nn.Linear(3, 2)
        (linear(embed(torch.tensor(ids))) * scale).square().sum().backward()
        norm = clip_gradients([embed.weight, linear.weight, linear.bias], max_norm)
        assert embed.weight.grad.is_sparse == sparse
        grads[sparse] = (norm, embed.weight.grad.to_dense(), linear.weight.grad)
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-6, atol=0)
    for a, b in zip(grads[True][1:], grads[False][1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, True),
    ({"optimizer": "adam"}, False),
    ({"momentum": 0.9}, False),
    ({"svi_steps": 5}, False),
    ({"embedding_gradients": "dense"}, False),
])
def test_auto_makes_embedding_gradients_sparse_only_where_sgd_updates_the_same_rows(overrides, expected):
    assert use_sparse_embeddings(replace(TrainConfig(), **overrides), distributed=False, precision="fp32") is expected


def test_auto_keeps_dense_gradients_under_torchrun_and_fp16():
    assert not use_sparse_embeddings(TrainConfig(), distributed=True, precision="fp32")
    assert not use_sparse_embeddings(TrainConfig(), distributed=False, precision="fp16")
    assert use_sparse_embeddings(TrainConfig(), distributed=False, precision="bf16")


def test_sparse_where_it_cannot_be_names_the_reason():
    with pytest.raises(TextVAEError, match="train.embedding_gradients=sparse cannot be used: train.optimizer is adam"):
        use_sparse_embeddings(replace(TrainConfig(), optimizer="adam", embedding_gradients="sparse"), False, "fp32")


def test_sparse_and_dense_embedding_gradients_train_the_same_run(tmp_path, monkeypatch):
    """Plain SGD moves the same rows by the same amounts: the two runs agree in every logged figure and weight
    (to float rounding: only the order of additions in the gradient norm differs)."""
    seen = []

    def recording(modules, sparse, min_elements=0):
        seen.append(sparse)
        set_sparse_embeddings(modules, sparse, min_elements)

    monkeypatch.setattr(training, "set_sparse_embeddings", recording)
    sparse = fit(load_recipe("debug", SGD + ["train.embedding_gradients=sparse"]), tmp_path / "sparse", progress=False)
    dense = fit(load_recipe("debug", SGD + ["train.embedding_gradients=dense"]), tmp_path / "dense", progress=False)
    assert seen == [True, False]
    assert_same_final_weights(sparse, dense)
    timing = ("tokens_per_s", "seconds", "train_seconds")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run / "metrics.jsonl")]
            for run in (sparse, dense)]
    assert len(rows[0]) == len(rows[1]) > 0
    for a, b in zip(*rows, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == (pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value), key
    results = [json.loads((run / "eval_test.json").read_text()) for run in (sparse, dense)]
    assert results[0]["nll"] == pytest.approx(results[1]["nll"], rel=1e-5)


def test_a_dense_checkpoint_resumes_with_sparse_gradients(tmp_path):
    """The optimiser keeps the kernels it was built with when it loads a state saved by fused SGD."""
    cfg = load_recipe("debug", SGD)
    embed = torch.nn.Embedding(10, 4)
    dense_opt, _ = make_optimizers(embed, None, cfg, 0.5)
    assert dense_opt.param_groups[0]["fused"]
    set_sparse_embeddings([embed], True)
    assert has_sparse_embeddings([embed])
    sparse_opt, _ = make_optimizers(embed, None, cfg, 0.5)
    load_optimizer_state(sparse_opt, dense_opt.state_dict())
    assert not sparse_opt.param_groups[0]["fused"] and sparse_opt.param_groups[0]["foreach"]
    before = embed.weight.detach().clone()
    embed(torch.tensor([1, 1, 3])).sum().backward()
    clip_gradients([embed.weight], 5.0)
    sparse_opt.step()
    moved = (embed.weight.detach() != before).any(dim=1)
    assert moved.tolist() == [i in (1, 3) for i in range(10)]
    torch.testing.assert_close(embed.weight.detach()[1], before[1] - 0.5 * 2)


def test_auto_makes_only_large_tables_sparse():
    """auto: a table of at least AUTO_MIN_ELEMENTS entries trains with sparse gradients, a small one (whose dense
    passes stay in cache) with dense ones; train.embedding_gradients=sparse makes every table's sparse."""
    model = torch.nn.ModuleDict({"big": torch.nn.Embedding(AUTO_MIN_ELEMENTS // 8, 8),
                                 "small": torch.nn.Embedding(50, 8)})
    for kind, expected in (("auto", (True, False)), ("sparse", (True, True))):
        cfg = load_recipe("debug", SGD + [f"train.embedding_gradients={kind}"])
        prepare_training(model, None, cfg, 0.5)
        assert (model["big"].sparse, model["small"].sparse) == expected, kind
