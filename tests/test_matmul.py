"""The CPU product backends (modules/matmul.py): MKL and oneDNN compute the same products.

Each of the output layer's products, and the fused layer's values and gradients, agree between the
two backends and with plain PyTorch; ``auto`` chooses by CPU vendor; a bad choice is a one-line error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from textvae.errors import TextVAEError
from textvae.modules import matmul, output
from textvae.modules.output import linear_cross_entropy

BACKENDS = ["mkl"] + (["onednn"] if matmul.onednn_available() else [])


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    matmul.set_backend(None)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_onednn_is_available_in_the_cpu_build():
    # the speed path must not silently vanish from the pinned x86 CPU build
    if torch.backends.mkldnn.is_available():
        assert matmul.onednn_available()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 40), m=st.integers(1, 40), backend=st.sampled_from(BACKENDS),
       bias=st.booleans())
def test_products_match_torch(n, k, m, backend, bias):
    matmul.set_backend(backend)
    a, b, w = _randn(n, k, seed=1), _randn(k, m, seed=2), _randn(m, k, seed=3)
    c = _randn(n, m, seed=4)
    bvec = _randn(m, seed=5) if bias else None
    ref_linear = F.linear(a, w, bvec)
    torch.testing.assert_close(matmul.linear(a, w, bvec), ref_linear, rtol=1e-5, atol=1e-5)
    out = torch.empty(n, m)
    written = matmul.linear(a, w, bvec, out=out)
    assert (written is out) == (backend == "mkl")  # MKL writes into out; oneDNN's result is its own
    torch.testing.assert_close(written, ref_linear, rtol=1e-5, atol=1e-5)
    product = matmul.matmul(a, b)
    torch.testing.assert_close(product, a @ b, rtol=1e-5, atol=1e-5)
    # accumulation into matmul's own result (possibly a transposed layout) and into a contiguous tensor
    for target in (product, c.clone()):
        expected = target + a @ b
        assert matmul.add_matmul(target, a, b) is target
        torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_dtypes_take_torch_mm(backend):
    matmul.set_backend(backend)
    a, b = _randn(5, 7).bfloat16(), _randn(7, 3).bfloat16()
    assert torch.equal(matmul.matmul(a, b), a @ b)
    assert matmul.matmul(a, b).dtype == torch.bfloat16


@pytest.mark.skipif(len(BACKENDS) < 2, reason="this PyTorch has no oneDNN linear operator to compare")
@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_is_the_same_under_both_backends(monkeypatch, bias):
    monkeypatch.setattr(output, "BLOCK_BYTES", 4 * 60 * 7)  # blocks of 16 rows (the minimum): several, one ragged
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(45, 12, generator=gen), torch.randn(60, 12, generator=gen)
    b = torch.randn(60, generator=gen) if bias else None
    targets = torch.randint(1, 60, (45,), generator=gen)
    targets[::4] = 0  # padding
    results = {}
    for backend in BACKENDS:
        matmul.set_backend(backend)
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((b,) if bias else ())]
        nll = linear_cross_entropy(leaves[0], leaves[1], leaves[2] if bias else None, targets, ignore_index=0)
        nll.sum().backward()
        assert all(t.grad.is_contiguous() for t in leaves)  # autograd keeps .grad in the parameter's layout
        results[backend] = [nll.detach()] + [t.grad for t in leaves]
    ref = F.cross_entropy(F.linear(hidden, weight, b), targets, ignore_index=0, reduction="none")
    torch.testing.assert_close(results["onednn"][0], ref, rtol=1e-6, atol=1e-5)
    for mkl, onednn in zip(results["mkl"], results["onednn"], strict=True):
        torch.testing.assert_close(onednn, mkl, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("vendor", "expected"), [("GenuineIntel", "mkl"), ("AuthenticAMD", "onednn"),
                                                  ("", "mkl")])
def test_auto_chooses_by_vendor(monkeypatch, vendor, expected):
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(matmul, "onednn_available", lambda: True)
    monkeypatch.delenv(matmul.ENV, raising=False)
    matmul.set_backend("auto")
    assert matmul.backend() == expected
    monkeypatch.setattr(matmul, "onednn_available", lambda: False)
    matmul.set_backend("auto")
    assert matmul.backend() == "mkl"  # without the operator, MKL whatever the vendor


def test_environment_chooses(monkeypatch):
    monkeypatch.setenv(matmul.ENV, "mkl")
    matmul.set_backend(None)
    assert matmul.backend() == "mkl"
    monkeypatch.setattr(matmul, "onednn_available", lambda: False)
    monkeypatch.setenv(matmul.ENV, "onednn")
    matmul.set_backend(None)
    with pytest.raises(TextVAEError, match="no working oneDNN"):
        matmul.backend()


def test_bad_names_are_errors(monkeypatch):
    with pytest.raises(TextVAEError, match="choose from auto, mkl, onednn"):
        matmul.set_backend("blas")
    monkeypatch.setenv(matmul.ENV, "blas")
    matmul.set_backend(None)
    with pytest.raises(TextVAEError, match="TEXTVAE_CPU_MATMUL=blas"):
        matmul.backend()


def test_bad_environment_is_one_line_from_the_cli(monkeypatch, tmp_path):
    monkeypatch.setenv(matmul.ENV, "blas")
    proc = run_cli("train", "debug", "--output-dir", tmp_path / "run")
    assert_one_line_error(proc.returncode, proc.stderr, "TEXTVAE_CPU_MATMUL=blas")
    assert not (tmp_path / "run").exists()
