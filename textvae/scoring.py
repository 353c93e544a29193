"""Scores of generated text: distinct-n, self-BLEU, corpus BLEU, exact match, edit distance, path metrics.

Every score works on whitespace tokens of the decoded text, so that it reads the same
for word-level and subword models. BLEU is ``sacrebleu``'s, with its defaults (13a
tokenization, exponential smoothing of empty n-gram orders), on a 0–100 scale.
"""

from __future__ import annotations

from collections.abc import Sequence


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over ``texts`` (Li et al. 2016, "A diversity-promoting
    objective function for neural conversation models"). 0.0 when there is no n-gram."""
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.split()]
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU of ``hypotheses[i]`` against ``references[i]`` (one reference each)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def self_bleu(texts: Sequence[str]) -> float | None:
    """Self-BLEU (Zhu et al. 2018, Texygen): each text against all the others as references.

    The pairs are pooled into one sacrebleu corpus BLEU (rather than averaging smoothed
    sentence BLEUs), so it is the usual BLEU of the set against itself minus the identical
    pairs. Higher means less diverse; None for fewer than two texts. Costs O(N²) n-gram counts.
    """
    import sacrebleu

    texts = list(texts)
    if len(texts) < 2:
        return None
    # Reference stream j holds, for hypothesis i, the j-th of the other texts.
    refs = [[texts[j + (j >= i)] for i in range(len(texts))] for j in range(len(texts) - 1)]
    return float(sacrebleu.corpus_bleu(texts, refs).score)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference (after folding runs of whitespace)."""
    pairs = list(zip(hypotheses, references, strict=True))
    return sum(h.split() == r.split() for h, r in pairs) / len(pairs) if pairs else 0.0


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def path_metrics(texts: Sequence[str], endpoint_references: tuple[str, str]) -> dict:
    """Scores of an interpolation path (texts decoded at t = 0 … 1).

    Returns ``endpoint_match`` ([first text == first reference, last text == last
    reference], the references being the endpoints' greedy reconstructions),
    ``distinct_ratio`` (distinct texts / points) and ``mean_edit_distance`` (mean token
    edit distance between neighbouring points; 0.0 for a single point).
    """
    words = [t.split() for t in texts]
    steps = [edit_distance(x, y) for x, y in zip(words[:-1], words[1:], strict=True)]
    return {
        "endpoint_match": [words[0] == endpoint_references[0].split(), words[-1] == endpoint_references[1].split()],
        "distinct_ratio": len(set(texts)) / len(texts),
        "mean_edit_distance": sum(steps) / len(steps) if steps else 0.0,
    }
