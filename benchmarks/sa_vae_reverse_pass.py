"""SA-VAE's gradient into the encoder's (μ, log σ²): textvae's exact reverse pass against Kim et al.'s released one.

Kim et al. (2018) differentiate their 20 SVI steps with finite-difference Hessian-vector products
(``optim_n2n.py``, ``backward_mom``); textvae has that reverse pass, with their arithmetic, as
``train.svi_gradient=finite-difference`` (:mod:`textvae.svi`). Step k's gradient at the perturbed
point λ_k + ε·v is clipped *jointly* over (μ, log σ², every decoder parameter), the stored gradient at
λ_k per input (μ and log σ² separately), and the adjoint to norm 5 after each step. On one trained
model's training batches this script compares, for the gradient that reaches λ₀:

* ``eval`` (decoder without dropout): ``refine_posterior(gradient="through")`` (exact Hessian-vector
  products, the adjoint clipped per step), the finite-difference pass, and the exact gradient with no
  clipping in the reverse pass, all on the same draws; their cosines and norms;
* ``train`` (dropout on, as Kim et al. train; each step's dropout masks replayed in its reverse step):
  the finite-difference pass against g₀, the gradient of step 0's −ELBO at λ₀ itself, with the joint
  norm of the (μ, log σ², decoder) gradients there, which decides whether their clip fires.

Usage (a run directory with checkpoints, e.g. a synthetic ``sa-vae`` run)::

    python benchmarks/sa_vae_reverse_pass.py --run RUN --checkpoint step-000002000 --batches 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from ptb_baselines import machine

from textvae.builders import build_datasets
from textvae.checkpoint import load_checkpoint, load_config
from textvae.modules.posterior import diagonal_gaussian
from textvae.svi import batch_negative_elbo, refine_posterior

STEPS, LR, MOMENTUM, CLIP, FD_EPS = 20, 1.0, 0.5, 5.0, 1e-5  # Kim et al.'s text settings and finite-difference ε


def lambda0(model, batch):
    with torch.no_grad():
        q = model.encode(batch.input_ids, batch.attention_mask)
    return [q.base_dist.loc.detach().requires_grad_(), (2 * torch.log(q.base_dist.scale)).detach().requires_grad_()]


def negative_elbo(model, ids, loc, logvar, twice_differentiable=False):
    """Batch mean of −log p(x|z) + KL at one z drawn from the global RNG (as every SVI step draws it)."""
    return batch_negative_elbo(model, ids, loc, logvar, 1.0, twice_differentiable=twice_differentiable)


def reverse_pass(model, batch, gradient: str, seed: int, final_seed: int):
    """The gradient reaching λ₀ from the refined posterior's −ELBO, textvae's steps with ``gradient``."""
    lam = lambda0(model, batch)
    torch.manual_seed(seed)
    refined, _ = refine_posterior(model, diagonal_gaussian(lam[0], torch.exp(0.5 * lam[1])), batch.input_ids,
                                  steps=STEPS, lr=LR, momentum=MOMENTUM, max_grad_norm=CLIP, kl_weight=1.0,
                                  gradient=gradient, fd_eps=FD_EPS)
    torch.manual_seed(final_seed)
    loss = negative_elbo(model, batch.input_ids, refined.base_dist.loc, 2 * torch.log(refined.base_dist.scale))
    return torch.autograd.grad(loss, lam)


def exact_unclipped(model, batch, seed: int, final_seed: int):
    """The same steps (same draws) differentiated by autograd with no clipping in the reverse pass."""
    lam0 = lambda0(model, batch)
    lam, velocity = lam0, None
    torch.manual_seed(seed)
    for _ in range(STEPS):
        g = torch.autograd.grad(negative_elbo(model, batch.input_ids, *lam, True), lam, create_graph=True)
        g = [gi * torch.clamp(CLIP / (gi.norm() + 1e-6), max=1.0) for gi in g]
        velocity = [-gi for gi in g] if velocity is None else [MOMENTUM * v - gi for v, gi in
                                                               zip(velocity, g, strict=True)]
        lam = [t + LR * v for t, v in zip(lam, velocity, strict=True)]
    torch.manual_seed(final_seed)
    return torch.autograd.grad(negative_elbo(model, batch.input_ids, *lam), lam0)


def step0(model, batch, seed: int):
    """Step 0's −ELBO gradient at λ₀ (its draws) and the joint norm of (μ, log σ², decoder) gradients there."""
    lam = lambda0(model, batch)
    decoder = [p for p in model.decoder.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    grads = torch.autograd.grad(negative_elbo(model, batch.input_ids, *lam), [*lam, *decoder], allow_unused=True)
    joint = math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))
    return grads[:2], joint


def cosine(a, b) -> float:
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def norm(a) -> float:
    return float(torch.cat([t.flatten() for t in a]).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", required=True, help="a directory name under RUN/checkpoints")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sa_vae_reverse_pass.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.run)
    datasets, _ = build_datasets(cfg)
    model, _, _ = load_checkpoint(args.run / "checkpoints" / args.checkpoint, "cpu")
    batches = datasets["train"].batches(cfg.train.batch_size, shuffle=True, seed=1)[: args.batches]
    rows = []
    print("| batch | mode | |through| | |finite-difference| | |exact, unclipped| | |g0| | cos(through, fd) | "
          "cos(fd, exact) | cos(fd, g0) | joint norm at step 0 |\n|---|---|---|---|---|---|---|---|---|---|")
    for i, batch in enumerate(batches):
        for mode in ("eval", "train"):
            model.train(mode == "train")
            seed, final_seed = 1000 + i, 2000 + i
            fd = reverse_pass(model, batch, "finite-difference", seed, final_seed)
            g0, joint = step0(model, batch, seed)
            row = {"batch": i, "mode": mode, "fd_norm": norm(fd), "g0_norm": norm(g0),
                   "cos_fd_g0": cosine(fd, g0), "joint_norm_step0": joint}
            if mode == "eval":  # textvae's exact pass has no derivative of dropout's replay: compared without it
                through = reverse_pass(model, batch, "through", seed, final_seed)
                exact = exact_unclipped(model, batch, seed, final_seed)
                row.update(through_norm=norm(through), exact_norm=norm(exact), cos_through_fd=cosine(through, fd),
                           cos_fd_exact=cosine(fd, exact))
            rows.append(row)

            def fmt(key, spec=".3f", row=row):
                return format(row[key], spec) if key in row else "—"

            print(f"| {i} | {mode} | {fmt('through_norm')} | {fmt('fd_norm')} | {fmt('exact_norm', '.4g')} | "
                  f"{fmt('g0_norm')} | {fmt('cos_through_fd')} | {fmt('cos_fd_exact')} | "
                  f"{fmt('cos_fd_g0')} | {fmt('joint_norm_step0')} |")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "run": {"recipe": cfg.name, "method": cfg.method, "seed": cfg.seed}, "checkpoint": args.checkpoint,
              "budget": f"{args.batches} training batches (seed 1 shuffle), {STEPS} SVI steps, lr {LR}, momentum "
                        f"{MOMENTUM}, clip {CLIP}, finite-difference ε {FD_EPS}", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
