"""textvae: variational autoencoders of text with autoregressive decoders."""

from .config import Config, TextVAEError, load_recipe
from .evaluate import EvalResult
from .model import TextVAE

__all__ = ["Config", "EvalResult", "TextVAE", "TextVAEError", "fit", "load_recipe"]
__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Train a recipe into a run directory (see :func:`textvae.train.fit`)."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)
