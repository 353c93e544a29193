"""Training (training.py, objectives.py, checkpoint.py): KL schedule, run directory, resume."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import DEBUG_DIR, assert_same_final_weights

from textvae.checkpoint import checkpoints, latest_checkpoint, load_run, load_trainer_state
from textvae.config import TextVAEError, TrainConfig, config_from_dict, load_recipe
from textvae.model import VAEOutput
from textvae.objectives import kl_weight, negative_elbo
from textvae.tracking import read_metrics
from textvae.training import fit

FAST = ["eval.iw_samples=2"]  # debug recipe: 400 training lines, batch 16 → 25 steps per epoch


# --- objectives ---------------------------------------------------------------------------------


def test_kl_weight_linear_from_kl_start_and_capped_at_beta():
    cfg = TrainConfig(kl_start=0.1, kl_warmup_epochs=2.0, beta=0.5)
    steps_per_epoch = 25  # warm-up over 50 steps: +1/50 per step
    weights = [kl_weight(step, steps_per_epoch, cfg) for step in range(120)]
    assert weights[0] == pytest.approx(0.5 * 0.1)
    for step in range(46):  # linear while below the cap (0.1 + 45/50 = 1.0)
        assert weights[step] == pytest.approx(0.5 * (0.1 + step / 50)), step
    assert max(weights) == pytest.approx(0.5)
    assert all(w == pytest.approx(0.5) for w in weights[45:])
    assert all(b >= a for a, b in zip(weights, weights[1:], strict=False))


def test_kl_weight_without_warmup_is_beta():
    for beta in (1.0, 0.2, 3.0):
        cfg = TrainConfig(kl_start=1.0, beta=beta)
        assert [kl_weight(step, 25, cfg) for step in (0, 1, 10, 10_000)] == pytest.approx([beta] * 4)
    # a zero-length warm-up cannot divide by zero
    assert kl_weight(0, 25, TrainConfig(kl_start=0.0, kl_warmup_epochs=0.0)) == 1.0


def test_method_vae_anneal_schedule_through_the_recipe():
    tc = load_recipe("debug", ["method=vae-anneal"]).train
    assert kl_weight(0, 10, tc) == pytest.approx(0.1)
    assert kl_weight(50, 10, tc) == pytest.approx(0.1 + 50 / 100)
    assert kl_weight(90, 10, tc) == pytest.approx(1.0)
    assert kl_weight(1000, 10, tc) == pytest.approx(1.0)


def test_negative_elbo_is_batch_mean_of_rec_plus_weighted_kl():
    out = VAEOutput(rec=torch.tensor([10.0, 20.0]), kl=torch.tensor([1.0, 3.0]), z=None, posterior=None)
    assert float(negative_elbo(out)) == pytest.approx(17.0)
    assert float(negative_elbo(out, 0.5)) == pytest.approx(16.0)


# --- run directory and resume -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An interrupted run (20 steps, resumed to 40) and an uninterrupted one (40 steps)."""
    root = tmp_path_factory.mktemp("runs")
    interrupted, straight = root / "interrupted", root / "straight"
    fit(load_recipe("debug", FAST + ["train.max_steps=20"]), interrupted, progress=False)
    before = (interrupted / "metrics.jsonl").read_text()
    first_ckpts = [p.name for p in checkpoints(interrupted)]
    # as if the process died after logging a step past its last checkpoint: resume must drop this line
    with open(interrupted / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"split": "train", "step": 21, "loss": -1.0}) + "\n")
    fit(load_recipe("debug", FAST + ["train.max_steps=40"]), interrupted, resume=True, progress=False)
    fit(load_recipe("debug", FAST + ["train.max_steps=40"]), straight, progress=False)
    return SimpleNamespace(interrupted=interrupted, straight=straight, before=before, first_ckpts=first_ckpts)


def test_run_directory_layout(runs):
    run = runs.straight
    for name in ("config.yaml", "metrics.jsonl", "eval_test.json", "curves.png"):
        assert (run / name).is_file(), name
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (run / "model").iterdir()}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    # the resolved recipe, with the sha256 of each data file it read (a self-contained run)
    recipe = load_recipe("debug", FAST + ["train.max_steps=40"])
    digests = {name: hashlib.sha256((DEBUG_DIR / name).read_bytes()).hexdigest()
               for name in ("train.txt", "valid.txt", "test.txt")}
    assert cfg.data.fingerprints == digests
    assert cfg == replace(recipe, data=replace(recipe.data, fingerprints=digests))
    loaded_cfg, model, tokenizer = load_run(run)
    assert loaded_cfg == cfg and model.latent_dim == 4 and tokenizer.vocab_size == model.config.vocab_size
    result = json.loads((run / "eval_test.json").read_text())
    assert result["split"] == "test" and result["iw_samples"] == 2 and result["num_sequences"] == 60


def test_checkpoints_keep_the_last_n_and_load_with_weights_only(runs):
    names = [p.name for p in checkpoints(runs.straight)]
    assert names == ["step-000000025", "step-000000040"]  # end of epoch 1, then max_steps; keep_checkpoints=2
    state = load_trainer_state(latest_checkpoint(runs.straight))  # torch.load(weights_only=True)
    assert state["step"] == 40 and state["epoch"] == 1 and state["batch_in_epoch"] == 15
    assert {"optimizer", "rng", "lr", "best_val"} <= set(state)


def test_training_lowers_the_validation_loss(runs):
    valid = [r for r in read_metrics(runs.straight / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [25, 40]
    assert valid[-1]["loss"] < valid[0]["loss"]
    train = [r for r in read_metrics(runs.straight / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40]  # log_every_steps=10
    for r in train:
        assert r["loss"] == pytest.approx(r["rec"] + r["kl_weight"] * r["kl"], rel=1e-4)


def test_resume_continues_from_the_checkpoint(runs):
    assert runs.first_ckpts == ["step-000000020"]
    assert load_trainer_state(latest_checkpoint(runs.interrupted))["step"] == 40
    records = read_metrics(runs.interrupted / "metrics.jsonl")
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), Counter(keys)
    assert not any(r.get("loss") == -1.0 for r in records)  # the line past the checkpoint was dropped
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == [10, 20, 30, 40] and steps == sorted(steps)
    # the first 20 steps' records are untouched, and match the uninterrupted run (same seed, same data)
    assert (runs.interrupted / "metrics.jsonl").read_text().startswith(runs.before)
    straight = {(r["split"], r["step"]): r for r in read_metrics(runs.straight / "metrics.jsonl")}
    for r in records:
        if r["split"] == "train" and r["step"] <= 20:
            assert r["loss"] == pytest.approx(straight["train", r["step"]]["loss"], rel=1e-6)
    # validation at the break (step 20), then at the end of epoch 1 and at max_steps, each once
    assert [r["step"] for r in records if r["split"] == "valid"] == [20, 25, 40]
    assert (runs.interrupted / "eval_test.json").is_file()


def test_resumed_run_matches_an_uninterrupted_one(runs):
    assert_same_final_weights(runs.interrupted, runs.straight)


def test_existing_run_directory_is_left_untouched(runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(TextVAEError, match=r"already exists; pass --overwrite or --resume"):
        fit(load_recipe("debug", FAST + ["train.max_steps=1"]), run, progress=False)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "keep me"
    with pytest.raises(TextVAEError, match="--resume: no checkpoint"):
        fit(load_recipe("debug", FAST + ["train.max_steps=1"]), run, resume=True, progress=False)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("old")
    fit(load_recipe("debug", FAST + ["train.max_steps=2", "train.log_every_steps=1"]), run, overwrite=True,
        progress=False)
    assert not (run / "notes.txt").exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"] == [1, 2]


def test_time_budget_stops_training_and_survives_a_resume(tmp_path):
    """train.max_train_minutes: the step that crosses the budget is the last; the time spent is checkpointed."""
    tiny = FAST + ["train.max_train_minutes=1e-9", "train.log_every_steps=1"]  # any step crosses it
    run = fit(load_recipe("debug", tiny), tmp_path / "run", progress=False)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"] == [1]
    assert (run / "eval_test.json").is_file()  # a budget ends the run as usual: test evaluation follows
    state = load_trainer_state(latest_checkpoint(run))
    assert state["step"] == 1 and state["train_seconds"] > 0
    valid = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["epoch_fraction"] for r in valid] == [1 / 25]  # 1 of the epoch's 25 batches
    fit(load_recipe("debug", tiny), run, resume=True, progress=False)  # the budget is already spent
    assert load_trainer_state(latest_checkpoint(run))["step"] == 1
    fit(load_recipe("debug", FAST + ["train.max_steps=3", "train.log_every_steps=1"]), run, resume=True,
        progress=False)  # without it, training goes on
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"] == [1, 2, 3]


def test_language_model_run(tmp_path):
    run = fit(load_recipe("debug", FAST + ["method=lm", "train.max_steps=3"]), tmp_path / "lm", progress=False)
    result = json.loads((run / "eval_test.json").read_text())
    assert result["kl"] == 0 and result["mi"] == 0 and result["au"] == 0 and result["iw_samples"] == 0
    assert result["nll"] == pytest.approx(-result["elbo"], rel=1e-5)
    assert json.loads((run / "model" / "config.json").read_text())["latent_dim"] == 0


def test_validation_iw_nll_each_epoch_when_asked(tmp_path):
    fast = ["train.max_steps=8", "eval.iw_samples=2", "train.batch_size=100"]
    plain = fit(load_recipe("debug", fast), tmp_path / "plain", progress=False)
    valid = [r for r in read_metrics(plain / "metrics.jsonl") if r["split"] == "valid"]
    assert all(r["iw_samples"] == 1 and r["nll"] == pytest.approx(r["rec"] + r["kl"]) for r in valid)
    iw = fit(load_recipe("debug", fast + ["eval.valid_iw_samples=20"]), tmp_path / "iw", progress=False)
    valid_iw = [r for r in read_metrics(iw / "metrics.jsonl") if r["split"] == "valid"]
    assert all(r["iw_samples"] == 20 for r in valid_iw)
    # the same training steps (evaluation draws from its own seeded stream); validation's −ELBO is the same
    # estimate on other samples, and the reported nll is the IW one
    def train(run):
        return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
                for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert train(iw) == train(plain)
    assert [r["loss"] for r in valid_iw] == pytest.approx([r["loss"] for r in valid], abs=0.5)
    assert all(r["nll"] != r["rec"] + r["kl"] for r in valid_iw)
    assert all(r["train_seconds"] > 0 for r in valid_iw)


def test_snapshots_at_training_minutes_copy_the_best_model_once(tmp_path):
    from textvae.checkpoint import load_model_dir

    cfg = load_recipe("debug", ["train.max_steps=8", "eval.iw_samples=2", "train.batch_size=100",
                                "train.snapshot_minutes=[1e-7,1000]"])
    run = fit(cfg, tmp_path / "run", progress=False)
    events = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "snapshot"]
    assert [(e["minutes"], e["step"]) for e in events] == [(1e-7, 1)]  # due after the first step; 1000 never
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["minutes-1e-07"]
    snap, _ = load_model_dir(run / "snapshots" / "minutes-1e-07")  # a complete model directory
    assert load_trainer_state(latest_checkpoint(run))["snapshots"] == [1e-7]
    with pytest.raises(TextVAEError, match="train.snapshot_minutes"):
        load_recipe("debug", ["train.snapshot_minutes=[0]"])
    assert snap.latent_dim == 4
