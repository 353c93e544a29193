"""Recipes: typed dataclass configs loaded from YAML with ``key=value`` overrides.

A recipe is a YAML file (bundled in ``recipes/`` or any path) whose keys mirror
:class:`Config`. ``load_recipe`` merges, in order: the dataclass defaults, the
recipe, a named method's overrides (``method=NAME``), then the user's
``key=value`` overrides, and validates types through OmegaConf. Every mistake a
user can make here raises :class:`TextVAEError` with a one-line message naming
the key or file, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class TextVAEError(Exception):
    """A user-facing error: bad input, bad key, bad file. Printed as one line, exit code 2."""


@dataclass
class DataConfig:
    dir: str | None = None  # folder holding the split files (None: use `builtin`)
    builtin: str | None = None  # corpus shipped inside the package, e.g. "debug"
    format: str = "text"  # text (one sequence per line) | tsv_label (label<TAB>text)
    train_file: str = "train.txt"
    valid_file: str = "valid.txt"
    test_file: str = "test.txt"
    fingerprints: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex, or md5:/gitblob: hex
    verify: bool = True  # check files listed in `fingerprints`; false for your own copy or subset
    max_length: int | None = None  # training sequences are truncated to this many tokens; eval never is
    lowercase: bool = False


@dataclass
class TokenizerConfig:
    type: str = "word"  # word | bpe | unigram | sentencepiece | pretrained (the pretrained decoder's own)
    vocab_size: int | None = None  # None: every training word (word) / required size for subwords
    min_freq: int = 1  # word and bpe: drop rarer tokens (they become <unk>)


@dataclass
class ModelConfig:
    preset: str | None = None  # named architecture (lstm-ptb, transformer-small, optimus, ...); fields below override it
    encoder: str | None = None  # lstm | transformer | pretrained
    decoder: str | None = None  # lstm | transformer | pretrained
    embed_dim: int | None = None  # LSTM word embedding size (encoder and decoder)
    enc_hidden_dim: int | None = None  # LSTM state size / Transformer width (its embedding size too)
    dec_hidden_dim: int | None = None
    latent_dim: int | None = None  # 0 = plain language model (no encoder, no latent)
    dec_dropout_in: float | None = None  # dropout on decoder input embeddings
    dec_dropout_out: float | None = None  # dropout on decoder LSTM outputs
    init_range: float | None = None  # uniform(-r, r) init for weights (He et al.: 0.01)
    emb_init_range: float | None = None  # uniform(-r, r) init for embeddings (He et al.: 0.1)
    encoder_init: str | None = None  # uniform (He et al.'s ranges above) | default (PyTorch's init for the encoder)
    bn_gamma: float | None = None  # BN-VAE: batch-normalise μ with this fixed scale γ and a learnt shift (0 = off)
    word_dropout: float | None = None  # probability of replacing a decoder input word by <unk> in training (0 = off)
    enc_layers: int | None = None  # transformer encoder blocks
    dec_layers: int | None = None  # transformer decoder blocks
    num_heads: int | None = None  # attention heads (encoder and decoder)
    ffn_dim: int | None = None  # transformer feed-forward width (0: 4 × the width)
    dropout: float | None = None  # transformer: on attention weights and residual branches
    positions: str | None = None  # transformer: learned | sinusoidal
    max_positions: int | None = None  # learned positions: longest sequence in tokens (<s> and </s> included)
    pooling: str | None = None  # encoder output: mean | first (<s> / [CLS]) | pooler (pretrained encoder only)
    latent_injection: str | None = None  # transformer decoder: prefix | embedding | memory (Optimus)
    encoder_name: str | None = None  # pretrained encoder: hub id (bert-base-cased) or local path
    decoder_name: str | None = None  # pretrained decoder (GPT-2 family): hub id (gpt2) or local path


@dataclass
class TrainConfig:
    batch_size: int = 32  # sequences per step
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 1.0  # He et al.: SGD at 1.0
    momentum: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 5.0  # max global grad norm
    max_epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps (None: no limit)
    max_train_minutes: float | None = None  # stop once training (validation excluded) has taken this long (None: no limit)
    kl_schedule: str = "linear"  # linear (warm-up from kl_start) | cyclical (Fu et al. 2019)
    kl_start: float = 1.0  # linear: KL weight at step 0 (1.0 = no warm-up)
    kl_warmup_epochs: float = 10.0  # linear: epochs for the weight to rise by 1.0 (He et al.'s linear schedule)
    kl_n_cycles: int = 4  # cyclical: cycles over the run's steps (min of max_steps, max_epochs × batches)
    kl_ratio_zero: float = 0.0  # cyclical: fraction of each cycle held at weight 0 first
    kl_ratio_increase: float = 0.5  # cyclical: fraction of each cycle over which the weight then rises 0 → 1
    beta: float = 1.0  # constant multiplier on the (annealed) KL term
    free_bits: float = 0.0  # λ in nats per latent dimension (0 = off); see free_bits_mode
    free_bits_mode: str = "batch_dim"  # batch_dim (Kingma 2016) | example_dim | example_total (Li 2019 --fb 2 | 1)
    aggressive: bool = False  # He et al. 2019: encoder-only inner loop before each step, until valid mi_batch falls
    aggressive_max_encoder_steps: int = 99  # inner-loop cap (He et al.: `while sub_iter < 100`)
    aggressive_check_every_steps: int = 15  # inner loop stops when the mean loss of this many steps stops falling
    ae_epochs: int = 0  # Li et al. 2019: epochs of autoencoder (β = 0) training first, part of max_epochs (0 = off)
    lr_decay_factor: float = 0.5  # He et al.: halve the lr ...
    lr_decay_patience_epochs: int = 2  # ... after this many epochs without validation improvement ...
    lr_decay_min_epoch: int = 15  # ... but never before this epoch (of the VAE stage), reloading the best model
    max_lr_decays: int = 5  # stop training after this many decays
    log_every_steps: int = 50  # training metrics line every N steps
    keep_checkpoints: int = 2  # last N checkpoints kept in checkpoints/
    num_threads: int | None = None  # torch CPU threads for the training loop (None: torch's default)


@dataclass
class CriticConfig:
    type: str = "none"  # none | self | neural | hybrid (Menon et al. 2022)
    weight: float = 1.0  # λ on the InfoNCE loss added to the negative ELBO
    warmup_steps: int = 0  # λ rises linearly from 0 over this many steps
    z: str = "sample"  # sample (the decoder's reparameterised z) | mean (posterior mean)
    symmetric: bool = False  # also add the column loss (each x picks its z)
    temperature: float = 0.1  # neural/hybrid: initial τ of cosine-similarity scores
    learn_temperature: bool = True  # neural/hybrid: learn log τ
    embed_dim: int = 64  # neural: the critic's own word embedding size
    hidden_dim: int = 64  # neural/hybrid: critic LSTM and MLP width
    proj_dim: int = 64  # neural/hybrid: shared projection space
    share_encoder: bool = False  # hybrid: share the whole inference encoder (keys = MLP on its h), not only the embedding
    queue_size: int = 0  # past x-keys (neural/hybrid) or posteriors (self) kept as extra negatives (MoCo-style; slightly stale)
    optimizer: str = "same"  # same (a parameter group of the model's optimiser) | adam (its own)
    lr: float | None = None  # learning rate of the critic's own parameters (None: the model's / 1e-3 for adam)


@dataclass
class EvalConfig:
    iw_samples: int = 500  # K for the importance-weighted NLL (DESIGN.md §4)
    batch_size: int = 32  # sequences per evaluation batch
    mi_batch_size: int = 32  # He et al.'s per-batch MI estimator uses batches of 32
    max_chunk_logits: int = 64_000_000  # IW-NLL decodes samples in chunks of at most this many logits (memory)
    au_threshold: float = 0.01  # He et al.'s active-unit threshold on Var_x(E_q[z_d|x])


@dataclass
class Config:
    name: str = "custom"
    method: str = "vae"  # named set of overrides applied before the user's (see `textvae methods list`)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def recipe_dir() -> Path:
    """Folder of the recipes bundled with the package."""
    return Path(str(resources.files("textvae.recipes")))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """Resolve a bundled recipe name or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise TextVAEError(f"recipe file not found: {path}")
        return path
    bundled = recipe_dir() / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    hint = difflib.get_close_matches(name_or_path, list_recipes(), n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise TextVAEError(f"unknown recipe '{name_or_path}'{suggestion}; see `textvae recipes list`")


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            keys.extend(_dotted_keys(node[key], full + "."))
    return keys


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        known = _dotted_keys(base)
        hint = difflib.get_close_matches(str(key), known, n=1)
        if "not in" in str(err) or "Key" in type(err).__name__ or "ConfigKeyError" in type(err).__name__:
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise TextVAEError(f"{source}: unknown key '{key}'{suggestion}") from None
        msg = str(err).splitlines()[0]
        raise TextVAEError(f"{source}: bad value for '{key}': {msg}") from None


def parse_overrides(overrides: list[str]) -> tuple[str | None, list[str]]:
    """Split ``method=NAME`` from the other ``key=value`` overrides and check their form."""
    method = None
    rest = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise TextVAEError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        if key == "method":
            method = value
        else:
            rest.append(item)
    return method, rest


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Load a recipe, apply overrides, validate, and return a typed :class:`Config`.

    Args:
        name_or_path: bundled recipe name (``ptb``) or a path to a YAML file.
        overrides: ``key=value`` strings in OmegaConf dot-list syntax, e.g.
            ``["train.max_steps=50", "model.preset=lstm-ptb"]``.
    """
    path = recipe_path(name_or_path)
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors
        raise TextVAEError(f"{path}: not a valid YAML recipe ({str(err).splitlines()[0]})") from None
    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, raw, str(path))
    method, rest = parse_overrides(overrides or [])
    # `data.fingerprints.ptb.train.txt=HEX`: file names hold dots, which a dot-list would split.
    prefix = "data.fingerprints."
    fingerprints = dict(item[len(prefix):].split("=", 1) for item in rest if item.startswith(prefix))
    rest = [item for item in rest if not item.startswith(prefix)]
    method = method or cfg.method
    from .methods import method_overrides  # methods import this module

    for source, items in ((f"method '{method}'", method_overrides(method) + [f"method={method}"]), ("override", rest)):
        try:
            dotlist = OmegaConf.from_dotlist(items)
        except OmegaConfBaseException as err:
            raise TextVAEError(f"bad override: {str(err).splitlines()[0]}") from None
        cfg = _merge(cfg, dotlist, source)
    cfg = _merge(cfg, {"data": {"fingerprints": fingerprints}}, "override")
    return validate(OmegaConf.to_object(cfg))


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from a resolved dict (as saved in a run's config.yaml)."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(data), "config.yaml")
    return validate(OmegaConf.to_object(cfg))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def validate(cfg: Config) -> Config:
    """Check value ranges and choices that types alone do not capture."""
    choices = {
        "data.format": (cfg.data.format, ("text", "tsv_label")),
        "tokenizer.type": (cfg.tokenizer.type, ("word", "bpe", "unigram", "sentencepiece", "pretrained")),
        "train.optimizer": (cfg.train.optimizer, ("sgd", "adam")),
        "device": (cfg.device, ("cpu", "cuda", "auto")),
        "critic.type": (cfg.critic.type, ("none", "self", "neural", "hybrid")),
        "critic.z": (cfg.critic.z, ("sample", "mean")),
        "critic.optimizer": (cfg.critic.optimizer, ("same", "adam")),
        "model.encoder_init": (cfg.model.encoder_init or "uniform", ("uniform", "default")),
        "model.positions": (cfg.model.positions or "learned", ("learned", "sinusoidal")),
        "model.pooling": (cfg.model.pooling or "mean", ("mean", "first", "pooler")),
        "model.latent_injection": (cfg.model.latent_injection or "memory", ("prefix", "embedding", "memory")),
        "train.kl_schedule": (cfg.train.kl_schedule, ("linear", "cyclical")),
        "train.free_bits_mode": (cfg.train.free_bits_mode, ("batch_dim", "example_dim", "example_total")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise TextVAEError(f"bad value for '{key}': '{value}' (choose from {', '.join(allowed)})")
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "eval.iw_samples": cfg.eval.iw_samples,
        "eval.batch_size": cfg.eval.batch_size,
        "train.max_epochs": cfg.train.max_epochs,
        "train.kl_n_cycles": cfg.train.kl_n_cycles,
        "train.aggressive_max_encoder_steps": cfg.train.aggressive_max_encoder_steps,
        "train.aggressive_check_every_steps": cfg.train.aggressive_check_every_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise TextVAEError(f"bad value for '{key}': {value} (must be >= 1)")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise TextVAEError(f"bad value for 'train.max_steps': {cfg.train.max_steps} (must be >= 1)")
    minutes = cfg.train.max_train_minutes
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise TextVAEError(f"bad value for 'train.max_train_minutes': {minutes} (must be a number > 0)")
    ranges = {  # key: (value, low, high), inclusive
        "train.beta": (cfg.train.beta, 0.0, math.inf),
        "train.free_bits": (cfg.train.free_bits, 0.0, math.inf),
        "train.ae_epochs": (cfg.train.ae_epochs, 0, math.inf),
        "train.kl_ratio_zero": (cfg.train.kl_ratio_zero, 0.0, 1.0),
        "model.bn_gamma": (cfg.model.bn_gamma or 0.0, 0.0, math.inf),
        "model.word_dropout": (cfg.model.word_dropout or 0.0, 0.0, 1.0),
        "model.dropout": (cfg.model.dropout or 0.0, 0.0, 1.0),
    }
    for key, (value, low, high) in ranges.items():
        if not low <= value <= high:
            raise TextVAEError(f"bad value for '{key}': {value} (must be in [{low:g}, {high:g}])")
    if cfg.critic.share_encoder and cfg.critic.type != "hybrid":
        raise TextVAEError(f"'critic.share_encoder' needs critic.type=hybrid (got '{cfg.critic.type}')")
    rise, zero = cfg.train.kl_ratio_increase, cfg.train.kl_ratio_zero
    if not 0.0 < rise <= 1.0 - zero + 1e-9:  # the ramp must end inside its cycle
        raise TextVAEError(f"bad value for 'train.kl_ratio_increase': {rise} "
                           f"(must be > 0 and at most 1 - train.kl_ratio_zero = {1.0 - zero:g})")
    return cfg
