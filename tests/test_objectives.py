"""Objectives (objectives.py): the cyclical KL schedule and the three free-bits variants."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal

from textvae.config import TrainConfig
from textvae.model import VAEOutput
from textvae.objectives import cyclical_weight, free_bits_kl, kl_per_dimension, kl_weight, negative_elbo

# --- cyclical annealing (Fu et al. 2019) --------------------------------------------------------


def test_cyclical_schedule_zeros_ramp_plateau_and_restart_at_each_cycle():
    # 100 steps, 4 cycles of 25: 5 steps at 0 (ratio_zero 0.2), a ramp of 1/10 per step (ratio_increase 0.4)
    # from 0 at step 5 to 1 at step 15, then 1 until the cycle ends.
    weights = [cyclical_weight(t, 100, 4, ratio_increase=0.4, ratio_zero=0.2) for t in range(100)]
    expected_cycle = [0.0] * 5 + [k / 10 for k in range(11)] + [1.0] * 9
    assert len(expected_cycle) == 25
    for c in range(4):
        assert weights[25 * c: 25 * (c + 1)] == pytest.approx(expected_cycle), c
    for c in (1, 2, 3):  # the restart is at the cycle boundary: 1 on its last step, 0 on the next
        assert weights[25 * c - 1] == 1.0 and weights[25 * c] == 0.0
    assert cyclical_weight(100, 100, 4, 0.4, 0.2) == 1.0  # past the planned steps: 1


def test_cyclical_schedule_without_zero_phase_and_uneven_cycles():
    # Fu et al.'s original schedule (no zero phase): 10 steps, 3 cycles of 10/3 starting at steps 0, 3, 6
    # (⌊c·P⌋), each rising by 1 / (P/2) = 0.6 per step from 0, capped at 1.
    weights = [cyclical_weight(t, 10, 3, ratio_increase=0.5) for t in range(10)]
    assert weights == pytest.approx([0.0, 0.6, 1.0, 0.0, 0.6, 1.0, 0.0, 0.6, 1.0, 1.0])


def test_kl_weight_cyclical_spans_the_run_and_is_scaled_by_beta():
    # The run is max_epochs × steps_per_epoch = 40 steps (max_steps larger), 2 cycles of 20.
    cfg = TrainConfig(kl_schedule="cyclical", kl_n_cycles=2, kl_ratio_increase=0.5, kl_ratio_zero=0.0,
                      beta=0.5, max_epochs=4, max_steps=1000)
    weights = [kl_weight(t, 10, cfg) for t in range(40)]
    assert weights[:11] == pytest.approx([0.5 * k / 10 for k in range(11)])
    assert weights[10:20] == pytest.approx([0.5] * 10) and weights[20] == 0.0
    assert weights == pytest.approx([0.5 * cyclical_weight(t, 40, 2, 0.5) for t in range(40)])
    # max_steps, when smaller, sets the run's length; a later start restarts the schedule there
    short = TrainConfig(kl_schedule="cyclical", kl_n_cycles=2, max_epochs=4, max_steps=20)
    assert [kl_weight(t, 10, short) for t in (0, 5, 9, 10, 15)] == pytest.approx([0, 1, 1, 0, 1])
    # from step 12 the remaining 8 steps make 2 cycles of 4, each rising over 2 steps
    assert [kl_weight(t, 10, short, start_step=12) for t in range(12, 20)] == pytest.approx(
        [0, 0.5, 1, 1, 0, 0.5, 1, 1])


# --- free bits ----------------------------------------------------------------------------------

LAMBDA = 0.1
# σ = 1, so KL_{n,d} = μ²/2:
#   dim 0: 2.0 for rows 0-2 and 0.045 for row 3 (batch mean 1.51 > λ)
#   dim 1: 0.005 everywhere (< λ, batch mean < λ)
#   dim 2: 0.5 for rows 0, 2 and 0.02 for rows 1, 3 (batch mean 0.26 > λ, but two entries < λ)
# Row totals: 2.505, 2.025, 2.505, 0.07; only row 3 is below D·λ = 0.3.
MU = [[2.0, 0.1, 1.0], [2.0, 0.1, 0.2], [2.0, 0.1, 1.0], [0.3, 0.1, 0.2]]
KEPT = {  # which entries keep the plain-KL gradient; all others must get exactly 0
    "batch_dim": [[1, 0, 1]] * 4,
    "example_dim": [[1, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 0]],
    "example_total": [[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0]],
}


def _posterior(mu: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.ones_like(mu)), 1)


def _grad(loss_fn) -> torch.Tensor:
    mu = torch.tensor(MU, requires_grad=True)
    loss_fn(_posterior(mu)).mean().backward()
    return mu.grad


@pytest.mark.parametrize("mode", list(KEPT))
def test_free_bits_keeps_gradients_above_the_threshold_and_zeroes_those_below(mode):
    plain = _grad(lambda q: kl_per_dimension(q).sum(-1))  # the ordinary KL: μ / B
    torch.testing.assert_close(plain, torch.tensor(MU) / 4)
    grad = _grad(lambda q: free_bits_kl(q, LAMBDA, mode))
    kept = torch.tensor(KEPT[mode], dtype=torch.bool)
    torch.testing.assert_close(grad[kept], plain[kept], rtol=0, atol=1e-7)
    assert (grad[~kept] == 0).all()


def test_the_three_free_bits_variants_are_different_objectives():
    kl = torch.tensor(MU) ** 2 / 2
    values = {mode: free_bits_kl(_posterior(torch.tensor(MU)), LAMBDA, mode) for mode in KEPT}
    # Kingma et al.: Σ_d max(λ, mean_n KL_{n,d}), the same for every sequence
    assert values["batch_dim"] == pytest.approx([kl.mean(0).clamp(min=LAMBDA).sum().item()] * 4)
    # Li et al. --fb 2: Σ_d KL_{n,d} over the entries above λ
    assert values["example_dim"] == pytest.approx((kl * (kl > LAMBDA)).sum(-1).tolist())
    # Li et al. --fb 1: the whole KL of the sequences above D·λ
    assert values["example_total"] == pytest.approx([kl[0].sum().item(), kl[1].sum().item(), kl[2].sum().item(), 0])
    grads = {mode: _grad(lambda q, m=mode: free_bits_kl(q, LAMBDA, m)) for mode in KEPT}
    assert not torch.equal(grads["batch_dim"], grads["example_dim"])
    assert not torch.equal(grads["example_dim"], grads["example_total"])
    assert not torch.equal(grads["batch_dim"], grads["example_total"])


def test_negative_elbo_uses_free_bits_only_when_asked():
    mu = torch.tensor(MU)
    q = _posterior(mu)
    kl = kl_per_dimension(q).sum(-1)
    out = VAEOutput(rec=torch.full((4,), 10.0), kl=kl, z=mu, posterior=q)
    assert float(negative_elbo(out, 0.5)) == pytest.approx(10 + 0.5 * kl.mean().item())
    fb = free_bits_kl(q, LAMBDA, "example_dim")
    assert float(negative_elbo(out, 0.5, LAMBDA, "example_dim")) == pytest.approx(10 + 0.5 * fb.mean().item())
    lm = VAEOutput(rec=torch.full((4,), 10.0), kl=torch.zeros(4), z=None, posterior=None)
    assert float(negative_elbo(lm, 1.0, LAMBDA, "batch_dim")) == pytest.approx(10.0)  # no latent, no free bits
