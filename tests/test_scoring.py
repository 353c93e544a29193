"""Scores of generated text (scoring.py) on hand-computed examples."""

from __future__ import annotations

import pytest

from textvae.scoring import corpus_bleu, distinct_n, edit_distance, exact_match, path_metrics, self_bleu


def test_distinct_n():
    texts = ["a b a", "a c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)  # a b a a c: {a, b, c}
    assert distinct_n(texts, 2) == pytest.approx(3 / 3)  # (a b) (b a) (a c); no bigram across sentences
    assert distinct_n(["x x x x"], 2) == pytest.approx(1 / 3)
    assert distinct_n(["a", ""], 2) == 0.0  # no bigram at all


def test_self_bleu():
    # Each sentence against the other: matches 6/8 unigrams, 4/6 bigrams, 2/4 trigrams, 0/2 4-grams;
    # sacrebleu's exponential smoothing turns the empty 4-gram order into 1/(2·2): BLEU = (3/4·2/3·1/2·1/4)^¼ = 1/2.
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(50.0)
    assert self_bleu(["the cat sat down"] * 3) == pytest.approx(100.0)
    assert self_bleu(["a b c d", "e f g h", "i j k l"]) == pytest.approx(0.0)
    assert self_bleu(["only one"]) is None


def test_corpus_bleu_and_exact_match():
    refs = ["the cat sat on the mat", "a dog ran"]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(["x y z", "q r"], refs) == pytest.approx(0.0)
    assert exact_match(["the cat sat on  the mat", "a dog"], refs) == 0.5  # whitespace runs fold
    assert exact_match([], []) == 0.0


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("the cat sat".split(), "the dog sat down".split()) == 2  # one substitution, one insertion
    assert edit_distance([], [1, 2, 3]) == 3
    assert edit_distance([1, 2], [1, 2]) == 0
    assert edit_distance("ab", "ba") == 2  # no transpositions in Levenshtein


def test_path_metrics():
    texts = ["a b", "a c", "a c", "d"]
    metrics = path_metrics(texts, ("a b", "e"))
    assert metrics == {"endpoint_match": [True, False], "distinct_ratio": 0.75,
                       "mean_edit_distance": pytest.approx((1 + 0 + 2) / 3)}
    assert path_metrics(["x"], ("x", "x"))["mean_edit_distance"] == 0.0
