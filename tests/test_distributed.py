"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same run as one process.

The runs are launched as a user launches them (``python -m torch.distributed.run`` with
``-m textvae train``); ``tests/ddp_worker.py`` compares single steps, critic included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from hypothesis import given
from hypothesis import strategies as st

from textvae.checkpoint import read_json
from textvae.config import load_recipe
from textvae.distributed import World, loss_scale, shard_rows
from textvae.errors import TextVAEError
from textvae.modules.critics import info_nce
from textvae.tracking import read_metrics
from textvae.training import fit

HERE = Path(__file__).parent
TIMING = ("seconds", "tokens_per_s", "train_seconds")


def torchrun(*args: str, ranks: int = 2, timeout: float = 240, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout)


def assert_close_runs(run: Path, reference: Path, tol: float = 1e-5) -> None:
    """Same final weights and the same metrics.jsonl (timing aside) to ``tol``, and the same test figures."""
    from safetensors.torch import load_file

    a, b = load_file(run / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < tol
    ours, theirs = read_metrics(run / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert len(ours) == len(theirs)  # one record per logged step: rank 0 alone wrote
    for x, y in zip(ours, theirs, strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if key in TIMING:
                continue
            if isinstance(value, float):
                assert value == pytest.approx(y[key], rel=tol, abs=tol), (x["split"], x["step"], key)
            else:
                assert value == y[key], (x["split"], x["step"], key)
    ea, eb = read_json(run / "eval_test.json"), read_json(reference / "eval_test.json")
    for key in ("nll", "kl", "mi", "au", "elbo"):
        assert ea[key] == pytest.approx(eb[key], rel=tol, abs=tol), key


# --- sharding arithmetic ---------------------------------------------------------------------------------


@given(st.integers(1, 200), st.integers(1, 9))
def test_shards_partition_the_global_batch_in_rank_order(rows, ranks):
    shares = [shard_rows(rows, World(r, ranks)) for r in range(ranks)]
    assert shares[0].start == 0 and shares[-1].stop == rows
    assert all(a.stop == b.start for a, b in zip(shares[:-1], shares[1:], strict=True))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1
    # the ranks' scaled means average to the global mean (what DDP's gradient average needs)
    values = torch.arange(rows, dtype=torch.float64)
    scaled = [loss_scale(n, rows, World(r, ranks)) * (values[s].mean() if n else 0.0)
              for r, (s, n) in enumerate(zip(shares, sizes, strict=True))]
    assert float(sum(scaled) / ranks) == pytest.approx(float(values.mean()))


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_over_rank_rows_recombines_to_the_whole_batch(symmetric):
    scores = torch.randn(7, 9, generator=torch.Generator().manual_seed(0))
    whole, _ = info_nce(scores, symmetric)
    parts = [(s.stop - s.start) * info_nce(scores, symmetric, s)[0] for s in
             (shard_rows(7, World(r, 2)) for r in range(2))]
    assert float(sum(parts) / 7) == pytest.approx(float(whole), rel=1e-6)


# --- real processes ---------------------------------------------------------------------------------------


def test_one_ddp_step_equals_the_one_process_step_with_every_critic(tmp_path):
    """Uneven shares (7 and 9 rows over 2 ranks); global negatives give one process's critic loss,
    local ones do not."""
    cases = ["none:7:global", "self:7:global", "neural:9:global", "hybrid:9:global", "self:7:local"]
    proc = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), *cases)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        records = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        for case in cases[:-1]:
            r = records[case]
            assert r["max_parameter_difference"] < 1e-5, case
            for key, value in r["single"].items():
                assert r["distributed"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), (case, key)
        local = records["self:7:local"]
        assert local["distributed"]["critic_loss"] != pytest.approx(local["single"]["critic_loss"], rel=1e-3)
        assert local["distributed"]["rec"] == pytest.approx(local["single"]["rec"], rel=1e-5)


COMMON = ["eval.iw_samples=4", "train.log_every_steps=1", "train.max_epochs=1", "train.checkpoint_every_steps=4",
          "train.keep_checkpoints=100"]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    fit(load_recipe("debug", COMMON), run, progress=False)
    return run


def test_two_ranks_train_the_one_process_run_and_rank_0_alone_writes(tmp_path, one_process_run):
    run = tmp_path / "run"
    proc = torchrun("-m", "textvae", "train", "debug", *COMMON, "-o", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_runs(run, one_process_run)
    listing = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert listing == sorted(str(p.relative_to(one_process_run)) for p in one_process_run.rglob("*"))
    assert "2 data-parallel ranks" in proc.stderr
    assert proc.stderr.count("training debug") == 1  # one voice: rank 0 logs
    assert proc.stdout.count("test results for") == 1  # and reports


def test_killed_two_rank_run_resumes_under_two_ranks_to_the_uninterrupted_run(tmp_path, one_process_run):
    run = tmp_path / "run"
    proc = torchrun("-m", "textvae", "train", "debug", *COMMON, "-o", str(run), wait=False)
    deadline = time.monotonic() + 180
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if any(line.endswith("}") and json.loads(line).get("step", 0) >= 14 for line in lines):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, at once
    proc.communicate()
    done = torchrun("-m", "textvae", "train", "debug", *COMMON, "-o", str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_runs(run, one_process_run)


def test_a_one_process_checkpoint_resumes_under_two_ranks_to_the_same_run(tmp_path, one_process_run):
    """The batches do not depend on the number of ranks, so a run may change it at a resume."""
    run = tmp_path / "run"
    shutil.copytree(one_process_run, run)
    for later in sorted((run / "checkpoints").iterdir())[1:]:  # keep step 4's (mid-epoch) only
        shutil.rmtree(later)
    shutil.rmtree(run / "model")  # what the resumed run must make again
    (run / "eval_test.json").unlink()
    done = torchrun("-m", "textvae", "train", "debug", *COMMON, "-o", str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_runs(run, one_process_run)


def test_eval_sharded_over_two_ranks_gives_the_one_process_figures(one_process_run):
    """Batches dealt round-robin, the skipped batches' random draws replayed: the same IW samples per
    sentence, so the same figures as the one-process evaluation that wrote eval_test.json."""
    proc = torchrun("-m", "textvae", "eval", str(one_process_run), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    sharded, single = json.loads(lines[0]), read_json(one_process_run / "eval_test.json")
    for key in ("nll", "nll_stderr", "ppl", "elbo", "rec", "kl", "mi", "mi_batch", "au", "num_sequences"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-6, abs=1e-7), key


def test_aggressive_training_refuses_torchrun_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; the refusal comes before the process group
    with pytest.raises(TextVAEError, match="train.aggressive cannot run under torchrun"):
        fit(load_recipe("debug", ["method=aggressive"]), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
