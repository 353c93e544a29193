"""The Python API: ``train``, ``load`` and ``evaluate`` a run, typed, for scripts and notebooks.

    import textvae
    run = textvae.train("debug", ["train.max_steps=20"], output_dir="runs/debug", overwrite=True)
    print(run.test.nll, textvae.evaluate(run, "valid").nll)
    again = textvae.load("runs/debug")          # the same Run, read back from disk

The CLI's ``train`` and ``eval`` commands call these functions and nothing below them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch

from .builders import build_datasets, resolve_device
from .checkpoint import load_run, read_json
from .config import load_recipe
from .distributed import setup
from .errors import TextVAEError
from .evaluation import EvalResult
from .evaluation import evaluate as evaluate_model
from .run import Run


def train(recipe: str | Path, overrides: Sequence[str] = (), output_dir: str | Path | None = None, *,
          overwrite: bool = False, resume: bool = False, progress: bool = True) -> Run:
    """Train ``recipe`` (a bundled name or a YAML path) with ``key=value`` overrides into ``output_dir``
    (default ``runs/NAME``), evaluate its best model on the test split and return the :class:`Run`."""
    from .training import fit

    cfg = load_recipe(str(recipe), list(overrides))
    path = fit(cfg, Path(output_dir) if output_dir is not None else Path("runs") / cfg.name, resume=resume,
               overwrite=overwrite, progress=progress)
    return load(path)


def load(run: Run | str | Path, device: str | torch.device = "cpu") -> Run:
    """The :class:`Run` in a run directory (a missing or damaged file is a one-line :class:`TextVAEError`)."""
    path = run.path if isinstance(run, Run) else Path(run)
    cfg, model, tokenizer = load_run(path, device)
    return Run(path, cfg, model, tokenizer, _test_result(path))


def evaluate(run: Run | str | Path, split: str = "test", *, iw_samples: int | None = None,
             svi_steps: int | None = None, limit: int | None = None, data_dir: str | Path | None = None,
             verify: bool = True, device: str = "auto", progress: bool = False) -> EvalResult:
    """A run's best model under the protocol on ``split`` (``test`` or ``valid``): IW-NLL with
    ``iw_samples`` (default the recipe's K), over the first ``limit`` sequences if given; ``svi_steps``
    refines each posterior by that many SA-VAE steps first (default the run's ``eval.svi_steps``). ``data_dir``
    points at the run's data files if they moved; ``verify`` checks their sha256 against the run's.
    Under torchrun the batches are sharded over the ranks; every rank returns the same figures."""
    # each message names the argument and the CLI option that passes it (`textvae eval` checks nothing itself)
    if split not in ("test", "valid"):
        raise TextVAEError(f"split (--split) must be test or valid, not '{split}'")
    if iw_samples is not None and iw_samples < 1:
        raise TextVAEError("iw_samples (--iw-samples) must be >= 1")
    if svi_steps is not None and svi_steps < 0:
        raise TextVAEError("svi_steps (--svi-steps) must be >= 0")
    if limit is not None and limit < 1:
        raise TextVAEError("limit (--limit) must be >= 1")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise TextVAEError(f"data_dir (--data-dir) does not exist or is not a folder: {data_dir}")
    world, dev = setup(resolve_device(device))
    path = run.path if isinstance(run, Run) else Path(run)
    cfg, model, tokenizer = load_run(path, dev)
    if data_dir is not None:
        cfg.data.dir = str(Path(data_dir).resolve())
    elif cfg.data.dir is not None and not Path(cfg.data.dir).is_dir():
        raise TextVAEError(f"{path}: its data folder {cfg.data.dir} is not there; pass --data-dir DIR, the "
                           f"folder that now holds {cfg.data.train_file}, {cfg.data.valid_file}, {cfg.data.test_file}")
    if iw_samples is not None:
        cfg.eval.iw_samples = iw_samples
    if svi_steps is not None:
        cfg.eval.svi_steps = svi_steps
    cfg.data.verify = cfg.data.verify and verify
    datasets, _ = build_datasets(cfg, tokenizer)
    dataset = datasets[split]
    if limit is not None:
        dataset = dataset.subset(limit)
    return evaluate_model(model, dataset, cfg.eval, dev, seed=cfg.seed, progress=progress and world.main,
                          world=world)


def _test_result(path: Path) -> EvalResult | None:
    file = path / "eval_test.json"
    if not file.is_file():
        return None
    record = read_json(file)
    names = {f.name for f in fields(EvalResult)}
    try:
        return EvalResult(**{k: v for k, v in record.items() if k in names})
    except TypeError as err:
        raise TextVAEError(f"{file}: not a textvae evaluation record ({err})") from None
