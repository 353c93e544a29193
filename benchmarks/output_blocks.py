"""How the fused output layer's block size moves a PTB training step, against He et al.'s reference step.

The fused output layer (``textvae/modules/output.py``) forms the logits a block of about
``BLOCK_BYTES`` at a time. Small blocks keep the softmax's elementwise passes in cache; large ones
keep the matrix products near the core's peak. This script times the ``vae`` training step
(``ptb`` recipe: LSTM 256/256, z 32, batch 32, batches of equal-length training sentences, seed 0)
at each block size and precision, and He et al.'s step (``speed.py``'s reference) on the same
batches, all taking turns window by window; it prints the median ratio to the reference and writes
JSON.

Usage (one thread; the numbers depend on the machine's caches, so compare within one run)::

    python benchmarks/output_blocks.py --data ../shared/data/ptb --mib 4,6,8 --precisions fp32,bf16
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
from speed import equal_length_batches, he_step, vae_with_reference

from textvae.builders import build_datasets
from textvae.config import load_recipe
from textvae.modules import output
from textvae.training import train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--mib", default="4,6,8", help="comma-separated block sizes in MiB")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=15, help="steps per window")
    parser.add_argument("--windows", type=int, default=8, help="timed windows, after one warm-up window")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/output_blocks.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_recipe("ptb", [f"data.dir={args.data}", "method=vae"])
    datasets, tok = build_datasets(cfg)
    batches = equal_length_batches(datasets["train"], cfg.train.batch_size)
    model, critic, opt, copt, params, he, he_opts = vae_with_reference(cfg, tok)
    default = output.BLOCK_BYTES

    def variant(precision: str, mib: float):
        def run(batch):
            output.BLOCK_BYTES = int(mib * 2**20)
            train_step(model, critic, batch, cfg, 1.0, cfg.critic.weight, opt, copt, params, "all", precision)
        return run

    runners = {("He et al. step", "fp32", None): lambda batch: he_step(he, *he_opts, batch.input_ids)}
    for precision in args.precisions.split(","):
        for mib in map(float, args.mib.split(",")):
            runners[("vae", precision, mib)] = variant(precision, mib)
    rates: dict = {key: [] for key in runners}
    for window in range(args.windows + 1):  # window 0 warms up
        chunk = batches[window * args.steps:][: args.steps]
        tokens = sum(b.num_predicted_tokens for b in chunk)
        for key, run in runners.items():
            t0 = time.perf_counter()
            for batch in chunk:
                run(batch)
            if window:
                rates[key].append(tokens / (time.perf_counter() - t0))
    output.BLOCK_BYTES = default
    ref = rates[("He et al. step", "fp32", None)]
    rows = []
    print(f"machine: {machine()}\n\n| step | precision | block MiB | tokens/s (median) | × He et al. (median of windows) |")
    print("|---|---|---|---|---|")
    for (name, precision, mib), r in rates.items():
        ratio = statistics.median(a / b for a, b in zip(r, ref, strict=True))
        rows.append({"step": name, "precision": precision, "block_mib": mib, "tokens_per_s": statistics.median(r),
                     "windows": r, "ratio_to_he": ratio})
        print(f"| {name} | {precision} | {mib if mib is not None else '—'} | {statistics.median(r):.0f} | {ratio:.3f}× |")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "budget": f"{args.windows} windows of {args.steps} PTB training steps (batch {cfg.train.batch_size}, "
                        "equal-length batches, split train, seed 0) after one warm-up window, alternating",
              "default_block_mib": default / 2**20, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
