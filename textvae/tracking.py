"""Metrics as JSON lines, tqdm progress, and training-curve plots."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes each line."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run repeats those steps)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_path: Path, out_png: Path) -> Path:
    """Loss, rec, KL and KL weight per step (train) and per epoch (valid), plus valid MI and AU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    panels = [("loss", "loss (nats/seq)"), ("rec", "rec"), ("kl", "KL"), ("kl_weight", "KL weight"),
              ("mi", "MI (valid)"), ("au", "active units (valid)")]
    extra = [("critic_loss", "critic loss"), ("critic_mi_bound", "critic MI bound"),
             ("encoder_steps_per_step", "aggressive: encoder steps per step")]
    panels += [p for p in extra if any(p[0] in r for r in train)]
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
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
