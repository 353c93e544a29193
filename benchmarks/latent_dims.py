"""Where a model's information about x lives: one row per latent dimension, for several runs.

The active-unit count (He et al.'s Var_x(E_q[z_d|x]) > 0.01) says how many dimensions
move at all, not how much each carries: a dimension just above the threshold counts as
much as one that carries the whole code. This script shows, for each run's best model on
a split, every dimension's Var_x(μ_d), its mean posterior σ_d and the whole-split MI of
that dimension alone (the same estimator as ``mi``), sorted by MI, plus the MI of all
dimensions and of the top one alone. Prints markdown and writes JSON.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/latent_dims.py critic-self=runs/ptb_study10/critic-self/seed-0 \\
        --split valid --top 6 --out benchmarks/results/latent_dims_ptb.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from textvae.builders import build_datasets
from textvae.checkpoint import load_run
from textvae.metrics import active_units, mutual_information


@torch.no_grad()
def posteriors(run: Path, split: str, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and scales of every sequence of ``split``. Shape: (N, D) each."""
    cfg, model, tokenizer = load_run(run)
    datasets, _ = build_datasets(cfg, tokenizer)
    model.eval()
    locs, scales = [], []
    for b in datasets[split].batches(batch_size):
        q = model.encode(b.encoder_input_ids, b.encoder_attention_mask)  # the encoder's own tokenization
        locs.append(q.base_dist.loc)
        scales.append(q.base_dist.scale)
    return torch.cat(locs), torch.cat(scales)


def per_dimension(loc: torch.Tensor, scale: torch.Tensor, seed: int = 0) -> dict:
    """Figures of the whole code and of each dimension alone, dimensions sorted by their MI."""
    def mi(dims: list[int]) -> float:
        return mutual_information(loc[:, dims], scale[:, dims], generator=torch.Generator().manual_seed(seed))

    au, var = active_units(loc)
    dims = [{"dim": d, "var_mu": float(var[d]), "mean_sigma": float(scale[:, d].mean()), "mi": mi([d])}
            for d in range(loc.size(1))]
    dims.sort(key=lambda r: -r["mi"])
    rest = [r["dim"] for r in dims[1:]]
    return {"n": loc.size(0), "au": au, "mi": mi(list(range(loc.size(1)))), "mi_top_dim": dims[0]["mi"],
            "mi_other_dims": mi(rest) if rest else 0.0, "dims": dims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--top", type=int, default=6, help="dimensions shown per run (all are in the JSON)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_dims.json"))
    args = parser.parse_args()
    results = {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        results[name] = {"run": path, "split": args.split, **per_dimension(*posteriors(Path(path), args.split))}

    print("| run | au | mi (all dims) | mi (top dim alone) | mi (the other dims) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['au']} | {r['mi']:.2f} | {r['mi_top_dim']:.2f} | {r['mi_other_dims']:.2f} |")
    for name, r in results.items():
        print(f"\n{name}: the {args.top} dimensions with most MI\n")
        print("| dim | Var(μ_d) | mean σ_d | mi of d alone |")
        print("|---|---|---|---|")
        for d in r["dims"][: args.top]:
            print(f"| {d['dim']} | {d['var_mu']:.3f} | {d['mean_sigma']:.3f} | {d['mi']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
