"""Semi-amortized inference (Kim, Wiseman, Miller, Sontag & Rush, ICML 2018, "Semi-amortized variational
autoencoders"): the encoder's posterior is only the start; a few steps of stochastic variational inference
refine it per sequence.

From λ₀ = (μ, log σ²) given by the encoder, K steps of gradient descent with momentum on the negative
ELBO of the batch (their Algorithm 1, as their ``OptimN2N``):

    v_k = m · v_{k−1} − clip(∇_λ L(λ_{k−1})),   λ_k = λ_{k−1} + lr · v_k,

with L the batch mean of rec + β · KL under one fresh reparameterised sample per step, and the gradient
of μ and of log σ² each clipped to norm ``max_grad_norm`` over the batch. Their text setup: K = 20,
lr 1, m = 0.5, clip 5. The decoder then trains at λ_K.

``gradient="through"`` is their end-to-end variant: the steps are differentiated (the Hessian-vector
products of their eq. 5 come from ``torch.autograd.grad(..., create_graph=True)`` instead of finite
differences), so the encoder and the decoder also learn through the refinement; as in their backward
pass, the gradient flowing back into each step's (μ, log σ²), and each step's contribution to the
decoder's gradient, are clipped to ``max_grad_norm``. ``"stop"`` refines from
a detached λ₀ and trains the encoder towards the refined posterior, KL(q_λ₀ ‖ sg(q_λK)) (their
``--train_n2n 0 --train_kl 1``): no gradient reaches the encoder through the steps.
``"finite-difference"`` is their released reverse pass (``optim_n2n.py``, ``backward_mom``) with its
arithmetic as it is: finite-difference Hessian-vector products (step ε), the gradient at each perturbed
point clipped jointly over (μ, log σ², every decoder parameter), the stored one per input, and the
adjoint clipped after each step. When that joint norm exceeds the clip, the difference is dominated
by the clipping, not the Hessian (docs/mitigations.md measures how often, and what the encoder then
receives). It needs first derivatives only, so the fused output layer serves every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Independent, kl_divergence
from torch.nn.attention import SDPBackend, sdpa_kernel

from .modules.posterior import diagonal_gaussian


class _ClipBackward(torch.autograd.Function):
    """The identity on several tensors, whose backward scales their incoming gradients together to a total
    norm of at most ``max_norm``.

    Kim et al.'s ``OptimN2N.backward_mom`` clips, at every step of its reverse pass, the gradient flowing back
    into that step's variational parameters and the step's contribution to the decoder's gradient. Without it
    the end-to-end gradient through 20 steps of lr 1 explodes (the encoder's initial σ ran off to 10⁵ within
    100 synthetic steps) or swamps the decoder's own gradient."""

    @staticmethod
    def forward(ctx, max_norm, *xs):
        ctx.max_norm = max_norm
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        present = [g for g in grads if g is not None]
        if not present:
            return (None, *grads)
        scale = _joint_clip_scale(present, ctx.max_norm)
        return (None, *(None if g is None else g * scale.to(g.dtype) for g in grads))


def _joint_clip_scale(tensors, max_norm: float) -> torch.Tensor:
    """min(1, ``max_norm`` / the joint norm of ``tensors``): the factor that clips them together."""
    norm = torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors))
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def _clipped(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``grad`` scaled to norm ``max_norm`` over the whole tensor when it is longer (0: no clipping)."""
    if max_norm <= 0:
        return grad
    norm = grad.detach().norm()
    return grad * torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def batch_negative_elbo(model, input_ids: torch.Tensor, loc: torch.Tensor, logvar: torch.Tensor,
                        kl_weight: float, twice_differentiable: bool, samples: int = 1,
                        decoder_grad_clip: float = 0.0) -> torch.Tensor:
    """Batch mean of −log p(x|z) + β · KL(q ‖ p), −log p(x|z) averaged over ``samples`` fresh samples
    z ~ q = N(loc, exp(logvar)) (Kim et al.: one).

    ``twice_differentiable`` takes the output layer unfused (logits, then cross-entropy), whose
    gradient can itself be differentiated; ``decoder_grad_clip`` > 0 then clips what this loss's part of
    the graph passes back to the decoder's parameters (their joint norm). Shape: input_ids (B, T),
    loc, logvar (B, D) → ().
    """
    q = diagonal_gaussian(loc, torch.exp(0.5 * logvar))
    decoder = None
    if twice_differentiable and decoder_grad_clip > 0:
        names, tensors = zip(*model.decoder.named_parameters(), strict=True)
        decoder = dict(zip(names, _ClipBackward.apply(decoder_grad_clip, *tensors), strict=True))
    rec = 0.0
    for _ in range(samples):
        z = loc + torch.empty_like(loc).normal_() * q.base_dist.scale  # (B, D), drawn as evaluation skips it
        if twice_differentiable:
            with sdpa_kernel(SDPBackend.MATH):  # attention whose backward has a derivative (Transformers)
                logits = (model.decode(input_ids[:, :-1], z) if decoder is None else
                          torch.func.functional_call(model.decoder, decoder, (input_ids[:, :-1], z)))  # (B, T-1, V)
            targets = input_ids[:, 1:]
            rec = rec + F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                        ignore_index=model.config.pad_id, reduction="none").view(targets.shape).sum(-1)
        else:
            rec = rec + model.reconstruction_nll(input_ids, z)
    return (rec / samples + kl_weight * kl_divergence(q, model.prior())).mean()


def _clip_(tensors, max_norm: float) -> None:
    """Scale ``tensors`` in place to a joint norm of at most ``max_norm`` (0: no clipping)."""
    if max_norm > 0:
        scale = _joint_clip_scale(tensors, max_norm)
        for t in tensors:
            t.mul_(scale.to(t.dtype))


class _FiniteDifferenceSteps(torch.autograd.Function):
    """The SVI steps as one function of (λ₀, decoder parameters) → λ_K, differentiated as Kim et al.'s released
    ``OptimN2N.backward_mom`` does (see the module docstring). Each step's random draws (its z sample, the
    decoder's dropout) are replayed in the reverse pass from the RNG state saved before them."""

    @staticmethod
    def forward(ctx, loss_fn, settings, loc0, logvar0, *decoder):
        steps, lr, momentum, max_norm, eps = settings
        lam, velocity, saved = [loc0.detach(), logvar0.detach()], None, []
        with torch.enable_grad():
            for _ in range(steps):
                state = _rng_state(loc0.device)
                leaves = [t.detach().requires_grad_() for t in lam]
                grads = torch.autograd.grad(loss_fn(*leaves), [*leaves, *decoder], allow_unused=True)
                g_lam = [g.detach().clone() for g in grads[:2]]
                _clip_(g_lam[:1], max_norm)
                _clip_(g_lam[1:], max_norm)  # μ's and log σ²'s each on its own
                saved.append((state, [t.detach() for t in lam], g_lam, [_zero_if_none(g, p) for g, p in
                                                                         zip(grads[2:], decoder, strict=True)]))
                velocity = [-g for g in g_lam] if velocity is None else [
                    momentum * v - g for v, g in zip(velocity, g_lam, strict=True)]
                lam = [t + lr * v for t, v in zip(lam, velocity, strict=True)]
        ctx.loss_fn, ctx.settings, ctx.saved, ctx.decoder = loss_fn, settings, saved, decoder
        return lam[0], lam[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loc, grad_logvar):
        _, lr, momentum, max_norm, eps = ctx.settings
        adjoint = [torch.zeros_like(grad_loc) if grad_loc is None else grad_loc.clone(),
                   torch.zeros_like(grad_logvar) if grad_logvar is None else grad_logvar.clone()]
        v_adjoint = [torch.zeros_like(a) for a in adjoint]
        decoder_grad = [torch.zeros_like(p) for p in ctx.decoder]
        for state, lam, g_lam, g_decoder in reversed(ctx.saved):
            v_adjoint = [va + lr * a for va, a in zip(v_adjoint, adjoint, strict=True)]
            leaves = [(t + eps * va).requires_grad_() for t, va in zip(lam, v_adjoint, strict=True)]
            with torch.enable_grad(), torch.random.fork_rng(devices=_rng_devices(lam[0].device)):
                _set_rng_state(state, lam[0].device)
                grads = torch.autograd.grad(ctx.loss_fn(*leaves), [*leaves, *ctx.decoder], allow_unused=True)
            perturbed = [_zero_if_none(g, x) for g, x in zip(grads, [*leaves, *ctx.decoder], strict=True)]
            _clip_(perturbed, max_norm)  # jointly over (μ, log σ², decoder), as theirs
            h_decoder = [(p - g) / eps for p, g in zip(perturbed[2:], g_decoder, strict=True)]
            _clip_(h_decoder, max_norm)
            decoder_grad = [d - h for d, h in zip(decoder_grad, h_decoder, strict=True)]
            adjoint = [a - (p - g) / eps for a, p, g in zip(adjoint, perturbed[:2], g_lam, strict=True)]
            _clip_(adjoint, max_norm)
            v_adjoint = [va * momentum for va in v_adjoint]
        ctx.saved = None
        return (None, None, *adjoint, *decoder_grad)


def _zero_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad.detach().clone()


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _finite_difference_refinement(model, posterior, input_ids, steps, lr, momentum, max_grad_norm, kl_weight, eps,
                                  samples):
    loc0, logvar0 = posterior.base_dist.loc, 2 * torch.log(posterior.base_dist.scale)
    decoder = [p for p in model.decoder.parameters() if p.requires_grad]

    def loss_fn(loc, logvar):
        return batch_negative_elbo(model, input_ids, loc, logvar, kl_weight, twice_differentiable=False,
                                   samples=samples)

    loc, logvar = _FiniteDifferenceSteps.apply(loss_fn, (steps, lr, momentum, max_grad_norm, eps), loc0, logvar0,
                                               *decoder)
    return diagonal_gaussian(loc, torch.exp(0.5 * logvar))


def refine_posterior(model, posterior: Independent, input_ids: torch.Tensor, *, steps: int, lr: float = 1.0,
                     momentum: float = 0.5, max_grad_norm: float = 5.0, kl_weight: float = 1.0,
                     gradient: str = "through", samples: int = 1,
                     fd_eps: float = 1e-5) -> tuple[Independent, torch.Tensor | None]:
    """SA-VAE's refinement of ``posterior`` (= q_λ₀(z|x)) by ``steps`` SVI steps; see the module docstring.

    Returns the refined posterior and, for ``gradient="stop"`` while gradients are on, the per-sequence
    loss that trains the encoder (KL(q_λ₀ ‖ sg(q_λK)), (B,)); else None. With gradients off (evaluation)
    the refined posterior is a constant. ``steps = 0`` returns ``posterior`` itself. ``samples``: posterior
    samples per step's gradient (Kim et al. and every recipe: 1).
    Shape: posterior batch shape (B,), input_ids (B, T).
    """
    if steps == 0:
        return posterior, None
    training = torch.is_grad_enabled()
    if training and gradient == "finite-difference":
        return _finite_difference_refinement(model, posterior, input_ids, steps, lr, momentum, max_grad_norm,
                                             kl_weight, fd_eps, samples), None
    through = training and gradient == "through"
    loc0, logvar0 = posterior.base_dist.loc, 2 * torch.log(posterior.base_dist.scale)  # λ₀, (B, D) each
    params = [loc0, logvar0] if through else [loc0.detach(), logvar0.detach()]
    velocity = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():  # evaluation runs under no_grad; the steps need ∇_λ
        for _ in range(steps):
            if through and max_grad_norm > 0:  # the gradient flowing back into this step's λ, clipped (Kim et al.)
                params = list(_ClipBackward.apply(max_grad_norm, *params))
            leaves = params if through else [p.detach().requires_grad_() for p in params]
            loss = batch_negative_elbo(model, input_ids, *leaves, kl_weight, twice_differentiable=through,
                                       samples=samples, decoder_grad_clip=max_grad_norm if through else 0.0)
            grads = torch.autograd.grad(loss, leaves, create_graph=through)
            velocity = [momentum * v - _clipped(g, max_grad_norm) for v, g in zip(velocity, grads, strict=True)]
            params = [p + lr * v for p, v in zip(leaves if through else params, velocity, strict=True)]
            if not through:
                params, velocity = [p.detach() for p in params], [v.detach() for v in velocity]
    refined = diagonal_gaussian(params[0], torch.exp(0.5 * params[1]))
    if training and gradient == "stop":
        target = diagonal_gaussian(params[0].detach(), torch.exp(0.5 * params[1]).detach())
        return refined, kl_divergence(posterior, target)
    return refined, None
