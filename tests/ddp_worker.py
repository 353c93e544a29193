"""One data-parallel training step against the same step in one process, under ``torchrun``.

Run by ``tests/test_distributed.py`` as ``torchrun --nproc_per_node 2 tests/ddp_worker.py OUT CASE...``
with each CASE ``CRITIC:ROWS:NEGATIVES``: for each, every rank builds the same `debug` model and critic,
takes one step on a global batch of ROWS sequences in one process (no process group involved) and one
as its rank under DDP, and records the largest parameter difference and both steps' logged sums; the
records go to ``OUT/rank-R.json``, one per case.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from textvae.builders import build_datasets, build_model, resolve_device
from textvae.config import load_recipe
from textvae.distributed import setup, wrap
from textvae.modules.critics import build_critic
from textvae.training import critic_own_parameters, make_optimizers, train_step


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    world, device = setup(resolve_device("cpu"))
    records = {}
    for case in sys.argv[2:]:
        critic_type, rows, negatives = case.split(":")
        records[case] = one_step(critic_type, int(rows), negatives, world, device)
    (out / f"rank-{world.rank}.json").write_text(json.dumps(records))


def one_step(critic_type: str, rows: int, negatives: str, world, device) -> dict:
    cfg = load_recipe("debug", [f"critic.type={critic_type}", f"critic.negatives={negatives}",
                                "train.optimizer=sgd", "train.lr=0.5"])
    datasets, tok = build_datasets(cfg)
    batch = datasets["train"].collate(list(range(rows)))
    results = {}
    models = []
    for distributed in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, tok)
        critic = build_critic(cfg.critic, model)
        opt, copt = make_optimizers(model, critic, cfg, cfg.train.lr)
        params = critic_own_parameters(critic, model)
        torch.manual_seed(1)  # the same noise stream for both steps
        trained = wrap(model, world, device) if distributed else model
        sums = train_step(trained, critic, batch, cfg, 1.0, cfg.critic.weight, opt, copt, params,
                          world=world if distributed else None)
        results["distributed" if distributed else "single"] = sums
        models.append((copy.deepcopy(model.state_dict()), None if critic is None else critic.state_dict()))
    (one, one_c), (ddp, ddp_c) = models
    diff = max(float((one[k] - ddp[k]).abs().max()) for k in one)
    if one_c is not None:
        diff = max([diff, *(float((one_c[k] - ddp_c[k]).abs().max()) for k in one_c)])
    results["max_parameter_difference"] = diff
    return results


if __name__ == "__main__":
    main()
