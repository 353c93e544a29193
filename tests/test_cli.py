"""The command line (cli.py): end to end on `debug`, every verb, and bad input → one line, exit code 2.

Subprocesses (``python -m textvae``) are the faithful test of exit codes and stderr; the
many error cases also run in-process through ``textvae.cli.main`` to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess

import pytest
from conftest import DEBUG_DIR, SMALL_TEXT, assert_one_line_error, run_cli, write_corpus
from omegaconf import OmegaConf

from textvae.config import ModelConfig, list_recipes, load_recipe, recipe_path, to_yaml
from textvae.methods import METHODS, method_table
from textvae.tracking import read_metrics

EVAL_KEYS = {"nll", "nll_stderr", "ppl", "elbo", "rec", "kl", "mi", "mi_ceiling", "mi_batch", "au", "iw_samples",
             "num_sequences", "num_tokens", "nll_per_word", "ppl_per_word", "num_words", "svi_steps"}


# --- end to end -------------------------------------------------------------------------------


def test_train_writes_the_run_directory(debug_run):
    run = debug_run.dir
    assert {"config.yaml", "metrics.jsonl", "model", "checkpoints", "eval_test.json", "curves.png"} <= {
        p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (run / "model").iterdir()}
    ckpts = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000000025", "step-000000030"]
    assert all((p / "trainer_state.pt").is_file() and (p / "model.safetensors").is_file() for p in ckpts)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is valid JSON
    assert records and all({"split", "step", "loss", "kl"} <= set(r) for r in records)
    assert {r["split"] for r in records} == {"train", "valid"}
    assert all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in records)
    assert max(r["step"] for r in records) == 30
    result = json.loads((run / "eval_test.json").read_text())
    assert EVAL_KEYS <= set(result) and result["iw_samples"] == 5 and result["num_sequences"] == 60
    # the command prints the test results table
    assert "test results for" in debug_run.stdout and "nll" in debug_run.stdout and "K=5" in debug_run.stdout


def test_eval_json_follows_the_protocol(debug_run):
    proc = run_cli("eval", debug_run.dir, "--iw-samples", "5", "--limit", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == EVAL_KEYS
    assert result["iw_samples"] == 5 and result["num_sequences"] == 20
    # predicted tokens = words + </s> of the first 20 test lines (the word tokenizer: one id per word)
    test_lines = [line for line in (DEBUG_DIR / "test.txt").read_text().splitlines() if line.strip()][:20]
    assert result["num_tokens"] == sum(len(line.split()) + 1 for line in test_lines)
    assert result["nll"] <= -result["elbo"] + 0.5
    assert result["ppl"] == pytest.approx(
        math.exp(result["nll"] * result["num_sequences"] / result["num_tokens"]), rel=1e-6)
    assert result["mi_ceiling"] == pytest.approx(math.log(20))
    assert result["mi"] <= result["mi_ceiling"]
    assert result["elbo"] == pytest.approx(-(result["rec"] + result["kl"]), abs=1e-3)
    assert 0 <= result["au"] <= 4


def test_eval_table_and_valid_split(debug_run, cli_main):
    code, out, err = cli_main("eval", debug_run.dir, "--split", "valid", "--iw-samples", "2", "--limit", "7")
    assert code == 0, err
    assert out.startswith(f"valid results for {debug_run.dir}")
    for key in ("nll", "ppl", "elbo", "kl", "mi_batch", "au"):
        assert f"  {key} " in out
    assert "K=2 over 7 sequences" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["--split", "train"], "--split) must be test or valid"),
    (["--iw-samples", "0"], "--iw-samples) must be >= 1"),
])
def test_eval_bad_options(debug_run, cli_main, args, needle):
    assert_one_line_error(*cli_main("eval", debug_run.dir, *args)[::2], needle)


def test_eval_of_a_directory_that_is_not_a_run(cli_main, tmp_path):
    assert_one_line_error(*cli_main("eval", tmp_path)[::2], str(tmp_path), "not a run directory")


# --- recipes, methods, data -------------------------------------------------------------------


def test_recipes_list_show_copy(cli_main, tmp_path):
    code, out, _ = cli_main("recipes", "list")
    assert code == 0 and out.split() == list_recipes()
    code, out, _ = cli_main("recipes", "show", "ptb")
    assert code == 0 and out == recipe_path("ptb").read_text()
    dest = tmp_path / "mine.yaml"
    code, out, _ = cli_main("recipes", "copy", "debug", dest)
    assert code == 0 and dest.read_text() == recipe_path("debug").read_text()
    dest.write_text("# my edits\n")
    assert_one_line_error(*cli_main("recipes", "copy", "debug", dest)[::2], str(dest), "already exists")
    assert dest.read_text() == "# my edits\n"
    assert_one_line_error(*cli_main("recipes", "show", "ptbb")[::2], "unknown recipe 'ptbb'", "did you mean 'ptb'")


def test_recipes_show_resolved_is_the_config_a_run_stores(cli_main, tmp_path):
    args = ["method=critic-self", "train.lr=0.01"]
    code, out, _ = cli_main("recipes", "show", "debug", *args, "--resolved")
    assert code == 0
    assert out == to_yaml(load_recipe("debug", args))  # defaults, preset, method and overrides merged
    shown = OmegaConf.to_container(OmegaConf.create(out))
    assert shown["critic"]["type"] == "self" and shown["train"]["lr"] == 0.01
    assert shown["model"]["embed_dim"] == ModelConfig.from_preset("lstm-tiny").embed_dim  # from the preset
    assert_one_line_error(*cli_main("recipes", "show", "debug", "train.lr=-1", "--resolved")[::2], "train.lr")
    assert_one_line_error(*cli_main("recipes", "show", "debug", "train.lr=1")[::2], "--resolved")


def test_methods_list(cli_main):
    code, out, _ = cli_main("methods", "list")
    assert code == 0
    rows = out.strip().splitlines()
    assert [row.split()[0] for row in rows] == [*METHODS, "beta-<b>"]
    for row, (name, description, citation) in zip(rows, method_table(), strict=True):
        assert row.startswith(name) and row.endswith(f"  {description} [{citation}]")


def _check_synthetic(folder, num_train, num_test):
    for split, n in (("train", num_train), ("test", num_test)):
        lines = (folder / f"synthetic_{split}.txt").read_text().splitlines()
        assert len(lines) == n
        assert all(len(line.split()) == 10 and all(0 <= int(t) < 1000 for t in line.split()) for line in lines)
        zs = (folder / f"synthetic_{split}.z.txt").read_text().splitlines()
        assert len(zs) == n and all(len(z.split()) == 2 and all(math.isfinite(float(v)) for v in z.split())
                                    for z in zs)


def test_data_synthetic(cli_main, tmp_path):
    proc = run_cli("data", "synthetic", "--out", tmp_path / "a", "--num-train", "50", "--num-test", "10")
    assert proc.returncode == 0, proc.stderr
    assert "synthetic_train.txt" in proc.stdout
    _check_synthetic(tmp_path / "a", 50, 10)
    assert cli_main("data", "synthetic", "--out", tmp_path / "b", "--num-train", "50", "--num-test", "10")[0] == 0
    assert cli_main("data", "synthetic", "--out", tmp_path / "c", "--num-train", "50", "--num-test", "10",
                    "--seed", "1")[0] == 0
    for name in ("synthetic_train.txt", "synthetic_test.txt", "synthetic_train.z.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()  # deterministic
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()  # the seed matters


# --- bad input: one line on stderr, exit code 2 ---------------------------------------------------


def _fingerprint_recipe(tmp_path, digest: str, extra: str = "") -> str:
    root = write_corpus(tmp_path / "fp", SMALL_TEXT)
    path = tmp_path / "fp.yaml"
    path.write_text(f"name: fp\ndata:\n  dir: {root}\n  fingerprints:\n    train.txt: {digest}\n{extra}"
                    "model:\n  preset: lstm-tiny\ntrain:\n  max_steps: 1\n  batch_size: 4\neval:\n  iw_samples: 1\n")
    return str(path)


def _bad_inputs(tmp_path) -> dict[str, tuple[list[str], list[str]]]:
    """name → (argv, substrings the error line must contain)."""
    out = str(tmp_path / "out")
    cases = {}
    missing = write_corpus(tmp_path / "missing", SMALL_TEXT)
    (missing / "valid.txt").unlink()
    cases["missing file"] = ([f"data.dir={missing}"], ["data file not found", "valid.txt"])
    empty = write_corpus(tmp_path / "empty", SMALL_TEXT, test="")
    cases["empty file"] = ([f"data.dir={empty}"], ["data file is empty", "test.txt"])
    binary = write_corpus(tmp_path / "binary", b"fine\ncaf\xe9 au lait\n")
    cases["non-UTF-8 byte"] = ([f"data.dir={binary}"], ["train.txt:2", "not valid UTF-8"])
    tsv = write_corpus(tmp_path / "tsv", "1\tgood\nno label here\n")
    cases["malformed tsv_label"] = ([f"data.dir={tsv}", "data.format=tsv_label"], ["train.txt:2", "malformed line"])
    cases["unknown key"] = (["train.batchsize=8"], ["unknown key 'train.batchsize'", "did you mean 'train.batch_size'"])
    cases["bad value type"] = (["train.batch_size=abc"], ["bad value for 'train.batch_size'"])
    cases["not key=value"] = (["train.max_steps"], ["not of the form key=value"])
    return {name: (["train", "debug", *args, "-o", out], needles) for name, (args, needles) in cases.items()}


BAD_INPUTS = ["missing file", "empty file", "non-UTF-8 byte", "malformed tsv_label", "unknown key", "bad value type",
              "not key=value"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_in_process(cli_main, tmp_path, case):
    argv, needles = _bad_inputs(tmp_path)[case]
    assert_one_line_error(*cli_main(*argv)[::2], *needles)


def test_unknown_recipe(cli_main):
    assert_one_line_error(*cli_main("train", "debgu")[::2], "unknown recipe 'debgu'", "did you mean 'debug'")
    assert_one_line_error(*cli_main("train", "nonexistent-recipe")[::2], "unknown recipe 'nonexistent-recipe'",
                          "textvae recipes list")


def _digest(kind: str, raw: bytes) -> str:
    if kind == "gitblob":
        blob = subprocess.run(["git", "hash-object", "--stdin"], input=raw, capture_output=True, check=True)
        return "gitblob:" + blob.stdout.decode().strip()
    return ("" if kind == "sha256" else f"{kind}:") + hashlib.new(kind, raw).hexdigest()


@pytest.mark.parametrize("kind", ["sha256", "md5", "gitblob"])
def test_fingerprint_mismatch_and_verify_false(cli_main, tmp_path, kind):
    wrong = _digest(kind, SMALL_TEXT.encode() + b"extra line\n")
    recipe = _fingerprint_recipe(tmp_path, wrong)
    code, _, err = cli_main("train", recipe, "-o", tmp_path / "run")
    assert_one_line_error(code, err, "fingerprint mismatch", "train.txt", "data.verify=false")
    code, out, err = cli_main("train", recipe, "data.verify=false", "-o", tmp_path / "run2")
    assert code == 0, err
    assert (tmp_path / "run2" / "eval_test.json").is_file()
    # and the right digest passes
    right = _digest(kind, SMALL_TEXT.encode())
    code, _, err = cli_main("train", _fingerprint_recipe(tmp_path / "ok", right), "-o", tmp_path / "run3")
    assert code == 0, err


def test_existing_output_directory_is_refused_and_untouched(cli_main, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.txt").write_text("precious")
    code, _, err = cli_main("train", "debug", "train.max_steps=1", "-o", run)
    assert_one_line_error(code, err, str(run), "--overwrite", "--resume")
    assert [p.name for p in run.iterdir()] == ["results.txt"]
    assert (run / "results.txt").read_text() == "precious"


# The same failures through a real `python -m textvae` process.
SUBPROCESS_CASES = ["non-UTF-8 byte", "unknown key", "bad value type"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_subprocess(tmp_path, case):
    argv, needles = _bad_inputs(tmp_path)[case]
    proc = run_cli(*argv)
    assert_one_line_error(proc.returncode, proc.stderr, *needles)
    assert proc.stdout == ""


def test_unknown_recipe_and_existing_dir_subprocess(tmp_path):
    proc = run_cli("train", "debgu")
    assert_one_line_error(proc.returncode, proc.stderr, "unknown recipe 'debgu'", "did you mean 'debug'")
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    proc = run_cli("train", "debug", "-o", run)
    assert_one_line_error(proc.returncode, proc.stderr, "already exists")
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


def test_fingerprint_mismatch_subprocess(tmp_path):
    recipe = _fingerprint_recipe(tmp_path, _digest("gitblob", b"not the file\n"))
    proc = run_cli("train", recipe, "-o", tmp_path / "run")
    assert_one_line_error(proc.returncode, proc.stderr, "fingerprint mismatch", "train.txt")


def test_resume_and_overwrite_through_the_cli(cli_main, tmp_path):
    run = tmp_path / "run"
    common = ["train.log_every_steps=1", "eval.iw_samples=1", "-o", run]
    code, _, err = cli_main("train", "debug", "train.max_steps=3", *common)
    assert code == 0, err
    code, _, err = cli_main("train", "debug", "train.max_steps=5", *common, "--resume")
    assert code == 0, err
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    code, _, err = cli_main("train", "debug", "train.max_steps=2", *common, "--overwrite")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"] == [1, 2]


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_eval_rejects_a_limit_below_one(debug_run, cli_main, limit):
    assert_one_line_error(*cli_main("eval", debug_run.dir, "--iw-samples", "1", "--limit", limit)[::2], "--limit")
