"""Loading Hugging Face ``transformers`` models and tokenizers by name or local path.

A model is loaded by name the first time (``model.encoder_name``, ``model.decoder_name``);
its configuration is then saved in the run's ``config.json`` and a saved run is rebuilt
from that configuration and its own ``model.safetensors``, so loading a run never needs
the network. ``transformers`` is imported lazily: the LSTM path never pays for it.
"""

from __future__ import annotations

import json

import torch

from ..errors import TextVAEError


def cannot_load(what: str, name: str, key: str, err: Exception) -> TextVAEError:
    """The one-line error for a model or tokenizer that could not be loaded."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return TextVAEError(f"cannot load pretrained {what} '{name}' ({reason}); without network access, pass a local "
                        f"path to a downloaded copy instead, e.g. {key}=/path/to/{name.rstrip('/').split('/')[-1]}")


def config_dict(hf_config) -> dict:
    """The settings that differ from the model type's defaults, JSON-ready (with ``model_type``)."""
    return json.loads(hf_config.to_json_string(use_diff=True))


def load_pretrained(kind: str, name: str | None, key: str, saved_config: dict | None = None):
    """An ``AutoModel`` (``kind="encoder"``) or ``AutoModelForCausalLM`` (``kind="causal-lm"``).

    With ``saved_config`` (from a saved run) the architecture is rebuilt offline with
    fresh weights, for the caller to overwrite; otherwise the weights are loaded from
    ``name`` (a hub id or a local folder) in float32.
    """
    import transformers

    auto = transformers.AutoModel if kind == "encoder" else transformers.AutoModelForCausalLM
    if saved_config is not None:
        settings = dict(saved_config)
        return auto.from_config(transformers.AutoConfig.for_model(settings.pop("model_type"), **settings))
    if not name:
        raise TextVAEError(f"{key} is required with a pretrained {kind} (a hub id such as 'gpt2' or a local path)")
    try:
        return auto.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise cannot_load("model", name, key, err) from None


def load_auto_tokenizer(name: str, key: str):
    """``AutoTokenizer.from_pretrained(name)`` with the one-line error of :func:`cannot_load`."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise cannot_load("tokenizer", name, key, err) from None
