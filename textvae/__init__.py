"""textvae: variational autoencoders of text with autoregressive decoders."""

from .config import Config, ModelConfig, load_recipe
from .errors import TextVAEError
from .evaluate import EvalResult
from .generation import DecodeConfig
from .latent import analogy, interpolate, interpolate_pairs, reconstruct, sample
from .model import TextVAE
from .tracking import plot_run as plot

__all__ = ["Config", "DecodeConfig", "ModelConfig", "EvalResult", "TextVAE", "TextVAEError", "analogy", "fit", "interpolate",
           "interpolate_pairs", "load_recipe", "plot", "reconstruct", "sample"]
__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Train a recipe into a run directory (see :func:`textvae.train.fit`)."""
    from .train import fit as _fit

    return _fit(*args, **kwargs)
