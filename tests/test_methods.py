"""Methods (methods.py): every method loads and trains; beta-<b> parsing; composition with the critic."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import textvae.training as train_module
from textvae.config import load_recipe
from textvae.methods import FAMILIES, METHODS, method_overrides, method_table
from textvae.objectives import kl_weight
from textvae.tracking import read_metrics
from textvae.training import fit

SMOKE = ["train.max_steps=3", "eval.iw_samples=2"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The curves are tested elsewhere; drawing them would dominate these three-step runs."""
    monkeypatch.setattr(train_module, "plot_training_curves", lambda *args: None)


@pytest.mark.parametrize("name", [*METHODS, "beta-0.4"])
def test_every_method_loads_and_trains_a_few_steps(name, tmp_path):
    cfg = load_recipe("debug", [f"method={name}", *SMOKE])
    assert cfg.method == name
    run = fit(cfg, tmp_path / "run", progress=False)
    result = json.loads((run / "eval_test.json").read_text())
    assert math.isfinite(result["nll"]) and result["iw_samples"] == (0 if name == "lm" else 2)
    valid = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [3] and math.isfinite(valid[0]["loss"])


def test_each_method_sets_what_it_names():
    load = lambda name: load_recipe("debug", [f"method={name}"])  # noqa: E731
    assert load("cyclical").train.kl_schedule == "cyclical"
    assert [load(n).train.free_bits_mode for n in ("free-bits", "free-bits-mask", "kl-threshold")] == [
        "batch_dim", "example_dim", "example_total"]
    assert all(load(n).train.free_bits > 0 for n in ("free-bits", "free-bits-mask", "kl-threshold", "ae-fb"))
    assert load("aggressive").train.aggressive and load("ae-fb").train.ae_epochs > 0
    fb = load("critic-self-fb")  # the self critic's settings, plus a floor under every dimension's KL
    assert (fb.critic, fb.model) == (load("critic-self").critic, load("critic-self").model)
    assert (fb.train.free_bits, fb.train.free_bits_mode) == (0.1, "batch_dim")
    assert load("bn-vae").model.bn_gamma > 0 and load("word-dropout").model.word_dropout > 0
    sa, fd = load("sa-vae"), load("sa-vae-fd")  # the same SA-VAE, differentiated two ways
    assert (sa.train.svi_gradient, fd.train.svi_gradient) == ("through", "finite-difference")
    assert sa.train.svi_steps == fd.train.svi_steps == sa.eval.svi_steps == fd.eval.svi_steps == 20
    assert dataclasses.replace(sa.train, svi_gradient="finite-difference") == fd.train
    # the user's overrides come after the method's
    assert load_recipe("debug", ["method=bn-vae", "model.bn_gamma=0.3"]).model.bn_gamma == 0.3


@pytest.mark.parametrize(("name", "beta"), [("beta-0.4", 0.4), ("beta-0.2", 0.2), ("beta-1", 1.0), ("beta-0", 0.0),
                                            ("beta-1e-1", 0.1), ("beta-.8", 0.8)])
def test_beta_method_parses_its_value(name, beta):
    cfg = load_recipe("debug", [f"method={name}", "train.kl_start=0.1"])  # annealing the user asks for stays
    assert cfg.train.beta == beta and cfg.method == name and cfg.train.kl_schedule == "linear"
    assert load_recipe("debug", [f"method={name}"]).train.kl_start == 1.0  # by itself: constant β
    assert kl_weight(0, 25, load_recipe("debug", [f"method={name}"]).train) == pytest.approx(beta)


def test_method_table_has_a_description_and_citation_for_every_method():
    rows = method_table()
    assert [r[0] for r in rows] == [*METHODS, *(f.pattern for f in FAMILIES.values())]
    for name, description, citation in rows:
        assert description and citation and any(ch.isdigit() for ch in citation), name  # "Author et al. YEAR"
    assert method_overrides("beta-0.5") == list(FAMILIES["beta-"].overrides("0.5"))


@pytest.mark.parametrize("overrides", [
    ["method=critic-neural", "train.kl_schedule=cyclical", "train.kl_n_cycles=2", "train.kl_ratio_zero=0.25"],
    ["method=critic-self", "train.free_bits=0.25", "train.free_bits_mode=example_dim", "model.word_dropout=0.3"],
    ["method=critic-hybrid", "train.aggressive=true", "train.aggressive_max_encoder_steps=3", "model.bn_gamma=0.5"],
], ids=["neural+cyclical", "self+free-bits+word-dropout", "hybrid+aggressive+bn"])
def test_a_critic_method_composes_with_the_other_mitigations(overrides, tmp_path):
    cfg = load_recipe("debug", [*overrides, "train.max_steps=6", "train.log_every_steps=1", "eval.iw_samples=2"])
    assert cfg.critic.type != "none"
    run = fit(cfg, tmp_path / "run", progress=False)
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 6 and all(math.isfinite(r["critic_loss"]) for r in train)
    steps_per_epoch = 25  # 400 lines, batch 16
    assert [r["kl_weight"] for r in train] == pytest.approx(
        [kl_weight(s, steps_per_epoch, cfg.train) for s in range(6)])
    if cfg.train.kl_schedule == "cyclical":  # the run is max_steps = 6 long: 2 cycles of 3 steps
        assert [r["kl_weight"] for r in train] == pytest.approx([0, 0, 2 / 3, 0, 0, 2 / 3])
    if cfg.train.aggressive:
        assert train[-1]["encoder_steps"] >= 6
