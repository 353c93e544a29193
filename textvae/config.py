"""Recipes: typed dataclass configs loaded from YAML with ``key=value`` overrides.

One place defines every key: its dataclass field gives the type and the default,
and :func:`key` attaches its range or its choices, which :func:`validate` checks
for every value however it was set (recipe, method, override, config.yaml). The
model's architecture is one dataclass, :class:`ModelConfig`, which is also what a
saved model's ``config.json`` holds (with the tokenizer's vocabulary and ids filled in).

``load_recipe`` merges, in order: the dataclass defaults, the architecture preset
(``model.preset``, wherever it is set), the recipe, a named method's overrides
(``method=NAME``), then the user's ``key=value`` overrides. Every mistake a user
can make here raises :class:`TextVAEError` with a one-line message naming the key
or file, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import TextVAEError
from .methods import method_overrides

# Choices of the keys that name a registered implementation; each registry's keys are tested to match.
ENCODER_TYPES = ("lstm", "transformer", "pretrained")  # textvae.modules.encoders.ENCODERS
DECODER_TYPES = ("lstm", "transformer", "pretrained")  # textvae.modules.decoders.DECODERS
CRITIC_TYPES = ("none", "self", "neural", "hybrid")  # textvae.modules.critics.CRITICS
TOKENIZER_TYPES = ("word", "bpe", "unigram", "sentencepiece", "pretrained")  # textvae.tokenization.TOKENIZERS
KL_SCHEDULES = ("linear", "cyclical")  # textvae.objectives.KL_SCHEDULES
LOGGER_TYPES = ("jsonl", "tensorboard")  # textvae.loggers.LOGGERS
FREE_BITS_MODES = ("batch_dim", "example_dim", "example_total")  # textvae.objectives.FREE_BITS
POSITIONS = ("learned", "sinusoidal")
POOLINGS = ("mean", "first", "pooler")
LATENT_INJECTIONS = ("prefix", "embedding", "memory")
SVI_GRADIENTS = ("through", "stop", "finite-difference")  # textvae.svi: end to end, stop-gradient, Kim et al.'s code


def key(default: Any = MISSING, *, factory=None, choices: tuple | None = None, ge=None, gt=None, le=None,
        lt=None, length: int | None = None, derived: bool = False):
    """A config field with its checks: ``choices``, bounds (``ge`` ≥, ``gt`` >, ``le`` ≤, ``lt`` <; floats
    must also be finite), ``length`` for a list. ``derived`` fields are filled in by textvae (from the
    tokenizer) and may not be set by a recipe. ``None`` always passes: it means "off" or "from elsewhere"."""
    meta = {name: value for name, value in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, length=length).items()
            if value is not None}
    if derived:
        meta["derived"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Named architecture presets (fairseq-style): they sit between the defaults and the recipe's own fields.
PRESETS: dict[str, dict] = {
    # He et al. 2019 Yahoo/Yelp: embedding 512, LSTMs 1024, z 32.
    "lstm-he2019": dict(embed_dim=512, enc_hidden_dim=1024, dec_hidden_dim=1024, latent_dim=32),
    # PTB: 256/256, z 32.
    "lstm-ptb": dict(embed_dim=256, enc_hidden_dim=256, dec_hidden_dim=256, latent_dim=32),
    # He et al. synthetic: 50-d LSTMs, z 2.
    "lstm-synthetic": dict(embed_dim=50, enc_hidden_dim=50, dec_hidden_dim=50, latent_dim=2),
    # Tests and the debug recipe.
    "lstm-tiny": dict(embed_dim=16, enc_hidden_dim=16, dec_hidden_dim=16, latent_dim=4),
    # Pre-LN Transformers, z as Optimus-style memory. Small: 2 + 2 blocks of width 256, trains on a
    # 2-core CPU (PTB); base: Transformer-base width and depth, a GPU model.
    "transformer-small": dict(encoder="transformer", decoder="transformer", enc_hidden_dim=256, dec_hidden_dim=256,
                              enc_layers=2, dec_layers=2, num_heads=4, ffn_dim=1024, latent_dim=32,
                              latent_injection="memory", dropout=0.1, max_positions=512, posterior_bias=True,
                              output_bias=True),
    "transformer-base": dict(encoder="transformer", decoder="transformer", enc_hidden_dim=512, dec_hidden_dim=512,
                             enc_layers=6, dec_layers=6, num_heads=8, ffn_dim=2048, latent_dim=32,
                             latent_injection="memory", dropout=0.1, max_positions=1024, posterior_bias=True,
                             output_bias=True),
    # Tests and smoke runs on the debug recipe.
    "transformer-tiny": dict(encoder="transformer", decoder="transformer", enc_hidden_dim=16, dec_hidden_dim=16,
                             enc_layers=1, dec_layers=1, num_heads=2, ffn_dim=32, latent_dim=4,
                             latent_injection="memory", dropout=0.0, posterior_bias=True, output_bias=True),
    # Optimus (Li et al. 2020): BERT-base (cased) → GPT-2 small, BERT's pooled [CLS] → z 32.
    "optimus": dict(encoder="pretrained", decoder="pretrained", encoder_name="bert-base-cased",
                    decoder_name="gpt2", pooling="pooler", latent_dim=32, posterior_bias=True),
}


@dataclass
class DataConfig:
    dir: str | None = None  # folder holding the split files (None: use `builtin`); a run stores it absolute
    builtin: str | None = None  # corpus shipped inside the package, e.g. "debug"
    format: str = key("text", choices=("text", "tsv_label"))  # text (one sequence per line) | tsv_label (label<TAB>text)
    train_file: str = "train.txt"
    valid_file: str = "valid.txt"
    test_file: str = "test.txt"
    fingerprints: dict[str, str] = key(factory=dict)  # file name -> sha256 hex, or md5:/gitblob: hex
    verify: bool = True  # check files listed in `fingerprints`; false for your own copy or subset
    # Tokens per sequence at most (<s> and </s> not counted): longer training lines are truncated (with a
    # notice), longer validation/test lines refused (file and line named). Fits every bundled corpus.
    max_length: int = key(256, ge=1)
    lowercase: bool = False


@dataclass
class TokenizerConfig:
    type: str = key("word", choices=TOKENIZER_TYPES)  # pretrained = the pretrained decoder's own
    vocab_size: int | None = key(None, ge=5)  # None: every training word (word) / required size for subwords
    min_freq: int = key(1, ge=1)  # word and bpe: drop rarer tokens (they become <unk>)


@dataclass
class ModelConfig:
    """The architecture (recipe section ``model``; a model's ``config.json``).

    Transformers use ``enc_hidden_dim`` / ``dec_hidden_dim`` as their width (their word
    embeddings have that size; ``embed_dim`` is the LSTMs'). The derived fields are the
    tokenizer's, filled in when the model is built.
    """

    preset: str | None = key(None, choices=tuple(PRESETS))  # named architecture; the recipe's fields override it
    encoder: str = key("lstm", choices=ENCODER_TYPES)
    decoder: str = key("lstm", choices=DECODER_TYPES)
    embed_dim: int = key(256, ge=1)  # LSTM word embedding size (encoder and decoder)
    enc_hidden_dim: int = key(256, ge=1)  # LSTM state size / Transformer width (its embedding size too)
    dec_hidden_dim: int = key(256, ge=1)
    latent_dim: int = key(32, ge=0)  # 0 = plain language model (no encoder, no latent)
    dec_dropout_in: float = key(0.5, ge=0.0, lt=1.0)  # dropout on decoder input embeddings
    dec_dropout_out: float = key(0.5, ge=0.0, lt=1.0)  # dropout on decoder LSTM outputs
    init_range: float = key(0.01, ge=0.0)  # uniform(-r, r) init for weights (He et al.: 0.01)
    emb_init_range: float = key(0.1, ge=0.0)  # uniform(-r, r) init for embeddings (He et al.: 0.1)
    # uniform (He et al.'s ranges above) | default (PyTorch's init for the encoder and posterior head)
    encoder_init: str = key("uniform", choices=("uniform", "default"))
    # He et al.'s LSTM VAE has no bias on the posterior head (h → μ, log σ²) or on the output projection; each
    # is a named departure (true: a bias vector, as textvae's models before these keys had; Transformer presets)
    posterior_bias: bool = False
    output_bias: bool = False
    bn_gamma: float = key(0.0, ge=0.0)  # BN-VAE: batch-normalise μ with this fixed scale γ and a learnt shift (0 = off)
    word_dropout: float = key(0.0, ge=0.0, le=1.0)  # probability of replacing a decoder input word by <unk> (1: no inputs)
    enc_layers: int = key(2, ge=1)  # transformer encoder blocks
    dec_layers: int = key(2, ge=1)  # transformer decoder blocks
    num_heads: int = key(4, ge=1)  # attention heads (encoder and decoder)
    ffn_dim: int = key(0, ge=0)  # transformer feed-forward width (0: 4 × the width)
    dropout: float = key(0.1, ge=0.0, lt=1.0)  # transformer: on attention weights and residual branches
    positions: str = key("learned", choices=POSITIONS)  # transformer positions
    max_positions: int = key(512, ge=1)  # learned positions: the longest sequence in tokens, <s> and </s> included
    pooling: str = key("mean", choices=POOLINGS)  # encoder output: mean | first (<s> / [CLS]) | pooler (pretrained)
    latent_injection: str = key("memory", choices=LATENT_INJECTIONS)  # transformer decoder: how z enters
    encoder_name: str | None = None  # pretrained encoder: hub id (bert-base-cased) or local path
    decoder_name: str | None = None  # pretrained decoder (GPT-2 family): hub id (gpt2) or local path
    # Derived: the tokenizer's vocabulary (the decoder's, and the encoder's unless it is pretrained) and ids,
    # and a pretrained model's configuration once loaded (so that a saved run rebuilds offline).
    vocab_size: int = key(0, derived=True)
    pad_id: int = key(0, derived=True)
    bos_id: int = key(1, derived=True)
    eos_id: int = key(2, derived=True)
    unk_id: int = key(3, derived=True)
    encoder_hf_config: dict[str, Any] | None = key(None, derived=True)
    decoder_hf_config: dict[str, Any] | None = key(None, derived=True)

    @classmethod
    def from_preset(cls, preset: str, **fields_: Any) -> ModelConfig:
        """A preset's architecture with ``fields_`` on top (the Python counterpart of a recipe's ``model``)."""
        check_value("model.preset", preset, {"choices": tuple(PRESETS)})
        return check_model(cls(**{**PRESETS[preset], "preset": preset, **fields_}))


@dataclass
class TrainConfig:
    batch_size: int = key(32, ge=1)  # sequences per step
    optimizer: str = key("sgd", choices=("sgd", "adam"))
    lr: float = key(1.0, gt=0.0)  # He et al.: SGD at 1.0
    momentum: float = key(0.0, ge=0.0, lt=1.0)
    adam_betas: list[float] = key(factory=lambda: [0.9, 0.999], ge=0.0, lt=1.0, length=2)
    grad_clip: float = key(5.0, ge=0.0)  # max global grad norm (0 = no clipping)
    max_epochs: int = key(100, ge=1)
    max_steps: int | None = key(None, ge=1)  # stop after this many steps (None: no limit)
    max_train_minutes: float | None = key(None, gt=0.0)  # stop once training (validation excluded) took this long
    kl_schedule: str = key("linear", choices=KL_SCHEDULES)  # linear (warm-up from kl_start) | cyclical (Fu et al. 2019)
    kl_start: float = key(1.0, ge=0.0, le=1.0)  # linear: KL weight at step 0 (1.0 = no warm-up)
    kl_warmup_epochs: float = key(10.0, ge=0.0)  # linear: epochs for the weight to rise by 1.0 (He et al.)
    kl_n_cycles: int = key(4, ge=1)  # cyclical: cycles over the run's steps (min of max_steps, max_epochs × batches)
    kl_ratio_zero: float = key(0.0, ge=0.0, le=1.0)  # cyclical: fraction of each cycle held at weight 0 first
    kl_ratio_increase: float = key(0.5, gt=0.0, le=1.0)  # cyclical: fraction of each cycle rising 0 → 1 after that
    beta: float = key(1.0, ge=0.0)  # constant multiplier on the (annealed) KL term
    free_bits: float = key(0.0, ge=0.0)  # λ in nats per latent dimension (0 = off); see free_bits_mode
    free_bits_mode: str = key("batch_dim", choices=FREE_BITS_MODES)  # batch_dim (Kingma 2016) | example_dim |
    # example_total (Li et al. 2019 --fb 2 | --fb 1)
    aggressive: bool = False  # He et al. 2019: encoder-only inner loop before each step, until valid mi_batch falls
    aggressive_max_encoder_steps: int = key(99, ge=1)  # inner-loop cap (He et al.: `while sub_iter < 100`)
    aggressive_check_every_steps: int = key(15, ge=1)  # inner loop stops when this many steps' mean loss stops falling
    ae_epochs: int = key(0, ge=0)  # Li et al. 2019: epochs of autoencoder (β = 0) training first, part of max_epochs
    # Kim et al. 2018 (SA-VAE): SVI steps that refine each posterior before the decoder trains on it (0 = off);
    # their text setup: 20 steps of lr 1 with momentum 0.5, the gradients of μ and log σ² each clipped at 5
    svi_steps: int = key(0, ge=0)
    svi_lr: float = key(1.0, gt=0.0)
    svi_momentum: float = key(0.5, ge=0.0, lt=1.0)
    svi_max_grad_norm: float = key(5.0, ge=0.0)  # 0 = no clipping
    svi_gradient: str = key("through", choices=SVI_GRADIENTS)  # through: end to end (their main variant) | stop
    svi_fd_eps: float = key(1e-5, gt=0.0)  # finite-difference: the step of its Hessian-vector products
    lr_decay_factor: float = key(0.5, gt=0.0, le=1.0)  # He et al.: halve the lr ...
    lr_decay_patience_epochs: int = key(2, ge=1)  # ... after this many epochs without validation improvement ...
    lr_decay_min_epoch: int = key(15, ge=0)  # ... but never before this epoch (of the VAE stage), reloading the best
    max_lr_decays: int = key(5, ge=0)  # stop training after this many decays
    log_every_steps: int = key(50, ge=1)  # training metrics line every N steps
    checkpoint_every_steps: int | None = key(None, ge=1)  # also checkpoint mid-epoch every N steps (None: epoch ends)
    keep_checkpoints: int = key(2, ge=1)  # last N checkpoints kept in checkpoints/
    # copy the best model so far to snapshots/minutes-M/ once training time (validation excluded) reaches M
    # minutes, for each M listed: the model an equal-compute study evaluates at a fraction of its budget
    snapshot_minutes: list[float] = key(factory=list, gt=0.0)
    # where training metrics go: jsonl (metrics.jsonl, the run's record: always) and tensorboard (DIR/tensorboard,
    # the `tensorboard` extra)
    loggers: list[str] = key(factory=lambda: ["jsonl"], choices=LOGGER_TYPES)
    max_bad_steps: int = key(10, ge=1)  # steps with a non-finite loss or gradient are skipped; stop after this many
    num_threads: int | None = key(None, ge=1)  # torch CPU threads for the training loop (None: torch's default)
    # flush denormal floats to zero in the training loop (torch.set_flush_denormal; x86 CPUs with SSE3). Values
    # below 1.2e-38 become 0. SA-VAE's twice-differentiated steps produce them and ran up to 1.84x slower
    # (docs/mitigations.md); the sa-vae methods set it
    flush_denormal: bool = key(False)
    # fp32 | bf16 (autocast: bf16 matrix products, fp32 parameters and loss) | fp16 (CUDA only, with a
    # GradScaler) | auto (bf16 where the device has native bf16: AMX/AVX512-BF16 CPUs, bf16 CUDA devices).
    # Evaluation is fp32 whatever this says.
    precision: str = key("fp32", choices=("fp32", "bf16", "fp16", "auto"))
    # sparse: the embeddings' gradients hold only the batch's rows (textvae.gradients); the same SGD update,
    # faster for large tables | dense | auto (sparse for tables of at least 2^20 entries, wherever the optimiser
    # and the step allow it: SGD without momentum, one process)
    embedding_gradients: str = key("auto", choices=("auto", "sparse", "dense"))


@dataclass
class CriticConfig:
    type: str = key("none", choices=CRITIC_TYPES)  # none | self | neural | hybrid (Menon et al. 2022)
    weight: float = key(1.0, ge=0.0)  # λ on the InfoNCE loss added to the negative ELBO
    warmup_steps: int = key(0, ge=0)  # λ rises linearly from 0 over this many steps
    z: str = key("sample", choices=("sample", "mean"))  # the decoder's reparameterised z | the posterior mean
    symmetric: bool = False  # also add the column loss (each x picks its z)
    temperature: float = key(0.1, gt=0.0)  # neural/hybrid: initial τ of cosine-similarity scores
    learn_temperature: bool = True  # neural/hybrid: learn log τ
    embed_dim: int = key(64, ge=1)  # neural: the critic's own word embedding size
    hidden_dim: int = key(64, ge=1)  # neural/hybrid: critic LSTM and MLP width
    proj_dim: int = key(64, ge=1)  # neural/hybrid: shared projection space
    share_encoder: bool = False  # hybrid: share the whole inference encoder (keys = MLP on its h), not only the embedding
    queue_size: int = key(0, ge=0)  # past x-keys (neural/hybrid) or posteriors (self) as extra negatives (MoCo-style)
    # under torchrun: score each rank's rows against the whole global batch (ceiling log B) | its own rows only
    negatives: str = key("global", choices=("global", "local"))
    optimizer: str = key("same", choices=("same", "adam"))  # a parameter group of the model's optimiser | its own Adam
    lr: float | None = key(None, gt=0.0)  # the critic's own parameters (None: the model's / 1e-3 for adam)


@dataclass
class EvalConfig:
    iw_samples: int = key(500, ge=1)  # K for the importance-weighted NLL (DESIGN.md §4)
    batch_size: int = key(32, ge=1)  # sequences per evaluation batch
    # mi_batch: He et al.'s evaluation batch size (their training batch size: 32 on text, 16 on the synthetic set)
    mi_batch_size: int = key(32, ge=1)
    max_chunk_logits: int = key(64_000_000, ge=1)  # IW-NLL decodes samples in chunks of at most this many logits
    au_threshold: float = key(0.01, ge=0.0)  # He et al.'s active-unit threshold on Var_x(E_q[z_d|x])
    # per-epoch validation: IW-NLL with this K in the record's nll and ppl (0: −ELBO, the cheapest); model
    # selection stays on −ELBO either way
    valid_iw_samples: int = key(0, ge=0)
    # SA-VAE's test-time refinement (Kim et al. 2018) before IW-NLL, kl, mi and au: SVI steps (0 = the encoder's
    # posterior, comparable across methods), their lr, momentum and gradient clip
    svi_steps: int = key(0, ge=0)
    svi_lr: float = key(1.0, gt=0.0)
    svi_momentum: float = key(0.5, ge=0.0, lt=1.0)
    svi_max_grad_norm: float = key(5.0, ge=0.0)


@dataclass
class Config:
    name: str = "custom"
    method: str = "vae"  # named set of overrides applied before the user's (see `textvae methods list`)
    seed: int = key(0, ge=0)
    device: str = key("cpu", choices=("cpu", "cuda", "auto"))
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = tuple(f.name for f in fields(Config) if f.default_factory is not MISSING)  # data, tokenizer, model, ...


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
        for name in node.keys():
            full = f"{prefix}{name}"
            keys.append(full)
            keys.extend(_dotted_keys(node[name], full + "."))
    return keys


def _check_layer(layer: Any, source: str, recipe_level: bool) -> None:
    """A layer is a mapping whose sections are mappings; a recipe-level layer sets no derived key."""
    if not isinstance(layer, (dict, DictConfig)):
        raise TextVAEError(f"{source}: a recipe must be a mapping of keys (name, data, model, train, ...), "
                           f"not a {'list' if isinstance(layer, (list, ListConfig)) else type(layer).__name__}")
    for section in SECTIONS:
        value = layer.get(section)
        if value is not None and not isinstance(value, (dict, DictConfig)):
            raise TextVAEError(f"{source}: '{section}' is a section: set its keys (e.g. {section}.KEY=VALUE), "
                               f"not a value ({value!r})")
    model = layer.get("model")
    if recipe_level and isinstance(model, (dict, DictConfig)):
        derived = [f.name for f in fields(ModelConfig) if f.metadata.get("derived") and f.name in model]
        if derived:
            raise TextVAEError(f"{source}: 'model.{derived[0]}' is set from the tokenizer, not by a recipe")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        name = getattr(err, "full_key", None) or "?"
        hint = difflib.get_close_matches(str(name), _dotted_keys(base), n=1)
        if "not in" in str(err) or "Key" in type(err).__name__:
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise TextVAEError(f"{source}: unknown key '{name}'{suggestion}") from None
        msg = str(err).splitlines()[0]
        raise TextVAEError(f"{source}: bad value for '{name}': {msg}") from None


def compose(layers: list[tuple[str, Any]], recipe_level: bool = True) -> Config:
    """Merge ``(source, mapping)`` layers over the defaults and validate.

    The preset named by ``model.preset`` (by whichever layer sets it last) is merged in
    right above the defaults, so that every layer's own model fields override it.
    """
    for source, layer in layers:
        _check_layer(layer, source, recipe_level)

    def merged(stack: list[tuple[str, Any]]) -> DictConfig:
        cfg = OmegaConf.structured(Config)
        for source, layer in stack:
            cfg = _merge(cfg, layer, source)
        return cfg

    cfg = merged(layers)
    preset = cfg.model.preset
    if preset is not None:
        check_value("model.preset", preset, {"choices": tuple(PRESETS)})
        cfg = merged([(f"model.preset '{preset}'", {"model": PRESETS[preset]}), *layers])
    return validate(OmegaConf.to_object(cfg))


def parse_overrides(overrides: list[str]) -> tuple[str | None, list[str]]:
    """Split ``method=NAME`` from the other ``key=value`` overrides and check their form."""
    method = None
    rest = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise TextVAEError(f"override '{item}' is not of the form key=value")
        name, value = item.split("=", 1)
        if name == "method":
            method = value
        elif name in SECTIONS:
            raise TextVAEError(f"override '{item}': '{name}' is a section: set one of its keys "
                               f"(e.g. {name}.KEY=VALUE)")
        else:
            rest.append(item)
    return method, rest


def _dotlist(items: list[str], source: str) -> DictConfig:
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as err:
        raise TextVAEError(f"bad {source}: {str(err).splitlines()[0]}") from None


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
    except Exception as err:  # YAML syntax errors, unreadable files
        raise TextVAEError(f"{path}: not a valid YAML recipe ({str(err).splitlines()[0]})") from None
    if raw is None or (isinstance(raw, DictConfig) and not raw):
        raise TextVAEError(f"{path}: the recipe is empty")
    _check_layer(raw, str(path), True)
    method, rest = parse_overrides(overrides or [])
    # `data.fingerprints.ptb.train.txt=HEX`: file names hold dots, which a dot-list would split.
    prefix = "data.fingerprints."
    fingerprints = dict(item[len(prefix):].split("=", 1) for item in rest if item.startswith(prefix))
    rest = [item for item in rest if not item.startswith(prefix)]
    method = method or raw.get("method") or Config.method
    return compose([
        (str(path), raw),
        (f"method '{method}'", _dotlist([*method_overrides(method), f"method={method}"], f"method '{method}'")),
        ("override", _dotlist(rest, "override")),
        ("override", {"data": {"fingerprints": fingerprints}}),
    ])


def config_from_dict(data: Any, source: str = "config.yaml") -> Config:
    """Rebuild a Config from a resolved mapping (as saved in a run's config.yaml)."""
    if isinstance(data, (dict, DictConfig)) and isinstance(data.get("model"), (dict, DictConfig)):
        # config.yaml files written when unset model fields were saved as null (the preset's, then)
        data = {**data, "model": {k: v for k, v in dict(data["model"]).items() if v is not None}}
    return compose([(source, data)], recipe_level=False)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bound_text(meta: dict) -> str:
    return " and ".join(f"{symbol} {meta[name]:g}" for name, symbol in BOUNDS if name in meta)


def check_value(name: str, value: Any, meta: dict) -> None:
    """One key's value against its :func:`key` checks; raises TextVAEError naming the key."""
    if value is None:
        return
    shown = repr(value) if isinstance(value, str) else value
    if "choices" in meta and not isinstance(value, (list, tuple)) and value not in meta["choices"]:
        raise TextVAEError(f"bad value for '{name}': {shown} (choose from {', '.join(map(str, meta['choices']))})")
    if isinstance(value, (list, tuple)):
        if "length" in meta and len(value) != meta["length"]:
            raise TextVAEError(f"bad value for '{name}': {list(value)} (must hold {meta['length']} numbers)")
        for item in value:
            check_value(name, item, {k: v for k, v in meta.items() if k != "length"})
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise TextVAEError(f"bad value for '{name}': {value} (must be a finite number)")
    ok = (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
          and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))
    if not ok:
        raise TextVAEError(f"bad value for '{name}': {value} (must be {_bound_text(meta)})")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Every field of a (nested) config dataclass against its checks."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check_fields(value, f"{prefix}{f.name}.")
        else:
            check_value(f"{prefix}{f.name}", value, f.metadata)


def check_model(m: ModelConfig, prefix: str = "model.") -> ModelConfig:
    """A model's ranges and the checks between its fields (also for a model built in Python)."""
    check_fields(m, prefix)
    for side in ("encoder", "decoder"):
        if getattr(m, side) == "pretrained" and not getattr(m, f"{side}_name"):
            example = "bert-base-cased" if side == "encoder" else "gpt2"
            raise TextVAEError(f"{prefix}{side}=pretrained needs {prefix}{side}_name (a hub id such as "
                               f"'{example}' or a local path)")
    transformer = [(side, width) for side, width in (("encoder", m.enc_hidden_dim), ("decoder", m.dec_hidden_dim))
                   if getattr(m, side) == "transformer"]
    for side, width in transformer:
        if width % m.num_heads:
            hidden = "enc_hidden_dim" if side == "encoder" else "dec_hidden_dim"
            raise TextVAEError(f"bad value for '{prefix}num_heads': {m.num_heads} (the {side} width "
                               f"{prefix}{hidden} = {width} must be divisible by it)")
    if m.pooling == "pooler" and m.encoder != "pretrained" and m.latent_dim > 0:
        raise TextVAEError(f"bad value for '{prefix}pooling': 'pooler' (needs {prefix}encoder=pretrained; "
                           "choose mean or first)")
    return m


def validate(cfg: Config) -> Config:
    """Every key's range or choices (:func:`key`), then the checks between keys."""
    check_fields(cfg)
    check_model(cfg.model)
    m, tc = cfg.model, cfg.train
    if cfg.critic.share_encoder and cfg.critic.type != "hybrid":
        raise TextVAEError(f"'critic.share_encoder' needs critic.type=hybrid (got '{cfg.critic.type}')")
    rise, zero = tc.kl_ratio_increase, tc.kl_ratio_zero
    if not rise <= 1.0 - zero + 1e-9:  # the ramp must end inside its cycle
        raise TextVAEError(f"bad value for 'train.kl_ratio_increase': {rise} "
                           f"(must be > 0 and at most 1 - train.kl_ratio_zero = {1.0 - zero:g})")
    digest_lengths = {"sha256": 64, "md5": 32, "gitblob": 40}
    for file_name, digest in cfg.data.fingerprints.items():
        algorithm, _, hexdigest = str(digest).rpartition(":")
        if digest_lengths.get(algorithm or "sha256") != len(hexdigest) or not re.fullmatch("[0-9a-fA-F]+", hexdigest):
            raise TextVAEError(f"bad value for 'data.fingerprints.{file_name}': {digest!r} (a sha256 hex digest, "
                               "or md5:HEX or gitblob:HEX)")
    if m.latent_dim == 0 and (tc.aggressive or tc.ae_epochs):
        raise TextVAEError("train.aggressive and train.ae_epochs need a latent variable (model.latent_dim > 0)")
    if cfg.tokenizer.type == "pretrained" and m.decoder != "pretrained":
        raise TextVAEError("tokenizer.type=pretrained is a pretrained decoder's own tokenizer: it needs "
                           "model.decoder=pretrained (or choose word, bpe, unigram or sentencepiece)")
    learned = [side for side in ("encoder", "decoder") if getattr(m, side) == "transformer"] \
        if m.positions == "learned" else []
    prefix_slot = 1 if m.decoder == "transformer" and m.latent_injection == "prefix" and m.latent_dim else 0
    if learned and m.max_positions < cfg.data.max_length + 2 + prefix_slot:
        raise TextVAEError(f"bad value for 'model.max_positions': {m.max_positions} (a sequence of "
                           f"data.max_length = {cfg.data.max_length} tokens takes {cfg.data.max_length + 2} "
                           f"positions with <s> and </s>{' and the latent prefix' if prefix_slot else ''}; "
                           "raise it or lower data.max_length)")
    return cfg
