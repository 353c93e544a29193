"""Tokenizers: word level, BPE and unigram (HF ``tokenizers``), sentencepiece, and pretrained models' own.

Every tokenizer has the same small interface (:class:`TextTokenizer`): ids for
``<pad> <s> </s> <unk>`` (0, 1, 2, 3 for the ones trained here; a pretrained model's
own otherwise), ``encode`` without specials, ``decode`` that stops at ``</s>``, and
save/load into a run directory. A pretrained encoder with its own vocabulary
(BERT → GPT-2) gives a :class:`PairedTokenizer`: the decoder's tokenizer, which
every NLL is counted in, carrying the encoder's as ``encoder_tokenizer``. Corpus tokens such
as PTB's ``<unk>`` or Yahoo's ``_UNK`` are ordinary words: ``decode`` keeps
every non-padding token, so a round trip through the tokenizer is lossless for
in-vocabulary text (PTB's ``<unk>`` simply shares the unknown id).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import TokenizerConfig
from .errors import TextVAEError, reading

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class TextTokenizer:
    """Common interface. Subclasses implement ``_encode_batch``, ``_decode``, ``save`` and ``vocab_size``."""

    kind = "base"
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    subword = False  # subword models also report nats per whitespace word
    encoder_tokenizer: TextTokenizer | None = None  # the encoder's own, when it differs (PairedTokenizer)

    unk_token = "<unk>"  # the unknown symbol as text: a corpus word for PTB, so not itself "unknown"

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def unknown_words(self, texts: list[str]) -> list[str]:
        """The distinct whitespace words of ``texts`` that this tokenizer reads as its unknown symbol."""
        words = [w for w in dict.fromkeys(w for t in texts for w in t.split()) if w != self.unk_token]
        return [w for w, ids in zip(words, self.encode_batch(words), strict=True) if self.unk_id in ids]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids up to the first ``</s>``, dropping ``<s>`` and ``<pad>``.

        A leading ``<s>`` is dropped first: GPT-2's start and end symbol are the same token.
        """
        ids = [int(i) for i in ids]
        kept = []
        for i in ids[1:] if ids[:1] == [self.bos_id] else ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return self._decode(kept)

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError

    def save_kind(self, directory: Path) -> None:
        """``tokenizer_config.json``: which class :func:`load_tokenizer` reads the folder with."""
        (directory / "tokenizer_config.json").write_text(json.dumps({"type": self.kind}))


class HFTokenizer(TextTokenizer):
    """Word level, BPE or unigram model on HF ``tokenizers``; saved as ``tokenizer.json``."""

    def __init__(self, tokenizer: Tokenizer, kind: str):
        self.tok = tokenizer
        self.kind = kind
        self.subword = kind != "word"
        for name, expected in zip(SPECIALS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True):
            if tokenizer.token_to_id(name) != expected:
                raise TextVAEError(f"tokenizer: special token {name} must have id {expected}")

    @classmethod
    def train(cls, texts: list[str], cfg: TokenizerConfig) -> HFTokenizer:
        kind = cfg.type
        if kind == "word":
            # The vocabulary is counted here rather than by WordLevelTrainer, which gives a corpus
            # word equal to a special (PTB's `<unk>`) a second id and leaves a hole at id 3.
            counts = Counter(word for text in texts for word in text.split())
            words = sorted((w for w, c in counts.items() if c >= cfg.min_freq and w not in SPECIALS),
                           key=lambda w: (-counts[w], w))
            if cfg.vocab_size:
                words = words[: max(0, cfg.vocab_size - len(SPECIALS))]
            vocab = {w: i for i, w in enumerate(SPECIALS + words)}
            tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            tok.add_special_tokens(SPECIALS)
            return cls(tok, kind)
        if not cfg.vocab_size:
            raise TextVAEError(f"tokenizer.vocab_size is required for tokenizer.type={kind}")
        # Metaspace keeps word boundaries inside the pieces, so decode restores the spacing.
        if kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            trainer = trainers.BpeTrainer(
                vocab_size=cfg.vocab_size, min_frequency=cfg.min_freq, special_tokens=SPECIALS, show_progress=False
            )
        else:
            tok = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=cfg.vocab_size, special_tokens=SPECIALS, unk_token="<unk>", show_progress=False
            )
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, kind)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        if self.kind == "word":
            # WordLevel has no decoder; join tokens (PTB's `<unk>` included) with single spaces.
            return " ".join(self.tok.id_to_token(i) for i in ids)
        return self.tok.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tok.save(str(directory / "tokenizer.json"))
        self.save_kind(directory)


class SentencePieceTokenizer(TextTokenizer):
    """sentencepiece unigram model; saved as ``spm.model``."""

    kind = "sentencepiece"
    subword = True

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: list[str], cfg: TokenizerConfig) -> SentencePieceTokenizer:
        import sentencepiece as spm

        if not cfg.vocab_size:
            raise TextVAEError("tokenizer.vocab_size is required for tokenizer.type=sentencepiece")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buffer,
            vocab_size=cfg.vocab_size,
            model_type="unigram",
            pad_id=PAD_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            # PTB writes rare words as `<unk>`: keep it an ordinary piece so it round-trips.
            unk_piece="<spm-unk>",
            user_defined_symbols=["<unk>"],
            hard_vocab_limit=False,
            character_coverage=1.0,  # rare characters (PTB digits) must not decode as ⁇
            minloglevel=2,
        )
        return cls(buffer.getvalue())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def _decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        (directory / "spm.model").write_bytes(self.proto)
        self.save_kind(directory)


class PretrainedTokenizer(TextTokenizer):
    """A pretrained model's own tokenizer (``transformers.AutoTokenizer``); saved under ``hf_tokenizer/``.

    Sequences are framed by the model's start and end symbols: BERT's ``[CLS] … [SEP]``,
    GPT-2's ``<|endoftext|> … <|endoftext|>``. A tokenizer without a padding token
    (GPT-2) gets ``<pad>`` added, so that padding is never confused with a real target;
    the decoder's embeddings are resized to match.
    """

    kind = "pretrained"
    subword = True
    folder = "hf_tokenizer"

    def __init__(self, hf_tokenizer):
        self.tok = hf_tokenizer
        if self.tok.pad_token is None:
            self.tok.add_special_tokens({"pad_token": "<pad>"})
        tok = self.tok
        self.pad_id = tok.pad_token_id
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.unk_id = tok.unk_token_id if tok.unk_token_id is not None else self.eos_id
        self.unk_token = tok.unk_token
        if self.bos_id is None or self.eos_id is None:
            raise TextVAEError(f"pretrained tokenizer '{tok.name_or_path}' has no start/end symbols "
                               "(bos/eos or cls/sep tokens)")

    @classmethod
    def from_name(cls, name: str, key: str) -> PretrainedTokenizer:
        from .modules.hf import load_auto_tokenizer

        return cls(load_auto_tokenizer(name, key))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tok.save_pretrained(str(directory / self.folder))
        self.save_kind(directory)


class PairedTokenizer(TextTokenizer):
    """The decoder's tokenizer, with the encoder's own as ``encoder_tokenizer`` (BERT → GPT-2).

    It behaves as the decoder's in every respect (ids, vocabulary, decoding, so NLL and
    perplexity are counted in decoder tokens); the data pipeline adds the encoder's
    tokenization of each sequence (``batch.encoder_input_ids``). Saved as two tokenizer
    folders, ``decoder_tokenizer/`` and ``encoder_tokenizer/``.
    """

    kind = "paired"

    def __init__(self, decoder: TextTokenizer, encoder: TextTokenizer):
        self.decoder, self.encoder_tokenizer = decoder, encoder
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = decoder.pad_id, decoder.bos_id, decoder.eos_id, decoder.unk_id
        self.subword = decoder.subword

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.decoder.encode_batch(texts)

    def unknown_words(self, texts: list[str]) -> list[str]:
        """Words unknown to the decoder's tokenizer or to the encoder's."""
        found = self.decoder.unknown_words(texts) + self.encoder_tokenizer.unknown_words(texts)
        return list(dict.fromkeys(found))

    def _decode(self, ids: list[int]) -> str:
        return self.decoder._decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for name, tok in (("decoder_tokenizer", self.decoder), ("encoder_tokenizer", self.encoder_tokenizer)):
            (directory / name).mkdir(parents=True, exist_ok=True)
            tok.save(directory / name)
        self.save_kind(directory)


# tokenizer.type → how to fit it on the training texts; "pretrained" comes with its decoder (builders.py)
TOKENIZERS = {"word": HFTokenizer.train, "bpe": HFTokenizer.train, "unigram": HFTokenizer.train,
              "sentencepiece": SentencePieceTokenizer.train}


def train_tokenizer(texts: list[str], cfg: TokenizerConfig) -> TextTokenizer:
    """Fit the tokenizer named by ``cfg.type`` on the training texts."""
    return TOKENIZERS[cfg.type](texts, cfg)


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The tokenizer saved in ``directory``; a missing or damaged file is one TextVAEError naming it."""
    directory = Path(directory)
    meta_path = directory / "tokenizer_config.json"
    if not meta_path.is_file():
        raise TextVAEError(f"{directory}: no tokenizer_config.json (not a textvae model directory?)")
    with reading(meta_path):
        kind = json.loads(meta_path.read_text())["type"]
        if kind not in LOADERS:
            raise TextVAEError(f"unknown tokenizer type {kind!r}")
    return LOADERS[kind](directory)


def _load_pretrained(directory: Path) -> TextTokenizer:
    from transformers import AutoTokenizer

    with reading(directory / PretrainedTokenizer.folder):
        return PretrainedTokenizer(AutoTokenizer.from_pretrained(str(directory / PretrainedTokenizer.folder)))


def _load_paired(directory: Path) -> TextTokenizer:
    return PairedTokenizer(load_tokenizer(directory / "decoder_tokenizer"), load_tokenizer(directory / "encoder_tokenizer"))


def _load_sentencepiece(directory: Path) -> TextTokenizer:
    with reading(directory / "spm.model"):
        return SentencePieceTokenizer((directory / "spm.model").read_bytes())


def _load_hf(directory: Path) -> TextTokenizer:
    path = directory / "tokenizer.json"
    with reading(path):
        tok = Tokenizer.from_file(str(path))
        kind = json.loads((directory / "tokenizer_config.json").read_text())["type"]
        return HFTokenizer(tok, kind)


# tokenizer_config.json's "type" → how to read the folder (the types a run can save)
LOADERS = {"word": _load_hf, "bpe": _load_hf, "unigram": _load_hf, "sentencepiece": _load_sentencepiece,
           "pretrained": _load_pretrained, "paired": _load_paired}
