"""Training objectives: the negative ELBO with a scheduled KL weight."""

from __future__ import annotations

import math

import torch

from .config import CriticConfig, TrainConfig
from .model import VAEOutput
from .modules.critics import info_nce


def kl_weight(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """β · min(1, kl_start + step / (kl_warmup_epochs · steps_per_epoch)).

    He et al. (2019)'s linear warm-up: the weight rises by 1 / (warm-up steps) per
    step from ``kl_start`` and is capped at 1 (Bowman et al. 2016 anneal the same
    way); ``kl_start = 1`` means no warm-up. β is a constant multiplier (β-VAE).
    """
    warmup_steps = cfg.kl_warmup_epochs * steps_per_epoch
    anneal = 1.0 if cfg.kl_start >= 1.0 or warmup_steps <= 0 else min(1.0, cfg.kl_start + step / warmup_steps)
    return cfg.beta * anneal


def negative_elbo(out: VAEOutput, weight: float = 1.0) -> torch.Tensor:
    """Batch mean of rec + weight · KL (nats per sequence), the quantity SGD minimises."""
    return (out.rec + weight * out.kl).mean()


def critic_weight(step: int, cfg: CriticConfig) -> float:
    """λ, ramped linearly from 0 over ``warmup_steps``."""
    if cfg.warmup_steps <= 0:
        return cfg.weight
    return cfg.weight * min(1.0, step / cfg.warmup_steps)


def critic_term(critic, out: VAEOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: CriticConfig):
    """InfoNCE of the critic on this batch (Menon et al. 2022): loss, accuracy, and the MI lower bound.

    The critic sees the same reparameterised z as the decoder (or the posterior
    mean with ``critic.z=mean``), so its gradient reaches the encoder; the decoder
    takes no part. Returns (loss, acc, log C − loss) with C candidates per row.
    """
    z = out.z if cfg.z == "sample" else out.posterior.base_dist.loc
    scores = critic(z, out.posterior, input_ids, attention_mask)  # (B, C)
    loss, acc = info_nce(scores, cfg.symmetric)
    bound = math.log(scores.size(1)) - loss.detach()
    return loss, acc, bound
