"""Estimators behind the evaluation protocol (DESIGN.md §4).

- ``iw_log_weights`` / IW-NLL (Burda et al. 2016, eq. 8): −log p(x) ≈ −log (1/K) Σ_k p(x, z_k) / q(z_k|x),
  batched over sentences *and* samples, each sentence encoded once.
- ``mutual_information``: I(x; z) under q with the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n)
  (Hoffman & Johnson 2016; He et al. 2019 eq. 6 applies it per batch):
  I = E_x[−H(q(z|x))] − E_x E_q(z|x)[log q(z)], one sample per x, ceiling log N.
- ``active_units``: dims with Var_x(E_q[z_d|x]) ≥ 0.01 (Burda et al. 2016; He et al. 2019).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent

from .modules.posterior import diagonal_gaussian, pairwise_log_prob


@torch.no_grad()
def iw_log_weights(model, posterior, input_ids: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k|x) for K samples of ``posterior`` = q(z|x), decoded ``chunk`` samples at a time.

    The caller encodes x (with the encoder's own ids, which may differ from the decoder's
    ``input_ids``), once per sentence. Shape: input_ids (B, T) → (K, B).
    """
    prior = model.prior()
    out = []
    for start in range(0, k, chunk):
        z = posterior.sample((min(chunk, k - start),))  # (k', B, D)
        log_pxz = -model.reconstruction_nll(input_ids, z)  # (k', B)
        out.append(log_pxz + prior.log_prob(z) - posterior.log_prob(z))
    return torch.cat(out)


def iw_chunk_size(max_logits: int, batch_size: int, length: int, vocab_size: int) -> int:
    """Posterior samples decoded per call so that one call holds at most ``max_logits`` logits."""
    return max(1, max_logits // (batch_size * length * vocab_size))


def iw_nll_from_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """−log (1/K) Σ_k w_k. Shape: (K, B) → (B,)."""
    return -(torch.logsumexp(log_w, dim=0) - math.log(log_w.size(0)))


def gaussian_posterior(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    return diagonal_gaussian(loc, scale)


@torch.no_grad()
def mutual_information(
    loc: torch.Tensor, scale: torch.Tensor, chunk: int = 1024, generator=None, analytic_entropy: bool = False
) -> float:
    """I(x; z) under q over the N given posteriors (aggregate posterior = their uniform mixture).

    One sample z_i ~ q(z|x_i) per sequence; I ≈ mean_i [log q(z_i|x_i) − log q(z_i)].
    With ``analytic_entropy`` the first term is −H(q(z|x_i)) in closed form, exactly
    as He et al.'s ``calc_mi``; the default pairs both terms on the same sample,
    which has the same expectation and far less noise near collapse.
    Shape: loc, scale (N, D). Returns nats; the expectation cannot exceed log N.
    """
    n = loc.size(0)
    q = gaussian_posterior(loc, scale)
    z = loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)  # (N, D)
    log_qzx = -q.entropy() if analytic_entropy else q.log_prob(z)  # (N,)
    log_qz = torch.cat(
        [torch.logsumexp(pairwise_log_prob(q, z[i : i + chunk]), dim=1) for i in range(0, n, chunk)]
    ) - math.log(n)  # (N,)
    return float((log_qzx - log_qz).mean())


def mutual_information_batched(loc: torch.Tensor, scale: torch.Tensor, batch_size: int = 32, generator=None) -> float:
    """He et al.'s per-batch estimator (``calc_mi``): analytic entropy, aggregate posterior within
    consecutive batches, averaged weighted by batch size. Its ceiling is log(batch_size)."""
    total = 0.0
    for i in range(0, loc.size(0), batch_size):
        part_loc, part_scale = loc[i : i + batch_size], scale[i : i + batch_size]
        mi = mutual_information(part_loc, part_scale, generator=generator, analytic_entropy=True)
        total += mi * part_loc.size(0)
    return total / loc.size(0)


def active_units(loc: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Number of dims whose posterior mean varies over x: Var_x(E_q[z_d|x]) ≥ threshold.

    Shape: loc (N, D) → (count, per-dimension variances (D,)).
    """
    variances = loc.var(dim=0) if loc.size(0) > 1 else torch.zeros(loc.size(1))
    return int((variances >= threshold).sum()), variances
