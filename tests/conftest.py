"""Shared fixtures: tiny seeded CPU models, tiny corpora, and helpers to drive the CLI.

Everything here is small (vocab ≤ 50, hidden ≤ 16, T ≤ 12 for the model tests) and
offline: the Hugging Face libraries are put in offline mode and their cache in a
temporary folder before anything imports them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

# Before `datasets` / `huggingface_hub` are imported (textvae imports them lazily).
_HF_CACHE = tempfile.mkdtemp(prefix="textvae-tests-hf-")
atexit.register(shutil.rmtree, _HF_CACHE, ignore_errors=True)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_HF_CACHE, "datasets"))
os.environ.setdefault("HF_HOME", os.path.join(_HF_CACHE, "home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models: one thread is fastest, and several threads on a shared 2-core machine can be
# hundreds of times slower (OpenMP threads waiting on each other while another process runs).
torch.set_num_threads(1)

from textvae.config import ModelConfig  # noqa: E402
from textvae.data import TextDataset  # noqa: E402
from textvae.model import TextVAE  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEBUG_DIR = REPO_ROOT / "textvae" / "assets" / "debug"

TINY = dict(vocab_size=30, embed_dim=8, enc_hidden_dim=8, dec_hidden_dim=8, latent_dim=4,
            dec_dropout_in=0.0, dec_dropout_out=0.0)


# Tests that can run on a GPU are parametrised over these; "cuda" appears only where a CUDA device is.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_model(seed: int = 0, **overrides) -> TextVAE:
    """A tiny seeded model in eval mode."""
    torch.manual_seed(seed)
    return TextVAE(ModelConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def tiny_model() -> TextVAE:
    """He et al.'s initialisation (U(±0.01)): nearly collapsed, as a fresh model is."""
    return make_model()


@pytest.fixture
def informative_model() -> TextVAE:
    """Large random weights, so that z really changes the decoder and q(z|x) differs per x."""
    return make_model(seed=1, init_range=1.0, emb_init_range=1.0)


@pytest.fixture
def lm_model() -> TextVAE:
    return make_model(seed=2, latent_dim=0, init_range=0.5, emb_init_range=0.5)


def random_ids(lengths: list[int], vocab_size: int = 30, seed: int = 0) -> list[list[int]]:
    """Token ids (no specials, so ≥ 4) of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab_size, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture
def tiny_dataset() -> TextDataset:
    """Twelve sequences of 3..10 tokens (T ≤ 12 with <s> and </s>)."""
    return TextDataset(random_ids([3, 10, 5, 7, 4, 9, 6, 8, 3, 10, 5, 7], seed=3))


def decode_incrementally(decoder, input_ids: torch.Tensor, z: torch.Tensor | None, prompt: int) -> torch.Tensor:
    """Logits of a ``prompt``-token first call, then one token per call continuing the returned state."""
    logits, state = decoder(input_ids[:, :prompt], z, return_state=True)
    steps = [logits]
    for t in range(prompt, input_ids.size(1)):
        logits, state = decoder(input_ids[:, t : t + 1], z, state=state, return_state=True)
        steps.append(logits)
    return torch.cat(steps, dim=1)


def assert_same_final_weights(run_a: Path, run_b: Path) -> None:
    """The last checkpoints of two run directories hold the same weights (e.g. resumed vs uninterrupted)."""
    from safetensors.torch import load_file

    from textvae.checkpoint import latest_checkpoint

    a = load_file(str(latest_checkpoint(run_a) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(run_b) / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


def write_corpus(root: Path, train: str | bytes, valid: str | bytes | None = None, test: str | bytes | None = None,
                 names=("train.txt", "valid.txt", "test.txt")) -> Path:
    """Write three split files into ``root`` (valid/test default to the train content)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in zip(names, (train, valid if valid is not None else train,
                                     test if test is not None else train), strict=True):
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


SMALL_TEXT = "".join(f"{w} sat on the {v} .\n" for w in ("the cat", "a dog", "my friend", "the old man")
                     for v in ("mat", "red car", "small house"))


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus", SMALL_TEXT)


def cli_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # see torch.set_num_threads(1) above
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m textvae ARGS`` in a subprocess (the most faithful way to test exit codes and stderr)."""
    return subprocess.run([sys.executable, "-m", "textvae", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=cli_env(), timeout=timeout, input=stdin)


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    """A user error: exit code 2 and one line ``error: ...`` holding every needle, no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def cli_main(monkeypatch, capsys):
    """Call ``textvae.cli.main`` in-process with the given argv; returns (exit code, stdout, stderr)."""
    from textvae.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["textvae", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory) -> SimpleNamespace:
    """One end-to-end CLI training run on the `debug` recipe, shared by the CLI tests: ``.dir``, ``.stdout``."""
    run = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "debug", "train.max_steps=30", "eval.iw_samples=5", "--output-dir", run, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(dir=run, stdout=proc.stdout, stderr=proc.stderr)


# --- tiny pretrained models (transformers), built locally: no download -----------------------------


def build_tiny_pretrained(root: Path) -> SimpleNamespace:
    """A random tiny BERT and a tiny GPT-2 with word-level tokenizers over SMALL_TEXT's words, saved with
    ``save_pretrained`` in ``root/bert`` and ``root/gpt2``, as a downloaded model would be.

    The two vocabularies differ (BERT: [PAD] [UNK] [CLS] [SEP] first; GPT-2: <|endoftext|> only, no padding
    token), so a BERT → GPT-2 model needs its two tokenizations.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted(set(SMALL_TEXT.split()))

    def word_level(specials: list[str], unk: str) -> Tokenizer:
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return tok

    torch.manual_seed(0)
    eot = "<|endoftext|>"
    gpt2_tok = PreTrainedTokenizerFast(tokenizer_object=word_level([eot], eot), bos_token=eot, eos_token=eot,
                                       unk_token=eot)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt2_tok), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))
    bert_tok = PreTrainedTokenizerFast(tokenizer_object=word_level(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[UNK]"),
                                       pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64))
    for name, tok, model in (("gpt2", gpt2_tok, gpt2), ("bert", bert_tok, bert)):
        tok.save_pretrained(root / name)
        model.save_pretrained(root / name)
    return SimpleNamespace(bert=root / "bert", gpt2=root / "gpt2")


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> SimpleNamespace:
    """``.bert`` and ``.gpt2``: folders holding tiny random models and their tokenizers (see build_tiny_pretrained)."""
    return build_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))
