"""Named methods: a method is a one-line description plus a set of recipe overrides.

``textvae train RECIPE method=NAME`` applies one; the user's own ``key=value``
overrides still come after it. Later issues add the collapse mitigations here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .config import TextVAEError


@dataclass(frozen=True)
class Method:
    description: str
    overrides: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    "vae": Method("plain VAE, KL weight 1 from the first step (Kingma & Welling 2014; Bowman et al. 2016)",
                  ("train.kl_start=1.0", "train.beta=1.0")),
    "vae-anneal": Method("VAE with linear KL warm-up from 0.1 over 10 epochs (Bowman et al. 2016; He et al. 2019)",
                         ("train.kl_start=0.1", "train.kl_warmup_epochs=10")),
    # Critics: λ must exceed 1 (InfoNCE ≥ log B − I while KL ≥ I, so λ ≤ 1 never pays for information on
    # its own), and the encoder needs PyTorch's init (under U(±0.01) the posterior mean ignores x).
    # The self critic's InfoNCE is log B − Î_B (a minibatch estimate of I itself), so the objective is
    # rec + (1 − λ)·I + KL(q(z) ‖ p(z)): λ − 1 is the net reward per nat, and at λ = 2 it over-sharpens
    # the posterior towards the log B ceiling (IW-NLL +2 nats); λ = 1.25 keeps both units at +0.1 nats.
    "critic-self": Method("VAE + self critic S[i,j] = log q(z_i|x_j), λ = 1.25 (Menon et al. 2022)",
                          ("critic.type=self", "critic.weight=1.25", "model.encoder_init=default")),
    "critic-neural": Method("VAE + neural critic (own LSTM x-encoder, cosine/τ, Adam), λ = 2 (Menon et al. 2022)",
                            ("critic.type=neural", "critic.weight=2", "critic.optimizer=adam",
                             "model.encoder_init=default")),
    "critic-hybrid": Method("VAE + hybrid critic sharing the inference embedding, λ = 2 (Menon et al. 2022)",
                            ("critic.type=hybrid", "critic.weight=2", "critic.optimizer=adam",
                             "model.encoder_init=default")),
    "lm": Method("the same decoder with no latent variable (language-model baseline)", ("model.latent_dim=0",)),
}


def method_overrides(name: str) -> list[str]:
    if name not in METHODS:
        hint = difflib.get_close_matches(name, list(METHODS), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise TextVAEError(f"unknown method '{name}'{suggestion}; see `textvae methods list`")
    return list(METHODS[name].overrides)
