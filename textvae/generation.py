"""Decoding from a latent: greedy, ancestral sampling, top-k, top-p and beam search; and the latent-space tools.

``generate`` decodes a batch of latents one token at a time through the decoder's
incremental interface (``decoder(input_ids, z, state, return_state=True)``; DESIGN.md §3),
stopping each sentence at ``</s>`` or after ``max_length`` tokens. Temperature, top-k and
top-p are the ``transformers`` logits warpers. On top of it, for a run directory or a
loaded model + tokenizer: ``sample`` (z from the prior), ``reconstruct`` (z from the
posterior), ``interpolate`` (linear or spherical paths between two posterior means) and
``analogy`` (z(C) + z(B) − z(A)), each scored with :mod:`textvae.scoring`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TextVAEError
from .data import TextDataset
from .scoring import corpus_bleu, distinct_n, exact_match, path_metrics, self_bleu

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

    def validate(self) -> DecodeConfig:
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, not '{self.strategy}'"),
            (self.temperature > 0, f"--temperature must be > 0, not {self.temperature}"),
            (self.top_k >= 1, f"--top-k must be >= 1, not {self.top_k}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], not {self.top_p}"),
            (self.beam >= 1, f"--beam must be >= 1, not {self.beam}"),
            (self.max_length >= 1, f"--max-length must be >= 1, not {self.max_length}"),
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


def _batch_size(model, z: torch.Tensor | None, num_sequences: int | None) -> int:
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
    n = _batch_size(model, z, num_sequences)
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
    tokens = torch.full((n, 1), bos_id, dtype=torch.long, device=device)  # (N, 1 + generated)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    state = None
    for _ in range(cfg.max_length):
        logits, state = model.decoder(tokens[:, -1:], z, state=state, return_state=True)  # (N, 1, V)
        scores = logits[:, -1].float()  # (N, V)
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
    state = None
    for _ in range(cfg.max_length):
        logits, state = model.decoder(tokens[:, -1:], zk, state=state, return_state=True)  # (N·K, 1, V)
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)  # (N·K, V)
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


def _check_path(steps: int, method: str) -> None:
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
    _check_path(steps, method)
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


# --- the latent-space tools, on a run directory or a loaded model + tokenizer ------------------------


@dataclass
class Loaded:
    """A model ready for the latent tools: its tokenizer, and how the run prepared its text."""

    model: object
    tokenizer: object
    name: str  # the run directory, for error messages
    lowercase: bool = False  # the run's data.lowercase: inputs are lowercased the same way
    device: torch.device = torch.device("cpu")
    cfg: object = None  # the run's Config (None for a model given directly)


def load(run, tokenizer=None, device: str | torch.device | None = None) -> Loaded:
    """A run directory (its best model), or a ``TextVAE`` with its tokenizer, as :class:`Loaded`."""
    if isinstance(run, Loaded):
        return run
    if isinstance(run, (str, Path)):
        from .checkpoint import load_run
        from .train import resolve_device

        device = resolve_device("auto") if device is None else torch.device(device)
        cfg, model, tok = load_run(Path(run), device)
        return Loaded(model.eval(), tok, str(run), cfg.data.lowercase, device, cfg)
    if tokenizer is None:
        raise TextVAEError("pass the tokenizer with the model (or a run directory)")
    return Loaded(run, tokenizer, type(run).__name__, False, next(run.parameters()).device)


def _need_latent(lm: Loaded, what: str) -> None:
    if lm.model.latent_dim == 0:
        raise TextVAEError(f"{lm.name}: a language model (latent_dim 0) has no latent to {what}")


def _seeded(lm: Loaded, seed: int) -> torch.Generator:
    return torch.Generator(device=lm.device).manual_seed(seed)


@torch.no_grad()
def encode_texts(lm: Loaded, texts: list[str], z: str = "mean", generator=None, batch_size: int = 64):
    """Posterior means (or one posterior sample each) of sentences, in order.

    Sentences go through the run's tokenizer (unknown words become ``<unk>``).
    Shape: N texts → (N, D).
    """
    if z not in ("mean", "sample"):
        raise TextVAEError(f"--z must be mean or sample, not '{z}'")
    _need_latent(lm, "encode into")
    tok = lm.tokenizer
    dataset = TextDataset.from_texts([t.lower() if lm.lowercase else t for t in texts], tok)
    out = []
    with eval_mode(lm.model):
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))),
                                    tok.pad_id, tok.bos_id, tok.eos_id).to(lm.device)
            q = lm.model.encode(batch.input_ids, batch.attention_mask).base_dist  # (B, D)
            noise = torch.randn(q.loc.shape, generator=generator, device=lm.device) if z == "sample" else 0.0
            out.append(q.loc + q.scale * noise)
    return torch.cat(out)


def decode_texts(lm: Loaded, z: torch.Tensor | None, cfg: DecodeConfig | None = None, generator=None,
                 num_sequences: int | None = None, batch_size: int = 256) -> list[str]:
    """:func:`generate` in batches of ``batch_size`` latents, decoded to text by the run's tokenizer."""
    tok = lm.tokenizer
    n = _batch_size(lm.model, z, num_sequences)
    texts = []
    for start in range(0, n, batch_size):
        rows = None if z is None else z[start : start + batch_size]
        ids = generate(lm.model, rows, cfg, bos_id=tok.bos_id, eos_id=tok.eos_id,
                       num_sequences=min(batch_size, n - start), generator=generator)
        texts += [tok.decode(seq) for seq in ids]
    return texts


@dataclass
class SampleResult:
    texts: list[str]
    distinct_1: float  # distinct unigrams / unigrams over all samples (Li et al. 2016)
    distinct_2: float
    self_bleu: float | None  # each sample against the others (Zhu et al. 2018); None for one sample

    def to_dict(self) -> dict:
        return asdict(self)


def sample(run, n: int = 10, decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
           device=None) -> SampleResult:
    """``n`` sentences: z ~ p(z), then decoded (for a language model, decoded from nothing)."""
    if n < 1:
        raise TextVAEError(f"-n must be >= 1, not {n}")
    lm = load(run, tokenizer, device)
    gen = _seeded(lm, seed)
    z = None
    if lm.model.latent_dim > 0:
        prior = lm.model.prior().base_dist
        z = prior.loc + prior.scale * torch.randn((n, lm.model.latent_dim), generator=gen, device=lm.device)
    texts = decode_texts(lm, z, decoding, gen, num_sequences=n)
    return SampleResult(texts, distinct_n(texts, 1), distinct_n(texts, 2), self_bleu(texts))


@dataclass
class ReconstructResult:
    inputs: list[str]
    references: list[str]  # the inputs as the model sees them (after the tokenizer: unknown words are <unk>)
    outputs: list[str]
    bleu: float  # corpus BLEU of outputs against references (sacrebleu)
    exact_match: float  # fraction of outputs equal to their reference

    def to_dict(self) -> dict:
        return asdict(self)


def references_of(lm: Loaded, texts: list[str]) -> list[str]:
    """Sentences after a round trip through the run's tokenizer: what a perfect reconstruction reads."""
    tok = lm.tokenizer
    return [tok.decode(ids) for ids in tok.encode_batch([t.lower() if lm.lowercase else t for t in texts])]


def reconstruct(run, texts: list[str], decoding: DecodeConfig | None = None, z: str = "mean", seed: int = 0,
                tokenizer=None, device=None) -> ReconstructResult:
    """Encode each sentence (posterior mean, or a sample with ``z="sample"``) and decode it again."""
    if z not in ("mean", "sample"):
        raise TextVAEError(f"--z must be mean or sample, not '{z}'")
    if not texts:
        raise TextVAEError("reconstruct: no sentences")
    lm = load(run, tokenizer, device)
    _need_latent(lm, "reconstruct through")
    gen = _seeded(lm, seed)
    outputs = decode_texts(lm, encode_texts(lm, texts, z, gen), decoding, gen)
    refs = references_of(lm, texts)
    return ReconstructResult(list(texts), refs, outputs, corpus_bleu(outputs, refs), exact_match(outputs, refs))


@dataclass
class InterpolationResult:
    path: list[dict]  # {"t": float, "text": str} from sentence A (t = 0) to sentence B (t = 1)
    endpoint_match: list[bool]  # each end's text equals the greedy reconstruction of its sentence
    distinct_ratio: float  # distinct texts / points
    mean_edit_distance: float  # mean token (whitespace) edit distance between neighbouring points

    def to_dict(self) -> dict:
        return asdict(self)


def interpolate_pairs(run, pairs: list[tuple[str, str]], steps: int = 8, method: str = "linear",
                      decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
                      device=None) -> list[InterpolationResult]:
    """:func:`interpolate` for many (A, B) pairs, encoded and decoded in batches."""
    _check_path(steps, method)
    decoding = (decoding or DecodeConfig()).validate()
    if not pairs:
        raise TextVAEError("interpolate: no sentence pairs")
    lm = load(run, tokenizer, device)
    _need_latent(lm, "interpolate in")
    gen = _seeded(lm, seed)
    p = len(pairs)
    ends = encode_texts(lm, [a for a, _ in pairs] + [b for _, b in pairs])  # (2P, D)
    z_a, z_b = ends[:p], ends[p:]
    points = interpolation_path(z_a, z_b, steps, method).reshape(p * steps, -1)  # (P·S, D)
    # The endpoints' greedy reconstructions ride in the same batch as a greedy path.
    greedy = decoding.strategy == "greedy"
    texts = decode_texts(lm, torch.cat([points, ends]) if greedy else points, decoding, gen)
    recs = texts[p * steps:] if greedy else decode_texts(lm, ends, DecodeConfig(max_length=decoding.max_length))
    ts = [i / (steps - 1) for i in range(steps)]
    results = []
    for i in range(p):
        row = texts[i * steps : (i + 1) * steps]
        metrics = path_metrics(row, (recs[i], recs[p + i]))
        results.append(InterpolationResult([{"t": t, "text": s} for t, s in zip(ts, row, strict=True)], **metrics))
    return results


def interpolate(run, a: str, b: str, steps: int = 8, method: str = "linear", decoding: DecodeConfig | None = None,
                seed: int = 0, tokenizer=None, device=None) -> InterpolationResult:
    """Decode ``steps`` points on the path between the posterior means of sentences ``a`` and ``b``."""
    return interpolate_pairs(run, [(a, b)], steps, method, decoding, seed, tokenizer, device)[0]


def analogy(run, a: str, b: str, c: str, decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
            device=None) -> str:
    """"A is to B as C is to ?": decode z(C) + z(B) − z(A), with posterior means."""
    lm = load(run, tokenizer, device)
    _need_latent(lm, "do analogies in")
    z_a, z_b, z_c = encode_texts(lm, [a, b, c])
    return decode_texts(lm, (z_c + z_b - z_a)[None], decoding, _seeded(lm, seed))[0]
