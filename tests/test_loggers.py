"""train.loggers: metrics.jsonl always, TensorBoard event files on request, with the same scalars."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import textvae.config as config_module
from textvae.config import load_recipe
from textvae.errors import TextVAEError
from textvae.loggers import LOGGERS
from textvae.tracking import read_metrics
from textvae.training import fit


def test_the_registry_and_the_config_choices_agree():
    assert set(LOGGERS) == set(config_module.LOGGER_TYPES)


def test_tensorboard_holds_the_scalars_of_metrics_jsonl(tmp_path):
    run = fit(load_recipe("debug", ["train.loggers=[jsonl,tensorboard]", "train.max_steps=30",
                                    "train.log_every_steps=5", "eval.iw_samples=2"]), tmp_path / "r", progress=False)
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] in ("train", "valid")]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for split, name in (("train", "loss"), ("train", "kl"), ("valid", "loss"), ("valid", "mi"), ("valid", "au")):
        assert f"{split}/{name}" in tags
        logged = [(r["step"], r[name]) for r in records if r["split"] == split]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(f"{split}/{name}")] == logged


def test_a_missing_tensorboard_is_one_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(TextVAEError, match=r"needs the tensorboard package: pip install 'textvae\[tensorboard\]'"):
        fit(load_recipe("debug", ["train.loggers=[jsonl,tensorboard]"]), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_jsonl_is_required_and_unknown_loggers_are_refused(tmp_path):
    with pytest.raises(TextVAEError, match="must include jsonl"):
        fit(load_recipe("debug", ["train.loggers=[tensorboard]"]), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(TextVAEError, match=r"bad value for 'train.loggers': 'wandb' \(choose from jsonl, tensorboard\)"):
        load_recipe("debug", ["train.loggers=[jsonl,wandb]"])
