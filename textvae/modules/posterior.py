"""Gaussian posterior head and the standard-normal prior, as ``torch.distributions``."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal


class GaussianPosterior(nn.Module):
    """``h → q(z|x) = Independent(Normal(μ, σ), 1)``; one linear layer gives (μ, log σ²) as in He et al."""

    def __init__(self, input_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> Independent:
        """Shape: h (B, H) → distribution with batch shape (B,) and event shape (D,)."""
        mu, logvar = self.linear(h).chunk(2, dim=-1)  # (B, D) each
        return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def standard_normal(latent_dim: int, device=None) -> Independent:
    """The prior p(z) = N(0, I) over ``latent_dim`` dimensions."""
    zeros = torch.zeros(latent_dim, device=device)
    return Independent(Normal(zeros, torch.ones_like(zeros)), 1)


def pairwise_log_prob(posterior: Independent, z: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = log q(z_i | x_j)`` for every latent ``z_i`` against every posterior ``j``.

    Shape: posterior with batch shape (N,), z (M, D) → (M, N).
    """
    base = posterior.base_dist
    return Independent(Normal(base.loc[None], base.scale[None]), 1).log_prob(z[:, None, :])
