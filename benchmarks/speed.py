"""Throughput of textvae against He et al. (2019)'s design, in one run on one machine.

Prints tables and writes ``benchmarks/results/speed.json``:

* machine: CPU model, the flags that matter (avx2, avx512f, avx512_bf16, amx_bf16), threads, and the
  measured matmul peak (2048³) in fp32 and bf16;
* training target tokens/s on real PTB batches (``ptb`` recipe: LSTM 256/256, z 32, batch 32) for
  ``lm``, ``vae``, ``critic-self``, ``critic-neural`` and ``aggressive`` (its encoder-only inner-loop
  step), in fp32 and bf16, next to a reference training step written here from He et al.'s design
  (separate SGD optimisers for encoder and decoder, z concatenated to every decoder input, per-token
  ``CrossEntropyLoss(reduction="none")``), all on the same batches of equal-length sentences (as
  He et al.'s iterator makes them), alternating, median of ``--repeats`` windows of ``--steps`` steps;
* FLOP utilisation of the fp32 VAE step against the fp32 peak;
* IW-NLL at K = 500 on ``--sentences`` median-length PTB test sentences, same weights: textvae's
  evaluator against He et al.'s one-sentence loop (batch 1, K in chunks of 100, the sentence
  encoded again for each chunk, as their ``nll_iw``), alternating, median of ``--repeats`` runs;
* peak memory of textvae's IW-NLL on Yahoo-sized input (``lstm-he2019``, 20k vocabulary, 200 tokens);
* the threading matrix: the fp32 VAE step with 1 and 2 threads, alone and beside a busy process.

Usage (the numbers depend on the machine; compare the ratios, measured in the same run)::

    python benchmarks/speed.py --data ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from ptb_baselines import machine
from torch import nn

from textvae.builders import build_datasets, build_model
from textvae.config import load_recipe
from textvae.data import TextDataset
from textvae.he2019 import to_he2019
from textvae.metrics import iw_chunk_size, iw_log_weights, iw_nll_from_log_weights
from textvae.modules.critics import build_critic
from textvae.training import critic_own_parameters, prepare_training, train_step

METHODS = ("lm", "vae", "critic-self", "critic-neural", "aggressive")


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- He et al.'s design, written from their paper and code structure (not their code) -------------


class HeVAE(nn.Module):
    """The LSTM VAE of He et al. (2019): encoder LSTM → last state → (μ, log σ²); decoder LSTM with z concatenated
    to every input, c0 = W z, h0 = tanh(c0); no bias on the posterior head or the output layer. Its modules carry
    their names (``encoder.linear``, ``decoder.pred_linear``, ...), so a textvae model's weights load through
    :func:`textvae.he2019.to_he2019`."""

    def __init__(self, vocab: int, embed: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.embed, self.encoder.lstm = nn.Embedding(vocab, embed), nn.LSTM(embed, hidden, batch_first=True)
        self.encoder.linear = nn.Linear(hidden, 2 * latent, bias=False)
        self.decoder.embed = nn.Embedding(vocab, embed)
        self.decoder.lstm = nn.LSTM(embed + latent, hidden, batch_first=True)
        self.decoder.trans_linear = nn.Linear(latent, hidden, bias=False)
        self.decoder.pred_linear = nn.Linear(hidden, vocab, bias=False)
        self.drop_in, self.drop_out = nn.Dropout(dropout), nn.Dropout(dropout)
        self.loss = nn.CrossEntropyLoss(reduction="none")

    def load_textvae(self, model) -> HeVAE:
        self.load_state_dict(to_he2019(model.state_dict()))
        return self

    def encode(self, x):
        _, (last, _) = self.encoder.lstm(self.encoder.embed(x))
        return self.encoder.linear(last[0]).chunk(2, -1)  # μ, log σ²: (B, D) each

    def reconstruct_error(self, x, z):
        """Per-sequence −log p(x|z); z (B, S, D) → (B, S)."""
        b, s, d = z.shape
        src, tgt = x[:, :-1], x[:, 1:]
        emb = self.drop_in(self.decoder.embed(src)).unsqueeze(1).expand(b, s, *src.shape[1:], -1).reshape(b * s, src.size(1), -1)
        zz = z.reshape(b * s, d)
        emb = torch.cat([emb, zz.unsqueeze(1).expand(-1, src.size(1), -1)], -1)
        c0 = self.decoder.trans_linear(zz).unsqueeze(0)
        out, _ = self.decoder.lstm(emb, (torch.tanh(c0), c0))
        logits = self.decoder.pred_linear(self.drop_out(out))
        tgt = tgt.unsqueeze(1).expand(b, s, -1).reshape(b * s, -1)
        return self.loss(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1)).view(b, s, -1).sum(-1)

    def loss_fn(self, x, kl_weight=1.0):
        mu, logvar = self.encode(x)
        z = (mu + torch.randn_like(mu) * (0.5 * logvar).exp()).unsqueeze(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
        return self.reconstruct_error(x, z).squeeze(1) + kl_weight * kl

    def nll_iw(self, x, nsamples: int = 500, ns: int = 100) -> torch.Tensor:
        """Their importance-weighted NLL of one batch: K in chunks of ``ns``, the batch encoded for each chunk."""
        parts = []
        for _ in range(nsamples // ns):
            mu, logvar = self.encode(x)
            std = (0.5 * logvar).exp()
            z = mu.unsqueeze(1) + torch.randn(mu.size(0), ns, mu.size(1)) * std.unsqueeze(1)  # (B, ns, D)
            log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
            log_q = -0.5 * (((z - mu.unsqueeze(1)) / std.unsqueeze(1)).pow(2) + logvar.unsqueeze(1)
                            + math.log(2 * math.pi)).sum(-1)
            parts.append(log_prior - self.reconstruct_error(x, z) - log_q)
        return -(torch.logsumexp(torch.cat(parts, -1), -1) - math.log(nsamples))


def he_step(model: HeVAE, enc_opt, dec_opt, x) -> None:
    loss = model.loss_fn(x).mean()
    enc_opt.zero_grad()
    dec_opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    enc_opt.step()
    dec_opt.step()


def he_optimisers(model: HeVAE):
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    return torch.optim.SGD(enc, lr=1.0), torch.optim.SGD(dec, lr=1.0)


# --- measurements -----------------------------------------------------------------------------------


def equal_length_batches(dataset: TextDataset, size: int, seed: int = 0) -> list:
    """He et al.'s batching: sentences of exactly equal length, ``size`` at most per batch, shuffled."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(dataset.ids):
        by_length.setdefault(len(ids), []).append(i)
    groups = [g[i : i + size] for g in by_length.values() for i in range(0, len(g), size)]
    random.Random(seed).shuffle(groups)
    return [dataset.collate(g) for g in groups if len(g) == size]  # full batches only, as a fair comparison


def training_rates(cfg_for, datasets, tok, batches, steps: int, repeats: int) -> dict:
    """Target tokens/s of each method and precision and of He et al.'s step, windows alternating."""
    runners = {}
    # vae with dense embedding gradients: what train.embedding_gradients=auto (sparse under SGD) saves, in this run
    for method, overrides in [(m, ()) for m in METHODS] + [("vae", ("train.embedding_gradients=dense",))]:
        cfg = cfg_for(method, *overrides)
        torch.manual_seed(0)
        model = build_model(cfg, tok)
        critic = build_critic(cfg.critic, model)
        opt, copt = prepare_training(model, critic, cfg, cfg.train.lr)
        params = critic_own_parameters(critic, model)
        update = "encoder" if method == "aggressive" else "all"  # the inner loop's step is aggressive's cost
        for precision in ("fp32", "bf16"):
            def run(batch, model=model, critic=critic, cfg=cfg, opt=opt, copt=copt, params=params, update=update,
                    precision=precision):
                train_step(model, critic, batch, cfg, 1.0, cfg.critic.weight, opt, copt, params, update, precision)
            runners[f"{method}{' (dense embedding gradients)' if overrides else ''} {precision}"] = (model, run)
    torch.manual_seed(0)
    cfg = cfg_for("vae")
    he = HeVAE(tok.vocab_size, cfg.model.embed_dim, cfg.model.dec_hidden_dim, cfg.model.latent_dim, 0.5)
    he.load_textvae(build_model(cfg, tok))
    he_opts = he_optimisers(he)
    runners["He et al. step fp32"] = (he, lambda batch: he_step(he, *he_opts, batch.input_ids))
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for window in range(repeats + 1):  # window 0 warms up
        chunk = batches[(window * steps) % len(batches):][:steps]
        for name, (model, run) in runners.items():
            model.train()
            tokens = sum(b.num_predicted_tokens for b in chunk)
            seconds = _timed(lambda run=run, chunk=chunk: [run(b) for b in chunk])
            if window:
                rates[name].append(tokens / seconds)
    return {name: {"median": statistics.median(r), "windows": r} for name, r in rates.items()}


def median_length_sentences(full: TextDataset, n: int) -> TextDataset:
    """The ``n`` sentences around the median length of ``full``."""
    order = sorted(range(len(full)), key=lambda i: len(full.ids[i]))
    mid = len(order) // 2
    return TextDataset([full.ids[i] for i in order[mid - n // 2 : mid + n - n // 2]])


@torch.inference_mode()
def textvae_iw_nll(model, test: TextDataset, cfg, vocab_size: int, samples: int = 500) -> float:
    """Mean IW-NLL over ``test`` by textvae's batched evaluator."""
    total = 0.0
    for batch in test.batches(cfg.eval.batch_size):
        chunk = iw_chunk_size(cfg.eval.max_chunk_logits, *batch.input_ids.shape, vocab_size)
        posterior = model.encode(batch.input_ids, batch.attention_mask)
        total += float(iw_nll_from_log_weights(iw_log_weights(model, posterior, batch.input_ids, samples, chunk)).sum())
    return total / len(test)


def vae_with_reference(cfg, tok):
    """The ``vae`` model (seed 0) with its critic and optimisers, and He et al.'s model on the same weights
    with theirs: ``(model, critic, opt, copt, critic_params, he, he_opts)``."""
    torch.manual_seed(0)
    model = build_model(cfg, tok).train()
    he = HeVAE(tok.vocab_size, cfg.model.embed_dim, cfg.model.dec_hidden_dim, cfg.model.latent_dim, 0.5)
    he.load_textvae(model).train()
    critic = build_critic(cfg.critic, model)
    opt, copt = prepare_training(model, critic, cfg, cfg.train.lr)
    return model, critic, opt, copt, critic_own_parameters(critic, model), he, he_optimisers(he)


def iw_rates(cfg, datasets, tok, sentences: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    he = HeVAE(tok.vocab_size, cfg.model.embed_dim, cfg.model.dec_hidden_dim, cfg.model.latent_dim, 0.5)
    he.load_textvae(model).eval()
    test = median_length_sentences(datasets["test"], sentences)

    def ours() -> float:
        return textvae_iw_nll(model, test, cfg, tok.vocab_size)

    @torch.inference_mode()
    def theirs() -> float:
        return sum(float(he.nll_iw(test.collate([i]).input_ids).sum()) for i in range(len(test))) / len(test)

    times: dict[str, list[float]] = {"textvae": [], "He et al. loop": []}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in (("textvae", ours), ("He et al. loop", theirs)):
            t0 = time.perf_counter()
            values[name] = fn()
            times[name].append(len(test) / (time.perf_counter() - t0))
    m = cfg.model  # the decoder's products per sample and predicted token: LSTM gates and the output layer
    flops = 2 * 500 * test.num_predicted_tokens / len(test) * (
        4 * m.dec_hidden_dim * (m.embed_dim + m.latent_dim + m.dec_hidden_dim) + m.dec_hidden_dim * tok.vocab_size)
    return {"sentences": len(test), "tokens": test.num_predicted_tokens, "nll": values,
            "flops_per_sentence": flops,
            **{name: {"median": statistics.median(t), "runs": t} for name, t in times.items()}}


def yahoo_iw_memory() -> dict:
    """Peak resident memory of one IW-NLL batch on Yahoo-sized input, in a fresh process.

    Samples are decoded a chunk at a time (``eval.max_chunk_logits``), so two chunks reach the peak that all
    500 would; the run decodes two (all 500 of a 20k-vocabulary 1024-d model would take hours on a CPU)."""
    code = """
import resource, torch, json
from textvae.config import ModelConfig, EvalConfig
from textvae.model import TextVAE
from textvae.metrics import iw_chunk_size, iw_log_weights
torch.manual_seed(0)
model = TextVAE(ModelConfig.from_preset("lstm-he2019", vocab_size=20000)).eval()
ids = torch.randint(4, 20000, (32, 202))
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024  # resident now, KiB
with torch.inference_mode():
    q = model.encode(ids, torch.ones_like(ids))
    chunk = iw_chunk_size(EvalConfig().max_chunk_logits, 32, 202, 20000)
    iw_log_weights(model, q, ids, 2 * chunk, chunk)
# VmHWM: this process's own peak (ru_maxrss would carry the benchmark's, inherited through fork)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"before_kib": base, "peak_kib": hwm}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    return {"batch": 32, "tokens": 200, "vocab": 20000, "samples_decoded": "two chunks of eval.max_chunk_logits",
            "peak_mib": mem["peak_kib"] / 1024,
            "added_mib": (mem["peak_kib"] - mem["before_kib"]) / 1024}


THREAD_PROBE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from textvae.config import load_recipe
from textvae.builders import build_datasets, build_model
from textvae.training import prepare_training, train_step
cfg = load_recipe("ptb", ["data.dir=" + sys.argv[2]])
ds, tok = build_datasets(cfg)
model = build_model(cfg, tok); opt, _ = prepare_training(model, None, cfg, 1.0); model.train()
batches = ds["train"].batches(32, shuffle=True, seed=0)[:25]
for b in batches[:5]: train_step(model, None, b, cfg, 1.0, 0.0, opt, None, [])
t0 = time.perf_counter()
for b in batches[5:]: train_step(model, None, b, cfg, 1.0, 0.0, opt, None, [])
print((time.perf_counter() - t0) / 20)
"""


def thread_matrix(data: str) -> list[dict]:
    """Seconds per fp32 VAE step with 1 and 2 threads, alone and beside a process that keeps one core busy."""
    rows = []
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads in (1, 2):
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                out = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(threads), data], capture_output=True,
                                     text=True, env=env, check=True, timeout=900).stdout
                rows.append({"threads": threads, "competing_process": busy,
                             "seconds_per_step": float(out.strip().splitlines()[-1])})
        finally:
            if hog is not None:
                hog.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the main measurements")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train, iw, memory, threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "peak_gflops": {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)},
              "budget": f"{args.repeats} windows of {args.steps} PTB training steps (batch 32, equal-length batches, "
                        f"split train, seed 0) after one warm-up window; IW-NLL K = 500 on {args.sentences} "
                        "median-length test sentences (split test), medians of the runs"}

    def cfg_for(method: str, *overrides: str):
        return load_recipe("ptb", [f"data.dir={args.data}", f"method={method}", *overrides])

    cfg = cfg_for("vae")
    datasets, tok = build_datasets(cfg)
    print(f"machine: {result['machine']}")
    print(f"matmul 2048³: fp32 {result['peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {result['peak_gflops']['bf16']:.0f}")
    if "train" not in skip:
        batches = equal_length_batches(datasets["train"], 32)
        rates = training_rates(cfg_for, datasets, tok, batches, args.steps, args.repeats)
        ref = rates["He et al. step fp32"]["median"]
        m = cfg.model
        flops = 6 * (4 * m.dec_hidden_dim * (m.embed_dim + m.latent_dim + m.dec_hidden_dim) + m.dec_hidden_dim
                     * tok.vocab_size + 4 * m.enc_hidden_dim * (m.embed_dim + m.enc_hidden_dim))
        result["training"] = {"rates": rates, "flops_per_token": flops,
                              "vae_fp32_utilisation": rates["vae fp32"]["median"] * flops
                              / (result["peak_gflops"]["fp32"] * 1e9)}
        print("\n| step | target tokens/s (median) | × He et al.'s step |\n|---|---|---|")
        for name, r in rates.items():
            print(f"| {name} | {r['median']:.0f} | {r['median'] / ref:.2f}× |")
        print(f"fp32 VAE step: {flops / 1e6:.1f} MFLOP/token, "
              f"{result['training']['vae_fp32_utilisation']:.0%} of the fp32 matmul peak")
    if "iw" not in skip:
        iw = iw_rates(cfg, datasets, tok, args.sentences, args.repeats)
        result["iw_nll"] = iw
        ratio = iw["textvae"]["median"] / iw["He et al. loop"]["median"]
        peak = result["peak_gflops"]["fp32"] * 1e9
        iw["utilisation"] = {name: iw[name]["median"] * iw["flops_per_sentence"] / peak
                             for name in ("textvae", "He et al. loop")}
        iw["peak_bound_ratio"] = peak / iw["flops_per_sentence"] / iw["He et al. loop"]["median"]
        print(f"\nIW-NLL K=500, {iw['sentences']} sentences: textvae {iw['textvae']['median']:.3f} sentences/s, "
              f"He et al.'s loop {iw['He et al. loop']['median']:.3f} ({ratio:.2f}×); mean nll "
              f"{iw['nll']['textvae']:.3f} vs {iw['nll']['He et al. loop']:.3f}")
        print(f"decoder arithmetic {iw['flops_per_sentence'] / 1e9:.1f} GFLOP/sentence: textvae at "
              f"{iw['utilisation']['textvae']:.0%} of the fp32 matmul peak, He et al.'s loop at "
              f"{iw['utilisation']['He et al. loop']:.0%}; at 100% textvae would be "
              f"{iw['peak_bound_ratio']:.2f}× their loop")
    if "memory" not in skip:
        result["yahoo_iw_memory"] = yahoo_iw_memory()
        print(f"IW-NLL memory, Yahoo-sized batch (32 × 200 tokens, V 20k, lstm-he2019): peak "
              f"{result['yahoo_iw_memory']['peak_mib']:.0f} MiB")
    if "threads" not in skip:
        result["threads"] = thread_matrix(args.data)
        print("\n| threads | competing process | s/step |\n|---|---|---|")
        for row in result["threads"]:
            print(f"| {row['threads']} | {row['competing_process']} | {row['seconds_per_step']:.3f} |")
    result["rusage_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
