"""Gaussian posterior head and the standard-normal prior, as ``torch.distributions``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal


def diagonal_gaussian(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """``Independent(Normal(loc, scale), 1)`` without argument checks: a non-finite scale from diverged
    weights must reach the loss (where training skips the step), not raise inside ``torch.distributions``."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class GaussianPosterior(nn.Module):
    """``h → q(z|x) = Independent(Normal(μ, σ), 1)``; one linear layer gives (μ, log σ²) as in He et al.
    (no bias unless ``bias``, the named departure ``model.posterior_bias``)

    With ``bn_gamma`` > 0, μ is batch-normalised as in BN-VAE (Zhu et al. 2020, "A batch
    normalized inference network keeps the KL vanishing away"):
    μ̂_d = γ · (μ_d − mean_B μ_d) / std_B μ_d + β_d with γ fixed and the shift β_d learnt,
    so over a batch E[μ̂_d] = β_d and Var[μ̂_d] = γ². Since σ² − log σ² − 1 ≥ 0, the
    expected KL is then at least ½ Σ_d E[μ̂_d²] = ½ Σ_d (γ² + β_d²) ≥ D·γ²/2 > 0. As in
    their code (``nn.BatchNorm1d`` with a frozen weight), evaluation uses the running
    statistics.
    """

    def __init__(self, *, input_dim: int, latent_dim: int, bn_gamma: float = 0.0, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(input_dim, 2 * latent_dim, bias=bias)  # He et al.: no bias
        self.bn_gamma = bn_gamma
        self.mu_bn = nn.BatchNorm1d(latent_dim) if bn_gamma > 0 else None
        if self.mu_bn is not None:
            self.mu_bn.weight.requires_grad_(False)  # γ is fixed; only the shift learns
            self.reset_bn()

    @torch.no_grad()
    def reset_bn(self) -> None:
        """γ = ``bn_gamma``, shift 0 (BN-VAE's ``reset_parameters``)."""
        self.mu_bn.weight.fill_(self.bn_gamma)
        self.mu_bn.bias.zero_()

    def forward(self, h: torch.Tensor) -> Independent:
        """Shape: h (B, H) → distribution with batch shape (B,) and event shape (D,)."""
        mu, logvar = self.linear(h).float().chunk(2, dim=-1)  # (B, D) each; fp32 under autocast too
        if self.mu_bn is not None:
            # One sequence has no batch statistics: normalise it with the running ones.
            bn = self.mu_bn
            mu = bn(mu) if mu.size(0) > 1 or not self.training else F.batch_norm(
                mu, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return diagonal_gaussian(mu, torch.exp(0.5 * logvar))


def standard_normal(latent_dim: int, device=None) -> Independent:
    """The prior p(z) = N(0, I) over ``latent_dim`` dimensions."""
    zeros = torch.zeros(latent_dim, device=device)
    return diagonal_gaussian(zeros, torch.ones_like(zeros))


def pairwise_log_prob(posterior: Independent, z: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = log q(z_i | x_j)`` for every latent ``z_i`` against every posterior ``j``.

    Shape: posterior with batch shape (N,), z (M, D) → (M, N).
    """
    base = posterior.base_dist
    return diagonal_gaussian(base.loc[None], base.scale[None]).log_prob(z[:, None, :])
