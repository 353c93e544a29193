"""Semi-amortized inference (svi.py, the sa-vae strategy, eval.svi_steps): Kim et al. (2018)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from conftest import assert_same_final_weights, make_model, random_ids

import textvae.training as train_module
from textvae.checkpoint import latest_checkpoint, load_trainer_state
from textvae.config import EvalConfig, load_recipe
from textvae.data import TextDataset
from textvae.errors import TextVAEError
from textvae.evaluation import evaluate
from textvae.modules.posterior import diagonal_gaussian
from textvae.strategies import SemiAmortized, Strategies
from textvae.svi import batch_negative_elbo, refine_posterior
from textvae.tracking import read_metrics
from textvae.training import fit, train_step

FAST = ["eval.iw_samples=2", "train.batch_size=100", "train.log_every_steps=1"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(train_module, "plot_training_curves", lambda *args: None)


@pytest.fixture
def batch():
    return TextDataset(random_ids([6, 9, 4, 8, 7, 5], seed=2)).collate(list(range(6)))


def _informative(**overrides):
    return make_model(seed=1, init_range=0.5, emb_init_range=0.5, **overrides)


def test_each_small_step_raises_the_batch_elbo(batch):
    """With a small lr (and a many-sample gradient, so that a step follows the true gradient), every SVI step
    raises the ELBO of the batch, measured with common random numbers."""
    model = _informative().eval()
    with torch.no_grad():
        q0 = model.encode(batch.input_ids, batch.attention_mask)

    def elbo(q) -> float:  # − the batch-mean negative ELBO over the same 400 samples every time
        loc, logvar = q.base_dist.loc, 2 * q.base_dist.scale.log()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            return -float(batch_negative_elbo(model, batch.input_ids, loc, logvar, 1.0, False, samples=400))

    values, q = [elbo(q0)], q0
    for _ in range(5):
        with torch.no_grad():
            q, _ = refine_posterior(model, q, batch.input_ids, steps=1, lr=0.05, momentum=0.0, samples=200)
        values.append(elbo(q))
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    with torch.no_grad():  # the default refinement (20 steps, lr 1, momentum 0.5) ends well above the start
        q20, _ = refine_posterior(model, q0, batch.input_ids, steps=20)
    assert elbo(q20) > values[0]


def test_zero_steps_is_the_vae_step_exactly(batch):
    cfg = load_recipe("debug", ["method=vae"])
    after = []
    for refine in (None, functools.partial(refine_posterior, steps=0)):
        model = _informative().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(3)
        sums = train_step(model, None, batch, cfg, 1.0, 0.0, optimizer, None, [], refine=refine)
        after.append(([p.detach().clone() for p in model.parameters()], sums))
    assert after[0][1] == after[1][1]
    assert all(torch.equal(a, b) for a, b in zip(after[0][0], after[1][0], strict=True))


def test_sa_vae_with_zero_steps_is_the_annealed_vae_run(tmp_path):
    """method=sa-vae with no SVI steps (in training and evaluation) enables no strategy: the run is vae-anneal's,
    record for record."""
    short = FAST + ["train.max_steps=6"]
    off = ["method=sa-vae", "train.svi_steps=0", "eval.svi_steps=0"]
    assert not Strategies(load_recipe("debug", off).train).items
    a = fit(load_recipe("debug", short + off), tmp_path / "a", progress=False)
    b = fit(load_recipe("debug", short + ["method=vae-anneal"]), tmp_path / "b", progress=False)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s", "train_seconds")} for r in records]

    assert strip(read_metrics(a / "metrics.jsonl")) == strip(read_metrics(b / "metrics.jsonl"))
    assert_same_final_weights(a, b)


@pytest.mark.parametrize("preset", ["lstm-tiny", "transformer-tiny"])
def test_gradients_reach_the_encoder_through_the_refinement_and_not_when_stopped(batch, preset):
    model = _informative(**({} if preset == "lstm-tiny" else dict(
        encoder="transformer", decoder="transformer", enc_layers=1, dec_layers=1, num_heads=2, ffn_dim=16,
        dropout=0.0, enc_hidden_dim=8, dec_hidden_dim=8))).train()
    encoder = model.encoder_parameters()

    def grads(gradient: str, with_inference_loss: bool) -> list:
        model.zero_grad()
        torch.manual_seed(0)
        refine = functools.partial(refine_posterior, steps=3, gradient=gradient)
        out = model(batch.input_ids, batch.attention_mask, refine=refine)
        loss = (out.rec + out.kl).mean()
        if with_inference_loss and out.inference_loss is not None:
            loss = loss + out.inference_loss.mean()
        loss.backward()
        return [p.grad for p in encoder]

    through = grads("through", False)
    assert sum(float(g.abs().sum()) for g in through if g is not None) > 0  # end to end, through the 3 steps
    stopped = grads("stop", False)
    assert all(g is None or float(g.abs().sum()) == 0 for g in stopped)  # nothing through the steps ...
    assert sum(float(g.abs().sum()) for g in grads("stop", True) if g is not None) > 0  # ... the KL target trains it
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)


def test_through_gradient_matches_finite_differences_of_the_refined_loss(batch):
    """The end-to-end gradient is the derivative of the refined loss (autograd of the unrolled steps):
    checked against central differences along one direction of the posterior head's weight."""
    model = _informative().eval()  # no dropout: the loss is a function of the weights and the noise alone
    weight = model.posterior.linear.weight

    def refined_loss() -> torch.Tensor:
        torch.manual_seed(7)
        out = model(batch.input_ids, batch.attention_mask,
                    refine=functools.partial(refine_posterior, steps=3, lr=0.3, max_grad_norm=0.0))
        return (out.rec + out.kl).mean()

    direction = torch.randn_like(weight)
    model.zero_grad()
    refined_loss().double().backward()
    analytic = float((weight.grad * direction).sum())
    eps = 1e-2
    with torch.no_grad():
        weight += eps * direction
        up = float(refined_loss())
        weight -= 2 * eps * direction
        down = float(refined_loss())
        weight += eps * direction
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=0.05, abs=1e-3)


def test_sa_vae_run_resumes_to_the_uninterrupted_run(tmp_path):
    cfg = load_recipe("debug", FAST + ["method=sa-vae", "train.svi_steps=3", "train.max_steps=6"])
    straight = fit(cfg, tmp_path / "straight", progress=False)
    fit(load_recipe("debug", FAST + ["method=sa-vae", "train.svi_steps=3", "train.max_steps=3"]), tmp_path / "resumed",
        progress=False)
    assert load_trainer_state(latest_checkpoint(tmp_path / "resumed"))["step"] == 3
    fit(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert_same_final_weights(straight, tmp_path / "resumed")
    train = [r for r in read_metrics(straight / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 6 and all(r["kl_weight"] < 1 for r in train)  # Kim et al.'s warm-up from 0.1
    # evaluated on refined posteriors, as the method says (and recorded); --svi-steps 0 gives the encoder's
    import textvae

    assert json.loads((straight / "eval_test.json").read_text())["svi_steps"] == 20
    assert textvae.evaluate(straight, "valid", iw_samples=2, svi_steps=0).svi_steps == 0


def test_sa_vae_is_refused_under_torchrun():
    with pytest.raises(TextVAEError, match="torchrun"):
        SemiAmortized(load_recipe("debug", ["method=sa-vae"]).train).check(distributed=True)


def test_evaluation_refines_only_when_asked_and_records_it(tiny_dataset):
    model = _informative()
    plain = evaluate(model, tiny_dataset, EvalConfig(iw_samples=20), progress=False)
    refined = evaluate(model, tiny_dataset, EvalConfig(iw_samples=20, svi_steps=20), progress=False)
    assert (plain.svi_steps, refined.svi_steps) == (0, 20)
    assert plain.to_dict()["svi_steps"] == 0 and refined.to_dict()["svi_steps"] == 20
    assert refined.elbo > plain.elbo  # the refined posteriors are better ELBO posteriors
    assert refined.nll < plain.nll + 3 * (plain.nll_stderr / 10 + 0.1)  # IW-NLL with better proposals: not worse
    again = evaluate(model, tiny_dataset, EvalConfig(iw_samples=20, svi_steps=20), progress=False)
    assert again.nll == refined.nll and again.mi == refined.mi  # seeded, like every evaluation


def test_backward_clip_scales_the_incoming_gradients_jointly():
    from textvae.svi import _ClipBackward

    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    x, y = _ClipBackward.apply(5.0, a, b)
    assert torch.equal(x, a) and torch.equal(y, b)  # the identity forward
    (x * torch.tensor([30.0, 0.0, 0.0]) + 0 * x).sum().backward(retain_graph=True)
    (y * torch.tensor([0.0, 40.0])).sum().backward()
    # the two backward calls are separate: each gradient (norms 30 and 40) is scaled to norm 5 on its own
    assert a.grad.norm() == pytest.approx(5.0, rel=1e-5) and b.grad.norm() == pytest.approx(5.0, rel=1e-5)
    a.grad = b.grad = None
    x, y = _ClipBackward.apply(5.0, a, b)
    (x[0] * 30.0 + y[1] * 40.0).backward()  # one backward: the joint norm 50 is scaled to 5
    assert torch.cat([a.grad, b.grad]).tolist() == pytest.approx([3.0, 0, 0, 0, 4.0], abs=1e-5)
    a.grad = b.grad = None
    x, y = _ClipBackward.apply(5.0, a, b)
    (x[0] * 3.0).backward()  # under the norm: untouched
    assert a.grad.tolist() == pytest.approx([3.0, 0, 0]) and b.grad.tolist() == [0.0, 0.0]


def test_end_to_end_gradient_is_clipped_per_step(batch):
    """With Kim et al.'s clip, the encoder's gradient through 20 steps stays bounded; without, it grows."""
    model = _informative().eval()

    def encoder_grad_norm(clip: float) -> float:
        model.zero_grad()
        torch.manual_seed(0)
        out = model(batch.input_ids, batch.attention_mask,
                    refine=functools.partial(refine_posterior, steps=20, lr=1.0, max_grad_norm=clip))
        (out.rec + out.kl).mean().backward()
        return float(torch.sqrt(sum((p.grad**2).sum() for p in model.posterior.parameters())))

    clipped = encoder_grad_norm(1e-5)
    assert 0 < clipped < encoder_grad_norm(0.0)


def _posterior_and_decoder_grads(model, batch, gradient: str, **kwargs) -> list[torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(3)
    refine = functools.partial(refine_posterior, gradient=gradient, **kwargs)
    out = model(batch.input_ids, batch.attention_mask, refine=refine)
    (out.rec + out.kl).mean().backward()
    return [p.grad.clone() for p in (*model.posterior.parameters(), *model.decoder.parameters()) if p.grad is not None]


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("dropout", [False, True])
def test_finite_difference_reverse_pass_approximates_the_exact_one_without_clipping(batch, dropout):
    """Kim et al.'s finite-difference Hessian-vector products, with nothing clipped, give the exact end-to-end
    gradient of the encoder's posterior head and of the decoder, up to the differences' error. With dropout,
    only if each reverse step replays its forward step's masks (the exact pass differentiates those masks)."""
    model = _informative(dec_dropout_in=0.3, dec_dropout_out=0.3).train(dropout)
    kwargs = dict(steps=3, lr=0.3, max_grad_norm=0.0)
    exact = _posterior_and_decoder_grads(model, batch, "through", **kwargs)
    approx = _posterior_and_decoder_grads(model, batch, "finite-difference", fd_eps=1e-3, **kwargs)
    assert len(exact) == len(approx)
    assert _cosine(exact, approx) > 0.999
    head_exact, head_approx = exact[0], approx[0]  # the posterior head's weight: through the steps alone
    assert torch.allclose(head_approx, head_exact, rtol=0.05, atol=1e-3 * float(head_exact.abs().max()))


def test_finite_difference_reverse_pass_clips_the_adjoint(batch):
    """With a tiny clip the gradient reaching λ₀ is bounded by it, and it is not zero."""
    model = _informative().train()

    torch.manual_seed(3)
    posterior = model.encode(batch.input_ids, batch.attention_mask)
    loc0 = posterior.base_dist.loc.detach().requires_grad_()
    logvar0 = (2 * torch.log(posterior.base_dist.scale)).detach().requires_grad_()
    refined, _ = refine_posterior(model, diagonal_gaussian(loc0, torch.exp(0.5 * logvar0)), batch.input_ids,
                                  steps=4, lr=1.0, max_grad_norm=1e-3, gradient="finite-difference")
    (refined.base_dist.loc.sum() * 1e3 + refined.base_dist.scale.sum() * 1e3).backward()
    norm = float(torch.sqrt(loc0.grad.pow(2).sum() + logvar0.grad.pow(2).sum()))
    assert 0 < norm <= 1e-3 * (1 + 1e-4)


def _denormals_flushed() -> bool:
    return torch.tensor([1e-39]).item() == 0.0  # an fp32 denormal survives unless it is flushed


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode (not x86 SSE3)")
def test_sa_vae_flushes_denormals_in_its_training_loop_only(tmp_path, monkeypatch):
    """train.flush_denormal (set by the sa-vae methods) holds while fit's training steps run, not after."""
    seen = []

    def recording_step(*args, **kwargs):
        seen.append(_denormals_flushed())
        return train_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    for method in ("sa-vae", "vae"):
        fit(load_recipe("debug", FAST + [f"method={method}", "train.svi_steps=2", "train.max_steps=2"]),
            tmp_path / method, progress=False)
        assert seen and set(seen) == {method == "sa-vae"}, method
        assert not _denormals_flushed()  # restored for whatever runs next
        seen.clear()
