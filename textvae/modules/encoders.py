"""Sequence encoders: ``(input_ids (B, T), attention_mask (B, T)) → h (B, H)``."""

from __future__ import annotations

import torch
from torch import nn


class LSTMEncoder(nn.Module):
    """He et al. (2019) encoder: embedding → one-layer LSTM → last hidden state.

    The LSTM runs over the padded batch and the output at each sequence's last
    real position is gathered. A unidirectional LSTM never looks right, so that
    state equals what ``pack_padded_sequence`` would give, without the packing cost.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.output_dim = hidden_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Shape: input_ids, attention_mask (B, T) → (B, H)."""
        out, _ = self.lstm(self.embed(input_ids))  # (B, T, H)
        last = attention_mask.sum(1).clamp(min=1) - 1  # (B,)
        return out[torch.arange(out.size(0), device=out.device), last]  # (B, H)


ENCODERS = {"lstm": LSTMEncoder}
