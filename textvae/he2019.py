"""He et al. (2019)'s parameter names, for moving weights between textvae and their code.

Their ``jxhe/vae-lagging-encoder`` builds ``VAE(encoder=LSTMEncoder, decoder=LSTMDecoder)``:
the encoder has ``embed``, ``lstm`` and ``linear`` (h → (μ, log σ²), no bias); the decoder
``embed``, ``trans_linear`` (z → c₀, no bias), ``lstm`` (input: embedding ⊕ z) and
``pred_linear`` (no bias). textvae's LSTM model under the He presets (``lstm-he2019``,
``lstm-ptb``, ``lstm-synthetic``) has exactly these parameters; only the posterior head sits
in its own module (``posterior.linear``). :func:`to_he2019` renames a state dict and refuses
anything without a counterpart (a bias from ``model.posterior_bias`` / ``model.output_bias``,
BN-VAE's batch norm, a Transformer), so a one-to-one export is a check of the architecture.
"""

from __future__ import annotations

from .errors import TextVAEError

# textvae module prefix → He et al.'s (parameter names below a prefix are torch's own, e.g. lstm.weight_ih_l0)
HE2019_PREFIXES = {
    "encoder.embed.": "encoder.embed.",
    "encoder.lstm.": "encoder.lstm.",
    "posterior.linear.": "encoder.linear.",
    "decoder.embed.": "decoder.embed.",
    "decoder.trans_linear.": "decoder.trans_linear.",
    "decoder.lstm.": "decoder.lstm.",
    "decoder.pred_linear.": "decoder.pred_linear.",
}
# parameters their classes do not have: a state dict holding one is not their architecture
_NOT_THEIRS = ("posterior.linear.bias", "decoder.pred_linear.bias")


def _rename(name: str, prefixes: dict[str, str]) -> str:
    prefix = next((p for p in prefixes if name.startswith(p)), None)
    if prefix is None or name in _NOT_THEIRS:
        raise TextVAEError(f"parameter '{name}' has no counterpart in He et al. (2019)'s LSTM VAE")
    return prefixes[prefix] + name[len(prefix):]


def to_he2019(state_dict: dict) -> dict:
    """A textvae LSTM model's state dict under He et al.'s names (their ``VAE.state_dict()`` keys)."""
    return {_rename(name, HE2019_PREFIXES): value for name, value in state_dict.items()}


def from_he2019(state_dict: dict) -> dict:
    """Their ``VAE.state_dict()`` under textvae's names (load it into a model built with a He preset)."""
    back = {theirs: ours for ours, theirs in HE2019_PREFIXES.items()}
    return {_rename(name, back): value for name, value in state_dict.items()}
