"""Pre-LayerNorm Transformer blocks shared by :class:`TransformerEncoder` and :class:`TransformerDecoder`.

One block is ``x + Attn(LN(x))`` then ``x + FFN(LN(x))`` (pre-LN, Xiong et al. 2020,
"On layer normalization in the Transformer architecture"), attention through
``F.scaled_dot_product_attention``. The attention optionally continues a key/value
cache (the decoder's generation state) whose first slots may hold the latent
``z`` (Optimus-style memory, or the prefix position), and takes a boolean mask
(``True`` = may attend) for padding (encoder) or causality (decoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import POSITIONS
from ..errors import TextVAEError
from .dropout import Dropout


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017, §3.5): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...). Shape: (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (⌈d/2⌉,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class TokenEmbedding(nn.Module):
    """Token embedding × √d plus learned or sinusoidal absolute positions.

    The √d scale (Vaswani et al. 2017) puts the tokens (entries ~N(0, 1) after scaling)
    on the scale of sinusoidal positions (entries in [-1, 1]). Learned positions are
    limited to ``max_positions``; sinusoidal ones are computed for any length.
    """

    def __init__(self, *, vocab_size: int, dim: int, positions: str, max_positions: int, pad_id: int):
        super().__init__()
        if positions not in POSITIONS:
            raise TextVAEError(f"bad value for 'model.positions': '{positions}' (choose from {', '.join(POSITIONS)})")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_positions, dim) if positions == "learned" else None
        self.max_positions = max_positions
        self.scale = math.sqrt(dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=self.embed.embedding_dim**-0.5)
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)

    def position_embeddings(self, start: int, length: int, device) -> torch.Tensor:
        """Positions ``start .. start + length - 1``. Shape: (length, d)."""
        if self.positions is None:
            return sinusoidal_table(start + length, self.embed.embedding_dim)[start:].to(device)
        if start + length > self.max_positions:
            raise TextVAEError(f"a sequence of {start + length} positions exceeds model.max_positions = "
                               f"{self.max_positions} (raise it, or use model.positions=sinusoidal)")
        return self.positions(torch.arange(start, start + length, device=device))

    def forward(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Shape: (N, T) → (N, T, d)."""
        return self.embed(input_ids) * self.scale + self.position_embeddings(start, input_ids.size(1), input_ids.device)


class Attention(nn.Module):
    """Multi-head self-attention; keys and values may be prefixed by a cache ``(k, v)`` of shape (N, h, S, d/h)."""

    def __init__(self, *, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise TextVAEError(f"model width {dim} is not divisible by model.num_heads = {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (N, T, d) → (N, h, T, d/h)."""
        n, t, d = x.shape
        return x.view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Shape: x (N, T, d), mask broadcastable to (N, h, T, S + T) → ((N, T, d), (k, v) with S + T slots)."""
        q, k, v = (self.split_heads(part) for part in self.qkv(x).chunk(3, dim=-1))  # (N, h, T, d/h) each
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)  # (N, h, T, d/h)
        out = out.transpose(1, 2).reshape(x.shape)  # (N, T, d)
        return self.out(out), (k, v)


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))`` with GELU."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False, past=None):
        """Shape: (N, T, d) → ((N, T, d), this layer's keys and values)."""
        a, kv = self.attn(self.ln_attn(x), mask, is_causal, past)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln_ffn(x))), kv


class Stack(nn.Module):
    """``num_layers`` pre-LN blocks and the final LayerNorm, initialised as GPT-2 (Radford et al. 2019).

    Weights ~N(0, 0.02), biases 0, LayerNorm (1, 0); each residual branch's output
    projection has std 0.02 / √(2·L), so the residual stream's variance does not grow with depth.
    """

    def __init__(self, *, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim or 4 * dim, dropout=dropout)
                                    for _ in range(num_layers))
        self.ln_final = nn.LayerNorm(dim)

    def reset_parameters(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                residual = name.endswith(("attn.out", "ffn.2"))
                nn.init.normal_(module.weight, std=0.02 / (math.sqrt(2 * len(self.blocks)) if residual else 1.0))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False, past=None):
        """Shape: (N, T, d) → ((N, T, d) after the final LayerNorm, [(k, v) per layer])."""
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, is_causal, None if past is None else past[i])
            cache.append(kv)
        return self.ln_final(x), cache
