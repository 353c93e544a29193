"""Autoregressive decoders: ``(input_ids (N, T), z (N, D) or None) → logits (N, T, V)``."""

from __future__ import annotations

import torch
from torch import nn


class LSTMDecoder(nn.Module):
    """He et al. (2019) LSTM decoder, so numbers compare with the literature.

    ``z`` is concatenated to every input embedding; the initial cell state is
    ``c0 = W z`` and ``h0 = tanh(c0)``; dropout on the input embeddings and on
    the LSTM outputs. With ``latent_dim == 0`` it is a plain LSTM language model
    (zero initial state, nothing concatenated).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        latent_dim: int,
        dropout_in: float = 0.0,
        dropout_out: float = 0.0,
        pad_id: int = 0,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.dropout_in = nn.Dropout(dropout_in)
        self.dropout_out = nn.Dropout(dropout_out)
        self.lstm = nn.LSTM(embed_dim + latent_dim, hidden_dim, batch_first=True)
        self.trans_linear = nn.Linear(latent_dim, hidden_dim, bias=False) if latent_dim else None
        self.pred_linear = nn.Linear(hidden_dim, vocab_size)

    def forward(
        self, input_ids: torch.Tensor, z: torch.Tensor | None = None, state=None, return_state: bool = False
    ):
        """Shape: input_ids (N, T), z (N, D) → logits (N, T, V).

        ``state`` continues from an earlier call (incremental generation); when it
        is None the state is initialised from ``z``.
        """
        emb = self.dropout_in(self.embed(input_ids))  # (N, T, E)
        if self.latent_dim:
            emb = torch.cat([emb, z[:, None, :].expand(-1, emb.size(1), -1)], dim=-1)  # (N, T, E+D)
            if state is None:
                c0 = self.trans_linear(z)[None]  # (1, N, H)
                state = (torch.tanh(c0), c0)
        out, state = self.lstm(emb, state)  # (N, T, H)
        logits = self.pred_linear(self.dropout_out(out))  # (N, T, V)
        return (logits, state) if return_state else logits


DECODERS = {"lstm": LSTMDecoder}
