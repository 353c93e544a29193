"""Dropout whose mask comes from one vectorised uniform draw.

``nn.Dropout`` draws its mask with ``bernoulli_``, which on a CPU costs about 10 ns per element: a PTB
decoder's two dropouts, on (32, 41, 256) activations each, took 7 ms of a 90 ms bf16 training step.
Comparing a ``torch.rand`` draw with p gives the same distribution of masks at a third of the cost.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout(p)``: in training, each element is zeroed with probability p and the rest scaled by 1 / (1 − p);
    the identity in evaluation. The mask is ``uniform ≥ p`` (a different draw from ``nn.Dropout``'s, same law)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        mask = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask
