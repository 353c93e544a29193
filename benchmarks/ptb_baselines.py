"""PTB baselines and speed: the LM and the plain VAE under one stated budget, plus throughput.

Two parts, each printing a table and writing JSON:

* ``quality``: trains ``lm`` and ``vae`` with the ``ptb`` recipe for ``--epochs`` and
  evaluates each best model on the full test split (IW-NLL with ``--iw-samples``).
* ``speed``: training throughput (target tokens/s, median of ``--repeats`` timed
  windows of ``--steps`` steps) of the ptb VAE (LSTM 256/256, z 32, batch 32), its
  utilisation of the machine's fp32 GEMM peak (measured here with a 2048² matmul),
  and IW-NLL evaluation speed at K = 500 in sentences/s on ``--sentences`` test sentences
  of median length: textvae's batched evaluator and He et al.'s loop (one sentence,
  100 samples per decoder call) on the same sentences in the same run.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/ptb_baselines.py --data ../shared/data/ptb --part speed
    OMP_NUM_THREADS=2 python benchmarks/ptb_baselines.py --data ../shared/data/ptb --part quality --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from textvae.builders import build_datasets
from textvae.config import load_recipe
from textvae.data import TextDataset
from textvae.metrics import iw_chunk_size, iw_log_weights
from textvae.model import TextVAE, with_tokenizer
from textvae.objectives import negative_elbo
from textvae.precision import CPU_BF16_FLAGS, cpu_flags
from textvae.training import fit, prepare_training


def machine() -> dict:
    """What every benchmark's JSON records of the machine: CPU model and the flags that matter, cores, torch
    threads, torch, GPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        model = None
    flags = cpu_flags()
    return {"cpu": model or platform.processor() or platform.machine(),
            "flags": {f: f in flags for f in ("avx2", "avx512f", *CPU_BF16_FLAGS)},
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """Achievable fp32 GEMM GFLOP/s on this machine (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_token(args) -> float:
    """Forward+backward FLOPs per target token of the LSTM VAE decoder + encoder (matmuls only, ×3 for backward)."""
    e, h, d, v = args.embed_dim, args.dec_hidden_dim, args.latent_dim, args.vocab_size
    dec = 4 * h * (e + d + h) + h * v
    enc = 4 * args.enc_hidden_dim * (e + args.enc_hidden_dim)
    return 2 * 3 * (dec + enc)


def speed(data: str, steps: int, repeats: int, sentences: int) -> dict:
    cfg = load_recipe("ptb", [f"data.dir={data}"])
    datasets, tok = build_datasets(cfg)
    torch.manual_seed(0)
    model = TextVAE(with_tokenizer(cfg.model, tok))
    opt, _ = prepare_training(model, None, cfg, cfg.train.lr)
    batches = datasets["train"].batches(32, shuffle=True, seed=0)
    rates = []
    it = iter(batches)
    for _ in range(repeats + 1):  # the first window warms up
        tokens, t0 = 0, time.perf_counter()
        for _ in range(steps):
            batch = next(it)
            loss = negative_elbo(model(batch.input_ids, batch.attention_mask))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            tokens += batch.num_predicted_tokens
        rates.append(tokens / (time.perf_counter() - t0))
    tok_s = statistics.median(rates[1:])
    peak = gemm_peak()
    fpt = flops_per_token(model.config)
    model.eval()
    # A block of equal-length sentences around the median length, as the length-bucketed evaluator
    # sees them over the whole split (a subset taken in file order would be one heavily padded batch).
    full = datasets["test"]
    order = sorted(range(len(full)), key=lambda i: len(full.ids[i]))
    mid = len(order) // 2
    test = TextDataset([full.ids[i] for i in order[mid - sentences // 2: mid + sentences - sentences // 2]])

    def iw_rate(batch_size: int, chunk: int | None) -> float:
        """Sentences/s of IW-NLL at K = 500; chunk None = as many samples as fit eval.max_chunk_logits."""
        t0 = time.perf_counter()
        for batch in test.batches(batch_size):
            k_chunk = chunk or iw_chunk_size(cfg.eval.max_chunk_logits, *batch.input_ids.shape, tok.vocab_size)
            posterior = model.encode(batch.encoder_input_ids, batch.encoder_attention_mask)  # once, as evaluate()
            iw_log_weights(model, posterior, batch.input_ids, 500, k_chunk)
        return len(test) / (time.perf_counter() - t0)

    with torch.no_grad():
        # textvae's batched evaluator against He et al.'s loop (one sentence, 100 samples at a time), same run
        batched = [iw_rate(cfg.eval.batch_size, None) for _ in range(repeats)]
        one_by_one = [iw_rate(1, 100) for _ in range(repeats)]
    return {"train_tokens_per_s": tok_s, "train_tokens_per_s_windows": rates[1:],
            "flops_per_token": fpt, "gemm_peak_gflops": peak, "utilisation": tok_s * fpt / (peak * 1e9),
            "iw500_sentences_per_s": statistics.median(batched), "iw500_s_per_sentence": 1 / statistics.median(batched),
            "iw500_one_by_one_sentences_per_s": statistics.median(one_by_one),
            "iw_sentences": len(test), "iw_tokens": test.num_predicted_tokens}


def quality(data: str, epochs: int, iw_samples: int, out: Path) -> dict:
    rows = {}
    for method in ("lm", "vae"):
        cfg = load_recipe("ptb", [f"data.dir={data}", f"method={method}", f"train.max_epochs={epochs}",
                                  f"eval.iw_samples={iw_samples}"])
        run = out / method
        t0 = time.perf_counter()
        fit(cfg, run, overwrite=True, progress=False)
        seconds = time.perf_counter() - t0
        result = json.loads((run / "eval_test.json").read_text())
        epoch_s = [r["seconds"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if r["split"] == "valid"]
        rows[method] = {**result, "train_seconds_per_epoch": statistics.median(epoch_s), "total_seconds": seconds}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--part", choices=["speed", "quality"], default="speed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.part == "speed":
        res = speed(args.data, args.steps, args.repeats, args.sentences)
        print(f"machine: {info}")
        print("| training tokens/s (median) | FLOP/token | GEMM peak GFLOP/s | utilisation "
              "| IW K=500 sentences/s (batched) | s/sentence | one sentence at a time (He et al.'s loop) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {res['train_tokens_per_s']:.0f} | {res['flops_per_token'] / 1e6:.1f} M | {res['gemm_peak_gflops']:.0f} "
              f"| {res['utilisation']:.0%} | {res['iw500_sentences_per_s']:.3f} | {res['iw500_s_per_sentence']:.3f} "
              f"| {res['iw500_one_by_one_sentences_per_s']:.3f} sentences/s |")
    else:
        res = quality(args.data, args.epochs, args.iw_samples, args.out / "ptb_runs")
        print(f"machine: {info}; budget: {args.epochs} epoch(s) of the ptb recipe; IW-NLL K={args.iw_samples}")
        print("| method | nll | ppl | elbo | kl | mi | mi_batch | au | s/epoch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in res.items():
            print(f"| {name} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | {r['ppl']:.2f} | {r['elbo']:.2f} | {r['kl']:.3f} "
                  f"| {r['mi']:.3f} | {r['mi_batch']:.3f} | {r['au']} | {r['train_seconds_per_epoch']:.0f} |")
    path = args.out / f"ptb_{args.part}.json"
    path.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": res},
                               indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
