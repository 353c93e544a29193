"""The typed Python API (textvae.train / load / evaluate → Run, EvalResult) and the README's example."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import textvae
from textvae import EvalResult, Run, TextVAE, TextVAEError

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("api") / "run"
    return textvae.train("debug", ["train.max_steps=20", "eval.iw_samples=4"], output_dir=out, progress=False)


def test_train_returns_the_run_with_its_test_figures(run):
    assert isinstance(run, Run) and isinstance(run.test, EvalResult)
    assert run.path.is_dir() and run.config.name == "debug" and isinstance(run.model, TextVAE)
    assert run.test.nll == pytest.approx(textvae.evaluate(run, "test").nll)  # eval_test.json, recomputed
    assert run.test.iw_samples == 4


def test_load_gives_back_the_same_run(run):
    again = textvae.load(run.path)
    assert again.test == run.test and again.config == run.config
    ids = torch.tensor([[run.tokenizer.bos_id, 5, 6, run.tokenizer.eos_id]])
    z = torch.zeros(1, run.model.latent_dim)
    with torch.no_grad():
        torch.testing.assert_close(again.model.decode(ids, z), run.model.eval().decode(ids, z), rtol=0, atol=0)


def test_evaluate_any_split_and_k(run):
    valid = textvae.evaluate(run.path, "valid", iw_samples=8, limit=10)
    assert valid.num_sequences == 10 and valid.iw_samples == 8 and math.isfinite(valid.nll)
    assert valid.nll != textvae.evaluate(run.path, "valid", iw_samples=2, limit=10).nll  # K does drive it
    with pytest.raises(TextVAEError, match=r"split \(--split\) must be test or valid"):
        textvae.evaluate(run, "train")
    with pytest.raises(TextVAEError, match=r"iw_samples \(--iw-samples\) must be >= 1"):
        textvae.evaluate(run, iw_samples=0)


def test_load_of_a_folder_that_is_not_a_run_is_one_error(tmp_path):
    with pytest.raises(TextVAEError, match="not a run directory"):
        textvae.load(tmp_path)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    block = re.search(r"## Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "textvae.train(" in block and "textvae.evaluate(" in block and "textvae.load(" in block
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "debug" / "eval_test.json").is_file()
