"""Loop-level methods that ``fit`` calls: aggressive inference-network training and AE pretraining.

- Aggressive training (He et al. 2019, "Lagging inference networks and posterior
  collapse in variational autoencoders", Algorithm 1, following their ``text.py``):
  before each decoder update, the encoder alone is updated on fresh training batches
  until its loss stops improving; aggressive mode ends once validation MI stops rising.
- AE pretraining (Li et al. 2019, "A surprisingly effective fix for deep latent variable
  modeling of text"): an autoencoder stage (KL weight 0), then the encoder is kept, the
  decoder re-initialised, and a VAE trained with free bits.

Both keep their state in the trainer-state dict (saved in every checkpoint), so a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import TrainConfig
from .objectives import kl_weight

UPDATES = ("all", "encoder", "decoder")  # which side of the model a training step moves


def initial_state(cfg: TrainConfig) -> dict:
    """The strategies' entries of a fresh trainer state (also the defaults for older checkpoints)."""
    return dict(stage="ae" if cfg.ae_epochs > 0 else "vae", stage_start_step=0, stage_start_epoch=0,
                aggressive=cfg.aggressive, aggressive_prev_mi=None, encoder_steps=0)


def frozen_parameters(model, critic_params: list[torch.nn.Parameter], update: str) -> list[torch.nn.Parameter]:
    """Parameters that must not move in a step of ``update``: the decoder for ``encoder``, the
    inference side (encoder, posterior head, critic) for ``decoder``.

    Dropping their gradients before ``optimizer.step()`` makes torch's SGD and Adam skip them
    (their momentum, moments and step counts are per parameter and untouched), which is
    exactly what He et al.'s two optimisers (``enc_optimizer``, ``dec_optimizer``) do.
    """
    if update == "encoder":
        return list(model.decoder.parameters())
    if update == "decoder":
        return [*model.encoder_parameters(), *critic_params]
    return []


def aggressive_encoder_updates(step: Callable[..., dict], batch, draw_batch: Callable[[], object],
                               cfg: TrainConfig) -> int:
    """He et al. (2019) Algorithm 1, the inner loop: encoder-only steps until convergence.

    The first step uses the current ``batch``, later ones fresh random training batches
    (``draw_batch``). Every ``aggressive_check_every_steps`` steps the loss per predicted
    token over those steps is compared with the previous window's, and the loop stops as
    soon as it is higher (their ``burn_pre_loss - burn_cur_loss < 0``); at most
    ``aggressive_max_encoder_steps`` steps. ``step(batch, update="encoder")`` performs one update
    and returns the batch's sums. Returns the number of encoder steps taken.
    """
    previous, loss_sum, tokens = math.inf, 0.0, 0
    for n in range(1, cfg.aggressive_max_encoder_steps + 1):
        if n > 1:
            batch = draw_batch()
        sums = step(batch, update="encoder")
        if sums.get("bad_steps"):  # skipped (non-finite): nothing was learnt, nothing to compare
            continue
        loss_sum += sums["loss"]
        tokens += batch.num_predicted_tokens
        if n % cfg.aggressive_check_every_steps == 0:
            current = loss_sum / tokens
            if current > previous:
                return n
            previous, loss_sum, tokens = current, 0.0, 0
    return cfg.aggressive_max_encoder_steps


def aggressive_after_epoch(state: dict, mi: float) -> bool:
    """He et al.'s switch: after each epoch, aggressive mode ends once validation MI falls.

    Their ``text.py`` compares the per-batch MI estimate (``calc_mi`` on the validation
    batches, our ``mi_batch``) with the previous epoch's and stops at the first decrease.
    Returns True when aggressive mode was switched off now.
    """
    previous, state["aggressive_prev_mi"] = state["aggressive_prev_mi"], mi
    if state["aggressive"] and previous is not None and mi < previous:
        state["aggressive"] = False
        return True
    return False


def stage_kl_weight(state: dict, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """The KL weight now: 0 in the AE stage, else the schedule restarted at the VAE stage's first step."""
    if state["stage"] == "ae":
        return 0.0
    return kl_weight(state["step"], steps_per_epoch, cfg, state["stage_start_step"])


def ae_stage_over(state: dict, cfg: TrainConfig) -> bool:
    """True once the AE stage has run its ``ae_epochs`` whole epochs, or converged earlier.

    Li et al. train the autoencoder to convergence (He et al.'s lr schedule, ``max_lr_decays``
    decays); ``ae_epochs`` caps that stage here.
    """
    return state["stage"] == "ae" and (state["epoch"] >= cfg.ae_epochs or state["n_decays"] >= cfg.max_lr_decays)


def begin_vae_stage(model, state: dict, lr: float) -> None:
    """Li et al. (2019) stage 2: keep the encoder, re-initialise the decoder, start a fresh run.

    As their ``--reset_dec`` (and BN-VAE's, which also resets the BN shift), the decoder
    gets He et al.'s initialisation again. The lr schedule starts over (their stage 2 is a
    new run: lr, best loss, patience and decay count), and the KL schedule restarts at
    this step. The caller loads the best AE model first and rebuilds the optimiser.
    """
    model.reset_parameters(only="decoder")
    if model.posterior.mu_bn is not None:
        model.posterior.reset_bn()
    state.update(stage="vae", stage_start_step=state["step"], stage_start_epoch=state["epoch"],
                 best_val=math.inf, plateau_best=math.inf, bad_epochs=0, n_decays=0, lr=lr)
