"""Named methods: a method is a one-line description, its citation, and a set of recipe overrides.

``textvae train RECIPE method=NAME`` applies one; the user's own ``key=value``
overrides still come after it, so a method composes with any other setting, e.g.
``method=critic-neural train.kl_schedule=cyclical`` or ``method=free-bits
critic.type=self``. Besides the fixed names in :data:`METHODS`, a family such as
``beta-<b>`` takes its value from the name (``beta-0.4`` → ``train.beta=0.4``).

The collapse mitigations and where their behaviour lives:

- ``vae-anneal``, ``cyclical``, ``beta-<b>``: KL weight schedules (``objectives.kl_weight``).
- ``free-bits``, ``free-bits-mask``, ``kl-threshold``: three different free-bits
  objectives (``objectives.free_bits_kl``).
- ``aggressive``, ``sa-vae``, ``ae-fb``: loop-level strategies (``strategies``).
- ``bn-vae``: batch-normalised posterior mean (``modules.posterior``).
- ``word-dropout``: decoder input corruption (``modules.decoders.word_dropout``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import TextVAEError


@dataclass(frozen=True)
class Method:
    description: str
    citation: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodFamily:
    """Methods named ``<prefix><value>``; ``overrides(value)`` parses the value or raises TextVAEError."""

    pattern: str  # how `methods list` shows it, e.g. "beta-<b>"
    description: str
    citation: str
    overrides: Callable[[str], tuple[str, ...]]


# Free bits: one λ for the three variants, 0.25 nats per dimension — Li et al.'s `--target_kl 8`
# over 32 latent dimensions (their `--fb 2` divides target_kl by the dimension count).
FREE_BITS_LAMBDA = "train.free_bits=0.25"
CRITIC_SELF = ("critic.type=self", "critic.weight=1.25", "model.encoder_init=default")

METHODS: dict[str, Method] = {
    "vae": Method("plain VAE, KL weight 1 from the first step", "Kingma & Welling 2014; Bowman et al. 2016",
                  ("train.kl_start=1.0", "train.beta=1.0")),
    "vae-anneal": Method("VAE with linear KL warm-up from 0.1 over 10 epochs", "Bowman et al. 2016; He et al. 2019",
                         ("train.kl_start=0.1", "train.kl_warmup_epochs=10")),
    "cyclical": Method("cyclical KL annealing: 4 cycles, each rising 0 → 1 over its first half, then 1",
                       "Fu et al. 2019", ("train.kl_schedule=cyclical", "train.kl_n_cycles=4",
                                          "train.kl_ratio_increase=0.5", "train.kl_ratio_zero=0.0")),
    "free-bits": Method("free bits: KL term Σ_d max(λ, batch-mean KL_d), λ = 0.25 nats/dim",
                        "Kingma et al. 2016", (FREE_BITS_LAMBDA, "train.free_bits_mode=batch_dim")),
    "free-bits-mask": Method("free bits per sequence and dimension: KL_{n,d} ≤ λ = 0.25 is masked out",
                             "Li et al. 2019 (--fb 2)", (FREE_BITS_LAMBDA, "train.free_bits_mode=example_dim")),
    "kl-threshold": Method("KL thresholding: a sequence's total KL ≤ D·λ (λ = 0.25) is masked out",
                           "Li et al. 2019 (--fb 1); Zhu et al. 2020",
                           (FREE_BITS_LAMBDA, "train.free_bits_mode=example_total")),
    "aggressive": Method("aggressive inference-network training until validation MI stops rising; "
                         "KL warm-up from 0.1 over 10 epochs", "He et al. 2019",
                         ("train.aggressive=true", "train.kl_start=0.1", "train.kl_warmup_epochs=10")),
    # Its decoder only ever sees refined posteriors, so it is validated and tested on them too, as Kim et al.
    # report it (eval.svi_steps=20, recorded in every result); `textvae eval --svi-steps 0` gives the encoder's.
    "sa-vae": Method("semi-amortized VAE: 20 SVI steps (lr 1, momentum 0.5, clip 5) refine each posterior, "
                     "trained end to end and evaluated refined; KL warm-up from 0.1 over 10 epochs", "Kim et al. 2018",
                     ("train.svi_steps=20", "train.svi_gradient=through", "eval.svi_steps=20", "train.kl_start=0.1",
                      "train.kl_warmup_epochs=10", "train.flush_denormal=true")),
    # The same, differentiated as Kim et al.'s released code does it (optim_n2n.py): finite-difference
    # Hessian-vector products with their joint clip at every reverse step (svi.py; docs/mitigations.md).
    "sa-vae-fd": Method("semi-amortized VAE as Kim et al.'s released code trains it: sa-vae with finite-difference "
                        "Hessian-vector products and their reverse-pass clipping", "Kim et al. 2018 (code)",
                        ("train.svi_steps=20", "train.svi_gradient=finite-difference", "eval.svi_steps=20",
                         "train.kl_start=0.1", "train.kl_warmup_epochs=10", "train.flush_denormal=true")),
    "bn-vae": Method("batch-normalised posterior mean, fixed scale γ = 0.5, learnt shift; KL warm-up from 0",
                     "Zhu et al. 2020", ("model.bn_gamma=0.5", "train.kl_start=0.0", "train.kl_warmup_epochs=10")),
    "word-dropout": Method("decoder input words replaced by <unk> with probability 0.5 in training",
                           "Bowman et al. 2016", ("model.word_dropout=0.5",)),
    "ae-fb": Method("autoencoder for 10 epochs, then decoder re-initialised and VAE trained with free bits "
                    "(per-dimension mask, λ = 0.25) and KL warm-up from 0", "Li et al. 2019",
                    ("train.ae_epochs=10", FREE_BITS_LAMBDA, "train.free_bits_mode=example_dim",
                     "train.kl_start=0.0", "train.kl_warmup_epochs=10")),
    # Critics: λ must exceed 1 (InfoNCE ≥ log B − I while KL ≥ I, so λ ≤ 1 never pays for information on
    # its own), and the encoder needs PyTorch's init (under U(±0.01) the posterior mean ignores x).
    # The self critic's InfoNCE is log B − Î_B (a minibatch estimate of I itself), so the objective is
    # rec + (1 − λ)·I + KL(q(z) ‖ p(z)): λ − 1 is the net reward per nat, and at λ = 2 it over-sharpens
    # the posterior towards the log B ceiling (IW-NLL +2 nats); λ = 1.25 keeps both units at +0.2 nats.
    "critic-self": Method("VAE + self critic S[i,j] = log q(z_i|x_j), λ = 1.25", "Menon et al. 2022",
                          CRITIC_SELF),
    # The self critic alone puts its information in one or two sharp dimensions (InfoNCE over a batch of
    # 32 saturates at log 32, and one dimension gets there); a small free-bits floor on every dimension's
    # batch-mean KL lets the encoder spread the same information over all of them (PTB: README, Results).
    "critic-self-fb": Method("VAE + self critic (λ = 1.25) + free bits: Σ_d max(0.1, batch-mean KL_d)",
                             "Menon et al. 2022; Kingma et al. 2016",
                             (*CRITIC_SELF, "train.free_bits=0.1", "train.free_bits_mode=batch_dim")),
    # The neural critic starts from chance and must learn before SGD at lr 1.0 collapses the posterior
    # (in one seed of three it lost the race): a KL warm-up from 0.1 over 10 epochs gives it the time.
    "critic-neural": Method("VAE + neural critic (own LSTM x-encoder, cosine/τ, Adam), λ = 2, KL warm-up",
                            "Menon et al. 2022",
                            ("critic.type=neural", "critic.weight=2", "critic.optimizer=adam",
                             "model.encoder_init=default", "train.kl_start=0.1", "train.kl_warmup_epochs=10")),
    "critic-hybrid": Method("VAE + hybrid critic sharing the inference embedding, λ = 2", "Menon et al. 2022",
                            ("critic.type=hybrid", "critic.weight=2", "critic.optimizer=adam",
                             "model.encoder_init=default")),
    "lm": Method("the same decoder with no latent variable (language-model baseline)", "He et al. 2019",
                 ("model.latent_dim=0",)),
}


def beta_overrides(value: str) -> tuple[str, ...]:
    """``beta-<b>``: a constant KL weight β = b, no annealing (β-VAE, Higgins et al. 2017)."""
    try:
        beta = float(value)
    except ValueError:
        raise TextVAEError(f"method 'beta-{value}': '{value}' is not a number (e.g. beta-0.4)") from None
    if not (math.isfinite(beta) and beta >= 0):
        raise TextVAEError(f"method 'beta-{value}': β must be a finite number >= 0 (e.g. beta-0.4)")
    return ("train.kl_schedule=linear", "train.kl_start=1.0", f"train.beta={beta!r}")


FAMILIES: dict[str, MethodFamily] = {
    "beta-": MethodFamily("beta-<b>", "constant KL weight β = b, no annealing (He et al. report β = 0.2–0.8)",
                          "Higgins et al. 2017; He et al. 2019", beta_overrides),
}


def method_overrides(name: str) -> list[str]:
    """The overrides of a named method or of a family member (``beta-0.4``)."""
    if name in METHODS:
        return list(METHODS[name].overrides)
    for prefix, family in FAMILIES.items():
        if name.startswith(prefix):
            return list(family.overrides(name[len(prefix):]))
    hint = difflib.get_close_matches(name, list(METHODS), n=1)
    family = difflib.get_close_matches(name.split("-")[0] + "-", list(FAMILIES), n=1)  # betta-0.4 → beta-<b>
    hint = hint or [FAMILIES[prefix].pattern for prefix in family]
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise TextVAEError(f"unknown method '{name}'{suggestion}; see `textvae methods list`")


def method_table() -> list[tuple[str, str, str]]:
    """(name, description, citation) of every method and family, as `textvae methods list` prints them."""
    rows = [(name, m.description, m.citation) for name, m in METHODS.items()]
    return rows + [(f.pattern, f.description, f.citation) for f in FAMILIES.values()]
