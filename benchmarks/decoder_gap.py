"""Where a latent model's NLL gap to the language model comes from: the decoder, or the price of z.

For each run's best model on a split, the mean per-sentence reconstruction −log p(x|z) of its
decoder with z = 0 (the prior's mean: the decoder as a language model, no information about x),
with z = E_q[z|x] (the posterior mean: what the code is worth), and with one z ~ q(z|x) (the
ELBO's reconstruction term), next to the mean KL. With ``--lm RUN``, the language model's exact
NLL on the same sentences, and each figure's difference to it. A decoder whose z = 0 figure
already trails the LM has learnt less as a language model; the gap from z = 0 to z = mean is
what the encoder's information buys it. Prints markdown and writes JSON.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/decoder_gap.py critic-self-fb=RUNS/sgd/critic-self-fb/seed-0 \\
        vae=RUNS/sgd/vae/seed-0 --lm RUNS/sgd/lm/seed-0 --split valid --out benchmarks/results/decoder_gap.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ptb_baselines import machine
from ptb_time import cut

from textvae.builders import build_datasets
from textvae.checkpoint import load_run
from textvae.objectives import kl_per_dimension


@torch.no_grad()
def decoder_figures(run: Path, split: str, batch_size: int, seed: int) -> dict:
    """Mean −log p(x|z) at z = 0, z = μ and one z ~ q, and mean KL, over ``split``; nats per sentence."""
    cfg, model, tokenizer = load_run(run)
    datasets, _ = build_datasets(cfg, tokenizer)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(("rec_z0", "rec_mean", "rec_sample", "kl"), 0.0)
    n = 0
    for b in datasets[split].batches(batch_size):
        if model.latent_dim == 0:  # the LM: its exact NLL in every column
            nll = model.reconstruction_nll(b.input_ids, None)
            for key in ("rec_z0", "rec_mean", "rec_sample"):
                totals[key] += float(nll.sum())
        else:
            q = model.encode(b.encoder_input_ids, b.encoder_attention_mask)
            mu, sigma = q.base_dist.loc, q.base_dist.scale
            z = mu + sigma * torch.randn(mu.shape, generator=gen)
            totals["rec_z0"] += float(model.reconstruction_nll(b.input_ids, torch.zeros_like(mu)).sum())
            totals["rec_mean"] += float(model.reconstruction_nll(b.input_ids, mu).sum())
            totals["rec_sample"] += float(model.reconstruction_nll(b.input_ids, z).sum())
            totals["kl"] += float(kl_per_dimension(q).sum())
        n += b.input_ids.size(0)
    return {"run": str(run), "num_sequences": n, **{k: v / n for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--lm", type=Path, help="the language model's run directory, for the differences")
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoder_gap.json"))
    args = parser.parse_args()
    named = []
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            sys.exit(f"error: '{spec}': expected NAME=RUN_DIR")
        named.append((name, Path(path)))
    if args.lm is not None:
        named.insert(0, ("lm", args.lm))
    rows = [{"name": name, **decoder_figures(path, args.split, args.batch_size, args.seed)} for name, path in named]
    lm = rows[0]["rec_z0"] if args.lm is not None else None
    print(f"{args.split} split, {rows[0]['num_sequences']} sentences, nats per sentence; seed {args.seed}\n")
    print("| model | −log p(x\\|z=0) | −log p(x\\|z=μ) | −log p(x\\|z~q) | kl | z=0 − lm | z=μ − lm |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        diffs = ["—", "—"] if lm is None else [cut(r["rec_z0"] - lm, 3, sign=True), cut(r["rec_mean"] - lm, 3, sign=True)]
        print(f"| {r['name']} | {cut(r['rec_z0'], 3)} | {cut(r['rec_mean'], 3)} | {cut(r['rec_sample'], 3)} | "
              f"{cut(r['kl'], 3)} | {diffs[0]} | {diffs[1]} |")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "split": args.split,
              "seed": args.seed, "budget": "each run's best model (selected by validation loss)", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
