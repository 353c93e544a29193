"""evaluate(model, split) → EvalResult, every figure as DESIGN.md §4 defines it."""

from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write_bytes
from .config import EvalConfig
from .data import TextDataset
from .distributed import World, gather_dicts
from .errors import reading
from .metrics import (
    active_units,
    he_eval_batches,
    iw_chunk_size,
    iw_log_weights,
    iw_mc_variance,
    iw_nll_from_log_weights,
    mutual_information,
    mutual_information_batched,
    perplexity,
)
from .svi import refine_posterior


@dataclass
class EvalResult:
    nll: float  # importance-weighted −log p(x), nats per sequence (exact for the LM)
    nll_stderr: float  # standard error of that mean over sequences
    ppl: float  # exp(Σ nll / Σ predicted tokens); predicted = words + </s>
    elbo: float  # per-sequence mean
    rec: float  # per-sequence mean of −log p(x|z), one posterior sample
    kl: float  # per-sequence mean of analytic KL(q(z|x) ‖ N(0, I))
    mi: float  # I(x; z) with the aggregate posterior over the whole split
    mi_ceiling: float  # log N
    mi_batch: float  # He et al.'s per-batch estimator on their batches (exact-length groups of eval.mi_batch_size)
    au: int  # dims with Var_x(E_q[z_d|x]) ≥ eval.au_threshold
    iw_samples: int  # K
    num_sequences: int
    num_tokens: int  # predicted tokens
    # Tokenizer-independent: Σ nll / Σ (whitespace words + 1 for </s>), nats; None when the texts are unknown
    nll_per_word: float | None = None
    ppl_per_word: float | None = None  # exp(nll_per_word)
    num_words: int | None = None  # whitespace words + one </s> per sequence
    svi_steps: int = 0  # SA-VAE refinement steps applied to each posterior before the figures (eval.svi_steps)
    # the per-sequence figures behind nll (paired comparisons); not part of the JSON record
    per_sequence: PerSequence | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        record = asdict(self)
        del record["per_sequence"]
        return record


PER_SEQUENCE_FILE = "eval_test_per_sequence.npz"  # next to eval_test.json in a run directory


@dataclass
class PerSequence:
    """Per-sequence IW-NLL of one evaluation, in the split's order, for paired comparisons (DESIGN.md §4, Δnll).

    ``mc_var`` is the Monte-Carlo variance of each sequence's estimate from its K importance weights
    (delta method: Var(−log mean w) ≈ Var(w) / (K · mean(w)²)); 0 where nll is exact (the LM).
    ``texts_sha256`` fingerprints the evaluated text (the token ids when the texts are unknown) and
    ``ids_sha256`` its tokenization, so that two runs are compared only on the same sequences.
    Shape: nll, mc_var, tokens (N,); words (N,) or None.
    """

    nll: np.ndarray
    mc_var: np.ndarray
    tokens: np.ndarray  # predicted tokens (words + </s> for a word tokenizer)
    words: np.ndarray | None  # whitespace words + 1
    iw_samples: int
    texts_sha256: str
    ids_sha256: str

    def save(self, path: Path) -> None:
        """An .npz written whole (temporary file, then rename)."""
        buffer = io.BytesIO()
        arrays = dict(nll=self.nll, mc_var=self.mc_var, tokens=self.tokens, iw_samples=np.array(self.iw_samples),
                      texts_sha256=np.array(self.texts_sha256), ids_sha256=np.array(self.ids_sha256))
        if self.words is not None:
            arrays["words"] = self.words
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> PerSequence:
        """The values :meth:`save` wrote; a damaged file is a TextVAEError naming it."""
        with reading(path), np.load(path, allow_pickle=False) as saved:
            return cls(nll=saved["nll"], mc_var=saved["mc_var"], tokens=saved["tokens"],
                       words=saved["words"] if "words" in saved.files else None,
                       iw_samples=int(saved["iw_samples"]), texts_sha256=str(saved["texts_sha256"]),
                       ids_sha256=str(saved["ids_sha256"]))


def _sha256(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(str(line).encode("utf-8") + b"\n")
    return digest.hexdigest()


@torch.no_grad()
def evaluate(
    model,
    dataset: TextDataset,
    cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    iw: bool = True,
    seed: int = 0,
    progress: bool = True,
    world: World | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``dataset``.

    Args:
        iw: compute the importance-weighted NLL with ``cfg.iw_samples`` samples;
            when False (per-epoch validation), ``nll`` is −ELBO and ``iw_samples`` is 1.
        seed: seeds the posterior samples so that an evaluation is reproducible.

    ``nll_per_word`` = Σ nll / Σ (whitespace words + 1) counts the end of each sequence as
    one word, exactly as ``ppl`` counts ``</s>`` among the predicted tokens (DESIGN.md §4),
    so models with different tokenizers (word, BPE, unigram, sentencepiece, GPT-2's) compare
    on it. It is reported for every tokenizer; for a word-level one, whose tokens are the
    whitespace words, it equals log ``ppl`` and ``ppl_per_word`` equals ``ppl``. It needs the
    dataset's texts (``TextDataset.from_texts``); without them both are None.

    ``world`` (under torchrun): the batches are dealt round-robin to the ranks and the per-sequence
    results gathered, so every rank returns the figures of a one-process evaluation. A rank draws,
    and discards, the random numbers of the batches it does not evaluate (a few (K, B, D) normal
    tensors), so each batch gets exactly the samples it gets in one process.
    """
    cfg = cfg or EvalConfig()
    # Seeded for reproducibility, in a forked RNG so the caller's stream (training) is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _evaluate(model, dataset, cfg, device, iw, seed, progress, world or World())


def _skip_draws(batch, latent_dim: int, cfg: EvalConfig, iw: bool, vocab: int, device) -> None:
    """The random draws :func:`_evaluate` makes for ``batch`` (the SVI steps' samples, the forward pass's z,
    then the IW samples chunk by chunk), made and discarded: ``Normal.rsample`` and ``.sample`` draw as
    ``normal_`` does."""
    b = batch.input_ids.size(0)
    for _ in range(cfg.svi_steps + 1):
        torch.empty(b, latent_dim, device=device).normal_()
    if iw:
        chunk = iw_chunk_size(cfg.max_chunk_logits, *batch.input_ids.shape, vocab)
        for start in range(0, cfg.iw_samples, chunk):
            torch.empty(min(chunk, cfg.iw_samples - start), b, latent_dim, device=device).normal_()


def _evaluate(model, dataset: TextDataset, cfg: EvalConfig, device, iw: bool, seed: int, progress: bool,
              world: World):
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    latent = model.latent_dim > 0
    vocab = model.config.vocab_size
    done: dict[int, dict[str, torch.Tensor]] = {}  # batch index → its per-sequence results
    batches = dataset.batches(cfg.batch_size)
    refine = None if not (latent and cfg.svi_steps) else functools.partial(
        refine_posterior, steps=cfg.svi_steps, lr=cfg.svi_lr, momentum=cfg.svi_momentum,
        max_grad_norm=cfg.svi_max_grad_norm)  # SA-VAE's test-time refinement, only when asked for
    for index, batch in enumerate(tqdm(batches, desc="eval", leave=False, disable=None if progress else True)):
        if index % world.size != world.rank:  # another rank's batch
            if latent:
                _skip_draws(batch, model.latent_dim, cfg, iw, vocab, device)
            continue
        batch = batch.to(device)
        out = model(batch.input_ids, batch.attention_mask, batch.encoder_input_ids, batch.encoder_attention_mask,
                    refine=refine)
        row = {"rec": out.rec.cpu(), "kl": out.kl.cpu(), "index": batch.indices.cpu()}
        if latent and iw:
            chunk = iw_chunk_size(cfg.max_chunk_logits, *batch.input_ids.shape, vocab)
            log_w = iw_log_weights(model, out.posterior, batch.input_ids, cfg.iw_samples, chunk)
            row["nll"] = iw_nll_from_log_weights(log_w).cpu()
            row["mc_var"] = iw_mc_variance(log_w).cpu()
        else:
            row["nll"] = (out.rec + out.kl).cpu()
            row["mc_var"] = torch.zeros_like(row["nll"]) if not latent else torch.full_like(row["nll"], math.nan)
        if latent:
            row["loc"], row["scale"] = out.posterior.base_dist.loc.cpu(), out.posterior.base_dist.scale.cpu()
        done[index] = row
    done = gather_dicts(done, world)
    ordered = [done[i] for i in range(len(batches))]
    nll_t, rec_t, kl_t = (torch.cat([r[k] for r in ordered]) for k in ("nll", "rec", "kl"))
    locs, scales = [r.get("loc") for r in ordered], [r.get("scale") for r in ordered]
    n = len(dataset)
    num_tokens = dataset.num_predicted_tokens
    if latent:
        loc, scale = torch.cat(locs), torch.cat(scales)  # in batch order (sorted by length)
        mi = mutual_information(loc, scale, generator=gen)
        rows = torch.empty(n, dtype=torch.long)  # dataset position → row of loc
        rows[torch.cat([r["index"] for r in ordered])] = torch.arange(n)
        he_batches = he_eval_batches([len(ids) for ids in dataset.ids], cfg.mi_batch_size)
        mi_batch = mutual_information_batched(loc, scale, [rows[b].tolist() for b in he_batches], generator=gen)
        au, _ = active_units(loc, cfg.au_threshold)
    else:
        mi = mi_batch = 0.0
        au = 0
    model.train(was_training)
    num_words = dataset.num_words
    per_sequence = _per_sequence(dataset, ordered, cfg.iw_samples if (latent and iw) else (1 if latent else 0))
    nll_per_word = float(nll_t.sum()) / num_words if num_words else None
    return EvalResult(
        nll=float(nll_t.mean()),
        nll_stderr=float(nll_t.std() / math.sqrt(n)) if n > 1 else 0.0,
        ppl=perplexity(float(nll_t.sum()) / num_tokens),
        elbo=float(-(rec_t + kl_t).mean()),
        rec=float(rec_t.mean()),
        kl=float(kl_t.mean()),
        mi=mi,
        mi_ceiling=math.log(n),
        mi_batch=mi_batch,
        au=au,
        iw_samples=cfg.iw_samples if (latent and iw) else (1 if latent else 0),
        num_sequences=n,
        num_tokens=num_tokens,
        nll_per_word=nll_per_word,
        ppl_per_word=None if nll_per_word is None else perplexity(nll_per_word),
        num_words=num_words,
        svi_steps=cfg.svi_steps if latent else 0,
        per_sequence=per_sequence,
    )


def _per_sequence(dataset: TextDataset, ordered: list[dict], iw_samples: int) -> PerSequence:
    """The batches' per-sequence values back in the split's order."""
    index = torch.cat([r["index"] for r in ordered])
    def in_order(key: str) -> np.ndarray:
        values = torch.empty(len(dataset), dtype=torch.float64)
        values[index] = torch.cat([r[key] for r in ordered]).double()
        return values.numpy()

    texts = dataset.texts
    return PerSequence(
        nll=in_order("nll"), mc_var=in_order("mc_var"),
        tokens=np.array([len(ids) + 1 for ids in dataset.ids]),
        words=None if texts is None else np.array([len(t.split()) + 1 for t in texts]),
        iw_samples=iw_samples,
        texts_sha256=_sha256(texts if texts is not None else (" ".join(map(str, ids)) for ids in dataset.ids)),
        ids_sha256=_sha256(" ".join(map(str, ids)) for ids in dataset.ids))
