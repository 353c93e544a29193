"""Where training metrics go: a small logger interface and its registry (``train.loggers``).

Modelled on torchtune's ``MetricLoggerInterface``: a logger takes each record the training loop
writes (``{"split": "train" | "valid" | "event", "step": ..., name: value, ...}``), can drop what was
logged after a step (a resumed run repeats those steps), and is closed at the end.

- ``jsonl``: ``metrics.jsonl``, one JSON object per line (:class:`textvae.tracking.MetricsWriter`).
  It is the run's record, which ``--resume``, ``textvae study`` and the plots read, so every run has it.
- ``tensorboard``: event files in ``RUN/tensorboard`` (``torch.utils.tensorboard``, the ``tensorboard``
  extra), one scalar ``SPLIT/NAME`` per number of each train and valid record, at its step.

A new logger is a class with ``from_run(run_dir, start_step)`` added to :data:`LOGGERS` (and its name
to ``config.LOGGER_TYPES``); nothing else changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

from .errors import TextVAEError
from .tracking import MetricsWriter


class MetricLogger(Protocol):
    def write(self, record: dict) -> None: ...

    def truncate_after(self, step: int) -> None: ...

    def close(self) -> None: ...


class JsonlLogger(MetricsWriter):
    """``metrics.jsonl`` (see :class:`~textvae.tracking.MetricsWriter`)."""

    @classmethod
    def from_run(cls, run_dir: Path, start_step: int) -> JsonlLogger:
        return cls(Path(run_dir) / "metrics.jsonl")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars ``SPLIT/NAME`` for the train and valid records, in ``RUN/tensorboard``."""

    def __init__(self, log_dir: Path, start_step: int = 0):
        self.writer = _summary_writer()(log_dir=str(log_dir), purge_step=start_step or None)

    @classmethod
    def from_run(cls, run_dir: Path, start_step: int) -> TensorBoardLogger:
        return cls(Path(run_dir) / "tensorboard", start_step)

    def write(self, record: dict) -> None:
        if record.get("split") not in ("train", "valid"):
            return
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in ("step", "split"):
                if math.isfinite(value):
                    self.writer.add_scalar(f"{record['split']}/{name}", value, record["step"])
        self.writer.flush()

    def truncate_after(self, step: int) -> None:
        pass  # purge_step at start-up drops the events after the resumed step

    def close(self) -> None:
        self.writer.close()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TextVAEError("train.loggers=tensorboard needs the tensorboard package: pip install 'textvae[tensorboard]'"
                           ) from None
    return SummaryWriter


LOGGERS: dict[str, type] = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger}


def check_loggers(names: list[str]) -> None:
    """Before anything is written: jsonl is among them and every optional package is there."""
    if "jsonl" not in names:
        raise TextVAEError("train.loggers must include jsonl: metrics.jsonl is the run's record (resume, "
                           "study and plots read it)")
    if "tensorboard" in names:
        _summary_writer()


class Loggers:
    """Every logger of ``train.loggers`` as one; writes nothing when not ``enabled`` (a rank other than 0)."""

    def __init__(self, names: list[str], run_dir: Path, start_step: int = 0, enabled: bool = True):
        check_loggers(names)
        self.enabled = enabled
        self.loggers = [LOGGERS[name].from_run(run_dir, start_step) for name in names] if enabled else []

    def write(self, record: dict) -> None:
        for logger in self.loggers:
            logger.write(record)

    def truncate_after(self, step: int) -> None:
        for logger in self.loggers:
            logger.truncate_after(step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
