"""Loop-level strategies (strategies.py, their use in training.py): aggressive training and AE pretraining."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_same_final_weights, make_model, random_ids

import textvae.strategies as strategies_module
import textvae.training as train_module
from textvae.checkpoint import latest_checkpoint, load_model_dir, load_trainer_state
from textvae.config import TrainConfig, load_recipe
from textvae.data import TextDataset
from textvae.modules.critics import build_critic
from textvae.strategies import ae_stage_over, aggressive_after_epoch, aggressive_encoder_updates
from textvae.tracking import read_metrics
from textvae.training import critic_own_parameters, fit, train_step

# debug recipe with batch 100: 400 training lines → 4 steps per epoch; one metrics line per step
FAST = ["eval.iw_samples=2", "train.batch_size=100", "train.log_every_steps=1"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The curves are tested elsewhere; drawing them would dominate these short runs."""
    monkeypatch.setattr(train_module, "plot_training_curves", lambda *args: None)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _same(params, snapshot) -> bool:
    return all(torch.equal(p, s) for p, s in zip(params, snapshot, strict=True))


# --- aggressive training (He et al. 2019) -------------------------------------------------------


def test_aggressive_inner_loop_moves_only_the_encoder_then_the_decoder_step_only_the_decoder():
    cfg = load_recipe("debug", ["method=critic-neural", "train.aggressive_max_encoder_steps=6",
                                "train.aggressive_check_every_steps=3"])
    model = make_model(seed=0, init_range=0.3, emb_init_range=0.3).train()
    critic = build_critic(cfg.critic, model).train()
    critic_params = critic_own_parameters(critic, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    critic_optimizer = torch.optim.Adam(critic_params, lr=1e-2)
    data = TextDataset(random_ids([3, 10, 5, 7, 4, 9, 6, 8] * 2, seed=5))
    batches = data.batches(4, shuffle=True, seed=0)
    step = functools.partial(train_step, model, critic, cfg=cfg, kl_w=1.0, critic_w=2.0, optimizer=optimizer,
                             critic_optimizer=critic_optimizer, critic_params=critic_params)
    encoder, decoder = model.encoder_parameters(), list(model.decoder.parameters())
    enc0, dec0, critic0 = _snapshot(encoder), _snapshot(decoder), _snapshot(critic_params)
    draws = []
    n = aggressive_encoder_updates(step, batches[0], lambda: draws.append(1) or batches[len(draws) % 4], cfg.train)
    assert 3 <= n <= 6 and len(draws) == n - 1  # the first step uses the current batch, then fresh ones
    assert _same(decoder, dec0)  # the decoder never moved ...
    assert all(p not in optimizer.state for p in decoder)  # ... and its Adam state was never touched
    assert not _same(encoder, enc0) and not _same(critic_params, critic0)  # the inference side learnt
    assert all(optimizer.state[p]["step"] == n for p in encoder)
    enc1, critic1 = _snapshot(encoder), _snapshot(critic_params)
    step(batches[0], update="decoder")  # then one decoder step: the other side stays
    assert not _same(decoder, dec0)
    assert _same(encoder, enc1) and _same(critic_params, critic1)
    assert all(optimizer.state[p]["step"] == 1 for p in decoder)


def test_aggressive_decoder_step_with_a_critic_is_the_elbo_only_decoder_step():
    """The critic term cannot reach the decoder; in a decoder-only step it must not change the clipping either."""
    cfg = load_recipe("debug", ["method=critic-self", "train.grad_clip=0.5"])  # clipping engages
    data = TextDataset(random_ids([3, 10, 5, 7, 4, 9, 6, 8], seed=5))
    batch = data.batches(8)[0]
    after = []
    for critic_w in (50.0, 0.0):  # a large λ would change the joint clip factor
        model = make_model(seed=0, init_range=0.3, emb_init_range=0.3).train()
        critic = build_critic(cfg.critic, model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        torch.manual_seed(1)  # the same z sample and dropout masks in both steps
        sums = train_step(model, critic, batch, cfg=cfg, kl_w=1.0, critic_w=critic_w, optimizer=optimizer,
                          critic_optimizer=None, critic_params=[], update="decoder")
        assert sums["critic_loss"] > 0  # still logged
        after.append(_snapshot(model.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*after, strict=True))


def test_aggressive_inner_loop_stops_when_the_windowed_loss_rises_or_at_the_cap():
    cfg = load_recipe("debug", ["train.aggressive_check_every_steps=15"]).train
    assert cfg.aggressive_max_encoder_steps == 99  # He et al.: `while sub_iter < 100`
    batch = SimpleNamespace(num_predicted_tokens=10)

    def scripted(losses):
        calls = []

        def step(b, update):
            assert update == "encoder" and b is batch
            calls.append(1)
            return {"loss": losses(len(calls))}
        return step, calls

    # loss per token falls for two windows of 15, rises in the third: stop after its 15th step
    step, calls = scripted(lambda i: 50.0 - i if i <= 30 else 100.0)
    assert aggressive_encoder_updates(step, batch, lambda: batch, cfg) == 45 and len(calls) == 45
    # a rise within a window is not a stop: only window means are compared
    step, calls = scripted(lambda i: 100.0 if i == 16 else 50.0 - i)
    assert aggressive_encoder_updates(step, batch, lambda: batch, cfg) == 99 and len(calls) == 99
    # always improving: the cap
    step, calls = scripted(lambda i: 1000.0 - i)
    assert aggressive_encoder_updates(step, batch, lambda: batch, cfg) == 99


def test_aggressive_switches_off_at_the_first_fall_of_validation_mi():
    state = {"aggressive": True, "aggressive_prev_mi": None}
    assert [aggressive_after_epoch(state, mi) for mi in (0.2, 0.3, 0.3, 0.1, 0.5, 0.2)] == [
        False, False, False, True, False, False]
    assert state == {"aggressive": False, "aggressive_prev_mi": 0.2}


@pytest.fixture
def scripted_mi(monkeypatch):
    """Validation MI of 0.2, 0.3, 0.1, 0.5 after epochs 1-4, so aggressive mode ends after epoch 3."""
    seen = []

    def after_epoch(state, mi):
        seen.append(state["epoch"])
        return aggressive_after_epoch(state, (0.2, 0.3, 0.1, 0.5)[state["epoch"]])

    monkeypatch.setattr(strategies_module, "aggressive_after_epoch", after_epoch)
    return seen


AGGRESSIVE = ["method=aggressive", "train.max_epochs=5", "train.aggressive_max_encoder_steps=4", "train.aggressive_check_every_steps=2"]


def test_aggressive_run_logs_its_switch_off_and_the_flag_survives_resume(tmp_path, scripted_mi):
    cfg = load_recipe("debug", FAST + AGGRESSIVE + ["train.max_steps=16"])
    straight = fit(cfg, tmp_path / "straight", progress=False)
    assert scripted_mi == [0, 1, 2, 3]  # checked after each whole epoch
    records = read_metrics(straight / "metrics.jsonl")
    events = [r for r in records if r["split"] == "event"]
    assert [(e["event"], e["step"], e["epoch"]) for e in events] == [("aggressive_off", 12, 3)]
    train = [r for r in records if r["split"] == "train"]
    assert [r["aggressive"] for r in train] == [True] * 12 + [False] * 4
    counts = [r["encoder_steps"] for r in train]
    assert all(b - a in (2, 4) for a, b in zip([0, *counts[:11]], counts[:12], strict=True))  # He's rule, 2 or 4
    assert counts[12:] == [counts[11]] * 4  # no encoder-only steps once it is off
    assert events[0]["encoder_steps"] == counts[11]
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["aggressive"] for r in valid] == [True, True, False, False]
    assert valid[0]["encoder_steps_per_step"] >= 2 and valid[3]["encoder_steps_per_step"] == 0
    # interrupted after the switch (step 14, mid-epoch), then resumed: it stays off, and the run is the same
    fit(load_recipe("debug", FAST + AGGRESSIVE + ["train.max_steps=14"]), tmp_path / "resumed", progress=False)
    state = load_trainer_state(latest_checkpoint(tmp_path / "resumed"))
    assert state["aggressive"] is False and state["encoder_steps"] == counts[11]
    fit(cfg, tmp_path / "resumed", resume=True, progress=False)
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["encoder_steps"] for r in resumed if r["split"] == "train"] == counts
    assert [r for r in resumed if r["split"] == "event"] == events
    assert_same_final_weights(straight, tmp_path / "resumed")


# --- AE pretraining, then free bits (Li et al. 2019) ----------------------------------------------


def test_ae_fb_reinitialises_the_decoder_and_keeps_the_encoder_at_the_stage_boundary(tmp_path, monkeypatch):
    calls, current = [], [tmp_path / "run"]
    begin = strategies_module.AEStage.begin_vae_stage

    def spy(self, loop):
        model, state = loop.model, loop.state
        best, _ = load_model_dir(current[0] / "model")
        assert all(torch.equal(v, best.state_dict()[k]) for k, v in model.state_dict().items())  # the best AE
        before = {k: v.clone() for k, v in model.state_dict().items()}
        begin(self, loop)
        calls.append((state["step"], before, {k: v.clone() for k, v in model.state_dict().items()}))

    monkeypatch.setattr(strategies_module.AEStage, "begin_vae_stage", spy)
    cfg = load_recipe("debug", FAST + ["method=ae-fb", "train.ae_epochs=1", "train.max_steps=6"])
    run = fit(cfg, tmp_path / "run", progress=False)
    [(step, before, after)] = calls
    assert step == 4  # after the one AE epoch
    for key in before:
        if key.startswith("decoder."):  # re-initialised: new values, in He et al.'s ranges
            bound = 0.1 if "embed" in key else 0.01
            assert not torch.equal(before[key], after[key]), key
            assert after[key].abs().max() <= bound, key
        else:  # the encoder and posterior head are kept
            assert torch.equal(before[key], after[key]), key
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert [r["stage"] for r in train] == ["ae"] * 4 + ["vae"] * 2
    assert [r["kl_weight"] for r in train] == pytest.approx([0, 0, 0, 0, 0, 1 / 40])  # warm-up from 0 restarts
    assert [(r["event"], r["step"]) for r in records if r["split"] == "event"] == [("vae_stage", 4)]
    state = load_trainer_state(latest_checkpoint(run))
    assert (state["stage"], state["schedule_start_step"], state["schedule_start_epoch"]) == ("vae", 4, 1)
    assert (state["n_decays"], state["lr"]) == (0, cfg.train.lr)  # the lr rule started over
    # interrupted right at the boundary and resumed: the stage is in the trainer state, so the decoder is
    # not re-initialised a second time and the run is the same as the uninterrupted one
    short = load_recipe("debug", FAST + ["method=ae-fb", "train.ae_epochs=1", "train.max_steps=4"])
    current[0] = tmp_path / "resumed"
    fit(short, tmp_path / "resumed", progress=False)
    fit(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert len(calls) == 2
    assert_same_final_weights(run, tmp_path / "resumed")


def test_ae_stage_ends_after_its_epochs_or_once_converged():
    cfg = TrainConfig(ae_epochs=3, max_lr_decays=2)
    assert not ae_stage_over({"stage": "ae", "epoch": 2, "n_decays": 1}, cfg)
    assert ae_stage_over({"stage": "ae", "epoch": 3, "n_decays": 0}, cfg)
    assert ae_stage_over({"stage": "ae", "epoch": 1, "n_decays": 2}, cfg)  # the lr schedule has run its course
    assert not ae_stage_over({"stage": "vae", "epoch": 9, "n_decays": 2}, cfg)


# --- the strategy interface ----------------------------------------------------------------------


def test_strategies_registry_enables_by_config_and_a_plain_run_has_none():
    assert set(strategies_module.STRATEGIES) >= {"aggressive", "ae_stage"}
    plain = strategies_module.Strategies(load_recipe("debug").train)
    assert plain.items == [] and plain.initial_state() == {} and plain.update({}) == "all"
    assert plain.kl_weight({}, 0.3) == 0.3 and plain.selection_loss({}, None, 7.0) == 7.0
    both = strategies_module.Strategies(load_recipe("debug", ["method=aggressive", "train.ae_epochs=2"]).train)
    assert [type(s) for s in both.items] == [strategies_module.AEStage, strategies_module.Aggressive]
    state = both.initial_state()
    assert state["stage"] == "ae" and state["aggressive"] is True
    assert both.kl_weight(state, 0.5) == 0.0 and both.update(state) == "decoder"
    assert both.selection_loss(state, SimpleNamespace(rec=3.0), 9.0) == 3.0  # the AE stage is selected by rec
    state.update(stage="vae", aggressive=False)
    assert both.kl_weight(state, 0.5) == 0.5 and both.update(state) == "all"
    assert both.selection_loss(state, SimpleNamespace(rec=3.0), 9.0) == 9.0


def test_a_new_strategy_needs_only_a_registry_entry(tmp_path, monkeypatch):
    """An extension point: a strategy registered from outside changes the loop through its hooks alone."""
    class HalfKL(strategies_module.Strategy):
        sum_keys = ("half_calls",)

        @staticmethod
        def enabled(cfg):
            return True

        def initial_state(self):
            return {"half_calls": 0}

        def kl_weight(self, state, weight):
            return weight / 2

        def before_step(self, loop, batch):
            loop.state["half_calls"] += 1
            return {"half_calls": 1}

        def fields(self, state, sums):
            return {"half_calls": state["half_calls"], "epoch_half_calls": sums["half_calls"]}

    monkeypatch.setitem(strategies_module.STRATEGIES, "half_kl", HalfKL)
    run = fit(load_recipe("debug", FAST + ["method=vae", "train.max_steps=6"]), tmp_path / "run", progress=False)
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["kl_weight"] for r in train] == [0.5] * 6  # the plain VAE's weight is 1
    assert [r["half_calls"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch_half_calls"] for r in train] == [1, 2, 3, 4, 1, 2]  # per-epoch sums reset each epoch
    assert load_trainer_state(latest_checkpoint(run))["half_calls"] == 6


def test_fit_names_no_strategy():
    """The loop calls strategies through their hooks; no branch of training.py names one."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(train_module))
    names = {"aggressive", "ae_epochs", "stage", "ae", "encoder_steps"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            text = ast.unparse(node.test)
            assert not any(name in text.replace("'", '"').split('"') or f".{name}" in text for name in names), text
