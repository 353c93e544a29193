"""TextVAE: encoder → Gaussian posterior → autoregressive decoder (DESIGN.md §3).

One readable model file. ``latent_dim == 0`` gives the language-model baseline
(no encoder, no latent, KL = 0). ``save_pretrained`` / ``from_pretrained`` write
and read ``model.safetensors`` + ``config.json`` (its :class:`~textvae.config.ModelConfig`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import ModelHubMixin
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributions import Independent, kl_divergence

from .config import ModelConfig, check_model
from .errors import TextVAEError, first_line, reading
from .modules.decoders import DECODERS
from .modules.encoders import ENCODERS
from .modules.output import linear_cross_entropy
from .modules.posterior import GaussianPosterior, standard_normal

BIAS_KEYS = ("posterior_bias", "output_bias")  # ModelConfig's named departures from He et al.'s parameters


def with_tokenizer(config: ModelConfig, tokenizer) -> ModelConfig:
    """``config`` with the tokenizer's vocabulary size and special ids filled in (the derived fields)."""
    return replace(config, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                   eos_id=tokenizer.eos_id, unk_id=tokenizer.unk_id)


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def _download(repo_id: str, revision: str | None, token: str | None, local_files_only: bool) -> Path:
    """A Hub repo's files in the local cache; any failure (offline, no such repo) is one TextVAEError."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, token=token,
                                      local_files_only=local_files_only))
    except Exception as err:  # network, authentication, a missing repo: all end the same way for a user
        raise TextVAEError(f"{repo_id}: no such local folder, and not on the Hugging Face Hub "
                           f"({type(err).__name__}: {first_line(str(err))})") from None


@dataclass
class VAEOutput:
    """Per-sequence terms of the ELBO.

    Shape: rec, kl (B,); z (B, D) (None for the LM); posterior batch shape (B,).
    """

    rec: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor | None
    posterior: Independent | None
    h: torch.Tensor | None = None  # the encoder's output (B, H), which a hybrid critic may share
    # a per-sequence term that trains the inference network alone (SA-VAE's stop-gradient variant), (B,)
    inference_loss: torch.Tensor | None = None


class TextVAE(nn.Module, ModelHubMixin, library_name="textvae", tags=["text-vae", "variational-autoencoder"]):
    """The VAE. It is a ``huggingface_hub.ModelHubMixin``: ``save_pretrained(dir)`` writes config.json,
    model.safetensors and a model card; ``from_pretrained(dir_or_hub_id)`` reads a folder or a Hub repo."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = check_model(config)
        if c.vocab_size < 1:
            raise TextVAEError("model.vocab_size must be >= 1 (fill it from the tokenizer: model.with_tokenizer)")
        if c.latent_dim > 0:
            self.encoder = ENCODERS[c.encoder].from_args(c)
            self.posterior = GaussianPosterior(input_dim=self.encoder.output_dim, latent_dim=c.latent_dim,
                                               bn_gamma=c.bn_gamma, bias=c.posterior_bias)
        else:
            self.encoder = self.posterior = None
        self.decoder = DECODERS[c.decoder].from_args(c)
        # A pretrained model's configuration goes into config.json, so that the run reloads offline.
        loaded = {f"{side}_hf_config": getattr(self, side).hf_config_dict for side in ("encoder", "decoder")
                  if hasattr(getattr(self, side), "hf_config_dict")}
        self.config = replace(config, **loaded)
        self.reset_parameters()

    def reset_parameters(self, only: str | None = None) -> None:
        """He et al.'s initialisation: U(±0.01) for weights, U(±0.1) for embeddings.

        With ``encoder_init="default"`` the encoder and posterior head keep PyTorch's
        initialisation instead: under U(±0.01) the posterior mean does not vary with x
        (its spread is ~1e-5) and the encoder's gradients vanish, so a critic has no
        signal to start from (see README, "What we tried"). ``only="decoder"``
        re-initialises the decoder alone (Li et al. 2019's ``--reset_dec``).

        Encoders and decoders that define ``reset_parameters`` (Transformers: GPT-2's
        N(0, 0.02); pretrained models: their latent maps only, the pretrained weights stay)
        initialise themselves instead; the posterior head follows ``encoder_init`` for every encoder.
        """
        own = [side for side in ("encoder", "decoder") if hasattr(getattr(self, side), "reset_parameters")]
        keep_default = ("encoder.", "posterior.") if self.config.encoder_init == "default" else ()
        skip = keep_default + tuple(f"{side}." for side in own)
        for name, param in self.named_parameters():
            if name.startswith(skip) or (only is not None and not name.startswith(only + ".")):
                continue
            bound = self.config.emb_init_range if "embed" in name else self.config.init_range
            nn.init.uniform_(param, -bound, bound)
        for side in own:
            if only in (None, side):
                getattr(self, side).reset_parameters()
        if self.posterior is not None and self.posterior.mu_bn is not None and only is None:
            self.posterior.reset_bn()

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The inference network: encoder and posterior head (He et al.'s ``vae.encoder``)."""
        return [] if self.encoder is None else [*self.encoder.parameters(), *self.posterior.parameters()]

    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json (the :class:`ModelConfig`) and model.safetensors; the mixin adds the model card."""
        save_directory = Path(save_directory)
        (save_directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_model(self, str(save_directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu", *,
                        revision: str | None = None, token: str | None = None,
                        local_files_only: bool = False) -> TextVAE:
        """The model in a local folder, or in a Hugging Face Hub repo (``owner/name``) when no such folder
        exists; a missing or damaged file is a TextVAEError naming it."""
        local = Path(path_or_hub_id)
        if not local.exists() and _is_hub_id(str(path_or_hub_id)):
            local = _download(str(path_or_hub_id), revision, token, local_files_only)
        return cls._load_folder(local, device)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, device: str | torch.device = "cpu", **_) -> TextVAE:
        """The mixin's hook, for callers that go through ``ModelHubMixin.from_pretrained``."""
        return cls.from_pretrained(model_id, device, revision=revision, token=token, local_files_only=local_files_only)

    @classmethod
    def _load_folder(cls, directory: Path, device: str | torch.device = "cpu") -> TextVAE:
        config_path, weights = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights):
            if not path.is_file():
                raise TextVAEError(f"{path}: missing (not a textvae model directory?)")
        with reading(config_path):
            saved = json.loads(config_path.read_text())
            if not isinstance(saved, dict):
                raise TextVAEError(f"a JSON object of model settings was expected, not {type(saved).__name__}")
            for name in BIAS_KEYS:  # a model saved before these keys existed had both biases
                saved.setdefault(name, True)
            model = cls(ModelConfig(**saved))
        with reading(weights):
            load_model(model, str(weights), device=str(device))
        return model.to(device)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def prior(self) -> Independent:
        return standard_normal(self.latent_dim, device=next(self.parameters()).device)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Independent:
        """q(z|x). Shape: input_ids (B, T) → batch shape (B,), event shape (D,)."""
        if self.encoder is None:
            raise TextVAEError("this model has latent_dim 0 (a language model): it has no encoder")
        return self.posterior(self.encoder(input_ids, attention_mask))

    def decode(self, input_ids: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced logits. Shape: input_ids (N, T), z (N, D) → (N, T, V)."""
        return self.decoder(input_ids, z)

    def reconstruction_nll(self, input_ids: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """−log p(x|z), nats per sequence: tokens 1..T-1 predicted from 0..T-2, padding ignored.

        ``z`` may carry extra leading sample dimensions: (..., N, D) decodes each
        sample against the same inputs and returns (..., N).
        Shape: input_ids (N, T), z (..., N, D) → (..., N).
        """
        lead = () if z is None else z.shape[:-2]
        n, t = input_ids.shape
        if z is not None and lead:
            z = z.reshape(-1, z.size(-1))
            input_ids = input_ids.repeat(z.size(0) // n, 1)
        targets = input_ids[:, 1:]
        if hasattr(self.decoder, "features"):  # the output layer and its loss fused, in cache-sized blocks
            weight, bias = self.decoder.output_layer()
            nll = linear_cross_entropy(self.decoder.features(input_ids[:, :-1], z), weight, bias, targets,
                                       self.config.pad_id)  # (N', T-1)
        else:
            logits = self.decode(input_ids[:, :-1], z)  # (N', T-1, V)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                  ignore_index=self.config.pad_id, reduction="none")
        return nll.view(*lead, n, t - 1).sum(-1)

    def generate(self, z: torch.Tensor | None, cfg=None, num_sequences: int | None = None,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Decode one sentence per latent (:func:`textvae.generation.generate`, the model's own <s> and </s>).

        ``cfg`` is a :class:`textvae.generation.DecodeConfig` (greedy by default). Shape: z (N, D) → N id lists.
        """
        from .generation import generate

        return generate(self, z, cfg, bos_id=self.config.bos_id, eos_id=self.config.eos_id,
                        num_sequences=num_sequences, generator=generator)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                encoder_input_ids: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                refine=None) -> VAEOutput:
        """One reparameterised sample per sequence. Shape: (B, T) → VAEOutput with (B,) terms.

        ``noise``: the standard-normal ε of z = μ + σ·ε, (B, D); drawn here when None (a data-parallel
        rank passes its rows of the global batch's noise, :func:`textvae.distributed.global_noise`).

        ``encoder_input_ids`` / ``encoder_attention_mask``: the encoder's own tokenization of
        the same sequences when it differs from the decoder's (a pretrained encoder,
        ``batch.encoder_input_ids``); by default the encoder reads ``input_ids``.
        Shape: encoder_input_ids, encoder_attention_mask (B, T_enc).

        ``refine(model, posterior, input_ids) → (posterior, inference_loss or None)`` replaces the encoder's
        posterior before z is drawn (semi-amortized inference, :func:`textvae.svi.refine_posterior`).
        """
        if self.latent_dim == 0:
            rec = self.reconstruction_nll(input_ids, None)
            return VAEOutput(rec, torch.zeros_like(rec), None, None)
        if encoder_input_ids is None:
            encoder_input_ids, encoder_attention_mask = input_ids, attention_mask
        h = self.encoder(encoder_input_ids, encoder_attention_mask)  # (B, H)
        posterior = self.posterior(h)
        inference_loss = None
        if refine is not None:
            posterior, inference_loss = refine(self, posterior, input_ids)
        if noise is None:
            z = posterior.rsample()  # (B, D)
        else:
            z = posterior.base_dist.loc + noise * posterior.base_dist.scale  # rsample's own expression
        rec = self.reconstruction_nll(input_ids, z)
        kl = kl_divergence(posterior, self.prior())  # (B,), analytic
        return VAEOutput(rec, kl, z, posterior, h, inference_loss)
