"""From a config to the objects a run needs: the device, the tokenizer, the model and the tokenized splits.

Shared by training, evaluation and the latent tools, so that a run directory is
rebuilt exactly as it was trained. Over-long sequences are handled here, once:
training lines longer than ``data.max_length`` tokens are truncated (with a
notice), validation and test lines are refused with their file and line, since
truncating them would change the protocol figures.
"""

from __future__ import annotations

import logging

import torch

from .config import Config
from .data import SplitText, TextDataset, load_texts
from .errors import TextVAEError
from .model import TextVAE, with_tokenizer
from .tokenization import PairedTokenizer, PretrainedTokenizer, TextTokenizer, train_tokenizer

log = logging.getLogger("textvae")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without a CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TextVAEError("device=cuda, but this machine has no CUDA device (use device=cpu or device=auto)")
    return torch.device(name)


def build_tokenizer(cfg: Config, train_texts: list[str]) -> TextTokenizer:
    """The decoder's tokenizer, paired with a pretrained encoder's own when that differs.

    A pretrained decoder brings its own tokenizer (``tokenizer.type`` is then ignored);
    any other decoder's is trained on the training split as ``tokenizer`` says.
    """
    m = cfg.model
    decoder_name = m.decoder_name if m.decoder == "pretrained" else None
    if decoder_name is not None:
        tokenizer = PretrainedTokenizer.from_name(decoder_name, "model.decoder_name")
    else:
        tokenizer = train_tokenizer(train_texts, cfg.tokenizer)
    encoder_name = m.encoder_name if m.encoder == "pretrained" else None
    if m.latent_dim > 0 and encoder_name not in (None, decoder_name):
        return PairedTokenizer(tokenizer, PretrainedTokenizer.from_name(encoder_name, "model.encoder_name"))
    return tokenizer


def build_model(cfg: Config, tokenizer: TextTokenizer) -> TextVAE:
    """A fresh model for ``cfg.model`` with the tokenizer's vocabulary and special ids (on the CPU)."""
    return TextVAE(with_tokenizer(cfg.model, tokenizer))


def tokenize_split(split: str, read: SplitText, tokenizer: TextTokenizer, max_length: int) -> TextDataset:
    """A split's :class:`TextDataset`, over-long sequences truncated (train) or refused (valid, test)."""
    dataset = TextDataset.from_texts(read.texts, tokenizer, read.labels)
    long = dataset.longer_than(max_length)
    if not long:
        return dataset
    if split != "train":
        i = long[0]
        raise TextVAEError(f"{read.path}:{read.lines[i]}: {dataset.length_of(i)} tokens, more than data.max_length "
                           f"= {max_length} (evaluation never truncates; raise data.max_length)")
    longest = max(long, key=dataset.length_of)
    log.warning(f"{read.path}: {len(long)} of {len(dataset)} lines are longer than data.max_length = "
                f"{max_length} tokens and were truncated to it (the longest, line {read.lines[longest]}, has "
                f"{dataset.length_of(longest)})")
    return dataset.truncated(max_length)


def build_datasets(cfg: Config, tokenizer: TextTokenizer | None = None):
    """Read and tokenize every split; build the tokenizer (:func:`build_tokenizer`) unless one is given.

    Returns ``({split: TextDataset}, tokenizer)``; each dataset's ``source`` is its :class:`SplitText`
    (file, line numbers and sha256).
    """
    texts = load_texts(cfg.data)
    if tokenizer is None:
        train = texts["train"].texts
        if cfg.tokenizer.type == "word":  # words cut off by data.max_length are never seen: not in the vocabulary
            train = [" ".join(t.split()[: cfg.data.max_length]) for t in train]
        tokenizer = build_tokenizer(cfg, train)
    datasets = {split: tokenize_split(split, read, tokenizer, cfg.data.max_length) for split, read in texts.items()}
    for split, dataset in datasets.items():
        dataset.source = texts[split]
    return datasets, tokenizer
