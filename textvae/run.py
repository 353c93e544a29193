"""``Run``: a run directory with what it holds, as :func:`textvae.train` and :func:`textvae.load` return it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .evaluation import EvalResult
from .model import TextVAE
from .tokenization import TextTokenizer


@dataclass
class Run:
    """A run directory with what it holds: its config, best model, tokenizer and test figures."""

    path: Path
    config: Config
    model: TextVAE
    tokenizer: TextTokenizer
    test: EvalResult | None  # eval_test.json, None until training has finished

    def __repr__(self) -> str:
        nll = "unfinished" if self.test is None else f"test nll {self.test.nll:.4f}"
        return f"Run({str(self.path)!r}, recipe {self.config.name!r}, method {self.config.method!r}, {nll})"
