"""evaluate(model, split) → EvalResult, every figure as DESIGN.md §4 defines it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .config import EvalConfig
from .data import TextDataset
from .distributed import World, gather_dicts
from .metrics import (
    active_units,
    iw_chunk_size,
    iw_log_weights,
    iw_nll_from_log_weights,
    mutual_information,
    mutual_information_batched,
)


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
    mi_batch: float  # He et al.'s per-batch estimator (batches of eval.mi_batch_size)
    au: int  # dims with Var_x(E_q[z_d|x]) ≥ eval.au_threshold
    iw_samples: int  # K
    num_sequences: int
    num_tokens: int  # predicted tokens
    # Tokenizer-independent: Σ nll / Σ (whitespace words + 1 for </s>), nats; None when the texts are unknown
    nll_per_word: float | None = None
    ppl_per_word: float | None = None  # exp(nll_per_word)
    num_words: int | None = None  # whitespace words + one </s> per sequence

    def to_dict(self) -> dict:
        return asdict(self)


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
    """The random draws :func:`_evaluate` makes for ``batch`` (the forward pass's z, then the IW samples
    chunk by chunk), made and discarded: ``Normal.rsample`` and ``.sample`` draw as ``normal_`` does."""
    b = batch.input_ids.size(0)
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
    for index, batch in enumerate(tqdm(batches, desc="eval", leave=False, disable=None if progress else True)):
        if index % world.size != world.rank:  # another rank's batch
            if latent:
                _skip_draws(batch, model.latent_dim, cfg, iw, vocab, device)
            continue
        batch = batch.to(device)
        out = model(batch.input_ids, batch.attention_mask, batch.encoder_input_ids, batch.encoder_attention_mask)
        row = {"rec": out.rec.cpu(), "kl": out.kl.cpu()}
        if latent and iw:
            chunk = iw_chunk_size(cfg.max_chunk_logits, *batch.input_ids.shape, vocab)
            log_w = iw_log_weights(model, out.posterior, batch.input_ids, cfg.iw_samples, chunk)
            row["nll"] = iw_nll_from_log_weights(log_w).cpu()
        else:
            row["nll"] = (out.rec + out.kl).cpu()
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
        mi_batch = mutual_information_batched(loc, scale, cfg.mi_batch_size, generator=gen)
        au, _ = active_units(loc, cfg.au_threshold)
    else:
        mi = mi_batch = 0.0
        au = 0
    model.train(was_training)
    num_words = dataset.num_words
    nll_per_word = float(nll_t.sum()) / num_words if num_words else None
    return EvalResult(
        nll=float(nll_t.mean()),
        nll_stderr=float(nll_t.std() / math.sqrt(n)) if n > 1 else 0.0,
        ppl=math.exp(float(nll_t.sum()) / num_tokens),
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
        ppl_per_word=None if nll_per_word is None else math.exp(nll_per_word),
        num_words=num_words,
    )
