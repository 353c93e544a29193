"""textvae: variational autoencoders of text with autoregressive decoders."""

import os as _os

# Threading policy, set before torch loads its OpenMP runtime: OpenMP threads spin only briefly before
# sleeping, so a run whose cores are shared with another process does not fall off a cliff (2 threads
# beside a busy process: 0.216 s per PTB step instead of 0.315; alone: 0.115 instead of 0.103; see
# docs/speed.md). Setting OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself overrides it.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .api import evaluate, load, train
from .compare import Comparison, compare
from .config import Config, ModelConfig, load_recipe
from .errors import TextVAEError
from .evaluation import EvalResult
from .generation import DecodeConfig
from .latent import analogy, interpolate, interpolate_pairs, reconstruct, sample
from .latent import plot_run as plot
from .model import TextVAE
from .run import Run

__all__ = ["Comparison", "Config", "DecodeConfig", "EvalResult", "ModelConfig", "Run", "TextVAE", "TextVAEError", "analogy",
           "compare", "evaluate", "interpolate", "interpolate_pairs", "load", "load_recipe", "plot", "reconstruct", "sample",
           "train"]
__version__ = "0.1.0"
