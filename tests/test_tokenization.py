"""Tokenizers (tokenization.py): special ids, lossless round trips, save → load."""

from __future__ import annotations

import functools

import pytest
from conftest import ASSETS

from textvae.config import TextVAEError, TokenizerConfig
from textvae.tokenization import SPECIALS, load_tokenizer, train_tokenizer

PTB = [line for line in (ASSETS / "ptb_sample.txt").read_text().splitlines() if line.strip()]
YAHOO = (ASSETS / "yahoo_sample.txt").read_text().splitlines()
CORPUS = PTB + YAHOO

SUBWORD = [("bpe", 120), ("unigram", 120), ("sentencepiece", 100)]


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def word_tok():
    return train_tokenizer(CORPUS, TokenizerConfig(type="word"))


@functools.cache
def subword(kind: str):
    return train_tokenizer(CORPUS, TokenizerConfig(type=kind, vocab_size=dict(SUBWORD)[kind]))


def test_assets_contain_the_corpus_unknown_tokens():
    assert sum(line.count("<unk>") for line in PTB) >= 5
    assert sum(line.count("_UNK") for line in YAHOO) >= 5
    assert PTB[0].startswith(" ") and PTB[0].endswith(" ")  # PTB's leading/trailing spaces


def test_word_special_ids(word_tok):
    assert (word_tok.pad_id, word_tok.bos_id, word_tok.eos_id, word_tok.unk_id) == (0, 1, 2, 3)
    assert model_special_ids(word_tok) == (0, 1, 2, 3)
    assert [word_tok.tok.id_to_token(i) for i in range(4)] == SPECIALS == ["<pad>", "<s>", "</s>", "<unk>"]
    assert word_tok.vocab_size == len({w for line in CORPUS for w in line.split()} | set(SPECIALS))


def test_word_round_trip_ptb_unk_and_yahoo_unk(word_tok):
    assert word_tok.decode(word_tok.encode("the <unk> said N")) == "the <unk> said N"
    assert word_tok.encode("the <unk> said N")[1] == word_tok.unk_id  # PTB's <unk> shares the unknown id
    for line in CORPUS:  # every training line, whitespace-normalised (PTB lines carry edge spaces)
        assert word_tok.decode(word_tok.encode(line)) == words(line)
    yahoo = "how do i get my _UNK back after the update ?"
    assert word_tok.decode(word_tok.encode(yahoo)) == yahoo
    assert word_tok.unk_id not in word_tok.encode(yahoo)  # _UNK is an ordinary word of the corpus
    assert len(word_tok.encode(yahoo)) == len(yahoo.split())


def test_word_out_of_vocabulary_becomes_unk(word_tok):
    ids = word_tok.encode("the zyzzyva said")
    assert ids[1] == word_tok.unk_id and len(ids) == 3


def test_word_min_freq_drops_rare_words():
    tok = train_tokenizer(["a a b", "a c c"], TokenizerConfig(type="word", min_freq=2))
    assert tok.encode("a b c") == [tok.encode("a")[0], tok.unk_id, tok.encode("c")[0]]
    assert tok.unk_id not in tok.encode("a c")


def test_decode_stops_at_eos_and_drops_bos_and_pad(word_tok):
    text = "the board said N years ago"
    ids = word_tok.encode(text)
    assert word_tok.unk_id not in ids
    assert word_tok.decode([word_tok.bos_id, *ids, word_tok.eos_id, *ids]) == text
    assert word_tok.decode([*ids, word_tok.pad_id, word_tok.pad_id]) == text
    assert word_tok.decode([word_tok.eos_id, *ids]) == ""


def model_special_ids(tok) -> tuple[int, int, int, int]:
    """pad, <s>, </s>, unknown ids as the underlying tokenizer model has them (not the class constants)."""
    if tok.kind == "sentencepiece":
        return tok.sp.pad_id(), tok.sp.bos_id(), tok.sp.eos_id(), tok.sp.unk_id()
    return tuple(tok.tok.token_to_id(name) for name in SPECIALS)


@pytest.mark.parametrize("kind", ["bpe", "unigram", "sentencepiece"])
def test_subword_special_ids_and_unknown_tokens(kind):
    tok = subword(kind)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert model_special_ids(tok) == (0, 1, 2, 3)
    assert tok.unk_id in tok.encode("€")  # a character never seen in training
    assert not {0, 1, 2} & set(tok.encode(" ".join(CORPUS)))  # specials are never produced by encode
    assert tok.subword
    for text in ("the <unk> said N", "how do i get my _UNK back ?"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id, *ids, tok.eos_id, *ids]) == text
        assert tok.decode([*ids, tok.pad_id]) == text
    n_ids = sum(len(tok.encode(line)) for line in CORPUS)
    assert n_ids > sum(len(line.split()) for line in CORPUS)  # really subwords, not whole words


@pytest.mark.parametrize("kind", ["bpe", "unigram", "sentencepiece"])
def test_subword_round_trips_every_training_line(kind):
    tok = subword(kind)
    bad = [line for line in map(words, CORPUS) if tok.decode(tok.encode(line)) != line]
    assert not bad, [(line, tok.decode(tok.encode(line))) for line in bad[:3]]


@pytest.mark.parametrize("kind", ["bpe", "unigram", "sentencepiece"])
def test_subword_save_load_same_ids(kind, tmp_path):
    subword_tok = subword(kind)
    subword_tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == subword_tok.kind
    assert model_special_ids(loaded) == (0, 1, 2, 3)
    assert loaded.vocab_size == subword_tok.vocab_size
    assert loaded.encode_batch(CORPUS) == subword_tok.encode_batch(CORPUS)
    ids = subword_tok.encode(YAHOO[0])
    assert loaded.decode(ids) == subword_tok.decode(ids)


def test_word_save_load_same_ids(word_tok, tmp_path):
    word_tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == "word" and not loaded.subword
    assert loaded.encode_batch(CORPUS) == word_tok.encode_batch(CORPUS)
    assert loaded.decode(word_tok.encode(PTB[1])) == words(PTB[1])


@pytest.mark.parametrize("kind", ["bpe", "unigram", "sentencepiece"])
def test_subword_needs_a_vocab_size(kind):
    with pytest.raises(TextVAEError, match="tokenizer.vocab_size"):
        train_tokenizer(CORPUS, TokenizerConfig(type=kind))


def test_load_tokenizer_from_a_non_model_directory(tmp_path):
    with pytest.raises(TextVAEError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)
