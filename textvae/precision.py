"""Training precision: ``train.precision`` = fp32 | bf16 | fp16 | auto, through ``torch.autocast``.

``bf16`` runs the matrix products (linear layers, LSTMs, the output layer) in
bfloat16 under autocast while the parameters, the optimiser, the softmax and the
loss stay in fp32. ``auto`` picks bf16 only where the device computes it fast: a
CUDA device that supports it, or a CPU with AMX-BF16 or AVX512-BF16 (the native
bf16 dot products that oneDNN uses); fp32 elsewhere. Evaluation (the protocol's
figures) is always fp32. ``fp16`` is for CUDA devices only: its narrow range needs
loss scaling (:func:`grad_scaler`, ``torch.amp.GradScaler``), and an overflowing step is
skipped by the scaler as a matter of course, not counted as a fault.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from .errors import TextVAEError

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 arithmetic


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where that is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_is_fast(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether ``device`` has native bf16 arithmetic (``flags``: the CPU's, by default read from the machine)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    return False


def resolve_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``train.precision`` ``name`` on ``device``."""
    if name == "auto":
        return "bf16" if bf16_is_fast(device, flags) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise TextVAEError(f"train.precision=fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
    return name


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The context a training step's forward pass runs in."""
    if precision in DTYPES:
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler; None for the other precisions, which need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
