"""Speed paths that must not move a figure: the fused output layer + cross-entropy, and bf16 training.

The fused layer (modules/output.py) gives F.cross_entropy's values and gradients; a fixed tiny
model's IW-NLL and ELBO equal the values the unfused code gave; ``train.precision`` resolves as
documented, and a bf16 training run of a tiny model stays close to the fp32 one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, make_model, random_ids

from textvae.config import EvalConfig, load_recipe
from textvae.data import TextDataset
from textvae.evaluation import evaluate
from textvae.modules import output
from textvae.modules.output import linear_cross_entropy
from textvae.precision import bf16_is_fast, resolve_precision
from textvae.tracking import read_metrics
from textvae.training import fit


def _layer(seed: int = 0, n: int = 37, h: int = 8, v: int = 50, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    weight = torch.randn(v, h, generator=gen).to(device).requires_grad_()
    bias = torch.randn(v, generator=gen).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    targets[::5] = 0  # padding positions
    return hidden, weight, bias, targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("upstream", ["sum", "mean", "per-position weights"])
@pytest.mark.parametrize("buffer_rows", [64, 16])  # the weight's gradient in one product, or in several
def test_fused_layer_equals_linear_then_cross_entropy(monkeypatch, upstream, device, buffer_rows):
    monkeypatch.setattr(output, "BLOCK_BYTES", 4 * 50 * 6)  # blocks of 16 rows: several blocks, a ragged last one
    monkeypatch.setattr(output, "GRAD_BUFFER_BYTES", 4 * 50 * buffer_rows)
    hidden, weight, bias, targets = _layer(device=device)
    weights = {"sum": torch.ones(targets.shape), "mean": torch.full(targets.shape, 1 / targets.numel()),
               "per-position weights": torch.rand(targets.shape)}[upstream]
    weights = weights.to(device)
    ours = linear_cross_entropy(hidden, weight, bias, targets, ignore_index=0)
    (ours * weights).sum().backward()
    got = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=0, reduction="none")
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    assert bool((ours[targets == 0] == 0).all())
    for mine, theirs in zip(got, (hidden.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_fused_layer_backward_twice_with_retained_graph():
    """The backward scales its saved gradients in place; a second backward (retain_graph) recomputes them."""
    hidden, weight, bias, targets = _layer()
    loss = linear_cross_entropy(hidden, weight, bias, targets, ignore_index=0).mean()
    first = torch.autograd.grad(loss, (hidden, weight, bias), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, weight, bias))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_layer_without_gradients_and_in_bf16(device):
    hidden, weight, bias, targets = _layer(seed=1, device=device)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=0, reduction="none")
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, targets, 0), ref, rtol=1e-6, atol=1e-5)
    low = linear_cross_entropy(hidden.detach().bfloat16(), weight, bias, targets, 0)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref.detach(), rtol=0.05, atol=0.1)  # bf16 products, fp32 softmax


def test_fixed_tiny_model_iw_nll_and_elbo_are_unchanged():
    """Values given by the unfused output layer (F.linear then F.cross_entropy) on this model and seed (the
    architecture with both biases, as the values were first computed)."""
    model = make_model(seed=0, init_range=0.5, emb_init_range=0.5, posterior_bias=True, output_bias=True)
    dataset = TextDataset(random_ids([3, 10, 5, 7, 4, 9, 6, 8, 3, 10, 5, 7], seed=3))
    result = evaluate(model, dataset, EvalConfig(iw_samples=50, batch_size=5, max_chunk_logits=3000), seed=0,
                      progress=False)
    assert result.nll == pytest.approx(25.621124267578125, abs=1e-5)
    assert result.elbo == pytest.approx(-26.098798751831055, abs=1e-5)


def test_auto_precision_is_bf16_only_where_the_device_has_native_bf16():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, frozenset({"avx2", "amx_bf16", "amx_tile"})) == "bf16"
    assert resolve_precision("auto", cpu, frozenset({"avx512f", "avx512_bf16"})) == "bf16"
    assert resolve_precision("auto", cpu, frozenset({"avx2", "avx512f", "fma"})) == "fp32"
    assert resolve_precision("fp32", cpu, frozenset({"amx_bf16"})) == "fp32"
    assert resolve_precision("bf16", cpu, frozenset()) == "bf16"
    assert bf16_is_fast(cpu, frozenset()) is False
    if not torch.cuda.is_available():
        assert resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_bf16_training_stays_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = load_recipe("debug", ["train.max_steps=50", "eval.iw_samples=2", f"train.precision={precision}"])
        run = fit(cfg, tmp_path / precision, progress=False)
        losses[precision] = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "valid"]
    assert losses["bf16"] != losses["fp32"]  # it really ran in bf16
    for a, b in zip(losses["fp32"], losses["bf16"], strict=True):
        assert b == pytest.approx(a, rel=0.02)


def test_fp16_is_refused_off_cuda_before_anything_is_written(tmp_path):
    from textvae.config import load_recipe
    from textvae.errors import TextVAEError
    from textvae.training import fit

    with pytest.raises(TextVAEError, match="train.precision=fp16 needs a CUDA device"):
        fit(load_recipe("debug", ["train.precision=fp16", "device=cpu"]), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_in_each_precision_stays_finite_and_close_to_cpu(tmp_path, precision):
    from textvae.checkpoint import read_json
    from textvae.config import load_recipe
    from textvae.training import fit

    common = ["train.max_epochs=1", "eval.iw_samples=4"]
    cpu = fit(load_recipe("debug", [*common, "device=cpu"]), tmp_path / "cpu", progress=False)
    gpu = fit(load_recipe("debug", [*common, "device=cuda", f"train.precision={precision}"]), tmp_path / "gpu",
              progress=False)
    a, b = read_json(cpu / "eval_test.json"), read_json(gpu / "eval_test.json")
    assert math.isfinite(b["nll"])
    assert b["nll"] == pytest.approx(a["nll"], rel=0.05)
