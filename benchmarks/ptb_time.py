"""Equal compute on PTB: quality against training seconds, every method under the same time budget.

The critic paper's claim is about time ("competitive results at significantly less training time"), so
every method gets the same training-time budget (``--minutes``, validation excluded, the same thread
count) on the ``ptb`` recipe and He et al.'s SGD schedule. Each epoch's validation records IW-NLL at a
small K (``--valid-iw-samples``), kl, mi and au against the training seconds spent so far; the best model
by validation −ELBO at 25% and 50% of the budget is kept (``train.snapshot_minutes``) and, with the
final one, evaluated on the test split at ``--iw-samples``.

Writes ``benchmarks/results/ptb_time.json`` (rewritten after each method) and the figure
``--plot`` (validation nll, kl, mi and au against training seconds, one curve per method), and prints
the test table at 25/50/100% of the budget and the time each method takes to reach the target:
validation mi ≥ ``--target-mi`` nats with validation ppl within ``--target-ppl`` of the LM's at the
same training time ("never" when it does not; several comma-separated excesses give one column each).
Printed figures are truncated, never rounded up.

Usage::

    python benchmarks/ptb_time.py --data ../shared/data/ptb --runs RUNS_DIR --minutes 90 \\
        --methods lm,vae,critic-self,critic-self-fb,critic-neural,aggressive,bn-vae,sa-vae
"""

from __future__ import annotations

import argparse
import json
import math
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from ptb_baselines import machine

import textvae
from textvae.builders import build_datasets
from textvae.checkpoint import atomic_write_text, latest_checkpoint, load_config, load_model_dir, read_json
from textvae.evaluation import evaluate
from textvae.tracking import read_metrics

FRACTIONS = (0.25, 0.5)
CURVE_KEYS = ("train_seconds", "epoch", "nll", "ppl", "kl", "mi", "au")


def overrides(args, method: str) -> list[str]:
    snaps = ",".join(f"{args.minutes * f:g}" for f in FRACTIONS)
    return [f"data.dir={args.data_dir}", f"method={method}", f"seed={args.seed}",
            f"train.max_train_minutes={args.minutes:g}", "train.max_epochs=1000", f"train.snapshot_minutes=[{snaps}]",
            f"eval.valid_iw_samples={args.valid_iw_samples}", f"eval.iw_samples={args.iw_samples}",
            f"train.num_threads={args.threads}", "train.checkpoint_every_steps=500", *args.extra]


def test_figures(run: Path, model_dir: Path) -> dict:
    """The protocol's test figures of one model of the run (a snapshot or the final best model)."""
    if model_dir.name == "model":
        return read_json(run / "eval_test.json")
    cached = model_dir / "eval_test.json"  # a snapshot's figures, computed once
    if cached.is_file():
        return read_json(cached)
    cfg = load_config(run)
    model, tokenizer = load_model_dir(model_dir)
    datasets, _ = build_datasets(cfg, tokenizer)
    figures = evaluate(model, datasets["test"], cfg.eval, seed=cfg.seed, progress=False).to_dict()
    atomic_write_text(cached, json.dumps(figures, indent=2) + "\n")
    return figures


def method_result(args, method: str) -> dict:
    run = args.runs / method
    records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    curve = [{k: r.get(k) for k in CURVE_KEYS} for r in records if r["split"] == "valid"]
    out = {"method": method, "finished": (run / "eval_test.json").is_file(), "curve": curve,
           "command": f"textvae train {args.recipe} "
           + " ".join(overrides(args, method)).replace(args.data_dir, args.data)}
    if out["finished"]:
        points = {f"{f:.0%}": run / "snapshots" / f"minutes-{args.minutes * f:g}" for f in FRACTIONS}
        points["100%"] = run / "model"
        out["test"] = {name: test_figures(run, d) for name, d in points.items() if d.is_dir()}
    return out


def time_to_target(curve: list[dict], lm_curve: list[dict], mi: float, ppl_ratio: float) -> float | None:
    """The first training second at which validation mi ≥ ``mi`` and ppl ≤ ``ppl_ratio`` × the LM's ppl at that
    time (the LM's curve interpolated linearly; before its first point, its first value)."""
    def lm_ppl(t: float) -> float:
        pts = [(p["train_seconds"], p["ppl"]) for p in lm_curve]
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False):
            if t0 <= t <= t1:
                return p0 + (p1 - p0) * (t - t0) / (t1 - t0)
        return pts[-1][1]

    for p in curve:
        if p["mi"] >= mi and p["ppl"] <= ppl_ratio * lm_ppl(p["train_seconds"]):
            return p["train_seconds"]
    return None


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key in zip(axes, ("nll", "kl", "mi", "au"), strict=True):
        for r in results:
            xs = [p["train_seconds"] / 60 for p in r["curve"]]
            ms = 6 if len(xs) == 1 else 2  # a method that has not finished an epoch has one point
            ax.plot(xs, [p[key] for p in r["curve"]], marker="o", ms=ms, label=r["method"])
        ax.set_title(f"validation {key}")
        ax.set_xlabel("training minutes")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def write(args, methods: list[str]) -> dict:
    results = [method_result(args, m) for m in methods]
    lm = next((r for r in results if r["method"] == "lm" and r["curve"]), None)
    lm_done = lm is not None and lm["finished"]
    for r in results:
        r["seconds_to_target"] = [None if lm is None or not r["curve"] else time_to_target(
            r["curve"], lm["curve"], args.target_mi, 1 + excess) for excess in args.target_ppl]
        if lm_done and "100%" in r.get("test", {}):  # paired against the LM on the same test sentences
            paired = textvae.compare(args.runs / r["method"], args.runs / "lm")
            r["test"]["100%"]["dnll_vs_lm"] = paired.mean_diff
            r["test"]["100%"]["dnll_paired_stderr"] = paired.paired_stderr
    study = {"budget_minutes": args.minutes, "seed": args.seed, "split": "test", "iw_samples": args.iw_samples,
             "valid_iw_samples": args.valid_iw_samples, "targets": [{"valid_mi": args.target_mi, "valid_ppl_vs_lm": 1 + excess}
                                                                   for excess in args.target_ppl],
             "machine": args.machine, "rows": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(study, indent=2) + "\n")
    if any(r["curve"] for r in results):
        plot(results, args.plot)  # the curves so far: rewritten after each method
    return study


def cut(x: float, digits: int, sign: bool = False) -> str:
    """``x`` to ``digits`` decimals truncated toward zero, so that a printed figure never overstates it."""
    s = str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_DOWN))
    return f"+{s}" if sign and not s.startswith("-") else s


def print_tables(study: dict) -> None:
    ceiling = next((t["mi_ceiling"] for r in study["rows"] for t in r.get("test", {}).values()), math.nan)
    print(f"\n| method | at | nll | ppl | kl | mi (ceiling {cut(ceiling, 2)}) | au | Δnll vs lm (paired s.e.) |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in study["rows"]:
        for at, t in r.get("test", {}).items():
            d = f"{cut(t['dnll_vs_lm'], 3, True)} ({cut(t['dnll_paired_stderr'], 3)})" if "dnll_vs_lm" in t else "—"
            print(f"| {r['method']} | {at} | {cut(t['nll'], 2)} ± {cut(t['nll_stderr'], 2)} | {cut(t['ppl'], 2)} | "
                  f"{cut(t['kl'], 3)} | {cut(t['mi'], 3)} | {t['au']} | {d} |")
    targets = [f"mi ≥ {t['valid_mi']:g}, ppl ≤ {t['valid_ppl_vs_lm']:g}× lm" for t in study["targets"]]
    print("\n| method | " + " | ".join(f"training seconds to valid {t}" for t in targets) + " |\n|---|"
          + "---|" * len(targets))
    for r in study["rows"]:
        cells = ["never" if s is None else str(math.floor(s)) for s in r["seconds_to_target"]]
        print(f"| {r['method']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--recipe", default="ptb")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--methods", default="lm,vae,critic-self,critic-self-fb,critic-neural,aggressive,bn-vae")
    parser.add_argument("--minutes", type=float, default=90.0, help="training-time budget of every method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iw-samples", type=int, default=100, help="K of the test evaluations")
    parser.add_argument("--valid-iw-samples", type=int, default=10, help="K of each epoch's validation IW-NLL")
    parser.add_argument("--target-mi", type=float, default=2.0)
    parser.add_argument("--target-ppl", type=lambda s: [float(v) for v in s.split(",")], default=[0.02],
                        help="allowed relative ppl excess over the LM's; comma-separated for several targets")
    parser.add_argument("--extra", nargs="*", default=[], help="further key=value overrides (a smoke test's budget)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ptb_time.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/results/ptb_time.png"))
    args = parser.parse_args()
    args.data_dir = str(Path(args.data).resolve())
    args.machine = machine()
    methods = args.methods.split(",")
    for method in methods:
        run = args.runs / method
        if not (run / "eval_test.json").is_file():
            resume = run.is_dir() and latest_checkpoint(run) is not None
            textvae.train(args.recipe, overrides(args, method), run, overwrite=not resume, resume=resume)
        study = write(args, methods)
    print_tables(study)


if __name__ == "__main__":
    main()
