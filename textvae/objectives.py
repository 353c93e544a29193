"""Training objectives: the negative ELBO with a scheduled KL weight, free bits, and the critic term.

KL schedules (``train.kl_schedule``): He et al. (2019)'s linear warm-up and
Fu et al. (2019)'s cyclical annealing, both times a constant β. Free bits
(``train.free_bits`` λ nats per dimension, ``train.free_bits_mode``) replace the
KL term of the loss by one of three variants that are *not* equivalent: they
differ in what is averaged before the threshold is applied (see
:func:`free_bits_kl`).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from .config import CriticConfig, TrainConfig
from .distributed import World, gather_rows, shard_rows
from .model import VAEOutput
from .modules.critics import info_nce
from .modules.posterior import diagonal_gaussian


def total_train_steps(steps_per_epoch: int, cfg: TrainConfig) -> float:
    """The run's step budget: ``max_steps`` or ``max_epochs`` epochs, whichever is smaller."""
    return min(cfg.max_steps or math.inf, cfg.max_epochs * steps_per_epoch)


def cyclical_weight(step: int, total_steps: float, n_cycles: int, ratio_increase: float,
                    ratio_zero: float = 0.0) -> float:
    """Fu et al. (2019)'s cyclical annealing, with the zero phase of Li et al. (2020, Optimus).

    The ``total_steps`` are cut into ``n_cycles`` periods of P = total / n_cycles steps
    (Fu et al.: β_t = f(τ) for τ ≤ R and 1 after, with τ ∈ [0, 1) the position in the cycle).
    Within a cycle, at step i counted from its start (cycle c starts at ⌊c·P⌋, as in the
    authors' ``frange_cycle_zero_linear``): β = 0 while i < P·ratio_zero, then rises by
    1 / (P·ratio_increase) per step from 0 at i₀ = ⌈P·ratio_zero⌉, and stays at 1 until
    the cycle ends. The restart is at each cycle boundary, a function of the step alone
    (so it cannot drift or restart per batch). Past ``total_steps`` the weight is 1.
    """
    if step >= total_steps:
        return 1.0
    period = total_steps / n_cycles
    cycle = int(step / period)
    if cycle + 1 < n_cycles and int((cycle + 1) * period) <= step:  # the next cycle starts at ⌊(c+1)·P⌋
        cycle += 1
    i = step - int(cycle * period)
    if i < period * ratio_zero:
        return 0.0
    return min(1.0, (i - math.ceil(period * ratio_zero)) / (period * ratio_increase))


def linear_anneal(t: int, steps_per_epoch: int, cfg: TrainConfig, total_steps: float) -> float:
    """He et al. (2019)'s linear warm-up: min(1, kl_start + t / (kl_warmup_epochs · steps_per_epoch))."""
    warmup_steps = cfg.kl_warmup_epochs * steps_per_epoch
    return 1.0 if cfg.kl_start >= 1.0 or warmup_steps <= 0 else min(1.0, cfg.kl_start + t / warmup_steps)


def cyclical_anneal(t: int, steps_per_epoch: int, cfg: TrainConfig, total_steps: float) -> float:
    """:func:`cyclical_weight` over the ``total_steps`` of the schedule."""
    return cyclical_weight(t, total_steps, cfg.kl_n_cycles, cfg.kl_ratio_increase, cfg.kl_ratio_zero)


# train.kl_schedule → annealing factor at step t of the schedule (config.KL_SCHEDULES are its keys)
KL_SCHEDULES = {"linear": linear_anneal, "cyclical": cyclical_anneal}


def kl_weight(step: int, steps_per_epoch: int, cfg: TrainConfig, start_step: int = 0) -> float:
    """β · the annealing factor at ``step`` of a schedule that began at ``start_step``.

    ``linear``: β · min(1, kl_start + t / (kl_warmup_epochs · steps_per_epoch)), He et
    al. (2019)'s linear warm-up: the weight rises by 1 / (warm-up steps) per step from
    ``kl_start`` and is capped at 1 (Bowman et al. 2016 anneal the same way);
    ``kl_start = 1`` means no warm-up. ``cyclical``: :func:`cyclical_weight` over the
    steps from ``start_step`` to the end of the run. β is a constant multiplier (β-VAE).
    ``start_step`` > 0 restarts the schedule, e.g. for the VAE stage after AE pretraining.
    """
    total = total_train_steps(steps_per_epoch, cfg) - start_step
    return cfg.beta * KL_SCHEDULES[cfg.kl_schedule](step - start_step, steps_per_epoch, cfg, total)


def kl_per_dimension(posterior: Independent) -> torch.Tensor:
    """Analytic KL(q(z_d|x) ‖ N(0, 1)) of each dimension. Shape: batch shape (B,) → (B, D)."""
    base = posterior.base_dist
    return kl_divergence(base, Normal(torch.zeros_like(base.loc), torch.ones_like(base.scale), validate_args=False))


def free_bits_kl(posterior: Independent, free_bits: float, mode: str) -> torch.Tensor:
    """The KL term of the loss under free bits, λ = ``free_bits`` nats per dimension.

    The value replaces ``out.kl`` in rec + weight · KL; the reported KL stays the true one.
    With KL_{n,d} the KL of dimension d for sequence n and D dimensions:

    - ``batch_dim`` (Kingma et al. 2016, IAF, "free bits"): Σ_d max(λ, mean_n KL_{n,d}) —
      each dimension's KL averaged over the minibatch, then clamped. A dimension whose
      batch-average KL is below λ gets no gradient at all; above it, every sequence's does.
    - ``example_dim`` (Li et al. 2019, ``--fb 2``): Σ_d 1[KL_{n,d} > λ] · KL_{n,d} —
      a mask per sequence *and* dimension: only the entries below λ lose their gradient.
    - ``example_total`` (Li et al. 2019 ``--fb 1``; Zhu et al. 2020's BN-VAE code):
      1[KL_n > D·λ] · KL_n — the total KL of a sequence, thresholded at D·λ (their
      ``target_kl``; Li et al.'s ``--fb 2`` uses target_kl / D per dimension, so one λ
      means the same budget in both). A sequence below it loses the whole KL gradient.

    Shape: posterior batch shape (B,) → (B,) (``batch_dim``: the same value repeated,
    so that its batch mean is the clamped sum).
    """
    return FREE_BITS[mode](kl_per_dimension(posterior), free_bits)


def _free_bits_batch_dim(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    return kl.mean(0).clamp(min=free_bits).sum().expand(kl.size(0))


def _free_bits_example_dim(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    return (kl * (kl > free_bits)).sum(-1)


def _free_bits_example_total(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    total = kl.sum(-1)  # (B,)
    return total * (total > free_bits * kl.size(-1))


# train.free_bits_mode → the KL term from per-dimension KLs (B, D) (config.FREE_BITS_MODES are its keys)
FREE_BITS = {"batch_dim": _free_bits_batch_dim, "example_dim": _free_bits_example_dim,
             "example_total": _free_bits_example_total}


def negative_elbo(out: VAEOutput, weight: float = 1.0, free_bits: float = 0.0,
                  free_bits_mode: str = "batch_dim") -> torch.Tensor:
    """Batch mean of rec + weight · KL (nats per sequence), the quantity SGD minimises.

    With ``free_bits`` > 0 the KL is :func:`free_bits_kl`'s (not for the LM, which has none). A model
    output's ``inference_loss`` (SA-VAE's stop-gradient encoder target) is added as it is.
    """
    kl = out.kl
    if free_bits > 0 and out.posterior is not None:
        kl = free_bits_kl(out.posterior, free_bits, free_bits_mode)
    loss = out.rec + weight * kl
    if out.inference_loss is not None:
        loss = loss + out.inference_loss
    return loss.mean()


def critic_weight(step: int, cfg: CriticConfig) -> float:
    """λ, ramped linearly from 0 over ``warmup_steps``."""
    if cfg.warmup_steps <= 0:
        return cfg.weight
    return cfg.weight * min(1.0, step / cfg.warmup_steps)


def critic_term(critic, out: VAEOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: CriticConfig,
                world: World | None = None, global_rows: int = 0):
    """InfoNCE of the critic on this batch (Menon et al. 2022): loss, accuracy, and the MI lower bound.

    The critic sees the same reparameterised z as the decoder (or the posterior
    mean with ``critic.z=mean``), so its gradient reaches the encoder; the decoder
    takes no part. Returns (loss, acc, log C − loss) with C candidates per row.

    On a data-parallel rank (``world``, its share of a global batch of ``global_rows``) with
    ``critic.negatives=global``, the latents, posteriors and sequences of every rank are
    gathered (with gradients) and the rank's rows are scored against the whole global batch,
    so InfoNCE and its log C ceiling are those of one process; ``local`` scores the rank's rows alone.
    """
    z = out.z if cfg.z == "sample" else out.posterior.base_dist.loc
    posterior, h, rows = out.posterior, out.h, None
    if world is not None and world.distributed and cfg.negatives == "global":
        # every rank scores its rows against the whole global batch; gradients flow back through the gather
        def gather(t):
            return gather_rows(t, world, global_rows)

        z, loc, scale = gather(z), gather(posterior.base_dist.loc), gather(posterior.base_dist.scale)
        input_ids, attention_mask = gather(input_ids), gather(attention_mask)
        h = None if h is None else gather(h)
        posterior = diagonal_gaussian(loc, scale)
        rows = shard_rows(global_rows, world)
    scores = critic(z, posterior, input_ids, attention_mask, encoder_h=h)  # (B, C)
    loss, acc = info_nce(scores, cfg.symmetric, rows)
    bound = math.log(scores.size(1)) - loss.detach()
    return loss, acc, bound
