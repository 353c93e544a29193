"""Contrastive inference critics (Menon, Blei & Vondrick, UAI 2022, "Forget-me-not!").

A critic scores every latent against every observation of the batch,
``S[i, j] = score(z_i, x_j)`` (B × B), and is trained with InfoNCE: the
cross-entropy of each row against its diagonal, so each latent must pick the
sequence it was inferred from. InfoNCE bounds the mutual information from below,
I(x; z) ≥ log C − CE for C candidates (van den Oord et al. 2018, eq. 4–5), so
adding ``λ · CE`` to the negative ELBO keeps z informative. The z it sees is the
reparameterised sample the decoder sees (or the posterior mean), so its gradient
reaches the encoder; the decoder is never involved.

- ``self``: ``S[i, j] = log q(z_i | x_j)`` from the posteriors, no parameters.
- ``neural``: its own LSTM encoder of x plus MLP heads on x and z into a shared
  space, scored by cosine similarity / temperature.
- ``hybrid``: as neural, but sharing the word embedding with the inference network
  (the encoder's ``get_input_embeddings()``: an LSTM's, a Transformer's or a pretrained model's);
  with ``critic.share_encoder`` it shares the whole inference encoder (its keys are
  MLP heads on the encoder's own h, reused from the forward pass: no second encoder).

The neural critics read x in the encoder's tokenization (``batch.encoder_input_ids``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent

from .encoders import LSTMEncoder
from .posterior import diagonal_gaussian, pairwise_log_prob


def info_nce(scores: torch.Tensor, symmetric: bool = False, rows: slice | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each row of ``scores`` against its diagonal, and the row accuracy.

    Extra columns beyond B (queued negatives) are only ever wrong answers. With
    ``symmetric``, the column loss (each x picks its z among the batch) is averaged in.
    ``rows``: only these rows (and, with ``symmetric``, these columns) enter the means, as
    on a data-parallel rank that scores its share of the global batch against all of it.
    Shape: scores (B, C) with C ≥ B → (scalar loss, scalar accuracy).
    """
    b = scores.size(0)
    rows = rows or slice(0, b)
    target = torch.arange(b, device=scores.device)[rows]
    own = scores[rows]
    loss = F.cross_entropy(own, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(scores[:, :b].T[rows], target))
    acc = (own.argmax(dim=1) == target).float().mean()
    return loss, acc


def push_queue(queue: torch.Tensor | None, new: torch.Tensor, size: int) -> torch.Tensor:
    """A FIFO of extra negatives: ``new`` (detached) in front, the oldest rows dropped past ``size``.

    Shape: queue (K, ...) or None, new (B, ...) → (min(B + K, size), ...).
    """
    return new.detach() if queue is None else torch.cat([new.detach(), queue])[:size]


class SelfCritic(nn.Module):
    """``S[i, j] = log q(z_i | x_j)``: the inference network is its own critic.

    Its InfoNCE is ``log B − [log q(z_i|x_i) − log q̂_B(z_i)]`` with q̂_B the batch's
    aggregate posterior: log B minus a minibatch estimate of I(x; z) itself. Since
    E[KL(q(z|x) ‖ p)] = I + KL(q(z) ‖ p), the objective −ELBO + λ·CE is about
    rec + (1 − λ)·I + KL(q(z) ‖ p): λ − 1 is the net reward per nat of information,
    but only up to the log B ceiling of the estimate (3.47 nats for B = 32).

    With ``queue_size`` > 0 the posteriors (μ, σ) of past batches are kept as extra
    candidates, ``S[i, B + k] = log q_k(z_i)``: q̂ becomes the aggregate of B + K
    posteriors and the ceiling log(B + K). Queued posteriors come from an older encoder
    (slightly stale) and get no gradient.
    """

    def __init__(self, *, queue_size: int = 0):
        super().__init__()
        self.queue_size = queue_size
        self.register_buffer("queue", None, persistent=False)  # (K, 2, D): queued (μ, σ)

    def forward(self, z: torch.Tensor, posterior: Independent, input_ids=None, attention_mask=None,
                encoder_h=None) -> torch.Tensor:
        """Shape: z (B, D) → (B, B + queued posteriors)."""
        scores = pairwise_log_prob(posterior, z)  # (B, B)
        if self.queue is not None:
            queued = diagonal_gaussian(self.queue[:, 0], self.queue[:, 1])
            scores = torch.cat([scores, pairwise_log_prob(queued, z)], dim=1)  # (B, B + K)
        if self.training and self.queue_size:
            base = posterior.base_dist
            self.queue = push_queue(self.queue, torch.stack([base.loc, base.scale], dim=1), self.queue_size)
        return scores


def _mlp(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim))


class NeuralCritic(nn.Module):
    """Separate x-encoder and MLP heads; ``S[i, j] = cos(g(z_i), f(x_j)) / τ``.

    Args:
        embedding: an ``nn.Embedding`` to share (the hybrid critic passes the
            inference network's); None gives the critic its own.
        shared_encoder_dim: share the inference network's whole encoder instead of
            running an x-encoder: keys are ``f(h)`` on the encoder output passed to
            ``forward`` as ``encoder_h`` (of this width).
        temperature: τ; learnable (as log τ) when ``learn_temperature``.
        queue_size: keep this many past x-keys as extra negatives (MoCo-style,
            He et al. 2020). They were computed by an older critic, so they are
            slightly stale; they raise the log C ceiling of the bound.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        latent_dim: int,
        embed_dim: int = 64,
        hidden_dim: int = 64,
        proj_dim: int = 64,
        temperature: float = 0.1,
        learn_temperature: bool = True,
        queue_size: int = 0,
        embedding: nn.Embedding | None = None,
        pad_id: int = 0,
        shared_encoder_dim: int | None = None,
    ):
        super().__init__()
        self.x_encoder = None
        if shared_encoder_dim is None:
            self.x_encoder = LSTMEncoder(vocab_size=vocab_size, hidden_dim=hidden_dim, pad_id=pad_id,
                                         embed_dim=embed_dim if embedding is None else embedding.embedding_dim)
            if embedding is not None:
                self.x_encoder.embed = embedding  # shared with the inference network
        self.f_x = _mlp(shared_encoder_dim or hidden_dim, hidden_dim, proj_dim)
        self.g_z = _mlp(latent_dim, hidden_dim, proj_dim)
        log_tau = torch.tensor(math.log(temperature))
        self.log_tau = nn.Parameter(log_tau) if learn_temperature else None
        if not learn_temperature:
            self.register_buffer("fixed_log_tau", log_tau)
        self.queue_size = queue_size
        self.register_buffer("queue", None, persistent=False)  # (K, P): queued x-keys

    @property
    def temperature(self) -> torch.Tensor:
        return (self.log_tau if self.log_tau is not None else self.fixed_log_tau).exp()

    def forward(
        self, z: torch.Tensor, posterior: Independent | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        encoder_h: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Shape: z (B, D), input_ids (B, T) (or encoder_h (B, H) when shared) → (B, B + queued keys)."""
        h = encoder_h if self.x_encoder is None else self.x_encoder(input_ids, attention_mask)  # (B, H)
        keys = F.normalize(self.f_x(h), dim=-1)  # (B, P)
        queries = F.normalize(self.g_z(z), dim=-1)  # (B, P)
        candidates = keys if self.queue is None else torch.cat([keys, self.queue])  # (C, P)
        if self.training and self.queue_size:
            self.queue = push_queue(self.queue, keys, self.queue_size)
        return queries @ candidates.T / self.temperature  # (B, C)


def _self_critic(cfg, model) -> SelfCritic:
    return SelfCritic(queue_size=cfg.queue_size)


def _neural_critic(cfg, model) -> NeuralCritic:
    """The neural critic, or with ``cfg.type == "hybrid"`` one sharing the inference network's embedding
    (or its whole encoder, ``critic.share_encoder``)."""
    embedding = model.encoder.get_input_embeddings()
    hybrid = cfg.type == "hybrid"
    return NeuralCritic(
        vocab_size=embedding.num_embeddings,  # the encoder's vocabulary: the critic reads the encoder's ids
        latent_dim=model.latent_dim,
        embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim,
        proj_dim=cfg.proj_dim,
        temperature=cfg.temperature,
        learn_temperature=cfg.learn_temperature,
        queue_size=cfg.queue_size,
        embedding=embedding if hybrid and not cfg.share_encoder else None,
        pad_id=model.encoder.pad_id,
        shared_encoder_dim=model.encoder.output_dim if hybrid and cfg.share_encoder else None,
    ).to(next(model.parameters()).device)


# critic.type → builder (cfg, model) → critic module (config.CRITIC_TYPES are its keys)
CRITICS = {"none": lambda cfg, model: None, "self": _self_critic, "neural": _neural_critic, "hybrid": _neural_critic}


def build_critic(cfg, model) -> nn.Module | None:
    """The critic named by ``cfg.type`` (a CriticConfig) for ``model``; None for ``none`` or the LM."""
    return None if model.latent_dim == 0 else CRITICS[cfg.type](cfg, model)
