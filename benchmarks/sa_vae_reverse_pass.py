"""SA-VAE's gradient into the encoder's (μ, log σ²): textvae's exact reverse pass against Kim et al.'s released one.

Kim et al. (2018) differentiate their 20 SVI steps with finite-difference Hessian-vector products
(``optim_n2n.py``, ``backward_mom``). This script rewrites that reverse pass from reading it (their
arithmetic, not their code): step k's gradient at the perturbed point λ_k + ε·v is clipped *jointly*
over (μ, log σ², every decoder parameter), while the stored gradient at λ_k was clipped per input
(μ and log σ² separately) and the decoder's not at all; the adjoint is clipped to norm 5 after each
step. On one trained model's training batches it compares, for the gradient that reaches λ₀:

* ``eval`` (decoder without dropout): textvae's ``refine_posterior(gradient="through")`` (exact
  Hessian-vector products, the adjoint clipped per step), the finite-difference rewrite, and the
  exact gradient with no clipping in the reverse pass; their cosines and norms;
* ``train`` (dropout on, as Kim et al. train; the same dropout masks in both passes of each step):
  the rewrite against g₀, the gradient of step 0's −ELBO at λ₀ itself, with the joint norm that
  decides whether their clip fires at step 0.

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
import torch.nn.functional as F
from ptb_baselines import machine

from textvae.builders import build_datasets
from textvae.checkpoint import load_checkpoint, load_config
from textvae.modules.posterior import diagonal_gaussian
from textvae.svi import refine_posterior

STEPS, LR, MOMENTUM, CLIP, FD_EPS = 20, 1.0, 0.5, 5.0, 1e-5  # Kim et al.'s text settings and finite-difference ε


def negative_elbo(model, ids, loc, logvar, noise):
    """Batch mean of −log p(x|z) + KL(q ‖ N(0, I)), z = loc + noise·σ (Kim et al.'s ``variational_loss``)."""
    z = loc + noise * torch.exp(0.5 * logvar)
    logits = model.decode(ids[:, :-1], z)
    rec = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                          ignore_index=model.config.pad_id, reduction="none").view(ids.size(0), -1).sum(-1)
    return (rec + 0.5 * (loc.pow(2) + logvar.exp() - logvar - 1).sum(-1)).mean()


def clip_(tensors, max_norm: float) -> float:
    """Scale ``tensors`` in place to a joint norm of at most ``max_norm``; returns the norm before."""
    norm = math.sqrt(sum(float((t**2).sum()) for t in tensors))
    if norm > max_norm:
        for t in tensors:
            t.mul_(max_norm / (norm + 1e-6))
    return norm


def finite_difference_reverse(model, ids, loc0, logvar0, noises, final_noise, seeds):
    """Kim et al.'s forward steps and finite-difference reverse pass; returns (gradient at λ₀, joint norm at step 0)."""
    decoder = list(model.decoder.parameters())

    def grads(lam, k, wrt_decoder):
        if seeds is not None:
            torch.manual_seed(seeds[k])  # the same dropout masks in the forward and the reverse pass
        lam = [t.detach().requires_grad_() for t in lam]
        return [g.clone() for g in torch.autograd.grad(negative_elbo(model, ids, *lam, noises[k]),
                                                       lam + (decoder if wrt_decoder else []))]

    lam, velocity, cache = [loc0.clone(), logvar0.clone()], None, []
    for k in range(STEPS):
        g = grads(lam, k, wrt_decoder=False)
        clip_([g[0]], CLIP)
        clip_([g[1]], CLIP)  # each input on its own
        cache.append(([t.clone() for t in lam], g))
        velocity = [-gi for gi in g] if velocity is None else [MOMENTUM * v - gi for v, gi in zip(velocity, g, strict=True)]
        lam = [t + LR * v for t, v in zip(lam, velocity, strict=True)]
    lam = [t.detach().requires_grad_() for t in lam]
    adjoint = list(torch.autograd.grad(negative_elbo(model, ids, *lam, final_noise), lam))
    v_adjoint, first_joint = [torch.zeros_like(t) for t in adjoint], None
    for k in reversed(range(STEPS)):
        v_adjoint = [va + LR * a for va, a in zip(v_adjoint, adjoint, strict=True)]
        lam_k, g_k = cache[k]
        perturbed = grads([t + FD_EPS * va for t, va in zip(lam_k, v_adjoint, strict=True)], k, wrt_decoder=True)
        first_joint = clip_(perturbed, CLIP)  # jointly over (μ, log σ², decoder)
        adjoint = [a - (p - g) / FD_EPS for a, p, g in zip(adjoint, perturbed[:2], g_k, strict=True)]
        clip_(adjoint, CLIP)
        v_adjoint = [va * MOMENTUM for va in v_adjoint]
    return adjoint, first_joint


def exact_unclipped(model, ids, loc0, logvar0, noises, final_noise):
    """The end-to-end gradient of the same steps by autograd, with no clipping in the reverse pass."""
    lam0 = [loc0.detach().requires_grad_(), logvar0.detach().requires_grad_()]
    lam, velocity = lam0, None
    for k in range(STEPS):
        g = torch.autograd.grad(negative_elbo(model, ids, *lam, noises[k]), lam, create_graph=True)
        g = [gi * torch.clamp(CLIP / (gi.norm() + 1e-6), max=1.0) for gi in g]
        velocity = [-gi for gi in g] if velocity is None else [MOMENTUM * v - gi for v, gi in zip(velocity, g, strict=True)]
        lam = [t + LR * v for t, v in zip(lam, velocity, strict=True)]
    return torch.autograd.grad(negative_elbo(model, ids, *lam, final_noise), lam0)


def textvae_reverse(model, ids, loc0, logvar0, noise_seed: int, final_noise):
    """textvae's ``refine_posterior(gradient="through")`` on the same noise (it draws one normal_ per step)."""
    lam0 = [loc0.detach().requires_grad_(), logvar0.detach().requires_grad_()]
    torch.manual_seed(noise_seed)
    refined, _ = refine_posterior(model, diagonal_gaussian(lam0[0], torch.exp(0.5 * lam0[1])), ids, steps=STEPS,
                                  lr=LR, momentum=MOMENTUM, max_grad_norm=CLIP, kl_weight=1.0, gradient="through")
    loss = negative_elbo(model, ids, refined.base_dist.loc, 2 * torch.log(refined.base_dist.scale), final_noise)
    return torch.autograd.grad(loss, lam0)


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
    print("| batch | mode | |textvae| | |rewrite| | |exact, unclipped| | |g0| | cos(textvae, rewrite) | "
          "cos(rewrite, exact) | cos(rewrite, g0) | joint norm at step 0 |\n|---|---|---|---|---|---|---|---|---|---|")
    for i, batch in enumerate(batches):
        ids = batch.input_ids
        for mode in ("eval", "train"):
            model.train(mode == "train")
            with torch.no_grad():
                q = model.encode(ids, batch.attention_mask)
            loc0, logvar0 = q.base_dist.loc, 2 * torch.log(q.base_dist.scale)
            torch.manual_seed(i)
            noises = [torch.randn_like(loc0) for _ in range(STEPS)]
            final = torch.randn_like(loc0)
            seeds = [1000 + k for k in range(STEPS)] if mode == "train" else None
            rewrite, joint = finite_difference_reverse(model, ids, loc0, logvar0, noises, final, seeds)
            if seeds is not None:
                torch.manual_seed(seeds[0])
            lam = [loc0.detach().requires_grad_(), logvar0.detach().requires_grad_()]
            g0 = torch.autograd.grad(negative_elbo(model, ids, *lam, noises[0]), lam)
            row = {"batch": i, "mode": mode, "rewrite_norm": norm(rewrite), "g0_norm": norm(g0),
                   "cos_rewrite_g0": cosine(rewrite, g0), "joint_norm_step0": joint}
            if mode == "eval":  # textvae's and the exact pass draw dropout differently: compared without it
                ours = textvae_reverse(model, ids, loc0, logvar0, i, final)
                exact = exact_unclipped(model, ids, loc0, logvar0, noises, final)
                row.update(textvae_norm=norm(ours), exact_norm=norm(exact), cos_textvae_rewrite=cosine(ours, rewrite),
                           cos_rewrite_exact=cosine(rewrite, exact))
            rows.append(row)

            def fmt(key, spec=".3f", row=row):
                return format(row[key], spec) if key in row else "—"

            print(f"| {i} | {mode} | {fmt('textvae_norm')} | {fmt('rewrite_norm')} | {fmt('exact_norm', '.4g')} | "
                  f"{fmt('g0_norm')} | {fmt('cos_textvae_rewrite')} | {fmt('cos_rewrite_exact')} | "
                  f"{fmt('cos_rewrite_g0')} | {fmt('joint_norm_step0')} |")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "run": {"recipe": cfg.name, "method": cfg.method, "seed": cfg.seed}, "checkpoint": args.checkpoint,
              "budget": f"{args.batches} training batches (seed 1 shuffle), {STEPS} SVI steps, lr {LR}, momentum "
                        f"{MOMENTUM}, clip {CLIP}, finite-difference ε {FD_EPS}", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
