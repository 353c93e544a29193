"""Where a PTB training step's time goes: textvae's ``vae`` step and He et al.'s reference step, profiled in one process.

Both steps (``ptb`` recipe: LSTM 256/256, z 32, batch 32, batches of equal-length training sentences,
seed 0; He et al.'s step as ``speed.py`` writes it) take turns, ``--windows`` windows of ``--steps``
steps each after a warm-up, under ``torch.profiler`` (CPU, one thread). Prints each step's ms per
step by operator (self time) and writes ``benchmarks/results/step_profile.json``.

Usage::

    python benchmarks/step_profile.py --data ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from ptb_baselines import machine
from speed import HeVAE, equal_length_batches, he_optimisers, he_step
from torch.profiler import ProfilerActivity, profile

from textvae.builders import build_datasets, build_model
from textvae.config import load_recipe
from textvae.modules.critics import build_critic
from textvae.training import critic_own_parameters, prepare_training, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--steps", type=int, default=10, help="steps per window")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--top", type=int, default=8, help="operators printed per step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_recipe("ptb", [f"data.dir={args.data}", "method=vae"])
    datasets, tok = build_datasets(cfg)
    batches = equal_length_batches(datasets["train"], cfg.train.batch_size)
    torch.manual_seed(0)
    model = build_model(cfg, tok).train()
    critic = build_critic(cfg.critic, model)
    opt, copt = prepare_training(model, critic, cfg, cfg.train.lr)
    params = critic_own_parameters(critic, model)
    he = HeVAE(tok.vocab_size, cfg.model.embed_dim, cfg.model.dec_hidden_dim, cfg.model.latent_dim, 0.5)
    he.load_textvae(build_model(cfg, tok)).train()
    he_opts = he_optimisers(he)
    steps = {"textvae vae": lambda b: train_step(model, critic, b, cfg, 1.0, cfg.critic.weight, opt, copt, params),
             "He et al. step": lambda b: he_step(he, *he_opts, b.input_ids)}
    for run in steps.values():  # warm-up
        for batch in batches[: args.steps]:
            run(batch)
    per_op = {name: collections.Counter() for name in steps}
    total = args.windows * args.steps
    for window in range(args.windows):
        chunk = batches[(window + 1) * args.steps:][: args.steps]
        for name, run in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in chunk:
                    run(batch)
            for event in prof.key_averages():
                per_op[name][event.key] += event.self_cpu_time_total / 1000 / total  # ms per step
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "budget": f"{args.windows} alternating windows of {args.steps} PTB training steps (batch "
                        f"{cfg.train.batch_size}, equal-length batches, split train, seed 0), fp32, one thread",
              "ms_per_step": {name: dict(ops.most_common()) for name, ops in per_op.items()}}
    for name, ops in per_op.items():
        print(f"\n{name}: {sum(ops.values()):.1f} ms per step\n| operator | ms/step |\n|---|---|")
        for op, ms in ops.most_common(args.top):
            print(f"| {op} | {ms:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
