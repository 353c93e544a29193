"""Sequence encoders: ``(input_ids (B, T), attention_mask (B, T)) → h (B, H)``.

Every encoder has ``output_dim`` (H), ``pad_id``, ``get_input_embeddings()`` (the word
embedding a hybrid critic shares) and ``from_args(ModelConfig)``. One that defines
``reset_parameters`` initialises itself; the others get He et al.'s uniform
initialisation from :class:`textvae.model.TextVAE`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import POOLINGS
from ..errors import TextVAEError
from .dropout import Dropout
from .hf import config_dict, load_pretrained
from .transformer import Stack, TokenEmbedding


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``mean`` over real positions, or the ``first`` position (``<s>`` / ``[CLS]``). Shape: (B, T, H) → (B, H)."""
    if how == "first":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LSTMEncoder(nn.Module):
    """He et al. (2019) encoder: embedding → one-layer LSTM → last hidden state.

    The LSTM runs over the padded batch and the output at each sequence's last
    real position is gathered. A unidirectional LSTM never looks right, so that
    state equals what ``pack_padded_sequence`` would give, without the packing cost.
    """

    def __init__(self, *, vocab_size: int, embed_dim: int, hidden_dim: int, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.output_dim = hidden_dim
        self.pad_id = pad_id

    @classmethod
    def from_args(cls, args) -> LSTMEncoder:
        return cls(vocab_size=args.vocab_size, embed_dim=args.embed_dim, hidden_dim=args.enc_hidden_dim,
                   pad_id=args.pad_id)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Shape: input_ids, attention_mask (B, T) → (B, H)."""
        out, _ = self.lstm(self.embed(input_ids))  # (B, T, H)
        last = attention_mask.sum(1).clamp(min=1) - 1  # (B,)
        return out[torch.arange(out.size(0), device=out.device), last]  # (B, H)


class TransformerEncoder(nn.Module):
    """Bidirectional pre-LN Transformer; padding is masked out of attention and of the pooling.

    ``pooling``: ``mean`` over the real positions, or the ``first`` position (``<s>``),
    which attends to the whole sequence as BERT's ``[CLS]`` does.
    """

    def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int, ffn_dim: int = 0,
                 dropout: float = 0.1, positions: str = "learned", max_positions: int = 512,
                 pooling: str = "mean", pad_id: int = 0):
        super().__init__()
        if pooling not in ("mean", "first"):
            raise TextVAEError(f"bad value for 'model.pooling': '{pooling}' (a transformer encoder pools "
                               "by mean or first; pooler needs model.encoder=pretrained)")
        self.tokens = TokenEmbedding(vocab_size=vocab_size, dim=dim, positions=positions, max_positions=max_positions,
                                     pad_id=pad_id)
        self.drop = Dropout(dropout)
        self.stack = Stack(dim=dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
        self.pooling, self.output_dim, self.pad_id = pooling, dim, pad_id
        self.reset_parameters()

    @classmethod
    def from_args(cls, args) -> TransformerEncoder:
        return cls(vocab_size=args.vocab_size, dim=args.enc_hidden_dim, num_layers=args.enc_layers,
                   num_heads=args.num_heads, ffn_dim=args.ffn_dim, dropout=args.dropout, positions=args.positions,
                   max_positions=args.max_positions, pooling=args.pooling, pad_id=args.pad_id)

    def reset_parameters(self) -> None:
        self.tokens.reset_parameters()
        self.stack.reset_parameters()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tokens.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Shape: input_ids, attention_mask (B, T) → (B, H)."""
        keep = attention_mask.bool()
        hidden, _ = self.stack(self.drop(self.tokens(input_ids)), keep[:, None, None, :])  # (B, T, H)
        return pool(hidden, keep, self.pooling)


class PretrainedEncoder(nn.Module):
    """Any ``transformers`` ``AutoModel`` encoder (BERT, RoBERTa, ...) by name or local path.

    ``pooling``: ``pooler`` is the model's pooled output (BERT: tanh(W h_[CLS])), which
    Optimus (Li et al. 2020) feeds to the posterior head; ``first`` the [CLS] hidden
    state; ``mean`` the mean over real tokens. The pretrained weights are kept by
    :meth:`reset_parameters`. It reads its own tokenizer's ids (``batch.encoder_input_ids``).
    """

    def __init__(self, *, name: str | None, pooling: str = "pooler", saved_config: dict | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise TextVAEError(f"bad value for 'model.pooling': '{pooling}' (choose from {', '.join(POOLINGS)})")
        self.hf = load_pretrained("encoder", name, "model.encoder_name", saved_config)
        if pooling == "pooler" and getattr(self.hf, "pooler", None) is None:
            raise TextVAEError(f"pretrained encoder '{name}' has no pooler: use model.pooling=first or mean")
        self.pooling = pooling
        self.output_dim = self.hf.config.hidden_size
        self.pad_id = self.hf.config.pad_token_id or 0

    @classmethod
    def from_args(cls, args) -> PretrainedEncoder:
        return cls(name=args.encoder_name, pooling=args.pooling, saved_config=args.encoder_hf_config)

    @property
    def hf_config_dict(self) -> dict:
        return config_dict(self.hf.config)

    def reset_parameters(self) -> None:
        """Nothing: the pretrained weights are the point."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Shape: input_ids, attention_mask (B, T) → (B, H)."""
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output  # (B, H)
        return pool(out.last_hidden_state, attention_mask, self.pooling)


ENCODERS = {"lstm": LSTMEncoder, "transformer": TransformerEncoder, "pretrained": PretrainedEncoder}
