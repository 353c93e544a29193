"""Corpora → token ids → length-bucketed batches.

Files are checked first (present, non-empty, valid UTF-8, well-formed
``label<TAB>text`` lines, sha256 fingerprint) so that bad input fails with one
line naming the file, then loaded through ``datasets``. Batches group sequences
of equal or near-equal length (DESIGN.md §5), so padding is rare, and are
padded with ``<pad>``; every sequence is framed as ``<s> w1 .. wn </s>`` (with the
tokenizer's own start and end symbols). When the encoder has a tokenizer of its own
(a pretrained encoder, :class:`~textvae.tokenization.PairedTokenizer`), each batch also
carries the encoder's framing of the same sequences; otherwise the encoder reads the
decoder's ids.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .config import DataConfig
from .errors import TextVAEError
from .tokenization import TextTokenizer

SPLITS = ("train", "valid", "test")


@dataclass
class Batch:
    """A padded batch.

    Shape:
        input_ids, attention_mask: (B, T) with T = longest sequence + 2 (``<s>`` and ``</s>``).
        lengths: (B,) tokens per sequence including ``<s>`` and ``</s>``.
        indices: (B,) positions of the sequences in their split.
        encoder_input_ids, encoder_attention_mask: (B, T_enc), the encoder's tokenization;
            the same tensors as input_ids and attention_mask when encoder and decoder share a tokenizer.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    indices: torch.Tensor
    class_labels: torch.Tensor | None = None
    encoder_input_ids: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.encoder_input_ids is None:
            self.encoder_input_ids, self.encoder_attention_mask = self.input_ids, self.attention_mask

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``; to a GPU through pinned memory, with asynchronous copies."""
        shared = self.encoder_input_ids is self.input_ids
        cuda = torch.device(device).type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            if cuda and t.device.type == "cpu":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.lengths),
            move(self.indices),
            None if self.class_labels is None else move(self.class_labels),
            None if shared else move(self.encoder_input_ids),
            None if shared else move(self.encoder_attention_mask),
        )

    def rows(self, index: slice) -> Batch:
        """The batch's rows ``index`` (a data-parallel rank's share), padded as the whole batch is."""
        shared = self.encoder_input_ids is self.input_ids
        return Batch(
            self.input_ids[index],
            self.attention_mask[index],
            self.lengths[index],
            self.indices[index],
            None if self.class_labels is None else self.class_labels[index],
            None if shared else self.encoder_input_ids[index],
            None if shared else self.encoder_attention_mask[index],
        )

    @property
    def num_predicted_tokens(self) -> int:
        """Words + ``</s>`` per sequence, not ``<s>`` (He et al.'s perplexity convention)."""
        return int((self.lengths - 1).sum())


def builtin_dir(name: str) -> Path:
    path = Path(str(resources.files("textvae.assets"))) / name
    if not path.is_dir():
        raise TextVAEError(f"unknown built-in corpus 'data.builtin={name}'")
    return path


def data_paths(cfg: DataConfig) -> dict[str, Path]:
    if cfg.dir is None and cfg.builtin is None:
        raise TextVAEError("recipe needs 'data.dir' (the folder holding the split files): add data.dir=PATH")
    root = Path(cfg.dir) if cfg.dir is not None else builtin_dir(cfg.builtin)
    if not root.is_dir():
        raise TextVAEError(f"data.dir does not exist or is not a folder: {root}")
    names = {"train": cfg.train_file, "valid": cfg.valid_file, "test": cfg.test_file}
    return {split: root / name for split, name in names.items()}


def fingerprint(raw: bytes, algorithm: str) -> str:
    """Hex digest of a file's bytes: ``sha256``, ``md5`` or ``gitblob`` (= ``git hash-object FILE``)."""
    if algorithm == "gitblob":
        return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    return hashlib.new(algorithm, raw).hexdigest()


def check_fingerprint(path: Path, raw: bytes, expected: str) -> None:
    """``expected`` is ``hex`` (sha256) or ``algorithm:hex`` with algorithm sha256, md5 or gitblob."""
    algorithm, _, digest = expected.rpartition(":")
    algorithm = algorithm or "sha256"
    if algorithm not in ("sha256", "md5", "gitblob"):
        raise TextVAEError(f"data.fingerprints.{path.name}: unknown algorithm '{algorithm}' (sha256, md5, gitblob)")
    actual = fingerprint(raw, algorithm)
    if actual != digest.lower():
        raise TextVAEError(
            f"fingerprint mismatch for {path}: {algorithm} {actual[:12]}… != expected {digest[:12]}… "
            "(a different or corrupted copy; pass data.verify=false, or `textvae eval --no-verify`, to use it anyway)"
        )


def decode_utf8(raw: bytes, name: str | Path) -> str:
    """``raw`` as text, or one line naming ``name`` and the line holding the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TextVAEError(f"{name}:{line}: not valid UTF-8 (byte {raw[err.start]:#04x})") from None


def read_lines(raw: bytes, name: str | Path) -> list[str]:
    """The non-blank lines of a user's input file (``name`` labels errors), stripped; never empty."""
    lines = [line.strip() for line in decode_utf8(raw, name).splitlines() if line.strip()]
    if not lines:
        raise TextVAEError(f"input file is empty: {name}")
    return lines


LABEL = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses


def split_lines(text: str) -> list[str]:
    """Lines as the readers see them: universal newlines (\\n, \\r\\n, \\r) only, not str.splitlines()'s
    other breaks (\\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028, \\u2029), which stay inside a line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_bytes(path: Path, what: str = "data file") -> bytes:
    """A file's bytes, or one line naming it (missing, a folder, unreadable)."""
    if not path.is_file():
        raise TextVAEError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise TextVAEError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None


def check_file(path: Path, fmt: str, expected: str | None = None) -> str:
    """The file's sha256; fails with one line naming ``path`` if it is missing, empty, not UTF-8, malformed
    or altered."""
    raw = read_bytes(path)
    if not raw.strip():
        raise TextVAEError(f"data file is empty: {path}")
    if expected is not None:
        check_fingerprint(path, raw, expected)
    text = decode_utf8(raw, path)
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise TextVAEError(f"{path}:{line}: a NUL byte (a binary file, not text)")
    if fmt == "tsv_label":
        for number, line in enumerate(split_lines(text), 1):
            if not line.strip():
                continue
            label, *rest = line.split("\t")
            if len(rest) != 1 or not LABEL.fullmatch(label):
                raise TextVAEError(f"{path}:{number}: malformed line, expected 'label<TAB>text' with one TAB "
                                   "and an integer label")
    return fingerprint(raw, "sha256")


@dataclass
class SplitText:
    """One split as read: its non-blank lines, their class labels (tsv_label), their line numbers, the file."""

    texts: list[str]
    labels: list[int] | None
    lines: list[int]  # 1-based line number of each text in ``path``
    path: Path
    sha256: str = ""


def read_split(path: Path, fmt: str, lowercase: bool = False) -> SplitText:
    """Load one checked split through ``datasets``; drop blank lines (their numbers are kept in ``lines``)."""
    import datasets  # imported lazily: it is slow to import

    datasets.disable_progress_bars()
    load_dataset = datasets.load_dataset
    try:
        if fmt == "text":
            ds = load_dataset("text", data_files=str(path), split="train")
            texts, labels = ds["text"], None
        else:
            ds = load_dataset(
                "csv",
                data_files=str(path),
                split="train",
                delimiter="\t",
                column_names=["label", "text"],
                quoting=csv.QUOTE_NONE,
                keep_default_na=False,
                features=datasets.Features({"label": datasets.Value("int64"), "text": datasets.Value("string")}),
            )
            texts, labels = ds["text"], ds["label"]
    except Exception as err:  # a case the checks above missed: still one line naming the file
        cause = err.__cause__ or err
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise TextVAEError(f"{path}: cannot be read as {fmt} ({reason})") from None
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return SplitText([texts[i].lower() if lowercase else texts[i] for i in keep],
                     None if labels is None else [int(labels[i]) for i in keep], [i + 1 for i in keep], path)


def load_texts(cfg: DataConfig) -> dict[str, SplitText]:
    """Check and read train/valid/test."""
    return {split: load_split(cfg, split) for split in SPLITS}


def load_split(cfg: DataConfig, split: str) -> SplitText:
    """Check and read one split (with its sha256)."""
    path = data_paths(cfg)[split]
    digest = check_file(path, cfg.format, cfg.fingerprints.get(path.name) if cfg.verify else None)
    read = read_split(path, cfg.format, cfg.lowercase)
    read.sha256 = digest
    return read


class TextDataset:
    """Token ids of one split (without ``<s>``/``</s>``), plus class labels when the corpus has them.

    ``special_ids`` = (pad, bos, eos) frame and pad the decoder's sequences;
    ``encoder_ids`` / ``encoder_special_ids`` the encoder's, when it has its own tokenizer.
    """

    def __init__(self, ids: list[list[int]], labels: list[int] | None = None, texts: list[str] | None = None,
                 special_ids: tuple[int, int, int] = (0, 1, 2), encoder_ids: list[list[int]] | None = None,
                 encoder_special_ids: tuple[int, int, int] | None = None):
        self.ids = ids
        self.labels = labels
        self.texts = texts
        self.special_ids = special_ids
        self.encoder_ids = encoder_ids
        self.encoder_special_ids = encoder_special_ids
        self.source: SplitText | None = None  # the file it was read from, when it was (builders.build_datasets)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        tokenizer: TextTokenizer,
        labels: list[int] | None = None,
        max_length: int | None = None,
    ) -> TextDataset:
        """Tokenize ``texts``; ``max_length`` truncates each tokenization (the encoder's too) to that many tokens."""
        enc_tok = tokenizer.encoder_tokenizer
        ids, enc_ids = tokenizer.encode_batch(texts), None if enc_tok is None else enc_tok.encode_batch(texts)
        framing = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
        enc_framing = None if enc_tok is None else (enc_tok.pad_id, enc_tok.bos_id, enc_tok.eos_id)
        dataset = cls(ids, labels, texts, framing, enc_ids, enc_framing)
        return dataset if max_length is None else dataset.truncated(max_length)

    def length_of(self, i: int) -> int:
        """Tokens of sequence ``i`` without ``<s>``/``</s>`` (the longer of the two tokenizations)."""
        return max(len(self.ids[i]), 0 if self.encoder_ids is None else len(self.encoder_ids[i]))

    def longer_than(self, max_length: int) -> list[int]:
        """Indices of the sequences with more than ``max_length`` tokens."""
        return [i for i in range(len(self.ids)) if self.length_of(i) > max_length]

    def truncated(self, max_length: int) -> TextDataset:
        """Every tokenization (the encoder's too) cut to its first ``max_length`` tokens."""
        def cut(seqs):
            return None if seqs is None else [seq[:max_length] for seq in seqs]

        return TextDataset(cut(self.ids), self.labels, self.texts, self.special_ids, cut(self.encoder_ids),
                           self.encoder_special_ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_predicted_tokens(self) -> int:
        return sum(len(s) + 1 for s in self.ids)

    @property
    def num_words(self) -> int | None:
        """Whitespace words + one ``</s>`` per sequence (as ``ppl`` counts predicted tokens); None without texts."""
        return None if self.texts is None else sum(len(t.split()) + 1 for t in self.texts)

    def subset(self, n: int) -> TextDataset:
        """The first ``n`` sequences (``eval --limit``)."""
        def first(items):
            return None if items is None else items[:n]

        return TextDataset(self.ids[:n], first(self.labels), first(self.texts), self.special_ids,
                           first(self.encoder_ids), self.encoder_special_ids)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, pad_id: int | None = None,
        bos_id: int | None = None, eos_id: int | None = None,
    ) -> list[Batch]:
        """Length-bucketed batches: sort by length (ties broken randomly), cut, shuffle the batch order.

        With ``shuffle=False`` the order is deterministic (sorted by length), which
        evaluation and the per-batch MI estimator rely on. The special ids default to the dataset's.
        """
        rng = random.Random(seed)
        order = list(range(len(self.ids)))
        if shuffle:
            rng.shuffle(order)
        order.sort(key=lambda i: len(self.ids[i]))  # stable: shuffled ties stay shuffled
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if shuffle:
            rng.shuffle(groups)
        return [self.collate(g, pad_id, bos_id, eos_id) for g in groups]

    def collate(self, indices: list[int], pad_id: int | None = None, bos_id: int | None = None,
                eos_id: int | None = None) -> Batch:
        framing = [given if given is not None else own
                   for given, own in zip((pad_id, bos_id, eos_id), self.special_ids, strict=True)]
        input_ids, attention_mask, lengths = frame(self.ids, indices, *framing)
        labels = None if self.labels is None else torch.tensor([self.labels[i] for i in indices])
        encoder = (None, None)
        if self.encoder_ids is not None:
            encoder = frame(self.encoder_ids, indices, *self.encoder_special_ids)[:2]
        return Batch(input_ids, attention_mask, lengths, torch.tensor(indices), labels, *encoder)


def frame(ids: list[list[int]], indices: list[int], pad_id: int, bos_id: int, eos_id: int):
    """``<s> ids </s>`` for each chosen sequence, right-padded. Returns input_ids, attention_mask (B, T), lengths (B,)."""
    seqs = [[bos_id, *ids[i], eos_id] for i in indices]
    lengths = torch.tensor([len(s) for s in seqs])
    input_ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq)
    attention_mask = (torch.arange(input_ids.size(1))[None, :] < lengths[:, None]).long()
    return input_ids, attention_mask, lengths


def generate_synthetic(
    out_dir: str | Path,
    num_train: int = 16_000,
    num_test: int = 4_000,
    vocab_size: int = 1000,
    length: int = 10,
    seed: int = 783435,
) -> dict[str, Path]:
    """He et al. (2019, §6.1)'s synthetic corpus: sequences from a random LSTM LM conditioned on a 2-d z.

    z ~ equal mixture of four unit-variance Gaussians at (±2, ±2); the first token
    is uniform; an LSTM (100-d embeddings and state) takes z concatenated to every
    input, with c0 = W z and h0 = tanh(c0); each next token is sampled from
    softmax(W1 h + W2 z). Weights ~ U(±1), W2 ~ U(±3). Deterministic given ``seed``.
    Writes ``synthetic_{train,test}.txt`` (He et al. validate on the test file)
    and the true latents, one ``z1 z2`` per line, in ``synthetic_{train,test}.z.txt``.
    """
    from torch import nn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    hidden, nz, n = 100, 2, num_train + num_test
    embed = nn.Embedding(vocab_size, hidden)
    lstm = nn.LSTM(hidden + nz, hidden, batch_first=True)
    w_init = nn.Linear(nz, hidden, bias=False)
    w1, w2 = nn.Linear(hidden, vocab_size), nn.Linear(nz, vocab_size, bias=False)
    with torch.no_grad():
        for module in (embed, lstm, w_init, w1):
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
        w2.weight.copy_(torch.rand(w2.weight.shape, generator=gen) * 6 - 3)
        centres = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
        z = centres[torch.randint(0, 4, (n,), generator=gen)] + torch.randn(n, nz, generator=gen)  # (N, 2)
        token = torch.randint(0, vocab_size, (n,), generator=gen)  # (N,)
        c0 = w_init(z)[None]
        state = (torch.tanh(c0), c0)
        tokens = [token]
        for _ in range(length - 1):
            h, state = lstm(torch.cat([embed(token), z], -1)[:, None, :], state)  # (N, 1, H)
            probs = torch.softmax(w1(h[:, 0]) + w2(z), dim=-1)  # (N, V)
            token = torch.multinomial(probs, 1, generator=gen)[:, 0]
            tokens.append(token)
        seqs = torch.stack(tokens, 1)  # (N, length)
    paths = {}
    for split, rows in (("train", range(num_train)), ("test", range(num_train, n))):
        text = out / f"synthetic_{split}.txt"
        text.write_text("".join(" ".join(map(str, seqs[i].tolist())) + "\n" for i in rows))
        (out / f"synthetic_{split}.z.txt").write_text("".join(f"{z[i, 0]:.6f} {z[i, 1]:.6f}\n" for i in rows))
        paths[split] = text
    return paths
