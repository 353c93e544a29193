"""modules/dropout.py: nn.Dropout's law, drawn faster."""

from __future__ import annotations

import pytest
import torch

from textvae.modules.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(p, dtype):
    torch.manual_seed(0)
    x = (torch.rand(200, 500) + 0.5).to(dtype).requires_grad_()
    drop = Dropout(p).train()
    y = drop(x)
    zero = y == 0
    assert y.dtype == dtype
    assert float(zero.float().mean()) == pytest.approx(p, abs=0.01)  # 100k elements: s.d. ≤ 0.0016
    torch.testing.assert_close(y[~zero], (x[~zero] / (1 - p)).to(dtype))
    y.sum().backward()  # the gradient is the mask times 1 / (1 − p)
    torch.testing.assert_close(x.grad, (~zero).to(dtype) / (1 - p))


def test_dropout_is_the_identity_in_evaluation_and_at_zero():
    x = torch.randn(4, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert isinstance(Dropout(0.3), torch.nn.Dropout) and Dropout(0.3).p == 0.3
