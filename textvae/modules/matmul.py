"""fp32 matrix products of the fused output layer on the CPU: MKL's (``torch.mm``) or oneDNN's.

PyTorch's CPU build runs an fp32 ``torch.mm`` through MKL, and MKL picks its kernels
by CPU vendor: on a CPU that is not Intel's it leaves AVX-512 unused. oneDNN (also
inside every x86 build, and already what runs the LSTMs) picks them by instruction
set. On a 2-core AMD EPYC (AVX-512) with one thread, a PTB output block
(157 × 256 by 256 × 10,002) ran at 87 GFLOP/s through MKL and 191 through oneDNN,
a 2048³ product at 95 and 204, and the fp32 PTB training step 1.56× faster
(``benchmarks/cpu_matmul.py``, ``docs/speed.md``). Both compute the same fp32
products; only the summation order differs.

``auto`` (the default) takes oneDNN on a CPU whose vendor is not ``GenuineIntel``
when PyTorch has the operator and it passes a check against ``torch.mm``, and MKL
otherwise (on Intel CPUs MKL's sgemm is at the fp32 peak). ``TEXTVAE_CPU_MATMUL`` =
``mkl`` | ``onednn`` | ``auto``, or :func:`set_backend`, chooses by hand. Tensors
that are not fp32 or not on the CPU always take ``torch.mm`` (bf16 products reach
oneDNN through PyTorch already).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from ..errors import TextVAEError

BACKENDS = ("auto", "mkl", "onednn")
ENV = "TEXTVAE_CPU_MATMUL"
_chosen: str | None = None  # set_backend's choice; None: the environment's, else auto


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``vendor_id`` of Linux's ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``, ...); "" if unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN's inner product (the operator TorchInductor's CPU linear uses)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's linear operator and it agrees with ``torch.mm`` on a small product."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((7, 33), (19, 33), (19,)))
        got = _onednn_linear(x, w.t().contiguous().t(), b)  # a transposed view, as the output layer passes one
        return bool(torch.allclose(got, torch.addmm(b, x, w.t()), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def set_backend(name: str | None) -> None:
    """Choose ``mkl``, ``onednn`` or ``auto`` for this process (None: back to ``TEXTVAE_CPU_MATMUL`` or auto)."""
    if name is not None and name not in BACKENDS:
        raise TextVAEError(f"cpu matmul backend '{name}': choose from {', '.join(BACKENDS)}")
    global _chosen
    _chosen = name
    backend.cache_clear()


@lru_cache(maxsize=1)
def backend() -> str:
    """The backend in force: ``mkl`` or ``onednn``."""
    name = _chosen if _chosen is not None else os.environ.get(ENV, "auto")
    if name not in BACKENDS:
        raise TextVAEError(f"{ENV}={name}: choose from {', '.join(BACKENDS)}")
    if name == "onednn" and not onednn_available():
        raise TextVAEError(f"{ENV}=onednn: this PyTorch has no working oneDNN linear operator")
    if name == "auto":
        return "onednn" if cpu_vendor() not in ("GenuineIntel", "") and onednn_available() else "mkl"
    return name


def _onednn(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) and backend() == "onednn"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)``: MKL writes it into ``out`` when given; oneDNN returns a new tensor (copying
    it into ``out`` would cost a pass over it), so use the result.

    Shape: x (N, H), weight (V, H), bias (V,) → (N, V).
    """
    if _onednn(x, weight):
        return _onednn_linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; from oneDNN, a product with more rows than columns comes as the transpose of a contiguous
    (M, N) result (oneDNN runs such a product as ``(bᵀ aᵀ)ᵀ``, with the long side as its columns: the output
    layer's weight gradient, 10,002 × 256 from 157 rows, ran at 176 GFLOP/s so against 118).

    Shape: a (N, K), b (K, M) → (N, M).
    """
    if not _onednn(a, b):
        return a @ b
    if a.size(0) > b.size(1):
        return _onednn_linear(b.t(), a).t()
    return _onednn_linear(a, b.t())


def add_matmul(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c += a @ b`` in place; returns ``c``. With oneDNN, ``c`` is best what :func:`matmul` returned (a
    transposed result is accumulated in its own layout).

    Shape: c (N, M), a (N, K), b (K, M) → (N, M).
    """
    if not _onednn(c, a, b):
        return c.addmm_(a, b)
    if c.t().is_contiguous() and not c.is_contiguous():
        c.t().add_(_onednn_linear(b.t(), a))
    else:
        c.add_(_onednn_linear(a, b.t()))
    return c
