"""Methods × seeds under one budget → study.json, study.md and curves.png.

Each (method, seed) trains into ``DIR/<method>/seed-<s>/`` with the same recipe
and overrides, and is evaluated on the test split by the same evaluator. A run
that already has ``eval_test.json`` is reused; one with checkpoints is resumed,
so an interrupted study picks up where it stopped. A run that stopped on
``train.max_bad_steps`` non-finite steps (its ``diverged.json``) is a result too:
the table counts it and averages the seeds that finished; it is not retrained
(delete its directory to try again).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .checkpoint import DIVERGED_FILE, atomic_write_text, latest_checkpoint, read_json
from .compare import compare
from .config import load_recipe
from .distributed import main_process
from .errors import TextVAEError, TrainingDiverged
from .methods import method_overrides
from .tracking import read_metrics

FIGURES = ("nll", "ppl", "kl", "mi", "mi_batch", "au")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_study(
    recipe: str, methods: list[str], seeds: int, overrides: list[str], output_dir: Path, progress: bool = True
) -> dict:
    if seeds < 1:
        raise TextVAEError("--seeds must be >= 1")
    for method in methods:
        method_overrides(method)  # fail early on an unknown name
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    for method in methods:
        for seed in range(seeds):
            runs.setdefault(method, []).append(_run(recipe, overrides, method, seed, out / method / f"seed-{seed}",
                                                    progress))
    if "lm" in methods:  # paired Δnll of every run against the LM of its seed, on the same test sentences
        for method in methods:
            for seed, result in enumerate(runs[method]):
                if "diverged" in result or "diverged" in runs["lm"][seed]:
                    continue
                paired = compare(out / method / f"seed-{seed}", out / "lm" / f"seed-{seed}")
                result["dnll_vs_lm"], result["dnll_paired_stderr"] = paired.mean_diff, paired.paired_stderr
    summary = summarise(runs)
    study = {"recipe": recipe, "methods": methods, "seeds": seeds, "overrides": overrides,
             "summary": summary, "runs": runs}
    if main_process():  # under torchrun every rank trained each run; rank 0 writes the study
        atomic_write_text(out / "study.json", json.dumps(study, indent=2) + "\n")
        atomic_write_text(out / "study.md", to_markdown(study))
        plot_study(runs, out / "curves.png")
    return study


def _run(recipe: str, overrides: list[str], method: str, seed: int, run: Path, progress: bool) -> dict:
    """One (method, seed) of the study: trained, resumed or reused. Its test result with its seconds per epoch
    and validation curve, or ``{"seed": s, "diverged": diverged.json}`` for a run that stopped on non-finite
    steps."""
    from .training import fit

    if not (run / "eval_test.json").is_file() and not (run / DIVERGED_FILE).is_file():
        cfg = load_recipe(recipe, [*overrides, f"method={method}", f"seed={seed}"])
        resume = run.is_dir() and latest_checkpoint(run) is not None
        try:
            fit(cfg, run, resume=resume, overwrite=not resume, progress=progress)
        except TrainingDiverged:  # rank 0 wrote diverged.json; the others only need to know
            return {"seed": seed, "diverged": read_json(run / DIVERGED_FILE) if main_process() else {}}
    if not (run / "eval_test.json").is_file():
        return {"seed": seed, "diverged": read_json(run / DIVERGED_FILE)}
    result = read_json(run / "eval_test.json")
    valid = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "valid"]
    result["seconds_per_epoch"] = seconds_per_epoch(valid)
    result["curve"] = [{k: r.get(k) for k in ("epoch", "kl", "mi", "au")} for r in valid]
    return result


def finished(results: list[dict]) -> list[dict]:
    """The runs of a method that finished (not diverged)."""
    return [r for r in results if "diverged" not in r]


def seconds_per_epoch(valid_records: list[dict]) -> float:
    """Training seconds per epoch, from a run's validation records: total seconds over epochs done, not
    a median, because aggressive training's few costly epochs are its cost. A record covering part of an
    epoch (a time or step budget, a resume) counts as its ``epoch_fraction`` of one."""
    done = sum(r.get("epoch_fraction", 1.0) for r in valid_records)
    return sum(r["seconds"] for r in valid_records) / done


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per method: mean ± std over the seeds that finished of every figure, the count of diverged seeds, and
    the paired Δnll against the LM (mean over seeds, with the paired s.e. of that mean)."""
    summary = {}
    for method, results in runs.items():
        done = finished(results)
        row = {"seeds": len(results), "diverged": len(results) - len(done)}
        if done:
            row.update({f: _mean_std([r[f] for r in done]) for f in FIGURES})
            row["seconds_per_epoch"] = _mean_std([r["seconds_per_epoch"] for r in done])
            row["iw_samples"] = done[0]["iw_samples"]
            row["mi_ceiling"] = done[0]["mi_ceiling"]
            paired = [r for r in done if "dnll_vs_lm" in r]
            if paired:
                row["dnll_vs_lm"] = statistics.fmean(r["dnll_vs_lm"] for r in paired)
                row["dnll_paired_stderr"] = math.sqrt(sum(r["dnll_paired_stderr"] ** 2 for r in paired)) / len(paired)
        summary[method] = row
    base = summary.get("vae", {}).get("seconds_per_epoch", (math.nan,))[0]
    for row in summary.values():
        row["time_vs_vae"] = row["seconds_per_epoch"][0] / base if "seconds_per_epoch" in row and base == base else None
    return summary


def to_markdown(study: dict) -> str:
    s = study["summary"]
    done = [row for row in s.values() if "iw_samples" in row]
    k = max((row["iw_samples"] for row in done), default=0)  # the LM has none: its nll is exact
    exact = "; the LM's is exact" if any(row["iw_samples"] == 0 for row in done) else ""
    ceiling = f"ceiling {done[0]['mi_ceiling']:.2f}" if done else "no run finished"
    paired = "lm" in s and any("dnll_vs_lm" in row for row in done)
    lines = [
        f"# Study: recipe `{study['recipe']}`, {study['seeds']} seed(s), overrides `{' '.join(study['overrides'])}`",
        "",
        f"Test split; nll = IW-NLL with K = {k} (nats/sequence{exact}); mi over the whole split "
        f"({ceiling}); mi_batch = He et al.'s per-batch estimator; s/epoch = training "
        "seconds over the epochs done (a partial epoch counts as its fraction). Mean ± std over seeds."
        + (" Δnll vs lm = the paired difference of per-sentence IW-NLL against the LM of the same seed, with its "
           "paired standard error (docs/protocol.md)." if paired else "")
        + (" A seed that stopped on non-finite steps (diverged) is counted, and the figures are over the seeds "
           "that finished." if any(row.get("diverged") for row in s.values()) else ""),
        "",
        "| method | nll | ppl | kl | mi | mi_batch | au |" + (" Δnll vs `lm` (paired s.e.) |" if paired else "")
        + " s/epoch | time vs vae |",
        "|---|---|---|---|---|---|---|" + ("---|" if paired else "") + "---|---|",
    ]
    for method, row in s.items():
        name = method if not row.get("diverged") else f"{method} ({row['diverged']} of {row['seeds']} seeds diverged)"
        if "iw_samples" not in row:
            lines.append(f"| {name} | " + " | ".join(["—"] * (len(FIGURES) + paired + 2)) + " |")
            continue
        cells = [f"{row[f][0]:.2f} ± {row[f][1]:.2f}" for f in FIGURES]
        if paired:
            cells.append("—" if "dnll_vs_lm" not in row else f"{row['dnll_vs_lm']:+.3f} ({row['dnll_paired_stderr']:.3f})")
        rel = "—" if row["time_vs_vae"] is None else f"{row['time_vs_vae']:.2f}×"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['seconds_per_epoch'][0]:.1f} | {rel} |")
    return "\n".join(lines) + "\n"


def plot_study(runs: dict[str, list[dict]], out_png: Path) -> None:
    """KL, MI and AU (validation) against epoch for each method, averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key in zip(axes, ("kl", "mi", "au"), strict=True):
        for method, results in runs.items():
            results = finished(results)
            if not results:
                continue
            epochs = min(len(r["curve"]) for r in results)
            xs = [results[0]["curve"][i]["epoch"] for i in range(epochs)]
            ys = [statistics.fmean(r["curve"][i][key] for r in results) for i in range(epochs)]
            ax.plot(xs, ys, label=method, marker="o", ms=2)
        ax.set_title(f"validation {key}")
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
