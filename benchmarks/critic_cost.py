"""What a critic (or SA-VAE's refinement) costs per training step, against the plain VAE, measured in one process.

For each method, builds the recipe's model (and critic) and times ``training.train_step`` —
the exact update ``textvae train`` runs, with the posterior refinement of a strategy that has one
(``sa-vae``'s SVI steps) — over ``--steps`` training batches. Aggressive training's encoder inner
loop varies with training progress and is not timed here (``benchmarks/speed.py`` times its rate;
the study tables give its seconds per epoch). The methods
take turns window by window, so a change in machine load hits every method alike; the
table gives the median over ``--repeats`` windows (after one warm-up window each) and the
ratio to ``vae``. Prints a table and writes JSON.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/critic_cost.py --recipe synthetic --data ../shared/data/synthetic
    OMP_NUM_THREADS=2 python benchmarks/critic_cost.py --recipe ptb --data ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from ptb_baselines import machine

from textvae.builders import build_datasets
from textvae.config import load_recipe
from textvae.model import TextVAE, with_tokenizer
from textvae.modules.critics import build_critic
from textvae.strategies import Strategies
from textvae.training import critic_own_parameters, prepare_training, train_step


def setup(recipe: str, data: str, method: str, datasets, tokenizer):
    cfg = load_recipe(recipe, [f"data.dir={data}", f"method={method}", "data.verify=false"])
    torch.manual_seed(0)
    model = TextVAE(with_tokenizer(cfg.model, tokenizer))
    critic = build_critic(cfg.critic, model)
    optimizer, critic_optimizer = prepare_training(model, critic, cfg, cfg.train.lr)
    batches = datasets["train"].batches(cfg.train.batch_size, shuffle=True, seed=0)
    args = (model, critic, cfg, 1.0, cfg.critic.weight, optimizer, critic_optimizer,
            critic_own_parameters(critic, model))
    refine = Strategies(cfg.train).refinement({}, 1.0)  # sa-vae: its SVI steps at KL weight 1
    return args, batches, refine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="synthetic")
    parser.add_argument("--data", default="../shared/data/synthetic")
    parser.add_argument("--methods", default="vae,critic-self,critic-neural,critic-hybrid")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="JSON file name (default critic_cost_RECIPE.json)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    datasets, tokenizer = build_datasets(load_recipe(args.recipe, [f"data.dir={args.data}", "data.verify=false"]))
    runs = {m: setup(args.recipe, args.data, m, datasets, tokenizer) for m in methods}
    windows: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats + 1):  # the first window of each method warms up
        for method, (step_args, batches, refine) in runs.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                train_step(step_args[0], step_args[1], batches[(len(windows[method]) * args.steps + i) % len(batches)],
                           *step_args[2:], refine=refine)
            windows[method].append(1000 * (time.perf_counter() - t0) / args.steps)
    base = statistics.median(windows["vae"][1:]) if "vae" in windows else float("nan")
    results = {m: {"ms_per_step": statistics.median(w[1:]), "windows": w[1:],
                   "vs_vae": statistics.median(w[1:]) / base} for m, w in windows.items()}
    info = machine()
    print(f"machine: {info}; recipe {args.recipe}; {args.steps} steps × {args.repeats} windows per method")
    print("| method | ms/step (median) | windows | vs vae |")
    print("|---|---|---|---|")
    for m, r in results.items():
        print(f"| {m} | {r['ms_per_step']:.2f} | {' / '.join(f'{w:.2f}' for w in r['windows'])} | {r['vs_vae']:.2f}× |")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (args.name or f"critic_cost_{args.recipe}.json")
    path.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
