"""Paired comparison of two runs on the same sequences: ``textvae compare RUN_A RUN_B``.

Two models' IW-NLLs on the same test sentences differ far less from sentence to sentence than either
varies over sentences, so the paired standard error of the mean difference is much smaller than each
run's own ``nll_stderr`` (:func:`textvae.metrics.paired_difference`; docs/protocol.md says how to read
it). The per-sequence values come from ``eval_test_per_sequence.npz``, which training writes next to
eval_test.json, or from a fresh evaluation when another split or K is asked for. Runs evaluated on
different text are refused; runs that tokenize the same text differently are compared per word.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .api import evaluate
from .errors import TextVAEError
from .evaluation import PER_SEQUENCE_FILE, PerSequence
from .metrics import paired_difference, perplexity
from .run import Run


@dataclass
class Comparison:
    """A − B on the same sequences. ``unit`` is ``nats/sequence``, or ``nats/word`` when the tokenizers differ."""

    run_a: str
    run_b: str
    split: str
    unit: str
    mean_diff: float  # mean of A's nll minus B's, in ``unit``
    paired_stderr: float  # standard error of mean_diff over sequences, paired
    ci95: list[float]  # mean_diff ± 1.96 · paired_stderr
    mc_stderr: float  # the part of the error due to the finite K of each IW estimate
    num_sequences: int
    wins_a: int  # sequences where A's nll is lower
    nll_a: float  # each run's own mean, in ``unit``, and its own standard error
    nll_b: float
    stderr_a: float
    stderr_b: float
    ppl_a: float  # exp(Σ nll / Σ predicted tokens), or per word
    ppl_b: float
    ppl_diff: float  # ppl_a − ppl_b
    iw_samples_a: int
    iw_samples_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def per_sequence(run: Run | str | Path, split: str = "test", iw_samples: int | None = None) -> PerSequence:
    """A run's per-sequence values: the saved test evaluation when it matches, else a fresh one."""
    path = run.path if isinstance(run, Run) else Path(run)
    saved = path / PER_SEQUENCE_FILE
    if split == "test" and saved.is_file():
        values = PerSequence.load(saved)
        if iw_samples is None or iw_samples == values.iw_samples:
            return values
    result = evaluate(path, split, iw_samples=iw_samples)
    return result.per_sequence


def compare(run_a: Run | str | Path, run_b: Run | str | Path, split: str = "test", *,
            iw_samples: int | None = None) -> Comparison:
    """A − B under the protocol on the same ``split``: a paired difference of per-sequence IW-NLL."""
    names = [str(r.path if isinstance(r, Run) else r) for r in (run_a, run_b)]
    a, b = per_sequence(run_a, split, iw_samples), per_sequence(run_b, split, iw_samples)
    if a.texts_sha256 != b.texts_sha256:
        raise TextVAEError(f"{names[0]} and {names[1]} were evaluated on different {split} sequences "
                           f"({a.nll.size} vs {b.nll.size}; text sha256 {a.texts_sha256[:12]} vs "
                           f"{b.texts_sha256[:12]}): a paired comparison needs the same ones")
    if a.ids_sha256 == b.ids_sha256:
        unit, units, tokens_a, tokens_b = "nats/sequence", None, a.tokens, b.tokens
    elif a.words is not None and b.words is not None:  # same text, other tokenizations: per whitespace word
        unit, units, tokens_a, tokens_b = "nats/word", a.words, a.words, b.words
    else:
        raise TextVAEError(f"{names[0]} and {names[1]} tokenize the {split} text differently and the words of "
                           "the text are unknown, so no common unit exists")
    paired = paired_difference(a.nll, b.nll, a.mc_var, b.mc_var, units)
    if np.array_equal(a.nll, b.nll) and np.array_equal(a.mc_var, b.mc_var):  # one evaluation against itself:
        paired["mc_stderr"] = 0.0  # the same draws, so their Monte-Carlo errors cancel exactly
    u = np.ones(a.nll.size) if units is None else units.astype(np.float64)

    def own(values: PerSequence) -> tuple[float, float]:  # the run's mean in ``unit`` and its unpaired s.e.
        spread = values.nll - values.nll.sum() / u.sum() * u
        n = values.nll.size
        return float(values.nll.sum() / u.sum()), float(np.sqrt((spread**2).sum() / max(n * (n - 1), 1)) * n / u.sum())

    (nll_a, se_a), (nll_b, se_b) = own(a), own(b)
    ppl_a, ppl_b = perplexity(a.nll.sum() / tokens_a.sum()), perplexity(b.nll.sum() / tokens_b.sum())
    return Comparison(run_a=names[0], run_b=names[1], split=split, unit=unit, **paired, nll_a=nll_a, nll_b=nll_b,
                      stderr_a=se_a, stderr_b=se_b, ppl_a=ppl_a, ppl_b=ppl_b, ppl_diff=ppl_a - ppl_b,
                      iw_samples_a=a.iw_samples, iw_samples_b=b.iw_samples)


def format_comparison(c: Comparison) -> str:
    """The comparison as a few lines of text (``textvae compare`` without ``--json``)."""
    lo, hi = c.ci95
    verdict = ("A is lower" if hi < 0 else "B is lower" if lo > 0 else "no difference shown") + " at 95%"
    return "\n".join([
        f"A = {c.run_a}",
        f"B = {c.run_b}",
        f"{c.split} split, {c.num_sequences} sequences, K = {c.iw_samples_a} / {c.iw_samples_b}; {c.unit}",
        f"  A nll {c.nll_a:.4f} ± {c.stderr_a:.4f}   ppl {c.ppl_a:.3f}",
        f"  B nll {c.nll_b:.4f} ± {c.stderr_b:.4f}   ppl {c.ppl_b:.3f}",
        f"  A − B {c.mean_diff:+.4f} ± {c.paired_stderr:.4f} (paired s.e.; Monte-Carlo part {c.mc_stderr:.4f})",
        f"  95% interval [{lo:+.4f}, {hi:+.4f}]: {verdict}",
        f"  ppl A − B {c.ppl_diff:+.4f}; A lower on {c.wins_a} of {c.num_sequences} sequences",
    ])
