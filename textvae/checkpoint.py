"""Run-directory layout (DESIGN.md §6), atomic writes, checkpoints, trainer state and damaged-file checks.

Nothing on disk is half-written: files go to a temporary sibling first and are
moved into place with ``os.replace``; model and checkpoint directories are built
whole beside their place and swapped in. An existing run directory is replaced
(``--overwrite``) only once the new run's inputs have passed every check. Every
reader names the file it could not read (:func:`textvae.errors.reading`), and
``--resume`` skips a damaged checkpoint for the newest intact one.
Checkpoints hold tensors and plain values only (safetensors for weights,
``torch.load(weights_only=True)`` for ``trainer_state.pt``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .config import SECTIONS, Config, config_from_dict, to_yaml
from .errors import TextVAEError, reading
from .model import TextVAE
from .tokenization import TextTokenizer, load_tokenizer

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
DIVERGED_FILE = "diverged.json"  # written when training stops on train.max_bad_steps non-finite steps
STATE_KEYS = ("step", "epoch", "batch_in_epoch", "best_val", "lr", "optimizer", "rng")  # a trainer state has these

log = logging.getLogger("textvae")


def check_output_dir(path: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before anything is read or written, an output path that cannot be used as asked."""
    if path.exists() and not path.is_dir():
        raise TextVAEError(f"output path exists and is not a directory: {path}")
    if resume:
        if not checkpoints(path):
            raise TextVAEError(f"--resume: no checkpoint in {path / CHECKPOINT_DIR}")
        return
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise TextVAEError(f"output directory {path} already exists; pass --overwrite or --resume")


def claim_run_dir(path: Path) -> None:
    """Make ``path`` an empty run directory, replacing an existing one (called once every check has passed).

    The old run is moved aside, the new directory made, and only then is the old one
    deleted; a crash in between leaves the old run in ``.NAME.replaced`` beside it.
    """
    trash = path.with_name(f".{path.name}.replaced")
    if path.exists() and any(path.iterdir()):
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
    path.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _recover(path: Path) -> None:
    """Undo a swap that a kill cut short: ``path`` moved aside to ``.NAME.old``, its replacement not yet in."""
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)


def _swap_in(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing what is there."""
    _recover(path)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _write_model(model: TextVAE, tokenizer: TextTokenizer, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    return tmp


def save_model_dir(model: TextVAE, tokenizer: TextTokenizer, path: Path) -> None:
    """Write model + tokenizer into ``path`` atomically (built beside it, then swapped in)."""
    _swap_in(_write_model(model, tokenizer, path), path)


def load_model_dir(path: Path, device: str | torch.device = "cpu") -> tuple[TextVAE, TextTokenizer]:
    """A saved model and its tokenizer; a missing or damaged file is one TextVAEError naming it."""
    _recover(path)
    if not (path / "config.json").is_file():
        raise TextVAEError(f"{path}: no config.json (not a textvae model directory)")
    return TextVAE.from_pretrained(path, device), load_tokenizer(path)


def checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoints/step-N`` folders, oldest first."""
    return sorted(p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step-*") if p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, model: TextVAE, tokenizer: TextTokenizer, state: dict, keep: int) -> Path:
    """``checkpoints/step-N/``: model, tokenizer and trainer state, written whole; the oldest beyond ``keep``
    are removed."""
    path = run_dir / CHECKPOINT_DIR / f"step-{state['step']:09d}"
    path.parent.mkdir(exist_ok=True)
    tmp = _write_model(model, tokenizer, path)
    torch.save(state, tmp / TRAINER_STATE)
    _swap_in(tmp, path)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        raise TextVAEError(f"{path}: missing")
    with reading(path, detail=False):
        state = torch.load(path, weights_only=True)
        missing = [name for name in STATE_KEYS if not isinstance(state, dict) or name not in state]
        if missing:
            raise TextVAEError(f"not a trainer state (no '{missing[0]}')")
    return state


def load_checkpoint(path: Path, device) -> tuple[TextVAE, TextTokenizer, dict]:
    """Model, tokenizer and trainer state of one checkpoint, each file checked."""
    model, tokenizer = load_model_dir(path, device)
    return model, tokenizer, load_trainer_state(path)


def resume_point(run_dir: Path, device) -> tuple[Path, TextVAE, TextTokenizer, dict]:
    """The newest intact checkpoint. Damaged newer ones are reported and, once an intact one is found, renamed
    ``damaged-step-N`` (kept, but no longer checkpoints); if none is intact, nothing is touched."""
    damaged: list[tuple[Path, TextVAEError]] = []
    for path in reversed(checkpoints(run_dir)):
        try:
            found = (path, *load_checkpoint(path, device))
        except TextVAEError as err:
            damaged.append((path, err))
            continue
        for bad, err in damaged:
            aside = bad.with_name(f"damaged-{bad.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
            log.warning(f"--resume: skipped the damaged checkpoint {bad.name}, kept as {aside.name} ({err})")
        return found
    raise TextVAEError(f"--resume: no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR} "
                       f"(the newest: {damaged[0][1]})")


def save_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))


def load_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise TextVAEError(f"{run_dir}: not a run directory (no config.yaml)")
    with reading(path):
        data = OmegaConf.to_container(OmegaConf.load(path))
        missing = [name for name in ("name", *SECTIONS) if not isinstance(data, dict) or name not in data]
        if missing:
            raise TextVAEError(f"not a run's config (no '{missing[0]}')")
        return config_from_dict(data, str(path))


def read_json(path: Path) -> dict:
    """A JSON object written by textvae (eval_test.json, ...), checked."""
    if not path.is_file():
        raise TextVAEError(f"{path}: missing")
    with reading(path):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TextVAEError(f"a JSON object was expected, not {type(data).__name__}")
    return data


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Config, TextVAE, TextTokenizer]:
    """Config, best model and tokenizer of a finished (or running) run directory."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if not (run_dir / MODEL_DIR).is_dir():
        raise TextVAEError(f"{run_dir}: no {MODEL_DIR}/ yet (training has not finished an evaluation)")
    model, tokenizer = load_model_dir(run_dir / MODEL_DIR, device)
    return cfg, model, tokenizer
