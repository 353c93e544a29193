"""The He presets are He et al. (2019)'s architecture exactly: every parameter maps one-to-one onto theirs."""

from __future__ import annotations

import pytest
import torch

from textvae.config import ModelConfig
from textvae.errors import TextVAEError
from textvae.he2019 import from_he2019, to_he2019
from textvae.model import TextVAE


def he2019_parameters(vocab: int, ni: int, enc_nh: int, dec_nh: int, nz: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``VAE(LSTMEncoder, LSTMDecoder).state_dict()`` in jxhe/vae-lagging-encoder,
    written out from their modules/encoders/enc_lstm.py and modules/decoders/dec_lstm.py."""
    def lstm(prefix: str, inputs: int, hidden: int) -> dict:
        return {f"{prefix}.weight_ih_l0": (4 * hidden, inputs), f"{prefix}.weight_hh_l0": (4 * hidden, hidden),
                f"{prefix}.bias_ih_l0": (4 * hidden,), f"{prefix}.bias_hh_l0": (4 * hidden,)}

    return {
        "encoder.embed.weight": (vocab, ni), **lstm("encoder.lstm", ni, enc_nh),
        "encoder.linear.weight": (2 * nz, enc_nh),  # nn.Linear(nh, 2 * nz, bias=False)
        "decoder.embed.weight": (vocab, ni),
        "decoder.trans_linear.weight": (dec_nh, nz),  # nn.Linear(nz, dec_nh, bias=False)
        **lstm("decoder.lstm", ni + nz, dec_nh),  # z concatenated to every input
        "decoder.pred_linear.weight": (vocab, dec_nh),  # nn.Linear(dec_nh, len(vocab), bias=False)
    }


@pytest.mark.parametrize("preset, dims", [("lstm-ptb", (256, 256, 256, 32)), ("lstm-he2019", (512, 1024, 1024, 32)),
                                          ("lstm-synthetic", (50, 50, 50, 2))])
def test_he_presets_export_one_to_one_onto_he_et_al_parameters(preset, dims):
    vocab = 97
    model = TextVAE(ModelConfig.from_preset(preset, vocab_size=vocab))
    exported = to_he2019(model.state_dict())
    assert {k: tuple(v.shape) for k, v in exported.items()} == he2019_parameters(vocab, *dims)  # nothing left over
    assert len(exported) == len(model.state_dict())
    back = from_he2019(exported)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    # their initialisation: U(±0.01) for every weight and bias, U(±0.1) for the embeddings
    for name, value in exported.items():
        bound = 0.1 if "embed" in name else 0.01
        assert value.abs().max() <= bound and value.abs().max() > bound / 2, name


def test_a_departure_is_a_named_key_and_does_not_export():
    for key in ("posterior_bias", "output_bias"):
        model = TextVAE(ModelConfig.from_preset("lstm-ptb", vocab_size=40, **{key: True}))
        with pytest.raises(TextVAEError, match="no counterpart"):
            to_he2019(model.state_dict())
    with pytest.raises(TextVAEError, match="no counterpart"):
        to_he2019(TextVAE(ModelConfig.from_preset("lstm-ptb", vocab_size=40, bn_gamma=0.5)).state_dict())


def test_he_preset_logits_equal_their_decoder_computation():
    """Their decode: logits = pred_linear(dropout(LSTM([emb; z], (tanh(c0), c0)))) with c0 = trans_linear(z); no bias."""
    torch.manual_seed(0)
    model = TextVAE(ModelConfig.from_preset("lstm-synthetic", vocab_size=20, init_range=0.3, emb_init_range=0.3))
    model.eval()
    he = to_he2019(model.state_dict())
    ids, z = torch.randint(4, 20, (3, 7)), torch.randn(3, 2)
    emb = torch.cat([he["decoder.embed.weight"][ids], z[:, None].expand(-1, 7, -1)], -1)
    lstm = torch.nn.LSTM(52, 50, batch_first=True)
    lstm.load_state_dict({k.split("decoder.lstm.")[1]: v for k, v in he.items() if k.startswith("decoder.lstm.")})
    c0 = (z @ he["decoder.trans_linear.weight"].T)[None]
    out, _ = lstm(emb, (torch.tanh(c0), c0))
    torch.testing.assert_close(model.decode(ids, z), out @ he["decoder.pred_linear.weight"].T)
