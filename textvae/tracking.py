"""Metrics as JSON lines, tqdm progress, and the training-curve plot (the latent space is plotted by latent.py).

Figures are written atomically (rendered in memory, then moved into place).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from .checkpoint import atomic_write_bytes, atomic_write_text
from .errors import TextVAEError, reading


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes each line.

    ``enabled=False`` (a data-parallel rank other than 0) writes nothing.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run repeats those steps), atomically.

        A last line cut short by a kill mid-write is dropped too; a damaged line anywhere else is an error.
        """
        if not self.enabled or not self.path.exists():
            return
        records = read_metrics(self.path, allow_partial_last=True)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records if r.get("step", 0) <= step))


def read_metrics(path: Path, allow_partial_last: bool = False) -> list[dict]:
    """The records of a metrics.jsonl; a line that is not a JSON object is an error naming file and line."""
    path = Path(path)
    with reading(path):
        raw = path.read_bytes().decode("utf-8")
    lines = raw.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            if allow_partial_last and number == len(lines):  # no newline after it: a write cut short
                break
            raise TextVAEError(f"{path}:{number}: damaged (not a JSON metrics record)")
        records.append(record)
    return records


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    pyplot().close(fig)
    atomic_write_bytes(Path(out_png), buffer.getvalue())
    return Path(out_png)


def plot_training_curves(metrics_path: Path, out_png: Path) -> Path:
    """Loss, rec, KL and KL weight per step (train) and per epoch (valid), plus valid MI and AU.

    The critic's terms get panels when the run logged them; the x axis is the step,
    with the epoch along the top.
    """
    plt = pyplot()
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    panels = [("loss", "loss (nats/seq)"), ("rec", "rec"), ("kl", "KL"), ("kl_weight", "KL weight"),
              ("mi", "MI (valid)"), ("au", "active units (valid)")]
    extra = [("critic_loss", "critic loss"), ("critic_mi_bound", "critic MI bound"),
             ("critic_acc", "critic accuracy"), ("critic_weight", "critic weight λ"),
             ("encoder_steps_per_step", "aggressive: encoder steps per step")]
    panels += [p for p in extra if any(p[0] in r for r in train + valid)]
    # Full epochs end on multiples of the steps per epoch; a cut-short last epoch has a smaller ratio.
    steps_per_epoch = max((r["step"] / r["epoch"] for r in valid if r.get("epoch")), default=0)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for recs, label in ((train, "train"), (valid, "valid")):
            pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label, marker="o" if label == "valid" else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if steps_per_epoch:
            top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
            top.tick_params(labelsize=7)
            top.set_xlabel("epoch", fontsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out_png)
