"""Estimators behind the evaluation protocol (DESIGN.md §4).

- ``iw_log_weights`` / IW-NLL (Burda et al. 2016, eq. 8): −log p(x) ≈ −log (1/K) Σ_k p(x, z_k) / q(z_k|x),
  batched over sentences *and* samples, each sentence encoded once.
- ``mutual_information``: I(x; z) under q with the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n)
  (Hoffman & Johnson 2016; He et al. 2019 eq. 6 applies it per batch):
  I = E_x[−H(q(z|x))] − E_x E_q(z|x)[log q(z)], one sample per x, ceiling log N.
- ``mutual_information_batched``: He et al.'s per-batch figure (``mi_batch``), over their batches
  (``he_eval_batches``: groups of exactly equal length, cut at their batch size).
- ``active_units``: dims with Var_x(E_q[z_d|x]) ≥ 0.01 (Burda et al. 2016; He et al. 2019).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import Independent

from .modules.posterior import diagonal_gaussian, pairwise_log_prob


def perplexity(nats_per_token: float) -> float:
    """exp of a per-token NLL; inf where that exceeds a float (a diverged model's −ELBO), not an OverflowError."""
    try:
        return math.exp(nats_per_token)
    except OverflowError:
        return math.inf


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


def iw_mc_variance(log_w: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo variance of each sequence's IW-NLL, −log mean_k w_k, from its K weights (delta method).
    Shape: (K, B) → (B,)."""
    k = log_w.size(0)
    if k < 2:
        return torch.full(log_w.shape[1:], float("nan"))
    w = torch.exp(log_w - torch.logsumexp(log_w, dim=0)) * k  # normalised to mean 1
    return w.var(dim=0) / k


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


def he_eval_batches(lengths, batch_size: int) -> list[list[int]]:
    """He et al.'s evaluation batches (their ``MonoTextData.create_data_batch``), as indices into the split.

    The sequences are sorted by length with numpy's default ``argsort`` (as theirs, so ties fall in the
    same order), and each group of *exactly* equal length is cut into batches of ``batch_size``: every
    batch holds one length, and a group's last batch may be short (a single sentence, even).
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths)
    batches, start = [], 0
    for end in [*np.flatnonzero(np.diff(lengths[order])) + 1, len(order)]:
        batches += [order[i : min(i + batch_size, end)].tolist() for i in range(start, end, batch_size)]
        start = end
    return batches


def mutual_information_batched(loc: torch.Tensor, scale: torch.Tensor, batches: list[list[int]],
                               generator=None) -> float:
    """He et al.'s per-batch estimator (their ``text.py`` ``calc_mi`` over ``calc_mi_q``): in each batch, one
    sample per sequence, the analytic entropy, and the aggregate posterior of that batch alone; the batches'
    values averaged weighted by their sizes. A batch of B sequences caps its term at log B, so the figure
    depends on the batching (:func:`he_eval_batches` gives theirs). Shape: loc, scale (N, D); ``batches``
    index rows of them."""
    total = 0.0
    for rows in batches:
        index = torch.as_tensor(rows, dtype=torch.long)
        mi = mutual_information(loc[index], scale[index], generator=generator, analytic_entropy=True)
        total += mi * len(rows)
    return total / sum(len(rows) for rows in batches)


def active_units(loc: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Number of dims whose posterior mean varies over x: Var_x(E_q[z_d|x]) ≥ threshold.

    Shape: loc (N, D) → (count, per-dimension variances (D,)).
    """
    variances = loc.var(dim=0) if loc.size(0) > 1 else torch.zeros(loc.size(1))
    return int((variances >= threshold).sum()), variances


def paired_difference(nll_a, nll_b, mc_var_a, mc_var_b, units=None) -> dict:
    """Paired comparison of two models' per-sequence NLLs on the same sequences (DESIGN.md §4, Δnll).

    With ``units`` None the difference is per sequence: d_i = nll_a_i − nll_b_i, mean d̄, and the paired
    standard error sd(d) / √N, which removes the sequence-to-sequence spread that both models share (the
    bulk of either's own standard error). With ``units`` (e.g. words per sequence) it is the ratio
    Σ d_i / Σ u_i, with its linearised (ratio-estimator) standard error. ``mc_stderr`` is the part of the
    error that comes from the importance samples: √(Σ (mc_var_a_i + mc_var_b_i)) / Σ u_i. ``wins_a`` counts
    the sequences where A's nll is lower. ``ci95`` is the normal interval d̄ ± 1.96 · paired_stderr.
    Shape: each argument (N,).
    """
    a, b = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
    n = a.size
    d = a - b
    u = np.ones(n) if units is None else np.asarray(units, dtype=np.float64)
    mean = float(d.sum() / u.sum())
    residual = d - mean * u  # = d − d̄ per sequence
    stderr = float(np.sqrt((residual**2).sum() / (n * (n - 1))) * n / u.sum()) if n > 1 else 0.0
    mc = np.asarray(mc_var_a, dtype=np.float64) + np.asarray(mc_var_b, dtype=np.float64)
    return {"mean_diff": mean, "paired_stderr": stderr, "ci95": [mean - 1.96 * stderr, mean + 1.96 * stderr],
            "mc_stderr": float(np.sqrt(mc.sum()) / u.sum()), "num_sequences": int(n),
            "wins_a": int((d < 0).sum())}
