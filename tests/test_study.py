"""`textvae study`: methods × seeds end to end on `debug`, and a rerun reuses finished runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import run_cli

import textvae.training as training
from textvae.study import FIGURES, run_study, seconds_per_epoch, to_markdown


def test_study_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "study"
    args = ["study", "debug", "train.max_steps=12", "eval.iw_samples=3", "--methods", "vae,critic-self",
            "--seeds", "2", "--output-dir", out]
    proc = run_cli(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study["summary"]) == {"vae", "critic-self"}
    assert [len(study["runs"][m]) for m in ("vae", "critic-self")] == [2, 2]
    for method in ("vae", "critic-self"):
        row = study["summary"][method]
        for key in ("nll", "ppl", "kl", "mi", "mi_batch", "au", "seconds_per_epoch"):
            mean, std = row[key]
            assert mean == mean and std >= 0
    assert study["summary"]["vae"]["time_vs_vae"] == 1.0
    md = (out / "study.md").read_text()
    assert "| vae |" in md and "| critic-self |" in md and "time vs vae" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # seeds differ, configs record method and seed
    cfgs = [(out / m / f"seed-{s}" / "config.yaml").read_text() for m in ("vae", "critic-self") for s in (0, 1)]
    assert "method: critic-self" in cfgs[2] and "seed: 1" in cfgs[3] and "type: self" in cfgs[2]
    # rerun: finished runs are reused, not retrained
    stamp = (out / "vae" / "seed-0" / "eval_test.json").stat().st_mtime_ns
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "vae" / "seed-0" / "eval_test.json").stat().st_mtime_ns == stamp


def test_seconds_per_epoch_counts_costly_epochs():
    """Two aggressive epochs of 250 s among 48 of 6 s cost 15.8 s/epoch on average; a median would say 6."""
    records = [{"seconds": 250.0}] * 2 + [{"seconds": 6.0}] * 48
    assert seconds_per_epoch(records) == (2 * 250 + 48 * 6) / 50
    # a run stopped by a time budget a tenth into its only epoch: 100 s there is 1000 s per epoch
    assert seconds_per_epoch([{"seconds": 100.0, "epoch_fraction": 0.1}]) == pytest.approx(1000.0)
    halves = [{"seconds": 30.0, "epoch_fraction": 0.5}] * 2 + [{"seconds": 60.0}]  # a resumed epoch
    assert seconds_per_epoch(halves) == pytest.approx(60.0)


def test_study_with_lm_adds_the_paired_difference_column(tmp_path):
    from textvae.compare import compare

    out = tmp_path / "study"
    proc = run_cli("study", "debug", "train.max_steps=8", "eval.iw_samples=3", "--methods", "lm,vae", "--seeds", "1",
                   "--output-dir", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = json.loads((out / "study.json").read_text())
    direct = compare(out / "vae" / "seed-0", out / "lm" / "seed-0")
    row = study["summary"]["vae"]
    assert row["dnll_vs_lm"] == pytest.approx(direct.mean_diff) and row["dnll_paired_stderr"] == pytest.approx(
        direct.paired_stderr)
    assert study["summary"]["lm"]["dnll_vs_lm"] == 0.0
    md = (out / "study.md").read_text()
    assert "Δnll vs `lm` (paired s.e.)" in md
    assert f"| {direct.mean_diff:+.3f} ({direct.paired_stderr:.3f}) |" in md


def test_study_rejects_unknown_method(tmp_path):
    proc = run_cli("study", "debug", "--methods", "vae,critic-nope", "--output-dir", tmp_path / "s")
    assert proc.returncode == 2 and "unknown method 'critic-nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_table_header_takes_k_from_the_latent_models_not_the_lm():
    row = {f: (1.0, 0.0) for f in FIGURES} | {"seconds_per_epoch": (2.0, 0.0), "mi_ceiling": 8.0, "time_vs_vae": 1.0}
    study = {"recipe": "ptb", "seeds": 1, "overrides": [],
             "summary": {"lm": row | {"iw_samples": 0}, "vae": row | {"iw_samples": 100}}}
    header = to_markdown(study).splitlines()[2]
    assert "K = 100" in header and "the LM's is exact" in header
    study["summary"].pop("lm")
    assert "exact" not in to_markdown(study).splitlines()[2]


def test_a_diverged_seed_is_counted_not_averaged_and_not_retrained(tmp_path, monkeypatch):
    """vae's seed 1 really diverges (lr 1e30): the study goes on, its row averages the seed that finished, says
    how many diverged, has no paired difference for it, and a rerun does not train it again."""
    real_fit, trained = training.fit, []

    def fit(cfg, run, **kwargs):
        trained.append((cfg.method, cfg.seed))
        if (cfg.method, cfg.seed) == ("vae", 1):
            cfg = replace(cfg, train=replace(cfg.train, optimizer="sgd", lr=1e30, grad_clip=0.0, max_bad_steps=2))
        return real_fit(cfg, run, **kwargs)

    monkeypatch.setattr(training, "fit", fit)
    args = ("debug", ["lm", "vae"], 2, ["train.max_steps=6", "eval.iw_samples=2"], tmp_path / "s")
    study = run_study(*args, progress=False)
    assert "diverged" in study["runs"]["vae"][1] and study["runs"]["vae"][1]["diverged"]["bad_steps"] == 2
    row = study["summary"]["vae"]
    assert row["diverged"] == 1 and row["seeds"] == 2
    assert row["nll"] == (study["runs"]["vae"][0]["nll"], 0.0)  # the finished seed alone
    assert row["dnll_vs_lm"] == study["runs"]["vae"][0]["dnll_vs_lm"]
    assert "| vae (1 of 2 seeds diverged) |" in (tmp_path / "s" / "study.md").read_text()
    trained.clear()
    again = run_study(*args, progress=False)
    assert trained == [] and again["summary"]["vae"]["diverged"] == 1


def test_a_method_whose_every_seed_diverged_has_an_empty_row():
    study = {"recipe": "debug", "seeds": 1, "overrides": [],
             "summary": {"vae": {"seeds": 1, "diverged": 0, "iw_samples": 2, "mi_ceiling": 1.0, "time_vs_vae": 1.0,
                                 "seconds_per_epoch": (1.0, 0.0), **{f: (1.0, 0.0) for f in FIGURES}},
                         "sa-vae": {"seeds": 1, "diverged": 1, "time_vs_vae": None}}}
    lines = to_markdown(study).splitlines()
    row = next(line for line in lines if line.startswith("| sa-vae"))
    assert row.startswith("| sa-vae (1 of 1 seeds diverged) | —") and row.count("|") == lines[-2].count("|")
