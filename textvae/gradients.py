"""A training step's gradients: He et al.'s global-norm clip, and sparse embedding gradients.

An embedding's gradient has non-zero rows only for the batch's tokens (a few hundred of PTB's 10,002
words), yet as a dense tensor every step zero-fills it, takes its norm, may scale it and updates the
whole table: for the PTB LSTMs, whose two embeddings hold 58% of the parameters, that is 6% of an
fp32 step and more in bf16. ``train.embedding_gradients=sparse`` gives the embeddings sparse gradients
(``nn.Embedding(sparse=True)``), so that these passes touch the batch's rows alone. Under plain SGD
(no momentum, no weight decay) the update is the same: every row moves by its gradient times the lr,
and a row without a gradient does not move. Only the order of float additions within the norm
differs. A small table gains nothing: its dense passes stay in cache, and a sparse gradient has fixed
costs (coalescing, indexing); the synthetic set's 1,004 × 50 tables trained 2–4% slower with it. So ``auto``
(the default) makes the gradients of tables of at least :data:`AUTO_MIN_ELEMENTS` entries sparse, wherever
SGD updates the same rows and the rest of the step takes sparse gradients; ``sparse`` makes every table's
sparse (one line naming what prevents it, where something does), and ``dense`` none.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .errors import TextVAEError

AUTO_MIN_ELEMENTS = 1 << 20  # 4 MiB of fp32: PTB's 10,002 × 256 tables are above it, the synthetic set's below


def sparse_embeddings_obstacle(cfg: TrainConfig, distributed: bool, precision: str) -> str | None:
    """Why this run cannot train its embeddings with sparse gradients, or None when it can."""
    obstacles = (
        (cfg.optimizer != "sgd", "train.optimizer is adam (its moment estimates move every row)"),
        (cfg.momentum > 0, "train.momentum > 0 (the momentum buffer moves every row)"),
        (cfg.svi_steps > 0, "train.svi_steps > 0 (SA-VAE differentiates the decoder's gradient)"),
        (distributed, "the run is under torchrun (DDP reduces dense gradients)"),
        (precision == "fp16", "train.precision is fp16 (the GradScaler unscales dense gradients)"),
    )
    return next((why for blocked, why in obstacles if blocked), None)


def use_sparse_embeddings(cfg: TrainConfig, distributed: bool, precision: str) -> bool:
    """Whether ``train.embedding_gradients`` (auto | sparse | dense) makes this run's embedding gradients sparse;
    ``sparse`` where they cannot be is a TextVAEError naming the reason. ``precision``: the resolved one."""
    if cfg.embedding_gradients == "dense":
        return False
    obstacle = sparse_embeddings_obstacle(cfg, distributed, precision)
    if obstacle is not None and cfg.embedding_gradients == "sparse":
        raise TextVAEError(f"train.embedding_gradients=sparse cannot be used: {obstacle}")
    return obstacle is None


def set_sparse_embeddings(modules: list[nn.Module | None], sparse: bool, min_elements: int = 0) -> None:
    """Every ``nn.Embedding`` inside ``modules`` (None entries skipped) gets sparse gradients if ``sparse`` and
    it holds at least ``min_elements`` entries, dense ones otherwise."""
    for module in modules:
        for layer in () if module is None else module.modules():
            if isinstance(layer, nn.Embedding):
                layer.sparse = sparse and layer.weight.numel() >= min_elements


def has_sparse_embeddings(modules: list[nn.Module | None]) -> bool:
    """Whether any ``nn.Embedding`` inside ``modules`` gives sparse gradients."""
    return any(isinstance(layer, nn.Embedding) and layer.sparse
               for module in modules if module is not None for layer in module.modules())


def total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all of ``params``' gradients together. A sparse gradient is coalesced in place first
    (each row's entries summed once), so that its values are its non-zero rows."""
    grads = []
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
        if p.grad is not None:
            grads.append(p.grad.values() if p.grad.is_sparse else p.grad)
    return torch.nn.utils.get_total_norm(grads)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, also over sparse gradients, and without its multiplication by 1 when
    nothing is clipped (a pass over every gradient: the embeddings' and the output layer's are large).
    Returns the total norm."""
    norm = total_norm(params)
    if max_norm / (float(norm) + 1e-6) < 1.0:  # exactly when clip_grad_norm_'s clamped factor is below 1
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
