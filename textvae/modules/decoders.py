"""Autoregressive decoders: ``(input_ids (N, T), z (N, D) or None) → logits (N, T, V)``.

Every decoder offers the same incremental interface, which :mod:`textvae.generation`
relies on: ``decoder(input_ids, z, state=None, return_state=True) → (logits, state)``,
where feeding one token at a time with the returned ``state`` continues the sequence;
and ``decoder.reorder_state(state, index)``, which selects (and repeats) batch rows of
a state for beam search. The state is opaque outside its decoder: only the decoder knows
its layout, so only the decoder reorders it (:func:`select_rows` does the work for
tuples and lists of tensors).
"""

from __future__ import annotations

import torch
from torch import nn


def word_dropout(input_ids: torch.Tensor, p: float, unk_id: int, keep_ids: tuple[int, ...]) -> torch.Tensor:
    """Bowman et al. (2016)'s word dropout: each input word becomes ``unk_id`` with probability p.

    Tokens in ``keep_ids`` (padding, ``<s>``, ``</s>``) are never replaced, so the decoder
    still knows where a sequence starts and ends. Shape: (N, T) → (N, T).
    """
    if p <= 0:
        return input_ids
    drop = torch.rand(input_ids.shape, device=input_ids.device) < p  # (N, T)
    drop &= ~torch.isin(input_ids, torch.tensor(keep_ids, device=input_ids.device))
    return input_ids.masked_fill(drop, unk_id)


def select_rows(state, index: torch.Tensor, dim: int = 1):
    """``state`` (a tensor, or tuples / lists of them, nested) with its batch rows picked by ``index``.

    Shape: each tensor with N rows in ``dim`` → N' = len(index) rows.
    """
    if isinstance(state, torch.Tensor):
        return state.index_select(dim, index)
    return type(state)(select_rows(s, index, dim) for s in state)


class LSTMDecoder(nn.Module):
    """He et al. (2019) LSTM decoder, so numbers compare with the literature.

    ``z`` is concatenated to every input embedding; the initial cell state is
    ``c0 = W z`` and ``h0 = tanh(c0)``; dropout on the input embeddings and on
    the LSTM outputs. With ``latent_dim == 0`` it is a plain LSTM language model
    (zero initial state, nothing concatenated). In training mode, ``word_dropout_p``
    replaces input words by ``<unk>`` (:func:`word_dropout`), weakening the decoder so
    that it has to use z (Bowman et al. 2016).
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
        word_dropout_p: float = 0.0,
        unk_id: int = 3,
        keep_ids: tuple[int, ...] = (0, 1, 2),
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.word_dropout_p, self.unk_id, self.keep_ids = word_dropout_p, unk_id, keep_ids
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
        if self.training:
            input_ids = word_dropout(input_ids, self.word_dropout_p, self.unk_id, self.keep_ids)
        emb = self.dropout_in(self.embed(input_ids))  # (N, T, E)
        if self.latent_dim:
            emb = torch.cat([emb, z[:, None, :].expand(-1, emb.size(1), -1)], dim=-1)  # (N, T, E+D)
            if state is None:
                c0 = self.trans_linear(z)[None]  # (1, N, H)
                state = (torch.tanh(c0), c0)
        out, state = self.lstm(emb, state)  # (N, T, H)
        logits = self.pred_linear(self.dropout_out(out))  # (N, T, V)
        return (logits, state) if return_state else logits

    def reorder_state(self, state, index: torch.Tensor):
        """Batch rows ``index`` of a state from :meth:`forward` (beam search). Shape: (h, c) each (1, N, H)."""
        return select_rows(state, index, dim=1)


DECODERS = {"lstm": LSTMDecoder}
