"""Autoregressive decoders: ``(input_ids (N, T), z (N, D) or None) → logits (N, T, V)``.

Every decoder's ``forward(input_ids, z, state=None, return_state=False)`` returns the
logits, or ``(logits, state)``; ``state`` is opaque (the LSTM's ``(h, c)``, the
Transformers' key/value caches) and continues an earlier call, so feeding tokens one
at a time gives the logits of one full pass. ``reorder_state(state, index)`` selects
(and repeats) batch rows of a state for beam search (:mod:`textvae.generation` relies on
both; only the decoder knows its state's layout). ``from_args(ModelConfig)`` builds a decoder; one that
defines ``reset_parameters`` initialises itself, the others get He et al.'s uniform
initialisation from :class:`textvae.model.TextVAE`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LATENT_INJECTIONS
from ..errors import TextVAEError
from .dropout import Dropout
from .hf import config_dict, load_pretrained
from .transformer import Stack, TokenEmbedding


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
        *,
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
        output_bias: bool = False,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.word_dropout_p, self.unk_id, self.keep_ids = word_dropout_p, unk_id, keep_ids
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.dropout_in = Dropout(dropout_in)
        self.dropout_out = Dropout(dropout_out)
        self.lstm = nn.LSTM(embed_dim + latent_dim, hidden_dim, batch_first=True)
        self.trans_linear = nn.Linear(latent_dim, hidden_dim, bias=False) if latent_dim else None
        self.pred_linear = nn.Linear(hidden_dim, vocab_size, bias=output_bias)  # He et al.: no bias

    @classmethod
    def from_args(cls, args) -> LSTMDecoder:
        return cls(vocab_size=args.vocab_size, embed_dim=args.embed_dim, hidden_dim=args.dec_hidden_dim,
                   latent_dim=args.latent_dim, dropout_in=args.dec_dropout_in, dropout_out=args.dec_dropout_out,
                   pad_id=args.pad_id, word_dropout_p=args.word_dropout, unk_id=args.unk_id,
                   keep_ids=(args.pad_id, args.bos_id, args.eos_id), output_bias=args.output_bias)

    def forward(
        self, input_ids: torch.Tensor, z: torch.Tensor | None = None, state=None, return_state: bool = False
    ):
        """Shape: input_ids (N, T), z (N, D) → logits (N, T, V).

        ``state`` continues from an earlier call (incremental generation); when it
        is None the state is initialised from ``z``.
        """
        hidden, state = self._hidden(input_ids, z, state)
        logits = self.pred_linear(hidden)  # (N, T, V)
        return (logits, state) if return_state else logits

    def features(self, input_ids: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The output layer's input for teacher forcing (dropout applied). Shape: (N, T) → (N, T, H)."""
        return self._hidden(input_ids, z, None)[0]

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (V, H), bias (V,) or None) of the output layer: logits = features · weightᵀ + bias."""
        return self.pred_linear.weight, self.pred_linear.bias

    def _hidden(self, input_ids: torch.Tensor, z: torch.Tensor | None, state):
        if self.training:
            input_ids = word_dropout(input_ids, self.word_dropout_p, self.unk_id, self.keep_ids)
        emb = self.dropout_in(self.embed(input_ids))  # (N, T, E)
        if self.latent_dim:
            emb = torch.cat([emb, z[:, None, :].expand(-1, emb.size(1), -1)], dim=-1)  # (N, T, E+D)
            if state is None:
                c0 = self.trans_linear(z)[None]  # (1, N, H)
                state = (torch.tanh(c0), c0)
        out, state = self.lstm(emb, state)  # (N, T, H)
        return self.dropout_out(out), state

    def reorder_state(self, state, index: torch.Tensor):
        """Batch rows ``index`` of a state from :meth:`forward` (beam search). Shape: (h, c) each (1, N, H)."""
        return select_rows(state, index, dim=1)




@dataclass
class KVCache:
    """:class:`TransformerDecoder`'s generation state: keys and values of every layer, and the next position.

    Shape: layers[l] = (k, v), each (N, heads, S, d/heads), S = cached slots (memory or prefix included).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int  # position index of the next token


class TransformerDecoder(nn.Module):
    """Causal pre-LN Transformer language model with tied input/output embeddings, conditioned on z.

    ``injection`` says how z enters (DESIGN.md §3):

    - ``prefix``: ``W z`` is one extra leading position (position 0; tokens take 1..T)
      that every token attends to; it produces no logit.
    - ``embedding``: ``W z`` is added to every input embedding.
    - ``memory``: ``W_l z`` is one extra key *and* value in layer l's attention, as
      Optimus (Li et al. 2020, §3.2, "memory") does for GPT-2: one linear map gives a
      vector per layer, used directly as the key and the value of an always-visible slot.

    With ``latent_dim == 0`` it is a plain Transformer language model. Dropout:
    ``dropout_in`` on the input embeddings and ``dropout_out`` before the output layer
    (the LSTM's places), ``dropout`` on attention weights and residual branches.
    """

    def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int, latent_dim: int,
                 injection: str = "memory", ffn_dim: int = 0, dropout: float = 0.1, dropout_in: float = 0.0,
                 dropout_out: float = 0.0, positions: str = "learned", max_positions: int = 512, pad_id: int = 0,
                 word_dropout_p: float = 0.0, unk_id: int = 3, keep_ids: tuple[int, ...] = (0, 1, 2),
                 output_bias: bool = True):
        super().__init__()
        if injection not in LATENT_INJECTIONS:
            raise TextVAEError(f"bad value for 'model.latent_injection': '{injection}' "
                               f"(choose from {', '.join(LATENT_INJECTIONS)})")
        self.latent_dim, self.injection, self.num_layers = latent_dim, injection, num_layers
        self.word_dropout_p, self.unk_id, self.keep_ids = word_dropout_p, unk_id, keep_ids
        self.prefix = 1 if latent_dim and injection == "prefix" else 0  # leading positions that are not tokens
        self.tokens = TokenEmbedding(vocab_size=vocab_size, dim=dim, positions=positions,
                                     max_positions=max_positions + self.prefix, pad_id=pad_id)
        self.dropout_in, self.dropout_out = Dropout(dropout_in), Dropout(dropout_out)
        self.stack = Stack(dim=dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
        out_dim = dim * (num_layers if injection == "memory" else 1)
        self.latent = nn.Linear(latent_dim, out_dim, bias=False) if latent_dim else None  # Optimus: no bias
        # the output weight is the input embedding; a bias vector only with output_bias
        self.out_bias = nn.Parameter(torch.zeros(vocab_size)) if output_bias else None
        self.reset_parameters()

    @classmethod
    def from_args(cls, args) -> TransformerDecoder:
        return cls(vocab_size=args.vocab_size, dim=args.dec_hidden_dim, num_layers=args.dec_layers,
                   num_heads=args.num_heads, latent_dim=args.latent_dim, injection=args.latent_injection,
                   ffn_dim=args.ffn_dim, dropout=args.dropout, dropout_in=args.dec_dropout_in,
                   dropout_out=args.dec_dropout_out, positions=args.positions, max_positions=args.max_positions,
                   pad_id=args.pad_id, word_dropout_p=args.word_dropout, unk_id=args.unk_id,
                   keep_ids=(args.pad_id, args.bos_id, args.eos_id), output_bias=args.output_bias)

    def reset_parameters(self) -> None:
        self.tokens.reset_parameters()
        self.stack.reset_parameters()
        if self.latent is not None:
            nn.init.normal_(self.latent.weight, std=0.02)
        if self.out_bias is not None:
            nn.init.zeros_(self.out_bias)

    @staticmethod
    def reorder_state(state: KVCache, index: torch.Tensor) -> KVCache:
        return KVCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in state.layers], state.length)

    def _memory(self, z: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Optimus's per-layer memory slot, the same vector as key and value. Shape: z (N, D) → L × (N, h, 1, d/h)."""
        heads = self.stack.blocks[0].attn.num_heads
        mem = self.latent(z).view(z.size(0), self.num_layers, heads, 1, -1)  # (N, L, h, 1, d/h)
        return [(m, m) for m in mem.unbind(1)]

    def forward(self, input_ids: torch.Tensor, z: torch.Tensor | None = None, state: KVCache | None = None,
                return_state: bool = False):
        """Shape: input_ids (N, T), z (N, D) → logits (N, T, V).

        ``state`` (a :class:`KVCache`) continues an earlier call; without it, z sets up the
        prefix or memory slots. ``embedding`` injection needs z at every call.
        """
        hidden, state = self._hidden(input_ids, z, state)
        logits = F.linear(hidden, self.tokens.embed.weight, self.out_bias)  # (N, T, V)
        return (logits, state) if return_state else logits

    def features(self, input_ids: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The output layer's input for teacher forcing (dropout applied). Shape: (N, T) → (N, T, d)."""
        return self._hidden(input_ids, z, None)[0]

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (V, d), bias (V,)): the tied input embedding and the output bias."""
        return self.tokens.embed.weight, self.out_bias

    def _hidden(self, input_ids: torch.Tensor, z: torch.Tensor | None, state: KVCache | None):
        if self.training:
            input_ids = word_dropout(input_ids, self.word_dropout_p, self.unk_id, self.keep_ids)
        start = self.prefix if state is None else state.length
        x = self.tokens(input_ids, start)  # (N, T, d)
        past = None if state is None else state.layers
        if self.latent_dim and self.injection == "embedding":
            x = x + self.latent(z)[:, None, :]
        elif self.latent_dim and state is None and self.injection == "prefix":
            lead = self.latent(z)[:, None, :] + self.tokens.position_embeddings(0, 1, x.device)  # (N, 1, d)
            x = torch.cat([lead, x], dim=1)  # (N, 1 + T, d)
        elif self.latent_dim and state is None:
            past = self._memory(z)
        x = self.dropout_in(x)
        cached = 0 if past is None else past[0][0].size(2)
        t = x.size(1)
        # Query i (cache slot cached + i) sees slots 0 .. cached + i: the memory, the past and itself.
        mask = None if not cached else (
            torch.arange(cached + t, device=x.device)[None, :] <= cached + torch.arange(t, device=x.device)[:, None])
        hidden, layers = self.stack(x, mask, is_causal=not cached, past=past)  # (N, T', d)
        if state is None and self.prefix:
            hidden = hidden[:, 1:]  # the prefix position predicts nothing
        return self.dropout_out(hidden), KVCache(layers, start + input_ids.size(1))


class PretrainedDecoder(nn.Module):
    """A GPT-2-family ``AutoModelForCausalLM`` conditioned on z as in Optimus (Li et al. 2020, §3.2).

    z enters twice, as Optimus's ``latent_as_gpt_memory`` and ``latent_as_gpt_emb``:
    one linear map (no bias) gives a vector per layer that is prepended to that layer's
    keys and values (a past key/value slot every token attends to, so the tokens take
    positions 1..T as in Optimus), and another is added to every input embedding. The
    state is the model's ``DynamicCache`` (memory slot included), updated in place.
    If the tokenizer added tokens (GPT-2 has no padding token), the embeddings are resized.
    """

    def __init__(self, *, name: str | None, vocab_size: int, latent_dim: int, saved_config: dict | None = None,
                 word_dropout_p: float = 0.0, unk_id: int = 3, keep_ids: tuple[int, ...] = (0, 1, 2)):
        super().__init__()
        self.hf = load_pretrained("causal-lm", name, "model.decoder_name", saved_config)
        if vocab_size > self.hf.get_input_embeddings().num_embeddings:
            self.hf.resize_token_embeddings(vocab_size)
        cfg = self.hf.config
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.latent_dim = latent_dim
        self.word_dropout_p, self.unk_id, self.keep_ids = word_dropout_p, unk_id, keep_ids
        if latent_dim:
            self.latent_memory = nn.Linear(latent_dim, self.num_layers * self.kv_heads * self.head_dim, bias=False)
            self.latent_embedding = nn.Linear(latent_dim, cfg.hidden_size, bias=False)
        self.reset_parameters()

    @classmethod
    def from_args(cls, args) -> PretrainedDecoder:
        return cls(name=args.decoder_name, vocab_size=args.vocab_size, latent_dim=args.latent_dim,
                   saved_config=args.decoder_hf_config, word_dropout_p=args.word_dropout, unk_id=args.unk_id,
                   keep_ids=(args.pad_id, args.bos_id, args.eos_id))

    @property
    def hf_config_dict(self) -> dict:
        return config_dict(self.hf.config)

    def reset_parameters(self) -> None:
        """Re-initialises the latent maps (as the model's own init, N(0, 0.02)); the pretrained weights stay."""
        if self.latent_dim:
            for linear in (self.latent_memory, self.latent_embedding):
                nn.init.normal_(linear.weight, std=0.02)

    @staticmethod
    def reorder_state(state, index: torch.Tensor):
        state.reorder_cache(index)
        return state

    def forward(self, input_ids: torch.Tensor, z: torch.Tensor | None = None, state=None, return_state: bool = False):
        """Shape: input_ids (N, T), z (N, D) → logits (N, T, V). ``z`` is needed at every call (embedding add)."""
        from transformers import DynamicCache

        if self.training:
            input_ids = word_dropout(input_ids, self.word_dropout_p, self.unk_id, self.keep_ids)
        embeds = self.hf.get_input_embeddings()(input_ids)  # (N, T, d)
        if self.latent_dim:
            embeds = embeds + self.latent_embedding(z)[:, None, :]
            if state is None:
                mem = self.latent_memory(z).view(z.size(0), self.num_layers, self.kv_heads, 1, self.head_dim)
                state = DynamicCache([(m, m) for m in mem.unbind(1)])  # one slot per layer: (N, h, 1, d/h)
        out = self.hf(inputs_embeds=embeds, past_key_values=state, use_cache=return_state or state is not None)
        return (out.logits, out.past_key_values) if return_state else out.logits


DECODERS = {"lstm": LSTMDecoder, "transformer": TransformerDecoder, "pretrained": PretrainedDecoder}
