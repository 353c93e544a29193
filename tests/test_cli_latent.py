"""The latent-space commands (sample, reconstruct, interpolate, analogy, plot) end to end on tiny runs.

One shared debug run (conftest's ``debug_run``) serves every command; a labelled (tsv_label)
run and a language-model run, two optimizer steps each, serve the plot and the errors.
Most calls run in-process (``cli_main``); two go through ``python -m textvae``.
"""

from __future__ import annotations

import json

import matplotlib.image
import pytest
from conftest import SMALL_TEXT, assert_one_line_error, run_cli, write_corpus

from textvae import latent
from textvae.config import load_recipe
from textvae.generation import STRATEGIES
from textvae.training import fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PATH_KEYS = {"path", "endpoint_match", "distinct_ratio", "mean_edit_distance"}
A, B, C = "the cat sees the small house .", "the old man likes a long letter .", "my friend watches the red car ."


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    """tsv_label corpus (labels 0..2), two steps of the debug recipe."""
    root = tmp_path_factory.mktemp("labelled")
    lines = SMALL_TEXT.splitlines()
    corpus = write_corpus(root / "corpus", "".join(f"{i % 3}\t{line}\n" for i, line in enumerate(lines)))
    cfg = load_recipe("debug", [f"data.dir={corpus}", "data.format=tsv_label", "train.max_steps=2",
                                "eval.iw_samples=1"])
    return fit(cfg, root / "run", progress=False)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    cfg = load_recipe("debug", ["method=lm", "train.max_steps=2", "eval.iw_samples=1"])
    return fit(cfg, tmp_path_factory.mktemp("lm") / "run", progress=False)


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --- sample ---------------------------------------------------------------------------------------


def test_sample_prints_sentences_and_scores(debug_run, cli_main):
    lines = ok(cli_main("sample", debug_run.dir, "-n", "4", "--max-length", "8")).splitlines()
    assert len(lines) == 5
    assert all(0 < len(line.split()) <= 8 for line in lines[:4])
    assert lines[4].startswith("# distinct-1 ") and "distinct-2 " in lines[4] and "self-BLEU " in lines[4]


def test_sample_no_repeat_ngram_reaches_the_decoder(debug_run, cli_main):
    args = ["sample", debug_run.dir, "-n", "6", "--strategy", "greedy", "--max-length", "12", "--json"]
    def repeats(texts):
        return [len(set(t.split())) < len(t.split()) for t in texts]

    assert any(repeats(json.loads(ok(cli_main(*args)))["texts"]))  # the tiny model repeats words by itself
    assert not any(repeats(json.loads(ok(cli_main(*args, "--no-repeat-ngram", "1")))["texts"]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sample_json_is_reproducible(debug_run, cli_main, strategy):
    args = ["sample", debug_run.dir, "-n", "3", "--strategy", strategy, "--max-length", "6", "--json"]
    out = ok(cli_main(*args, "--seed", "5"))
    result = json.loads(out)
    assert set(result) == {"texts", "distinct_1", "distinct_2", "self_bleu"}
    assert len(result["texts"]) == 3 and 0 <= result["distinct_1"] <= 1 and 0 <= result["self_bleu"] <= 100 + 1e-9
    assert ok(cli_main(*args, "--seed", "5")) == out
    if strategy == "sample":
        assert ok(cli_main(*args, "--seed", "6")) != out


# --- reconstruct ----------------------------------------------------------------------------------


def test_reconstruct_from_a_file_and_from_stdin(debug_run, cli_main, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text(f"{A}\n\nthe zebra sees the small house .\n{B}\n", encoding="utf-8")
    result = json.loads(ok(cli_main("reconstruct", debug_run.dir, "--input", source, "--json")))
    assert result["inputs"] == [A, "the zebra sees the small house .", B]  # blank lines are skipped
    assert result["references"] == [A, "the <unk> sees the small house .", B]  # out-of-vocabulary word → <unk>
    assert len(result["outputs"]) == 3
    assert 0 <= result["bleu"] <= 100 + 1e-9 and 0 <= result["exact_match"] <= 1
    lines = ok(cli_main("reconstruct", debug_run.dir, "--input", source, "--z", "sample")).splitlines()
    assert len(lines) == 4 and lines[3].startswith("# BLEU ") and "exact match" in lines[3]
    proc = run_cli("reconstruct", debug_run.dir, "--input", "-", "--json", stdin=source.read_text())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == result


# --- interpolate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_json_shape(debug_run, cli_main, method):
    out = ok(cli_main("interpolate", debug_run.dir, A, B, "--steps", "5", "--method", method, "--json"))
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert set(result) == PATH_KEYS
    assert [p["t"] for p in result["path"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(set(p) == {"t", "text"} and isinstance(p["text"], str) for p in result["path"])
    assert result["endpoint_match"] == [True, True]  # a greedy path ends on the reconstructions
    assert 0.2 <= result["distinct_ratio"] <= 1 and result["mean_edit_distance"] >= 0


def test_interpolate_prints_the_path(debug_run, cli_main):
    lines = ok(cli_main("interpolate", debug_run.dir, A, B, "--steps", "3", "--max-length", "5")).splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["0.000", "0.500", "1.000"]
    assert lines[3].startswith("# endpoint match [True, True]")


def test_interpolate_pairs_writes_jsonl(debug_run, cli_main, tmp_path):
    (tmp_path / "a.txt").write_text(f"{A}\n{B}\n{C}\n")
    (tmp_path / "b.txt").write_text(f"{C}\n{A}\n{B}\n")
    out_file = tmp_path / "paths.jsonl"
    common = ["--pairs", tmp_path / "a.txt", tmp_path / "b.txt", "--steps", "4"]
    assert "wrote 3 paths" in ok(cli_main("interpolate", debug_run.dir, *common, "--out", out_file))
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r) == PATH_KEYS and len(r["path"]) == 4 for r in rows)
    assert ok(cli_main("interpolate", debug_run.dir, *common)) == out_file.read_text()  # stdout: the same JSONL
    single = json.loads(ok(cli_main("interpolate", debug_run.dir, B, A, "--steps", "4", "--json")))
    assert rows[1] == single


# --- analogy --------------------------------------------------------------------------------------


def test_analogy(debug_run, cli_main):
    text = ok(cli_main("analogy", debug_run.dir, A, B, C, "--max-length", "7")).strip()
    assert len(text.splitlines()) == 1 and len(text.split()) <= 7
    result = json.loads(ok(cli_main("analogy", debug_run.dir, A, B, C, "--max-length", "7", "--json")))
    assert result == {"a": A, "b": B, "c": C, "text": text}


# --- plot -----------------------------------------------------------------------------------------


def test_plot_an_unlabelled_run(debug_run, cli_main, tmp_path):
    out = ok(cli_main("plot", debug_run.dir, "--out", tmp_path / "plots"))
    assert out.splitlines() == [f"curves: {tmp_path / 'plots' / 'curves.png'}",
                                f"latent: {tmp_path / 'plots' / 'latent.png'}"]
    for name in ("curves.png", "latent.png"):
        assert_png(tmp_path / "plots" / name)


def test_plot_a_labelled_run_colours_by_label(labelled_run, cli_main, monkeypatch):
    seen = {}
    draw = latent.plot_latent_space

    def spy(points, labels, out_png, title=""):
        seen.update(n=len(points), labels=labels)
        return draw(points, labels, out_png, title)

    monkeypatch.setattr(latent, "plot_latent_space", spy)
    ok(cli_main("plot", labelled_run))  # into the run directory
    assert seen == {"n": 12, "labels": [i % 3 for i in range(12)]}
    for name in ("curves.png", "latent.png"):
        assert_png(labelled_run / name)


def test_plot_a_language_model_has_curves_only(lm_run, cli_main, tmp_path):
    out = ok(cli_main("plot", lm_run, "--out", tmp_path))
    assert "no latent.png" in out
    assert_png(tmp_path / "curves.png")
    assert not (tmp_path / "latent.png").exists()


# --- bad input: one line on stderr, exit code 2 ---------------------------------------------------


def _bad_cases(tmp_path, run, lm) -> dict[str, tuple[list, list[str]]]:
    """name → (argv, substrings the error line must contain)."""
    empty, blank, binary = tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "bad.txt"
    empty.write_text("")
    blank.write_text("\n  \n")
    binary.write_bytes(b"fine\ncaf\xe9 au lait\n")
    (tmp_path / "two.txt").write_text(f"{A}\n{B}\n")
    missing = tmp_path / "no-such-run"
    return {
        "missing run dir": (["sample", missing], [str(missing), "not a run directory"]),
        "missing input": (["reconstruct", run, "--input", tmp_path / "nope.txt"], ["input file not found", "nope.txt"]),
        "empty input": (["reconstruct", run, "--input", empty], ["input file is empty", str(empty)]),
        "blank input": (["reconstruct", run, "--input", blank], ["input file is empty", str(blank)]),
        "non-UTF-8 line": (["reconstruct", run, "--input", binary], [f"{binary}:2", "not valid UTF-8"]),
        "bad strategy": (["sample", run, "--strategy", "nucleus"], ["--strategy", "nucleus", "top-p"]),
        "n < 1": (["sample", run, "-n", "0"], ["-n must be >= 1"]),
        "bad top-p": (["sample", run, "--strategy", "top-p", "--top-p", "1.5"], ["--top-p"]),
        "bad no-repeat-ngram": (["sample", run, "--no-repeat-ngram", "-1"], ["--no-repeat-ngram"]),
        "bad z": (["reconstruct", run, "--input", tmp_path / "two.txt", "--z", "mode"], ["--z must be mean or sample"]),
        "LM interpolate": (["interpolate", lm, A, B], [str(lm), "language model", "latent_dim 0"]),
        "LM reconstruct": (["reconstruct", lm, "--input", tmp_path / "two.txt"], [str(lm), "language model"]),
        "LM analogy": (["analogy", lm, A, B, C], [str(lm), "language model"]),
        "one sentence": (["interpolate", run, A], ["two sentences"]),
        "steps < 2": (["interpolate", run, A, B, "--steps", "1"], ["--steps must be >= 2"]),
        "bad method": (["interpolate", run, A, B, "--method", "cubic"], ["--method", "cubic"]),
        "pairs and sentences": (["interpolate", run, A, B, "--pairs", tmp_path / "two.txt", tmp_path / "two.txt"],
                                ["--pairs"]),
        "uneven pairs": (["interpolate", run, "--pairs", tmp_path / "two.txt", binary.with_name("one.txt")],
                         ["--pairs", "two.txt", "one.txt"]),
        "out without pairs": (["interpolate", run, A, B, "--out", tmp_path / "x.jsonl"], ["--out goes with --pairs"]),
        "plot limit": (["plot", run, "--limit", "0"], ["--limit"]),
    }


BAD_CASES = ["missing run dir", "missing input", "empty input", "blank input", "non-UTF-8 line", "bad strategy",
             "n < 1", "bad top-p", "bad z", "LM interpolate", "LM reconstruct", "LM analogy", "one sentence",
             "steps < 2", "bad method", "pairs and sentences", "uneven pairs", "out without pairs", "plot limit"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input(debug_run, lm_run, cli_main, tmp_path, case):
    (tmp_path / "one.txt").write_text(f"{C}\n")
    argv, needles = _bad_cases(tmp_path, debug_run.dir, lm_run)[case]
    assert_one_line_error(*cli_main(*argv)[::2], *needles)


def test_bad_input_subprocess(lm_run):
    proc = run_cli("interpolate", lm_run, A, B)
    assert_one_line_error(proc.returncode, proc.stderr, str(lm_run), "language model")
    assert proc.stdout == ""
