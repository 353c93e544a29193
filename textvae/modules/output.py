"""The decoder's output layer fused with its cross-entropy: ``−log softmax(h Wᵀ + b)[target]`` per position.

The (N, V) logits of a batch are never held whole: rows are taken a cache-sized
block at a time (matrix product, log-sum-exp, the target's logit), so the
elementwise passes over N × V numbers run in cache instead of main memory, and
positions whose target is padding are skipped before the matrix product. When
gradients are needed, the forward pass also forms each block's gradient
(softmax − one-hot) while the block is in cache, and keeps only the (N, H), (V, H)
and (V,) gradients of Σ nll (the (V, H) one from a buffer of gradient rows, one product per buffer); the backward pass scales them by the incoming
gradient, which a sum or mean of the per-position losses makes the same for every
position (a non-uniform one recomputes the blocks with its weights). The values are
those of ``F.cross_entropy(F.linear(h, W, b), targets, reduction="none")`` up to
floating-point summation order. The fp32 products go through :mod:`textvae.modules.matmul`
(MKL or oneDNN, whichever is fast on the CPU).
"""

from __future__ import annotations

import torch

from . import matmul

# One block of logits: about 6 MiB, in the last-level cache. Larger blocks keep the products near peak, smaller
# ones the softmax in cache; benchmarks/output_blocks.py (AMX Xeon, one core, PTB fp32 VAE step) measured 1.396×
# He et al.'s reference step at 6 MiB against 1.293× at 4 MiB and 1.384× at 8 MiB, and bf16 within 3% at all three.
BLOCK_BYTES = 6 * 2**20
GRAD_BUFFER_BYTES = 64 * 2**20  # gradient rows gathered for one product with the features (PTB: a whole step)


def block_rows(vocab_size: int) -> int:
    """Rows per block so that a block of fp32 logits is about :data:`BLOCK_BYTES`."""
    return max(16, BLOCK_BYTES // (4 * vocab_size))


def _blocks(hidden, weight, bias, targets, rows: int, row_weights=None, grads: bool = False):
    """nll per row, and with ``grads`` the gradients of Σ_i w_i nll_i (w = ``row_weights``, or 1).

    The logits are formed ``rows`` at a time (a block in cache) and become the block's gradient (softmax −
    one-hot) in place. In fp32 the weight's gradient is accumulated block by block (the block stays in
    cache, which is fastest there). In bf16 each block's gradient is converted into a buffer of up to
    :data:`GRAD_BUFFER_BYTES` and the weight's gradient is one product per full buffer (for PTB, one per
    step): per block, a bf16 product of inner size ``rows`` plus its conversion to fp32 and accumulation
    cost more than the product itself (measured: 25.5 against 5.7 ms for a PTB step's, one core with AMX).

    Shape: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) (all valid) → nll (N,),
    then grad_hidden (N, H), grad_weight (V, H) (fp32), grad_bias (V,) or None.
    """
    n, vocab = hidden.size(0), weight.size(0)
    nll = hidden.new_empty(n, dtype=torch.float32)
    low = hidden.dtype != torch.float32  # bf16 features (autocast): products in bf16, the softmax in fp32
    w = weight.to(hidden.dtype)
    g_h = g_w = g_b = buffer = None
    if grads:
        g_h = torch.empty_like(hidden)
        g_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        per_flush = max(rows, GRAD_BUFFER_BYTES // (vocab * hidden.element_size())) // rows * rows if low else rows
        buffer = hidden.new_empty(min(n, per_flush), vocab)  # gradient rows awaiting the weight's product
    flushed = 0  # rows whose gradient is in g_w
    for start in range(0, n, rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]
        # fp32 with gradients: the logits are formed in the buffer (oneDNN: a block of their own), and become
        # the gradient there in place
        slot = buffer[start - flushed : start - flushed + t.size(0)] if grads else None
        out = slot if grads and not low else None
        if low:
            logits = (h @ w.t()).float()  # (n', V)
            if bias is not None:
                logits += bias.float()
        else:
            logits = matmul.linear(h, w, bias, out=out)  # (n', V); from oneDNN a new tensor, not the slot
            slot = logits
        picked = logits.gather(1, t[:, None])[:, 0]
        # log-sum-exp in place, with one exp pass over the block: exp(x − max) is also the softmax's numerator
        top = logits.amax(dim=1, keepdim=True)  # (n', 1)
        total = logits.sub_(top).exp_().sum(dim=1, keepdim=True)  # the logits now hold exp(x − max)
        nll[start : start + rows] = (total.log() + top)[:, 0] - picked
        if not grads:
            continue
        grad = logits.div_(total)  # softmax, in place of the logits
        grad[torch.arange(t.size(0), device=t.device), t] -= 1.0
        if row_weights is not None:
            grad.mul_(row_weights[start : start + rows, None])
        if g_b is not None:
            g_b += grad.sum(0)
        if low:
            slot.copy_(grad)  # into the products' dtype
        g_h[start : start + rows] = matmul.matmul(slot, w)
        end = start + t.size(0)
        if end - flushed == buffer.size(0) or end == n:  # the buffer is full (or the rows are done)
            # fp32: one block per flush, whose gradient is the block itself
            grad_rows, features = (buffer[: end - flushed] if low else slot), hidden[flushed:end]
            if g_w is None:
                g_w = matmul.matmul(grad_rows.t(), features).float()  # (V, H)
            elif low:
                g_w.add_(grad_rows.t() @ features)
            else:
                matmul.add_matmul(g_w, grad_rows.t(), features)
            flushed = end
    if grads and g_w is None:  # no rows
        g_w = torch.zeros_like(weight, dtype=torch.float32)
    return nll, g_h, g_w, g_b


class LinearCrossEntropy(torch.autograd.Function):
    """Autograd of the fused output layer + cross-entropy on the valid rows (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows):
        grads = any(ctx.needs_input_grad[:3])
        ctx.grads = None
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here, block by block
            nll, g_h, g_w, g_b = _blocks(hidden, weight, bias, targets, rows, grads=grads)
        if grads:
            ctx.save_for_backward(hidden, weight, bias, targets)
            ctx.grads, ctx.rows = (g_h, g_w, g_b), rows  # our own tensors: the backward scales them in place
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nll):
        hidden, weight, bias, targets = ctx.saved_tensors
        uniform = bool((grad_nll == grad_nll[:1]).all())
        if ctx.grads is None or not uniform:  # not a plain sum or mean (or a second backward): redo the blocks
            _, g_h, g_w, g_b = _blocks(hidden, weight, bias, targets, ctx.rows, row_weights=grad_nll, grads=True)
        else:  # the gradients of Σ nll, scaled in place by the one weight every position has
            g_h, g_w, g_b = ctx.grads
            scale = grad_nll[0]
            g_h.mul_(scale.to(g_h.dtype))
            g_w.mul_(scale)
            if g_b is not None:
                g_b.mul_(scale)
        ctx.grads = None  # the returned gradients are autograd's alone: it keeps them as .grad without a copy
        g_w = g_w.to(weight.dtype, memory_format=torch.contiguous_format)  # oneDNN's may be a transposed view
        return (g_h, g_w, None if g_b is None else g_b.to(bias.dtype), None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=..., reduction="none")``,
    computed block by block in cache, skipping ignored positions (their loss is 0).

    Shape: hidden (..., H), weight (V, H), bias (V,), targets (...) → (...).
    """
    shape = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    keep = targets != ignore_index
    everything = bool(keep.all())
    h, t = (hidden, targets) if everything else (hidden[keep], targets[keep])
    rows = block_rows(weight.size(0))
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (h, weight, bias)):
        nll = LinearCrossEntropy.apply(h, weight, bias, t, rows)
    else:  # evaluation: the values alone
        with torch.autocast(h.device.type, enabled=False):
            nll = _blocks(h, weight, bias, t, rows)[0]
    if not everything:
        nll = torch.zeros(targets.shape, dtype=nll.dtype, device=nll.device).masked_scatter(keep, nll)
    return nll.view(shape)
