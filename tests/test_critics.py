"""Contrastive critics (modules/critics.py) and the critic term of the objective."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model, random_ids
from torch.distributions import Independent, Normal

from textvae.config import CriticConfig, TextVAEError, load_recipe
from textvae.data import TextDataset
from textvae.modules.critics import NeuralCritic, SelfCritic, build_critic, info_nce
from textvae.objectives import critic_term, critic_weight


def test_self_critic_scores_are_pairwise_log_probs():
    torch.manual_seed(0)
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    posterior = Independent(Normal(loc, scale), 1)
    z = torch.randn(5, 3)
    scores = SelfCritic()(z, posterior)
    assert scores.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            expected = Independent(Normal(loc[j], scale[j]), 1).log_prob(z[i])
            assert torch.allclose(scores[i, j], expected, atol=1e-5)


def test_perfect_critic_has_zero_loss_and_constant_critic_log_b():
    b = 8
    loss, acc = info_nce(50.0 * torch.eye(b))
    assert loss.item() < 1e-6 and acc.item() == 1.0
    loss, acc = info_nce(torch.full((b, b), 3.0))
    assert loss.item() == pytest.approx(math.log(b), rel=1e-6)
    sym, _ = info_nce(torch.full((b, b), 3.0), symmetric=True)
    assert sym.item() == pytest.approx(math.log(b), rel=1e-6)


def test_symmetric_loss_adds_the_column_direction():
    scores = torch.randn(6, 6)
    row, _ = info_nce(scores)
    col, _ = info_nce(scores.T.contiguous())
    both, _ = info_nce(scores, symmetric=True)
    assert both.item() == pytest.approx(0.5 * (row.item() + col.item()), rel=1e-6)


TRANSFORMER_ENCODER = dict(encoder="transformer", enc_layers=1, num_heads=2, dropout=0.0)


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
@pytest.mark.parametrize("kind", ["self", "neural", "hybrid", "hybrid-shared-encoder"])
def test_critic_gradient_reaches_encoder_and_critic_not_decoder(kind, encoder):
    extra = TRANSFORMER_ENCODER if encoder == "transformer" else {}
    model = make_model(seed=1, init_range=0.5, emb_init_range=0.5, **extra).train()
    shared = kind == "hybrid-shared-encoder"
    kind = "hybrid" if shared else kind
    cfg = CriticConfig(type=kind, embed_dim=8, hidden_dim=8, proj_dim=8, share_encoder=shared)
    critic = build_critic(cfg, model)
    batch = TextDataset(random_ids([5, 6, 7, 5, 6, 7])).collate(list(range(6)))
    out = model(batch.input_ids, batch.attention_mask)
    loss, _, bound = critic_term(critic, out, batch.input_ids, batch.attention_mask, cfg)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.posterior.linear.weight.grad.abs().sum() > 0
    if shared:  # no LSTM of its own: MLP heads on the inference encoder's h
        assert critic.x_encoder is None and all(p.grad is not None for p in critic.parameters())
        beyond_embedding = [p for n, p in model.encoder.named_parameters() if "embed" not in n]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beyond_embedding)
    elif kind != "self":
        own = [p for n, p in critic.named_parameters() if not n.startswith("x_encoder.embed")]
        assert all(p.grad is not None for p in own)
        assert (critic.x_encoder.embed is model.encoder.get_input_embeddings()) == (kind == "hybrid")
    assert bound.item() == pytest.approx(math.log(6) - loss.item(), abs=1e-5)


def test_queue_raises_the_candidate_count():
    torch.manual_seed(0)
    critic = NeuralCritic(vocab_size=30, latent_dim=4, embed_dim=8, hidden_dim=8, proj_dim=8, queue_size=10).train()
    batch = TextDataset(random_ids([4, 5, 6, 4])).collate([0, 1, 2, 3])
    z = torch.randn(4, 4)
    counts = [critic(z, None, batch.input_ids, batch.attention_mask).shape[1] for _ in range(4)]
    assert counts == [4, 8, 12, 14]  # B, then B + queued keys, capped at B + queue_size
    loss, _ = info_nce(critic(z, None, batch.input_ids, batch.attention_mask))
    assert math.isfinite(loss.item())
    critic.eval()  # evaluation does not push keys
    before = critic.queue.clone()
    critic(z, None, batch.input_ids, batch.attention_mask)
    assert torch.equal(before, critic.queue)


def test_self_critic_queue_scores_past_posteriors_without_gradient():
    torch.manual_seed(0)
    critic = SelfCritic(queue_size=5).train()
    batches = [(torch.randn(4, 3, requires_grad=True), torch.rand(4, 3) + 0.1) for _ in range(3)]
    counts = []
    for loc, scale in batches:
        z = torch.randn(4, 3)
        scores = critic(z, Independent(Normal(loc, scale), 1))
        counts.append(scores.shape[1])
    assert counts == [4, 8, 9]  # B, then B + queued posteriors, capped at B + queue_size
    # the last call scored against the newest 5 queued posteriors: batch 2's four, then batch 1's first
    queued_loc = torch.cat([batches[1][0], batches[0][0]])[:5]
    queued_scale = torch.cat([batches[1][1], batches[0][1]])[:5]
    expected = Independent(Normal(queued_loc[None], queued_scale[None]), 1).log_prob(z[:, None, :])
    torch.testing.assert_close(scores[:, 4:], expected)
    scores.sum().backward()
    assert batches[2][0].grad.abs().sum() > 0 and batches[0][0].grad is None and batches[1][0].grad is None
    assert not critic.queue.requires_grad
    critic.eval()  # evaluation does not push posteriors
    before = critic.queue.clone()
    critic(z, Independent(Normal(*batches[0]), 1))
    assert torch.equal(before, critic.queue)
    built = build_critic(CriticConfig(type="self", queue_size=7), make_model(seed=0))
    assert isinstance(built, SelfCritic) and built.queue_size == 7


def test_critic_weight_warmup_is_linear():
    cfg = CriticConfig(type="self", weight=2.0, warmup_steps=10)
    assert [critic_weight(s, cfg) for s in (0, 5, 10, 20)] == [0.0, 1.0, 2.0, 2.0]
    assert critic_weight(0, CriticConfig(type="self", weight=3.0)) == 3.0


def test_no_critic_for_none_or_language_model():
    assert build_critic(CriticConfig(type="none"), make_model()) is None
    assert build_critic(CriticConfig(type="self"), make_model(latent_dim=0)) is None


def test_critic_mean_uses_the_posterior_mean():
    model = make_model(seed=1, init_range=0.5, emb_init_range=0.5).train()
    batch = TextDataset(random_ids([5, 6, 7, 5])).collate([0, 1, 2, 3])
    out = model(batch.input_ids, batch.attention_mask)
    seen = {}

    def spy(z, posterior, input_ids, attention_mask, encoder_h=None):
        seen["z"] = z
        return torch.zeros(z.size(0), z.size(0))

    critic_term(spy, out, batch.input_ids, batch.attention_mask, CriticConfig(type="self", z="mean"))
    assert torch.equal(seen["z"], out.posterior.base_dist.loc)
    critic_term(spy, out, batch.input_ids, batch.attention_mask, CriticConfig(type="self", z="sample"))
    assert torch.equal(seen["z"], out.z)


def test_default_encoder_init_gives_the_critic_a_signal():
    batch = TextDataset(random_ids([5, 6, 7, 8, 5, 6], seed=4)).collate(list(range(6)))
    spreads = {}
    for init in ("uniform", "default"):
        model = make_model(seed=0, encoder_init=init)
        loc = model.encode(batch.input_ids, batch.attention_mask).base_dist.loc
        spreads[init] = loc.std(0).mean().item()
        # the decoder keeps He et al.'s initialisation either way
        assert model.decoder.pred_linear.weight.abs().max() <= model.config.init_range
    assert spreads["uniform"] < 1e-3 < 1e-2 < spreads["default"]


def test_shared_encoder_keys_are_heads_on_the_inference_encoders_output():
    model = make_model(seed=2).train()
    critic = build_critic(CriticConfig(type="hybrid", hidden_dim=8, proj_dim=8, share_encoder=True), model)
    batch = TextDataset(random_ids([5, 6, 7, 5])).collate([0, 1, 2, 3])
    out = model(batch.input_ids, batch.attention_mask)
    assert torch.equal(out.h, model.encoder(batch.input_ids, batch.attention_mask))
    scores = critic(out.z, out.posterior, batch.input_ids, batch.attention_mask, encoder_h=out.h)
    keys = torch.nn.functional.normalize(critic.f_x(out.h), dim=-1)
    queries = torch.nn.functional.normalize(critic.g_z(out.z), dim=-1)
    assert torch.allclose(scores, queries @ keys.T / critic.temperature)
    with pytest.raises(TextVAEError, match="share_encoder"):
        load_recipe("debug", ["critic.type=neural", "critic.share_encoder=true"])
