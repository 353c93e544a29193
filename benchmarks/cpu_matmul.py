"""MKL against oneDNN for textvae's fp32 CPU products (``textvae/modules/matmul.py``), in one run.

Prints tables and writes JSON:

* GFLOP/s of each fp32 product the fused output layer makes for a PTB block (157 rows of 256 features
  against the 10,002-word output matrix: logits, the features' gradient, the weight's gradient over two
  blocks, the second accumulated into the first)
  and of a 2048³ product, by ``torch.mm`` (MKL) and by oneDNN, alternating, best of ``--repeats``;
* target tokens/s of the ``vae`` PTB training step (``ptb`` recipe, fp32, batches of equal-length
  training sentences, seed 0) with each backend, and of He et al.'s reference step (``speed.py``) on the
  same batches, windows alternating, medians;
* IW-NLL (K = 500) sentences/s on ``--sentences`` median-length test sentences with each backend, same
  weights, alternating, and the two backends' mean NLL (equal up to summation order).

Usage (one thread; the ratios are what to compare)::

    python benchmarks/cpu_matmul.py --data ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from ptb_baselines import machine
from speed import equal_length_batches, he_step, median_length_sentences, textvae_iw_nll, vae_with_reference

from textvae.builders import build_datasets, build_model
from textvae.config import load_recipe
from textvae.modules import matmul
from textvae.training import train_step

BACKENDS = ("mkl", "onednn")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def products(repeats: int) -> list[dict]:
    """GFLOP/s of each product, both backends, alternating; best of ``repeats``."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab, hidden = 157, 10_002, 256
    h, w = torch.randn(rows, hidden, generator=gen), torch.randn(vocab, hidden, generator=gen)
    g = torch.randn(rows, vocab, generator=gen)
    a = torch.randn(2048, 2048, generator=gen)
    cases = {
        "output block: logits h·Wᵀ (157×256 · 256×10002)": (lambda: matmul.linear(h, w), 2 * rows * vocab * hidden),
        "output block: features' gradient g·W": (lambda: matmul.matmul(g, w), 2 * rows * vocab * hidden),
        # as the output layer makes it: the first block's product, then the next block's added to it
        "output block: weight's gradient gᵀ·h, two blocks": (
            lambda: matmul.add_matmul(matmul.matmul(g.t(), h), g.t(), h), 4 * rows * vocab * hidden),
        "2048³": (lambda: matmul.matmul(a, a), 2 * 2048**3),
    }
    out = []
    for name, (fn, flops) in cases.items():
        best = dict.fromkeys(BACKENDS, float("inf"))
        for _ in range(repeats + 1):  # the first round warms up
            for backend in BACKENDS:
                matmul.set_backend(backend)
                best[backend] = min(best[backend], timed(fn))
        out.append({"product": name, **{f"{b}_gflops": flops / best[b] / 1e9 for b in BACKENDS},
                    "onednn_over_mkl": best["mkl"] / best["onednn"]})
    return out


def training(cfg, tok, batches, steps: int, windows: int) -> dict:
    """Tokens/s of the vae step under each backend and of He et al.'s step, windows alternating."""
    model, critic, opt, copt, params, he, he_opts = vae_with_reference(cfg, tok)

    def step(backend):
        def run(batch):
            matmul.set_backend(backend)
            train_step(model, critic, batch, cfg, 1.0, cfg.critic.weight, opt, copt, params, "all", "fp32")
        return run

    runners = {f"vae ({b})": step(b) for b in BACKENDS}
    runners["He et al. step (torch.mm)"] = lambda batch: (matmul.set_backend("mkl"), he_step(he, *he_opts,
                                                                                            batch.input_ids))
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for window in range(windows + 1):  # window 0 warms up
        chunk = batches[(window * steps) % len(batches):][:steps]
        tokens = sum(b.num_predicted_tokens for b in chunk)
        for name, run in runners.items():
            seconds = timed(lambda run=run, chunk=chunk: [run(b) for b in chunk])
            if window:
                rates[name].append(tokens / seconds)
    ref = rates["He et al. step (torch.mm)"]
    return {name: {"tokens_per_s": statistics.median(r), "windows": r,
                   "ratio_to_he": statistics.median(x / y for x, y in zip(r, ref, strict=True))}
            for name, r in rates.items()}


def iw_nll(cfg, datasets, tok, sentences: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    test = median_length_sentences(datasets["test"], sentences)

    def run() -> float:
        torch.manual_seed(0)
        return textvae_iw_nll(model, test, cfg, tok.vocab_size)

    rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for backend in BACKENDS:
            matmul.set_backend(backend)
            t0 = time.perf_counter()
            values[backend] = run()
            rates[backend].append(len(test) / (time.perf_counter() - t0))
    return {"sentences": len(test), "nll": values,
            **{b: {"sentences_per_s": statistics.median(r), "runs": r} for b, r in rates.items()},
            "onednn_over_mkl": statistics.median(rates["onednn"]) / statistics.median(rates["mkl"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--steps", type=int, default=15, help="training steps per window")
    parser.add_argument("--windows", type=int, default=6, help="timed windows, after one warm-up window")
    parser.add_argument("--repeats", type=int, default=3, help="IW-NLL runs and product repeats")
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_matmul.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not matmul.onednn_available():
        sys.exit("error: this PyTorch has no working oneDNN linear operator; nothing to compare")
    cfg = load_recipe("ptb", [f"data.dir={args.data}", "method=vae"])
    datasets, tok = build_datasets(cfg)
    batches = equal_length_batches(datasets["train"], cfg.train.batch_size)
    auto = (matmul.set_backend("auto"), matmul.backend())[1]
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "cpu_vendor": matmul.cpu_vendor(), "auto_backend": auto,
              "budget": f"products best of {args.repeats}; training {args.windows} windows of {args.steps} PTB steps "
                        f"(batch {cfg.train.batch_size}, equal-length batches, split train, seed 0, fp32) after a "
                        f"warm-up window, alternating; IW-NLL K = 500 on {args.sentences} median-length test "
                        f"sentences, {args.repeats} alternating runs, seed 0",
              "products": products(args.repeats),
              "training": training(cfg, tok, batches, args.steps, args.windows),
              "iw_nll": iw_nll(cfg, datasets, tok, args.sentences, args.repeats)}
    matmul.set_backend(None)
    print(f"machine: {result['machine']} (vendor {result['cpu_vendor']}; auto picks {auto})\n")
    print("| product | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL |\n|---|---|---|---|")
    for r in result["products"]:
        print(f"| {r['product']} | {r['mkl_gflops']:.1f} | {r['onednn_gflops']:.1f} | {r['onednn_over_mkl']:.3f}× |")
    print("\n| training step (fp32) | tokens/s (median) | × He et al. (median of windows) |\n|---|---|---|")
    for name, r in result["training"].items():
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['ratio_to_he']:.3f}× |")
    iw = result["iw_nll"]
    print(f"\nIW-NLL K=500, {iw['sentences']} sentences: MKL {iw['mkl']['sentences_per_s']:.3f}/s, oneDNN "
          f"{iw['onednn']['sentences_per_s']:.3f}/s ({iw['onednn_over_mkl']:.3f}×); mean nll {iw['nll']['mkl']:.4f} "
          f"and {iw['nll']['onednn']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
