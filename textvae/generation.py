"""Decoding from a latent: greedy, ancestral sampling, top-k, top-p and beam search; latent paths.

``generate`` decodes a batch of latents one token at a time through the decoder's
incremental interface (``decoder(input_ids, z, state, return_state=True)``; DESIGN.md §3),
stopping each sentence at ``</s>`` or after ``max_length`` tokens. Temperature, top-k and
top-p are the ``transformers`` logits warpers. ``interpolation_path`` gives linear or
spherical paths between latents. The tools built on them (sample, reconstruct,
interpolate, analogy) are in :mod:`textvae.latent`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import TextVAEError

STRATEGIES = ("greedy", "sample", "top-k", "top-p", "beam")
METHODS = ("linear", "slerp")


@dataclass
class DecodeConfig:
    """How to pick each next token (the CLI's ``--strategy ... --max-length``)."""

    strategy: str = "greedy"  # greedy | sample (ancestral) | top-k | top-p (nucleus) | beam
    temperature: float = 1.0  # sample, top-k, top-p: logits are divided by this first
    top_k: int = 50  # top-k: sample among the k most probable tokens
    top_p: float = 0.9  # top-p: sample among the fewest tokens whose probabilities sum to ≥ p
    beam: int = 4  # beam: hypotheses kept per sentence
    max_length: int = 50  # tokens generated per sentence at most, </s> included
    length_penalty: float = 1.0  # beam: the best hypothesis maximises log p / length**length_penalty
    no_repeat_ngram: int = 0  # every strategy: an n-gram of this size never occurs twice in a sentence (0 = off)

    def validate(self) -> DecodeConfig:
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, not '{self.strategy}'"),
            (self.temperature > 0, f"--temperature must be > 0, not {self.temperature}"),
            (self.top_k >= 1, f"--top-k must be >= 1, not {self.top_k}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], not {self.top_p}"),
            (self.beam >= 1, f"--beam must be >= 1, not {self.beam}"),
            (self.max_length >= 1, f"--max-length must be >= 1, not {self.max_length}"),
            (self.no_repeat_ngram >= 0, f"--no-repeat-ngram must be >= 0, not {self.no_repeat_ngram}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TextVAEError(message)
        return self


def _warpers(cfg: DecodeConfig):
    """The ``transformers`` warpers for a sampling strategy (imported here: transformers is slow to import)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if cfg.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(cfg.temperature)))
    if cfg.strategy == "top-k":
        warpers.append(TopKLogitsWarper(int(cfg.top_k)))
    elif cfg.strategy == "top-p":
        warpers.append(TopPLogitsWarper(float(cfg.top_p)))
    return warpers


def _processors(cfg: DecodeConfig):
    """``transformers``' processors that apply to every strategy (before any warper); None when there are none.

    ``no_repeat_ngram`` is ``NoRepeatNGramLogitsProcessor``: a token that would complete an
    n-gram the sentence already holds gets −inf (the usual cure for greedy loops such as
    "the <unk> of the <unk> of ...").
    """
    if not cfg.no_repeat_ngram:
        return None
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

    return LogitsProcessorList([NoRepeatNGramLogitsProcessor(int(cfg.no_repeat_ngram))])


@contextmanager
def eval_mode(model):
    """``model.eval()`` for the block (no dropout, BN running statistics), then its mode as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _cut(tokens: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Generated ids up to (without) each row's first ``</s>``. Shape: (N, L) → N lists."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


def num_latents(model, z: torch.Tensor | None, num_sequences: int | None) -> int:
    if z is None and model.latent_dim > 0:
        raise TextVAEError("generate: this model has a latent; pass z (N, D)")
    if z is None and num_sequences is None:
        raise TextVAEError("generate: a language model needs num_sequences")
    return z.size(0) if z is not None else num_sequences


@torch.no_grad()
def generate(
    model,
    z: torch.Tensor | None,
    cfg: DecodeConfig | None = None,
    *,
    bos_id: int,
    eos_id: int,
    num_sequences: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode one sentence per latent; ``z`` is None for a language model (then give ``num_sequences``).

    Each sentence starts from ``<s>`` and stops at ``</s>`` or after ``cfg.max_length``
    tokens; a finished sentence is fed ``<pad>`` while the rest of the batch goes on, so a
    batch decodes exactly as its sentences would one at a time (for the deterministic
    strategies). ``generator`` drives the sampling strategies.

    Shape: z (N, D) → N lists of token ids, without ``<s>`` and ``</s>``.
    """
    cfg = (cfg or DecodeConfig()).validate()
    n = num_latents(model, z, num_sequences)
    with eval_mode(model):
        if cfg.strategy == "beam":
            tokens = _beam_search(model, z, n, cfg, bos_id, eos_id)
        else:
            tokens = _token_by_token(model, z, n, cfg, bos_id, eos_id, generator)
    return _cut(tokens, eos_id)


def _token_by_token(model, z, n: int, cfg: DecodeConfig, bos_id: int, eos_id: int, generator) -> torch.Tensor:
    """Greedy (argmax) or sampling from the warped distribution. Returns (N, L) generated ids."""
    device = next(model.parameters()).device
    pad_id = model.config.pad_id
    warpers = None if cfg.strategy == "greedy" else _warpers(cfg)
    processors = _processors(cfg)
    tokens = torch.full((n, 1), bos_id, dtype=torch.long, device=device)  # (N, 1 + generated)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    state = None
    for _ in range(cfg.max_length):
        logits, state = model.decoder(tokens[:, -1:], z, state=state, return_state=True)  # (N, 1, V)
        scores = logits[:, -1].float()  # (N, V)
        if processors is not None:
            scores = processors(tokens, scores)
        if warpers is None:
            nxt = scores.argmax(-1)
        else:
            probs = F.softmax(warpers(tokens, scores), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = nxt.masked_fill(finished, pad_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == eos_id
        if finished.all():
            break
    return tokens[:, 1:]


def _beam_search(model, z, n: int, cfg: DecodeConfig, bos_id: int, eos_id: int) -> torch.Tensor:
    """Batched beam search. Returns (N, L) ids of each sentence's best hypothesis.

    Hypotheses are sums of token log-probabilities. A finished hypothesis keeps its slot
    and its score (it can only be extended by ``<pad>``, at no cost), so the search ends
    when every slot holds a finished hypothesis or after ``max_length`` tokens; the best is
    then chosen by score / length**length_penalty. With one beam this is greedy decoding.
    """
    device = next(model.parameters()).device
    pad_id, vocab = model.config.pad_id, model.config.vocab_size
    k = min(cfg.beam, vocab)
    zk = None if z is None else z.repeat_interleave(k, dim=0)  # (N·K, D), hypotheses of a sentence adjacent
    tokens = torch.full((n * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((n, k), -torch.inf, device=device)
    scores[:, 0] = 0.0  # all K start identical: expand the first only
    finished = torch.zeros(n * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * k, device=device)
    first_row = torch.arange(n, device=device)[:, None] * k  # (N, 1)
    processors = _processors(cfg)
    state = None
    for _ in range(cfg.max_length):
        logits, state = model.decoder(tokens[:, -1:], zk, state=state, return_state=True)  # (N·K, 1, V)
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)  # (N·K, V)
        if processors is not None:  # each hypothesis against its own prefix
            logp = processors(tokens, logp)
        logp[finished] = -torch.inf
        logp[finished, pad_id] = 0.0
        candidates = (scores.view(-1, 1) + logp).view(n, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)  # (N, K)
        origin = (first_row + torch.div(flat, vocab, rounding_mode="floor")).view(-1)  # (N·K,) parent rows
        nxt = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[origin], nxt[:, None]], dim=1)
        state = model.decoder.reorder_state(state, origin)
        lengths = lengths[origin] + (~finished[origin]).float()
        finished = finished[origin] | (nxt == eos_id)
        if finished.all():
            break
    normalised = scores / lengths.view(n, k).clamp(min=1) ** cfg.length_penalty
    best = first_row[:, 0] + normalised.argmax(-1)  # (N,)
    return tokens[best, 1:]


def check_path(steps: int, method: str) -> None:
    if method not in METHODS:
        raise TextVAEError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    if steps < 2:
        raise TextVAEError(f"--steps must be >= 2 (the path includes both ends), not {steps}")


def interpolation_path(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, method: str = "linear") -> torch.Tensor:
    """``steps`` points from ``z_a`` to ``z_b``, both ends included (exactly).

    ``linear``: (1 − t) a + t b. ``slerp``: the direction follows the great circle
    (Shoemake 1985; White 2016 for generative models) while the norm goes linearly from
    ‖a‖ to ‖b‖, so every point's norm lies between the endpoints' (plain slerp of
    unnormalised vectors leaves that range when the angle is obtuse). Nearly parallel or
    opposite directions, or a zero endpoint, fall back to linear.

    Shape: z_a, z_b (..., D) → (..., steps, D).
    """
    check_path(steps, method)
    t = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype)[:, None]  # (S, 1)
    a, b = z_a[..., None, :], z_b[..., None, :]  # (..., 1, D)
    path = (1 - t) * a + t * b  # (..., S, D)
    if method == "slerp":
        norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)  # (..., 1, 1)
        unit_a, unit_b = a / norm_a.clamp_min(1e-12), b / norm_b.clamp_min(1e-12)
        omega = torch.arccos((unit_a * unit_b).sum(-1, keepdim=True).clamp(-1, 1))  # (..., 1, 1)
        sin = torch.sin(omega)
        direction = (torch.sin((1 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / sin.clamp_min(1e-12)
        spherical = direction * ((1 - t) * norm_a + t * norm_b)
        usable = (sin > 1e-4) & (norm_a > 1e-12) & (norm_b > 1e-12)
        path = torch.where(usable, spherical, path)
    path[..., 0, :] = z_a
    path[..., -1, :] = z_b
    return path
