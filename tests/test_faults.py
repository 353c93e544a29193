"""Every bad input and fault: one line ``error: ...`` naming the file or key, exit code 2, no traceback,
and nothing on disk lost.

Each case of the fault matrix is its own test, through the command line (in-process through
``textvae.cli.main``, or a real ``python -m textvae`` process where signals and exit codes of
the interpreter matter). Where a run directory exists, the sha256 of every one of its files
is compared before and after. Property tests (hypothesis) feed random bytes and random line
structure to the file checks and readers: they load, or raise the one-line error, never
anything else. A training process killed with SIGKILL at a random step and resumed gives the
uninterrupted run's weights and metrics exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch
from conftest import DEBUG_DIR, SMALL_TEXT, assert_one_line_error, cli_env, run_cli, write_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from textvae import config as config_module
from textvae.checkpoint import checkpoints, claim_run_dir, load_checkpoint, load_config, read_json
from textvae.config import Config, load_recipe
from textvae.data import check_file, read_split
from textvae.errors import TextVAEError
from textvae.model import TextVAE
from textvae.modules.critics import CRITICS
from textvae.modules.decoders import DECODERS
from textvae.modules.encoders import ENCODERS
from textvae.objectives import FREE_BITS, KL_SCHEDULES
from textvae.tokenization import TOKENIZERS, load_tokenizer
from textvae.tracking import read_metrics
from textvae.training import fit

TIMING = ("tokens_per_s", "seconds", "train_seconds")  # the only figures of metrics.jsonl that depend on the clock


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path → hex)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def last_line_error(code: int, stderr: str, *needles: str, exit_code: int = 2) -> str:
    """A fault after training began: earlier lines are progress; the last is the one error line."""
    assert code == exit_code, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished `debug` run with mid-epoch checkpoints (read-only: tests damage copies of it)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    cfg = load_recipe("debug", ["train.max_steps=30", "eval.iw_samples=2", "train.checkpoint_every_steps=10",
                                "train.keep_checkpoints=5"])
    fit(cfg, run, progress=False)
    return run


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


# --- 1. usage errors ------------------------------------------------------------------------------


USAGE = {  # compared case-insensitively: click's wording differs a little between versions
    "bare command": ([], ["missing command (train, study, eval", "'textvae --help'"]),
    "train without a recipe": (["train"], ["missing argument", "recipe", "'textvae train --help'"]),
    "unknown option": (["train", "debug", "--bogus"], ["no such option", "--bogus", "'textvae train --help'"]),
    "unknown command": (["frobnicate"], ["no such command", "frobnicate", "'textvae --help'"]),
    "bad integer option": (["sample", "RUN", "-n", "abc"], ["'-n' / '--num-samples'", "'textvae sample --help'"]),
    "bad --iw-samples": (["eval", "RUN", "--iw-samples", "x"], ["'--iw-samples'", "'textvae eval --help'"]),
    "group without its command": (["recipes"], ["missing command (list, show, copy)", "'textvae recipes --help'"]),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_usage_error_is_one_line_exit_2(cli_main, run_dir, case):
    argv, needles = USAGE[case]
    code, _, err = cli_main(*[str(run_dir) if a == "RUN" else a for a in argv])
    assert_one_line_error(code, err.lower(), *[needle.lower() for needle in needles])


@pytest.mark.parametrize("case", ["bare command", "unknown option"])
def test_usage_error_in_a_real_process(case):
    argv, needles = USAGE[case]
    proc = run_cli(*argv)
    assert_one_line_error(proc.returncode, proc.stderr.lower(), *[needle.lower() for needle in needles])


def test_help_still_exits_0(cli_main):
    code, out, err = cli_main("train", "--help")
    assert code == 0 and "RECIPE" in out.upper() and err == ""


# --- 2. every key has its range or choices, checked wherever it is set ---------------------------


VALUES = {
    "negative lr": ("train.lr=-1", "bad value for 'train.lr': -1.0 (must be > 0)"),
    "nan lr": ("train.lr=nan", "bad value for 'train.lr': nan (must be a finite number)"),
    "negative latent_dim": ("model.latent_dim=-2", "bad value for 'model.latent_dim': -2 (must be >= 0)"),
    "dropout above 1": ("model.dec_dropout_in=1.5", "bad value for 'model.dec_dropout_in': 1.5 (must be >= 0 and < 1)"),
    "negative clip": ("train.grad_clip=-1", "bad value for 'train.grad_clip': -1.0 (must be >= 0)"),
    "a value for a section": ("train=3", "'train' is a section"),
    "bad choice": ("critic.type=cosine", "bad value for 'critic.type': 'cosine' (choose from none, self, neural, hybrid)"),
    "bad beta list": ("train.adam_betas=[0.9]", "bad value for 'train.adam_betas': [0.9] (must hold 2 numbers)"),
    "derived key": ("model.vocab_size=7", "'model.vocab_size' is set from the tokenizer"),
    "heads do not divide the width": ("model.preset=transformer-tiny", "must be divisible"),
}


@pytest.mark.parametrize("case", list(VALUES))
def test_bad_value_is_one_line_naming_the_key(cli_main, tmp_path, case):
    override, needle = VALUES[case]
    extra = ["model.num_heads=3"] if case == "heads do not divide the width" else []
    code, _, err = cli_main("train", "debug", override, *extra, "-o", tmp_path / "r")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_one_line(cli_main, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")  # the error case needs a machine without one
    assert_one_line_error(*cli_main("train", "debug", "device=cuda", "-o", tmp_path / "r")[::2],
                          "device=cuda, but this machine has no CUDA device")


@pytest.mark.parametrize(("text", "needle"), [
    ("- a\n- b\n", "must be a mapping of keys"),
    ("train: 3\n", "'train' is a section"),
    ("", "the recipe is empty"),
    ("model:\n  pad_id: 5\n", "'model.pad_id' is set from the tokenizer"),
])
def test_recipe_file_that_is_not_a_mapping_of_sections(cli_main, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line_error(*cli_main("train", path)[::2], str(path), needle)


def _config_fields():
    """(dotted key, field) of every checked scalar key of the recipe."""
    for section in fields(Config):
        owner = section.default_factory() if is_dataclass(section.default_factory) else None
        for f in fields(owner) if owner is not None else [section]:
            name = f"{section.name}.{f.name}" if owner is not None else f.name
            yield name, f


def _violating(meta: dict):
    if "choices" in meta:
        return "'no-such-choice'"
    if "gt" in meta:
        return meta["gt"]
    if "ge" in meta:
        return meta["ge"] - 1
    if "lt" in meta:
        return meta["lt"]
    return meta["le"] + 1


CHECKED = [(name, f) for name, f in _config_fields() if set(f.metadata) & {"choices", "ge", "gt", "le", "lt"}
           and not f.metadata.get("derived")]


@pytest.mark.parametrize(("name", "f"), CHECKED, ids=[name for name, _ in CHECKED])
def test_every_checked_key_refuses_a_value_outside_its_range(name, f):
    with pytest.raises(TextVAEError, match=f"bad value for '{name}'"):
        load_recipe("debug", [f"{name}={_violating(f.metadata)}"])


def test_no_numeric_or_choice_key_is_left_unchecked():
    """A new int, float or str key must say its range or choices (the free-text and path keys excepted)."""
    free_text = {"name", "method", "data.dir", "data.builtin", "data.train_file", "data.valid_file", "data.test_file",
                 "model.encoder_name", "model.decoder_name"}
    unchecked = [name for name, f in _config_fields()
                 if f.type in ("int", "float", "str", "int | None", "float | None", "str | None")
                 and name not in free_text and not f.metadata]
    assert unchecked == []


def test_choices_are_the_registries():
    assert set(config_module.ENCODER_TYPES) == set(ENCODERS)
    assert set(config_module.DECODER_TYPES) == set(DECODERS)
    assert set(config_module.CRITIC_TYPES) == set(CRITICS)
    assert set(config_module.TOKENIZER_TYPES) == {*TOKENIZERS, "pretrained"}
    assert set(config_module.KL_SCHEDULES) == set(KL_SCHEDULES)
    assert set(config_module.FREE_BITS_MODES) == set(FREE_BITS)


# --- 3. damaged run files -------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"",
                      "garbage": bytes(random.Random(0).randrange(256) for _ in range(300))}[how])


READERS = {  # command → argv after the run directory
    "eval": ["--iw-samples", "1", "--limit", "4"],
    "sample": ["-n", "2"],
    "reconstruct": ["--input", str(DEBUG_DIR / "valid.txt")],
    "interpolate": ["the cat", "a dog", "--steps", "3"],
    "analogy": ["the cat", "a dog", "the man"],
    "plot": ["--out", "PLOTS"],
}
MODEL_FILES = ["model/model.safetensors", "model/config.json", "model/tokenizer.json", "model/tokenizer_config.json",
               "config.yaml"]


def _read_run(cli_main, run: Path, command: str, tmp_path: Path):
    argv = [tmp_path / "plots" if a == "PLOTS" else a for a in READERS[command]]
    return cli_main(command, run, *argv)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("name", MODEL_FILES)
def test_damaged_run_file_is_named_by_eval(cli_main, run_copy, tmp_path, name, how):
    _damage(run_copy / name, how)
    before = digests(run_copy)
    code, _, err = _read_run(cli_main, run_copy, "eval", tmp_path)
    assert_one_line_error(code, err, str(run_copy / name))
    assert digests(run_copy) == before


@pytest.mark.parametrize("command", list(READERS))
@pytest.mark.parametrize("name", MODEL_FILES)
def test_damaged_run_file_is_named_by_every_command(cli_main, run_copy, tmp_path, name, command):
    _damage(run_copy / name, "garbage")
    before = digests(run_copy)
    code, _, err = _read_run(cli_main, run_copy, command, tmp_path)
    assert_one_line_error(code, err, str(run_copy / name))
    assert digests(run_copy) == before


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_metrics_are_named_by_plot(cli_main, run_copy, tmp_path, how):
    with open(run_copy / "metrics.jsonl", "ab") as fh:  # a damaged line in the middle, then a good one
        fh.write(b"\x00\x01 not json\n" if how == "garbage" else b'{"split": "train", "st\n')
        fh.write(b'{"split": "train", "step": 31}\n')
    before = digests(run_copy)
    code, _, err = _read_run(cli_main, run_copy, "plot", tmp_path)
    assert_one_line_error(code, err, str(run_copy / "metrics.jsonl"), "damaged")
    assert digests(run_copy) == before


def test_damaged_eval_test_json_is_named(run_copy):
    _damage(run_copy / "eval_test.json", "truncated")
    with pytest.raises(TextVAEError, match=f"{run_copy / 'eval_test.json'}: damaged or unreadable"):
        read_json(run_copy / "eval_test.json")


def _train_argv(run: Path, steps: int = 30) -> list:
    return ["train", "debug", f"train.max_steps={steps}", "eval.iw_samples=2", "train.checkpoint_every_steps=10",
            "train.keep_checkpoints=5", "-o", run]


@pytest.mark.parametrize("name", ["trainer_state.pt", "model.safetensors", "tokenizer.json"])
def test_resume_skips_a_damaged_latest_checkpoint(cli_main, run_dir, run_copy, name):
    latest = checkpoints(run_copy)[-1]
    assert latest.name == "step-000000030"
    _damage(latest / name, "garbage")
    code, _, err = cli_main(*_train_argv(run_copy, 40), "--resume")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: --resume")]
    assert len(warning) == 1 and "step-000000030" in warning[0] and name in warning[0]
    assert "resumed from step-000000025" in err  # the epoch-end checkpoint before it
    assert (run_copy / "checkpoints" / "damaged-step-000000030" / name).is_file()  # kept, not deleted
    # the continuation is exact: the same weights as a run straight to 40 steps
    code, _, err = cli_main(*_train_argv(run_copy.parent / "straight", 40))
    assert code == 0, err
    _assert_same_checkpoint(checkpoints(run_copy)[-1], checkpoints(run_copy.parent / "straight")[-1])


def test_resume_with_every_checkpoint_damaged_touches_nothing(cli_main, run_copy):
    for ckpt in checkpoints(run_copy):
        _damage(ckpt / "trainer_state.pt", "garbage")
    before = digests(run_copy)
    code, _, err = cli_main(*_train_argv(run_copy, 40), "--resume")
    assert_one_line_error(code, err, "--resume: no intact checkpoint", "trainer_state.pt")
    assert digests(run_copy) == before


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- 4. --overwrite keeps the old run until the new one's inputs have passed their checks ---------


@pytest.mark.parametrize("bad", ["empty train file", "bad value", "missing data folder"])
def test_overwrite_keeps_the_old_run_when_the_new_inputs_are_bad(cli_main, run_copy, tmp_path, bad):
    corpus = write_corpus(tmp_path / "c", "", SMALL_TEXT, SMALL_TEXT)
    override = {"empty train file": f"data.dir={corpus}", "bad value": "train.lr=-1",
                "missing data folder": f"data.dir={tmp_path / 'nowhere'}"}[bad]
    before = digests(run_copy)
    code, _, err = cli_main("train", "debug", override, "-o", run_copy, "--overwrite")
    assert_one_line_error(code, err)
    assert digests(run_copy) == before


def test_an_interrupted_overwrite_leaves_the_old_run_beside_it(run_copy, monkeypatch):
    before = digests(run_copy)
    original = Path.mkdir

    def crash(self, *args, **kwargs):
        if self == run_copy:
            raise KeyboardInterrupt  # the moment between moving the old run aside and making the new one
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", crash)
    with pytest.raises(KeyboardInterrupt):
        claim_run_dir(run_copy)
    aside = run_copy.with_name(f".{run_copy.name}.replaced")
    assert digests(aside) == before  # never neither: the old run is whole, one rename away
    monkeypatch.undo()
    claim_run_dir(run_copy)  # the next overwrite clears it
    assert not aside.exists() and run_copy.is_dir() and not any(run_copy.iterdir())


def test_overwrite_with_good_inputs_replaces_the_run(cli_main, run_copy):
    code, _, err = cli_main("train", "debug", "train.max_steps=3", "eval.iw_samples=1", "-o", run_copy,
                            "--overwrite")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run_copy / "metrics.jsonl") if r["split"] == "valid"] == [3]
    assert not run_copy.with_name(f".{run_copy.name}.replaced").exists()


# --- 5. bounded memory: over-long lines -----------------------------------------------------------


def test_an_over_long_training_line_is_truncated_with_a_notice(cli_main, tmp_path):
    huge = " ".join(f"w{i}" for i in range(20_000))  # one line of 20,000 distinct words
    corpus = write_corpus(tmp_path / "c", SMALL_TEXT + huge + "\n", SMALL_TEXT, SMALL_TEXT)
    run = tmp_path / "r"
    code, _, err = cli_main("train", "debug", f"data.dir={corpus}", "train.max_steps=2", "eval.iw_samples=1",
                            "data.max_length=16", "-o", run)
    assert code == 0, err
    [notice] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert f"{corpus / 'train.txt'}: 1 of 13 lines are longer than data.max_length = 16" in notice
    assert "line 13, has 20000" in notice
    # the cut-off words never enter the vocabulary: the model stays small
    _, tokenizer, _ = load_checkpoint(checkpoints(run)[-1], "cpu")
    assert tokenizer.vocab_size == len(set(SMALL_TEXT.split()) | {f"w{i}" for i in range(16)}) + 4


def test_an_over_long_test_line_is_refused_with_file_and_line(cli_main, tmp_path):
    corpus = write_corpus(tmp_path / "c", SMALL_TEXT, SMALL_TEXT, SMALL_TEXT + "\n" + "x " * 300 + "\n")
    code, _, err = cli_main("train", "debug", f"data.dir={corpus}", "-o", tmp_path / "r")
    assert_one_line_error(code, err, f"{corpus / 'test.txt'}:14: 300 tokens, more than data.max_length = 256")
    assert not (tmp_path / "r").exists()


# --- TSV edge cases -------------------------------------------------------------------------------


def test_tsv_label_that_isdigit_but_not_an_int_is_one_line(cli_main, tmp_path):
    corpus = write_corpus(tmp_path / "c", "1\tgood food\n²\tbad food\n")
    code, _, err = cli_main("train", "debug", f"data.dir={corpus}", "data.format=tsv_label", "-o", tmp_path / "r")
    assert_one_line_error(code, err, f"{corpus / 'train.txt'}:2", "integer label")


def test_tsv_line_break_characters_inside_a_line_stay_in_it(tmp_path):
    text = "1\tgood\x0bfood\n2\tbad\x1cfood\x85 here\n3\tok\r\n"
    corpus = write_corpus(tmp_path / "c", text)
    check_file(corpus / "train.txt", "tsv_label")
    read = read_split(corpus / "train.txt", "tsv_label")
    assert read.labels == [1, 2, 3] and read.texts[0] == "good\x0bfood" and read.lines == [1, 2, 3]


# --- 6. self-contained runs -----------------------------------------------------------------------


def test_eval_works_from_any_folder_and_with_moved_data(cli_main, tmp_path, monkeypatch):
    work = tmp_path / "work"
    write_corpus(work / "data", SMALL_TEXT)
    monkeypatch.chdir(work)
    code, _, err = cli_main("train", "debug", "data.dir=data", "train.max_steps=3", "eval.iw_samples=1", "-o", "run")
    assert code == 0, err
    cfg = load_config(work / "run")
    assert cfg.data.dir == str(work / "data")  # stored absolute, with the sha256 of each file read
    assert cfg.data.fingerprints["train.txt"] == hashlib.sha256(SMALL_TEXT.encode()).hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli_main("eval", work / "run", "--iw-samples", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    shutil.move(work / "data", tmp_path / "moved")
    assert_one_line_error(*cli_main("eval", work / "run")[::2], str(work / "data"), "--data-dir")
    code, out, err = cli_main("eval", work / "run", "--iw-samples", "1", "--json", "--data-dir", tmp_path / "moved")
    assert code == 0, err
    assert json.loads(out) == result
    (tmp_path / "moved" / "test.txt").write_text(SMALL_TEXT + "one more line\n")  # not the data it was trained on
    assert_one_line_error(*cli_main("eval", work / "run", "--data-dir", tmp_path / "moved")[::2],
                          "fingerprint mismatch", "test.txt")


# --- 7. interrupts, mid-epoch checkpoints, non-finite steps ---------------------------------------


def _train_process(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "textvae", "train", "debug", "eval.iw_samples=2",
                             "train.log_every_steps=1", *extra, "-o", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if metrics.is_file():
            lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
            if any(json.loads(line).get("step", 0) >= step for line in lines):
                return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


STRAIGHT = ["train.max_epochs=2", "train.checkpoint_every_steps=4", "train.keep_checkpoints=100"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The uninterrupted reference run: two epochs of `debug` (50 steps), logging every step."""
    run = tmp_path_factory.mktemp("straight") / "run"
    fit(load_recipe("debug", ["eval.iw_samples=2", "train.log_every_steps=1", *STRAIGHT]), run, progress=False)
    return run


def _assert_same_run(run: Path, reference: Path) -> None:
    _assert_same_checkpoint(run / "model", reference / "model")
    _assert_same_checkpoint(checkpoints(run)[-1], checkpoints(reference)[-1])
    assert without_timing(read_metrics(run / "metrics.jsonl")) == without_timing(read_metrics(reference /
                                                                                               "metrics.jsonl"))
    assert read_json(run / "eval_test.json") | {"seconds": 0} == read_json(reference / "eval_test.json") | {
        "seconds": 0}


def test_sigint_checkpoints_and_says_how_to_resume(tmp_path, straight_run):
    run = tmp_path / "run"
    proc = _train_process(run, *STRAIGHT)
    _wait_for_step(run, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = last_line_error(proc.returncode, err, "interrupted at step", "checkpoint written to", "--resume",
                           exit_code=130)
    step = int(line.split("interrupted at step ")[1].split(":")[0])
    assert checkpoints(run)[-1].name == f"step-{step:09d}"
    proc = run_cli("train", "debug", "eval.iw_samples=2", "train.log_every_steps=1", *STRAIGHT, "-o", run,
                   "--resume")
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(run, straight_run)


def test_sigkill_at_a_random_step_then_resume_is_the_uninterrupted_run(tmp_path, straight_run):
    step = random.Random(17).randrange(5, 45)  # mid-epoch or not, before or after a checkpoint
    run = tmp_path / "run"
    proc = _train_process(run, *STRAIGHT)
    _wait_for_step(run, step, proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    code = fit(load_recipe("debug", ["eval.iw_samples=2", "train.log_every_steps=1", *STRAIGHT]), run,
               resume=True, progress=False)
    assert code == run
    _assert_same_run(run, straight_run)


def test_resume_from_every_mid_epoch_checkpoint_is_exact(tmp_path, straight_run):
    """Each mid-epoch checkpoint of the reference run, resumed alone, ends exactly as the reference."""
    for ckpt in [c for c in checkpoints(straight_run) if int(c.name[5:]) % 25][:3]:
        run = tmp_path / ckpt.name
        shutil.copytree(straight_run, run)
        for later in checkpoints(run):
            if later.name > ckpt.name:
                shutil.rmtree(later)
        fit(load_recipe("debug", ["eval.iw_samples=2", "train.log_every_steps=1", *STRAIGHT]), run, resume=True,
            progress=False)
        _assert_same_run(run, straight_run)


def test_non_finite_steps_are_skipped_counted_then_stop_the_run(cli_main, tmp_path):
    run = tmp_path / "r"
    code, _, err = cli_main("train", "debug", "train.optimizer=sgd", "train.lr=1e30", "train.grad_clip=0",
                            "train.max_bad_steps=3", "train.checkpoint_every_steps=1", "train.log_every_steps=1",
                            "-o", run)
    last_line_error(code, err, "training stopped: 3 steps with a non-finite loss or gradient",
                    "train.max_bad_steps = 3", str(run / "checkpoints"))
    records = read_metrics(run / "metrics.jsonl")
    bad = [r for r in records if r.get("event") == "bad_step"]
    assert [r["bad_steps"] for r in bad] == [1, 2, 3]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["bad_steps"] == 2  # counted in the training records too
    last = checkpoints(run)[-1]  # written before the step that stopped the run; intact
    assert int(last.name[5:]) == bad[-1]["step"] - 1
    load_checkpoint(last, "cpu")
    diverged = json.loads((run / "diverged.json").read_text())  # what a study reports of the run
    assert diverged["bad_steps"] == 3 and diverged["step"] == bad[-1]["step"] and diverged["last_checkpoint"] == last.name


def test_one_summary_line_per_epoch_on_stderr_without_a_terminal(tmp_path):
    proc = run_cli("train", "debug", "eval.iw_samples=1", "-o", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(all(f" {key} " in line for key in ("step", "loss", "kl", "mi", "au")) and line.endswith(" s")
               for line in lines)


# --- 9. latent tools ------------------------------------------------------------------------------


def test_an_empty_sentence_is_an_error(cli_main, run_dir):
    assert_one_line_error(*cli_main("interpolate", run_dir, "", "the cat")[::2], "sentence A is empty")
    assert_one_line_error(*cli_main("analogy", run_dir, "the cat", "   ", "a dog")[::2], "sentence B is empty")


def test_unknown_words_are_reported_and_strict_refuses_them(cli_main, run_dir, tmp_path):
    code, out, err = cli_main("interpolate", run_dir, "zzz qqq", "the cat", "--steps", "3")
    assert code == 0, err
    assert err.strip() == f"warning: {run_dir}: 2 word(s) not in the vocabulary, read as <unk>: zzz, qqq"
    assert len(out.strip().splitlines()) == 4
    assert_one_line_error(*cli_main("interpolate", run_dir, "zzz qqq", "the cat", "--strict")[::2],
                          "zzz, qqq", "--strict")
    source = tmp_path / "in.txt"
    source.write_text("the cat\nthe flibbertigibbet sat\n")
    assert_one_line_error(*cli_main("reconstruct", run_dir, "--input", source, "--strict")[::2], "flibbertigibbet")


# --- 10. property tests: random bytes and random lines either load or give the one-line error -----


FILE_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LINE_PIECES = st.sampled_from(list("ab1-² \t\x0b\x0c\x1c\x85\u2028\r\n\"'\\") + ["\t3\t", "12\t", "\n\n", "-4\t"])


def _loads_or_one_line(action, path: Path) -> None:
    """``action()`` succeeds, or raises a one-line TextVAEError that names ``path``."""
    try:
        action()
    except TextVAEError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)


@FILE_SETTINGS
@given(raw=st.binary(max_size=200), fmt=st.sampled_from(["text", "tsv_label"]))
def test_data_files_of_random_bytes(tmp_path, raw, fmt):
    path = tmp_path / "train.txt"
    path.write_bytes(raw)
    _loads_or_one_line(lambda: (check_file(path, fmt), read_split(path, fmt)), path)


@FILE_SETTINGS
@given(text=st.lists(LINE_PIECES, max_size=40).map("".join), fmt=st.sampled_from(["text", "tsv_label"]))
def test_data_files_of_random_line_structure(tmp_path, text, fmt):
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8", newline="")

    def load():
        check_file(path, fmt)
        read = read_split(path, fmt)
        assert len(read.texts) == len(read.lines) and (read.labels is None) == (fmt == "text")

    _loads_or_one_line(load, path)


RUN_READERS = {
    "model/config.json": lambda run: TextVAE.from_pretrained(run / "model"),
    "model/model.safetensors": lambda run: TextVAE.from_pretrained(run / "model"),
    "model/tokenizer.json": lambda run: load_tokenizer(run / "model"),
    "model/tokenizer_config.json": lambda run: load_tokenizer(run / "model"),
    "config.yaml": load_config,
    "metrics.jsonl": lambda run: read_metrics(run / "metrics.jsonl"),
    "eval_test.json": lambda run: read_json(run / "eval_test.json"),
    "checkpoints/step-000000030/trainer_state.pt": lambda run: load_checkpoint(checkpoints(run)[-1], "cpu"),
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(list(RUN_READERS)), raw=st.binary(max_size=300), keep=st.integers(0, 1))
def test_run_files_of_random_bytes(run_dir, tmp_path_factory, name, raw, keep):
    run = tmp_path_factory.mktemp("prop") / "run"
    shutil.copytree(run_dir, run)
    target = run / name
    # random bytes, or a random cut of the real file followed by random bytes
    target.write_bytes(target.read_bytes()[: len(raw) * 7] + raw if keep else raw)
    _loads_or_one_line(lambda: RUN_READERS[name](run), target)
