"""What denormal floats cost a training step, and what ``train.flush_denormal`` buys back.

Loads checkpoints of a run (for example an early and a late one of an ``sa-vae`` run) and times
``training.train_step`` — the exact update ``textvae train`` runs, with the strategy's refinement — on the
same training batches with ``torch.set_flush_denormal`` off and on. The settings take turns window by
window, each window starting from the checkpoint's weights and a fresh optimiser, so a change in machine
load hits both alike; the table gives the median over ``--repeats`` windows (after one warm-up window
each). One torch thread. Prints a table and writes JSON.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/denormals.py --run RUN --checkpoints step-000000500,step-000006500
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
from textvae.checkpoint import load_checkpoint, load_config
from textvae.modules.critics import build_critic
from textvae.strategies import Strategies
from textvae.training import critic_own_parameters, prepare_training, train_step


def window(checkpoint: Path, cfg, batches, refine, flush: bool) -> float:
    """ms per step over ``batches`` from the checkpoint's weights and a fresh optimiser."""
    torch.set_flush_denormal(flush)
    try:
        model, _, _ = load_checkpoint(checkpoint, "cpu")
        critic = build_critic(cfg.critic, model)
        optimizer, critic_optimizer = prepare_training(model, critic, cfg, cfg.train.lr)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        for batch in batches:
            train_step(model, critic, batch, cfg, 1.0, cfg.critic.weight, optimizer, critic_optimizer,
                       critic_own_parameters(critic, model), refine=refine)
        return 1000 * (time.perf_counter() - t0) / len(batches)
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoints", required=True, help="comma-separated directory names under RUN/checkpoints")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/denormals.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not torch.set_flush_denormal(False):
        raise SystemExit("this CPU has no flush-to-zero mode (torch.set_flush_denormal needs x86 with SSE3)")
    cfg = load_config(args.run)
    datasets, _ = build_datasets(cfg)
    batches = datasets["train"].batches(cfg.train.batch_size, shuffle=True, seed=0)[: args.steps]
    refine = Strategies(cfg.train).refinement({}, 1.0)  # sa-vae: its SVI steps at KL weight 1
    results = []
    for name in args.checkpoints.split(","):
        checkpoint = args.run / "checkpoints" / name
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats + 1):  # the first window of each setting warms up
            for flush in (False, True):
                times[flush].append(window(checkpoint, cfg, batches, refine, flush))
        off, on = statistics.median(times[False][1:]), statistics.median(times[True][1:])
        results.append({"checkpoint": name, "ms_per_step_off": off, "ms_per_step_on": on, "speedup": off / on,
                        "windows_off": times[False][1:], "windows_on": times[True][1:]})
    info = machine()
    print(f"machine: {info}; run {cfg.name} (method {cfg.method}, seed {cfg.seed}); train split, "
          f"{args.steps} steps × {args.repeats} windows per setting")
    print("| checkpoint | ms/step, denormals kept | ms/step, flushed | speed-up |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['checkpoint']} | {r['ms_per_step_off']:.1f} | {r['ms_per_step_on']:.1f} | {r['speedup']:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                    "run": {"recipe": cfg.name, "method": cfg.method, "seed": cfg.seed},
                                    "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
