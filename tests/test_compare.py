"""Paired comparison of two runs (compare.py, metrics.paired_difference, `textvae compare`)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from conftest import DEBUG_DIR, assert_one_line_error, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

import textvae.training as train_module
from textvae.compare import compare
from textvae.config import load_recipe
from textvae.errors import TextVAEError
from textvae.evaluation import PER_SEQUENCE_FILE, PerSequence
from textvae.metrics import paired_difference
from textvae.training import fit

FAST = ["train.max_steps=12", "eval.iw_samples=10", "train.batch_size=50"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(train_module, "plot_training_curves", lambda *args: None)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two debug runs that differ only in their seed (same test split, same tokenizer)."""
    root = tmp_path_factory.mktemp("compare")
    return [fit(load_recipe("debug", FAST + [f"seed={s}"]), root / f"seed{s}", progress=False) for s in (0, 1)]


# --- the estimator ------------------------------------------------------------------------------


def test_paired_difference_by_hand():
    a, b = np.array([10.0, 20.0, 31.0, 40.0]), np.array([11.0, 20.5, 30.0, 42.0])
    d = a - b  # −1, −0.5, 1, −2
    out = paired_difference(a, b, np.full(4, 0.01), np.full(4, 0.03))
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["paired_stderr"] == pytest.approx(d.std(ddof=1) / 2)
    assert out["ci95"] == pytest.approx([d.mean() - 1.96 * d.std(ddof=1) / 2, d.mean() + 1.96 * d.std(ddof=1) / 2])
    assert out["mc_stderr"] == pytest.approx(math.sqrt(4 * 0.04) / 4)
    assert (out["num_sequences"], out["wins_a"]) == (4, 3)


def test_per_word_difference_is_a_ratio_with_its_linearised_error():
    a, b, words = np.array([10.0, 30.0, 21.0]), np.array([9.0, 31.0, 20.0]), np.array([4, 10, 7])
    out = paired_difference(a, b, np.zeros(3), np.zeros(3), words)
    r = (a - b).sum() / words.sum()
    assert out["mean_diff"] == pytest.approx(r)
    resid = (a - b) - r * words
    assert out["paired_stderr"] == pytest.approx(math.sqrt((resid**2).sum() / 6) * 3 / words.sum())
    assert out["mc_stderr"] == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 200), min_size=2, max_size=40), st.floats(-5, 5), st.integers(0, 10_000))
def test_paired_difference_properties(values, shift, seed):
    b = np.array(values)
    noise = np.random.default_rng(seed).normal(0, 1, b.size)
    a = b + shift + noise
    ab, ba = paired_difference(a, b, 0 * a, 0 * b), paired_difference(b, a, 0 * a, 0 * b)
    assert ab["mean_diff"] == pytest.approx(-ba["mean_diff"], abs=1e-9)
    assert ab["paired_stderr"] == pytest.approx(ba["paired_stderr"], abs=1e-9)
    assert ab["wins_a"] + ba["wins_a"] + int((a == b).sum()) == b.size
    moved = paired_difference(a + 3.0, b, 0 * a, 0 * b)  # a constant shift moves the mean, not the error
    assert moved["mean_diff"] == pytest.approx(ab["mean_diff"] + 3.0, abs=1e-9)
    assert moved["paired_stderr"] == pytest.approx(ab["paired_stderr"], abs=1e-6)
    # the sequence-to-sequence spread both share does not enter: the paired error is that of the noise alone
    assert ab["paired_stderr"] == pytest.approx(noise.std(ddof=1) / math.sqrt(b.size), abs=1e-9)


# --- runs ---------------------------------------------------------------------------------------


def test_training_saves_per_sequence_values_that_make_the_test_figures(two_runs):
    run = two_runs[0]
    saved = PerSequence.load(run / PER_SEQUENCE_FILE)
    record = json.loads((run / "eval_test.json").read_text())
    assert saved.nll.size == record["num_sequences"] and saved.iw_samples == record["iw_samples"] == 10
    assert saved.nll.mean() == pytest.approx(record["nll"], rel=1e-6)
    assert saved.tokens.sum() == record["num_tokens"]
    assert math.exp(saved.nll.sum() / saved.tokens.sum()) == pytest.approx(record["ppl"], rel=1e-6)
    assert np.all(saved.mc_var >= 0) and saved.mc_var.mean() > 0  # K = 10 samples leave Monte-Carlo noise


def test_a_run_against_itself_differs_by_exactly_zero(two_runs):
    result = compare(two_runs[0], two_runs[0])
    assert (result.mean_diff, result.paired_stderr, result.mc_stderr, result.wins_a) == (0.0, 0.0, 0.0, 0)
    assert result.unit == "nats/sequence" and result.ppl_diff == 0.0


def test_two_runs_the_paired_error_is_smaller_than_either_own(two_runs):
    result = compare(*two_runs)
    a = PerSequence.load(two_runs[0] / PER_SEQUENCE_FILE)
    b = PerSequence.load(two_runs[1] / PER_SEQUENCE_FILE)
    assert result.mean_diff == pytest.approx(float((a.nll - b.nll).mean()))
    assert result.nll_a == pytest.approx(float(a.nll.mean())) and result.nll_b == pytest.approx(float(b.nll.mean()))
    assert result.paired_stderr < min(result.stderr_a, result.stderr_b)
    assert result.ci95[0] < result.mean_diff < result.ci95[1]
    assert 0 < result.mc_stderr < result.paired_stderr  # independent evaluations: both runs' sampling noise
    reverse = compare(two_runs[1], two_runs[0])
    assert reverse.mean_diff == pytest.approx(-result.mean_diff)
    assert reverse.wins_a == int((b.nll < a.nll).sum()) and result.wins_a == int((a.nll < b.nll).sum())


def test_another_k_or_split_is_evaluated_afresh(two_runs):
    result = compare(*two_runs, iw_samples=3)
    assert (result.iw_samples_a, result.iw_samples_b) == (3, 3)
    valid = compare(*two_runs, split="valid")
    assert valid.split == "valid" and valid.iw_samples_a == 10
    assert valid.num_sequences == len((DEBUG_DIR / "valid.txt").read_text().splitlines())


def test_different_test_text_is_refused(two_runs, tmp_path):
    corpus = write_corpus(tmp_path / "data", (DEBUG_DIR / "train.txt").read_text(),
                          (DEBUG_DIR / "valid.txt").read_text(),
                          "a different test line .\n" + (DEBUG_DIR / "test.txt").read_text())
    other = fit(load_recipe("debug", FAST + [f"data.dir={corpus}", "data.builtin=null"]), tmp_path / "other",
                progress=False)
    with pytest.raises(TextVAEError, match="different test sequences"):
        compare(two_runs[0], other)


def test_other_tokenizations_of_the_same_text_compare_per_word(two_runs, tmp_path):
    bpe = fit(load_recipe("debug", FAST + ["tokenizer.type=bpe", "tokenizer.vocab_size=120"]), tmp_path / "bpe",
              progress=False)
    result = compare(two_runs[0], bpe)
    assert result.unit == "nats/word"
    a, b = PerSequence.load(two_runs[0] / PER_SEQUENCE_FILE), PerSequence.load(bpe / PER_SEQUENCE_FILE)
    assert result.mean_diff == pytest.approx(float((a.nll - b.nll).sum() / a.words.sum()))
    record = json.loads((bpe / "eval_test.json").read_text())
    assert result.ppl_b == pytest.approx(record["ppl_per_word"], rel=1e-6)


def test_cli_compare_json_keys_and_errors(two_runs, cli_main, tmp_path):
    code, out, err = cli_main("compare", two_runs[0], two_runs[1], "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"mean_diff", "paired_stderr", "ci95", "mc_stderr", "num_sequences", "wins_a"} <= result.keys()
    code, out, err = cli_main("compare", two_runs[0], two_runs[0])
    assert code == 0 and "A − B +0.0000 ± 0.0000" in out
    code, out, err = cli_main("compare", two_runs[0], tmp_path / "nowhere")
    assert_one_line_error(code, err, "nowhere")
    (tmp_path / "broken").mkdir()
    for name in ("config.yaml", "eval_test.json"):
        (tmp_path / "broken" / name).write_bytes((two_runs[1] / name).read_bytes())
    shutil.copytree(two_runs[1] / "model", tmp_path / "broken" / "model")
    (tmp_path / "broken" / PER_SEQUENCE_FILE).write_bytes(b"not an npz")
    code, out, err = cli_main("compare", two_runs[0], tmp_path / "broken")
    assert_one_line_error(code, err, PER_SEQUENCE_FILE)
