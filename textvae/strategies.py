"""Loop-level methods that ``fit`` calls: aggressive inference-network training, semi-amortized inference
and AE pretraining.

- Aggressive training (He et al. 2019, "Lagging inference networks and posterior
  collapse in variational autoencoders", Algorithm 1, following their ``text.py``):
  before each decoder update, the encoder alone is updated on fresh training batches
  until its loss stops improving; aggressive mode ends once validation MI stops rising.
- Semi-amortized inference (Kim et al. 2018, SA-VAE): each step's posteriors are refined by SVI
  steps before the decoder trains on them (:mod:`textvae.svi`).
- AE pretraining (Li et al. 2019, "A surprisingly effective fix for deep latent variable
  modeling of text"): an autoencoder stage (KL weight 0), then the encoder is kept, the
  decoder re-initialised, and a VAE trained with free bits.

Each is a :class:`Strategy`: an object whose hooks ``fit`` calls at fixed points of every
run (the trainer state, the KL weight, before each step, after validation, after each whole
epoch). ``STRATEGIES`` holds them; a run uses those whose ``enabled(train config)`` is true.
A strategy keeps its state in the trainer-state dict (saved in every checkpoint), so a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Protocol

import torch

from .config import TrainConfig
from .errors import TextVAEError
from .svi import refine_posterior

UPDATES = ("all", "encoder", "decoder")  # which side of the model a training step moves


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


def ae_stage_over(state: dict, cfg: TrainConfig) -> bool:
    """True once the AE stage has run its ``ae_epochs`` whole epochs, or converged earlier.

    Li et al. train the autoencoder to convergence (He et al.'s lr schedule, ``max_lr_decays``
    decays); ``ae_epochs`` caps that stage here.
    """
    return state["stage"] == "ae" and (state["epoch"] >= cfg.ae_epochs or state["n_decays"] >= cfg.max_lr_decays)


class Loop(Protocol):
    """What a strategy's hooks may use of the running loop (``textvae.training`` provides it)."""

    state: dict  # the trainer state: step, epoch, lr, ... and every strategy's own keys
    model: torch.nn.Module

    def step(self, batch, update: str = "all") -> dict: ...  # one counted training step on ``batch``
    def random_batch(self): ...  # a training batch of this epoch, drawn with replacement
    def event(self, record: dict) -> None: ...  # an event line in the metrics
    def load_best(self) -> None: ...  # the best model so far back into ``model``
    def restart_schedules(self, lr: float) -> None: ...  # a fresh run from here: lr rule, KL schedule, optimiser


class Strategy:
    """A loop-level method. Every hook's default leaves the loop as it is; a strategy overrides some.

    ``fit`` builds each enabled strategy once per run with the train config, and calls, in this order:
    ``check`` (before anything is written), ``initial_state`` (a fresh run's entries), ``kl_weight`` and
    ``update`` (each step), ``before_step`` (before each step's update), ``selection_loss`` and
    ``after_validation`` (each validation), ``after_epoch`` (each whole epoch, after the lr rule), and
    ``fields`` (each metrics record).
    """

    sum_keys: tuple[str, ...] = ()  # per-epoch sums it adds to (reset each epoch, checkpointed mid-epoch)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @staticmethod
    def enabled(cfg: TrainConfig) -> bool:
        raise NotImplementedError

    def check(self, distributed: bool) -> None:
        """Refuse (TextVAEError) a run it cannot take part in."""

    def initial_state(self) -> dict:
        return {}

    def kl_weight(self, state: dict, weight: float) -> float:
        """The KL weight of the next step, given the schedule's ``weight``."""
        return weight

    def update(self, state: dict) -> str:
        """Which side (``UPDATES``) the next step moves."""
        return "all"

    def before_step(self, loop: Loop, batch) -> dict:
        """Runs before the step on ``batch``; returns what to add to the epoch's sums."""
        return {}

    def selection_loss(self, state: dict, val, loss: float) -> float:
        """The validation loss that selects the best model and drives the lr rule (default −ELBO)."""
        return loss

    def after_validation(self, state: dict, val, whole_epoch: bool) -> list[dict]:
        """After each validation; returns event records to log after the epoch's record."""
        return []

    def after_epoch(self, loop: Loop) -> bool:
        """After each whole epoch (the lr rule applied, the epoch counted); True if it restarted the run."""
        return False

    def fields(self, state: dict, sums: dict) -> dict:
        """Its entries in each metrics record."""
        return {}

    def refinement(self, state: dict, kl_weight: float) -> Callable | None:
        """A posterior refinement for the next step's forward pass (``TextVAE.forward(refine=...)``), or None."""
        return None


class Aggressive(Strategy):
    """He et al. (2019): encoder-only steps before each decoder step, until validation MI falls."""

    sum_keys = ("encoder_steps",)

    @staticmethod
    def enabled(cfg: TrainConfig) -> bool:
        return cfg.aggressive

    def check(self, distributed: bool) -> None:
        if distributed:
            raise TextVAEError("train.aggressive cannot run under torchrun: its encoder inner loop draws batches "
                               "on one process (run it without torchrun)")

    def initial_state(self) -> dict:
        return dict(aggressive=True, aggressive_prev_mi=None, encoder_steps=0)

    def update(self, state: dict) -> str:
        return "decoder" if state["aggressive"] else "all"

    def before_step(self, loop: Loop, batch) -> dict:
        if not loop.state["aggressive"]:
            return {}
        n = aggressive_encoder_updates(loop.step, batch, loop.random_batch, self.cfg)
        loop.state["encoder_steps"] += n
        return {"encoder_steps": n}

    def after_validation(self, state: dict, val, whole_epoch: bool) -> list[dict]:
        if not (whole_epoch and aggressive_after_epoch(state, val.mi_batch)):
            return []
        return [{"epoch": state["epoch"] + 1, "event": "aggressive_off", "mi_batch": val.mi_batch,
                 "encoder_steps": state["encoder_steps"]}]

    def fields(self, state: dict, sums: dict) -> dict:
        return dict(aggressive=state["aggressive"], encoder_steps=state["encoder_steps"],
                    encoder_steps_per_step=sums.get("encoder_steps", 0) / max(sums["steps"], 1))


class AEStage(Strategy):
    """Li et al. (2019): ``ae_epochs`` of autoencoder training (KL weight 0, selected by rec), then the
    encoder is kept, the decoder re-initialised, and a fresh VAE run begins."""

    @staticmethod
    def enabled(cfg: TrainConfig) -> bool:
        return cfg.ae_epochs > 0

    def initial_state(self) -> dict:
        return dict(stage="ae")

    def kl_weight(self, state: dict, weight: float) -> float:
        return 0.0 if state["stage"] == "ae" else weight

    def selection_loss(self, state: dict, val, loss: float) -> float:
        return val.rec if state["stage"] == "ae" else loss  # an autoencoder is selected by rec (Li et al.)

    def after_epoch(self, loop: Loop) -> bool:
        state = loop.state
        if not ae_stage_over(state, self.cfg):
            return False
        loop.event({"epoch": state["epoch"], "event": "vae_stage", "ae_best_rec": state["best_val"]})
        loop.load_best()
        self.begin_vae_stage(loop)
        return True

    def begin_vae_stage(self, loop: Loop) -> None:
        """Stage 2: keep the encoder, re-initialise the decoder, start a fresh run.

        As their ``--reset_dec`` (and BN-VAE's, which also resets the BN shift), the decoder
        gets He et al.'s initialisation again. The lr schedule starts over (their stage 2 is a
        new run: lr, best loss, patience and decay count), and the KL schedule restarts at
        this step.
        """
        model = loop.model
        model.reset_parameters(only="decoder")
        if model.posterior.mu_bn is not None:
            model.posterior.reset_bn()
        loop.state["stage"] = "vae"
        loop.restart_schedules(self.cfg.lr)

    def fields(self, state: dict, sums: dict) -> dict:
        return {"stage": state["stage"]}


class SemiAmortized(Strategy):
    """Kim et al. (2018), SA-VAE: each step's posteriors are refined by ``svi_steps`` SVI steps
    (:func:`textvae.svi.refine_posterior`) and the decoder trains at the refined ones."""

    @staticmethod
    def enabled(cfg: TrainConfig) -> bool:
        return cfg.svi_steps > 0

    def check(self, distributed: bool) -> None:
        if distributed:
            raise TextVAEError("train.svi_steps > 0 cannot run under torchrun: the SVI steps' batch-mean loss and "
                               "gradient clipping are over the global batch (run it without torchrun)")

    def refinement(self, state: dict, kl_weight: float) -> Callable:
        c = self.cfg
        return functools.partial(refine_posterior, steps=c.svi_steps, lr=c.svi_lr, momentum=c.svi_momentum,
                                 max_grad_norm=c.svi_max_grad_norm, kl_weight=kl_weight, gradient=c.svi_gradient,
                                 fd_eps=c.svi_fd_eps)


# name → strategy class; a run uses every one whose ``enabled(train config)`` is true
STRATEGIES: dict[str, type[Strategy]] = {"ae_stage": AEStage, "aggressive": Aggressive, "sa_vae": SemiAmortized}


class Strategies:
    """The run's enabled strategies, called as one: each hook chains or merges theirs."""

    def __init__(self, cfg: TrainConfig):
        self.items = [cls(cfg) for cls in STRATEGIES.values() if cls.enabled(cfg)]
        self.sum_keys = tuple(key for s in self.items for key in s.sum_keys)

    def check(self, distributed: bool) -> None:
        for s in self.items:
            s.check(distributed)

    def initial_state(self) -> dict:
        return {key: value for s in self.items for key, value in s.initial_state().items()}

    def kl_weight(self, state: dict, weight: float) -> float:
        for s in self.items:
            weight = s.kl_weight(state, weight)
        return weight

    def update(self, state: dict) -> str:
        return next((side for side in (s.update(state) for s in self.items) if side != "all"), "all")

    def before_step(self, loop: Loop, batch) -> dict:
        return {key: value for s in self.items for key, value in s.before_step(loop, batch).items()}

    def selection_loss(self, state: dict, val, loss: float) -> float:
        for s in self.items:
            loss = s.selection_loss(state, val, loss)
        return loss

    def after_validation(self, state: dict, val, whole_epoch: bool) -> list[dict]:
        return [event for s in self.items for event in s.after_validation(state, val, whole_epoch)]

    def after_epoch(self, loop: Loop) -> bool:
        return any([s.after_epoch(loop) for s in self.items])  # a list: every strategy sees every epoch

    def fields(self, state: dict, sums: dict) -> dict:
        return {key: value for s in self.items for key, value in s.fields(state, sums).items()}

    def refinement(self, state: dict, kl_weight: float) -> Callable | None:
        return next((r for r in (s.refinement(state, kl_weight) for s in self.items) if r is not None), None)
