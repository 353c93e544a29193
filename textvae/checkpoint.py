"""Run-directory layout (DESIGN.md §6), atomic writes, checkpoints and trainer state.

Nothing on disk is half-written: files go to a temporary sibling first and are
moved into place with ``os.replace``; model directories are swapped whole.
Checkpoints hold tensors and plain values only (safetensors for weights,
``torch.load(weights_only=True)`` for ``trainer_state.pt``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .config import Config, TextVAEError, config_from_dict, to_yaml
from .model import TextVAE
from .tokenization import TextTokenizer, load_tokenizer

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


def prepare_run_dir(path: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Create the run directory; refuse to touch an existing non-empty one unless asked."""
    if path.exists() and not path.is_dir():
        raise TextVAEError(f"output path exists and is not a directory: {path}")
    if resume:
        if latest_checkpoint(path) is None:
            raise TextVAEError(f"--resume: no checkpoint in {path / CHECKPOINT_DIR}")
        return
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise TextVAEError(f"output directory {path} already exists; pass --overwrite or --resume")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_model_dir(model: TextVAE, tokenizer: TextTokenizer, path: Path) -> None:
    """Write model + tokenizer into ``path`` atomically (built beside it, then swapped in)."""
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_model_dir(path: Path, device: str | torch.device = "cpu") -> tuple[TextVAE, TextTokenizer]:
    if not (path / "config.json").is_file():
        raise TextVAEError(f"{path}: no config.json (not a textvae model directory)")
    return TextVAE.from_pretrained(path, device), load_tokenizer(path)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CHECKPOINT_DIR).glob("step-*"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = [p for p in checkpoints(run_dir) if (p / TRAINER_STATE).is_file()]
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, model: TextVAE, tokenizer: TextTokenizer, state: dict, keep: int) -> Path:
    """``checkpoints/step-N/``: model, tokenizer and trainer state; the oldest beyond ``keep`` are removed."""
    path = run_dir / CHECKPOINT_DIR / f"step-{state['step']:09d}"
    path.parent.mkdir(exist_ok=True)
    save_model_dir(model, tokenizer, path)
    tmp = path / f".{TRAINER_STATE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / TRAINER_STATE)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / TRAINER_STATE, weights_only=True)


def save_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Config, TextVAE, TextTokenizer]:
    """Config, best model and tokenizer of a finished (or running) run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TextVAEError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_from_dict(OmegaConf.load(run_dir / "config.yaml"))
    if not (run_dir / MODEL_DIR).is_dir():
        raise TextVAEError(f"{run_dir}: no {MODEL_DIR}/ yet (training has not finished an evaluation)")
    model, tokenizer = load_model_dir(run_dir / MODEL_DIR, device)
    return cfg, model, tokenizer
