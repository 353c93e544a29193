"""PTB at the literature's budget: He et al.'s full schedule (and Adam to convergence), one row per run.

Each (optimiser, method, seed) trains the ``ptb`` recipe into ``RUNS/<optimiser>/<method>/seed-<s>/`` until
its schedule ends: SGD at lr 1.0 (``sgd``), or Adam at lr 1e-3 (``adam``), each with He et al.'s plateau
rule (halve the lr and reload the best model after 2 epochs without improvement, not before epoch 15)
and a stop after the 5th halving. The best model by validation −ELBO is evaluated on the full test split
with IW-NLL at ``--iw-samples`` (default K = 500). An interrupted run resumes from its last checkpoint
(``train.checkpoint_every_steps``); a finished one is reused.

Before the first run and after each one, ``benchmarks/results/ptb_full.json`` is rewritten whole as
``{"rows": [...]}``: a finished run's row has every figure of the protocol, its paired Δnll against the
LM of the same optimiser and seed, its training seconds and the machine; a run that has not finished has
``finished: false`` and how far it got (epochs, lr halvings, training seconds, best validation −ELBO).

Usage (hours per run on a CPU; one thread per run when two share the cores)::

    python benchmarks/ptb_full.py --data ../shared/data/ptb --runs RUNS_DIR \\
        --methods lm,vae,critic-self-fb,bn-vae,ae-fb --optimizers sgd --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ptb_baselines import machine
from ptb_time import cut

import textvae
from textvae.checkpoint import atomic_write_text, latest_checkpoint, load_trainer_state, read_json
from textvae.errors import TextVAEError
from textvae.tracking import read_metrics

OPTIMIZERS = {"sgd": ["train.optimizer=sgd", "train.lr=1.0"], "adam": ["train.optimizer=adam", "train.lr=0.001"]}
# per-method departures: Li et al.'s AE stage learns no code under He et al.'s U(±0.01) encoder init
# (docs/mitigations.md), so ae-fb runs with PyTorch's
METHOD_EXTRA = {"ae-fb": ["model.encoder_init=default"]}
# rows that are a method with other settings: name → (method, overrides). The self critic's free-bits floor
# at Li et al.'s λ = 0.25 nats/dim (8 nats over 32 dims) instead of 0.1: room for the whole-set mi ≥ 5 that
# the 0.1 floor (3.2 nats of KL) cannot hold
VARIANTS = {"critic-self-fb0.25": ("critic-self-fb", ["train.free_bits=0.25"])}
SCHEDULE = {  # the budget each row states
    "sgd": "He et al.'s schedule: SGD lr 1.0, halved with a best-model reload after 2 epochs without validation "
           "improvement (not before epoch 15), stop after the 5th halving (at most 100 epochs); batch 32",
    "adam": "Adam lr 1e-3 under He et al.'s plateau rule: halved with a best-model reload after 2 epochs without "
            "validation improvement (not before epoch 15), stop after the 5th halving (at most 100 epochs); batch 32",
}
KEYS = ("iw_samples", "nll", "nll_stderr", "ppl", "num_sequences", "num_tokens", "kl", "mi", "mi_ceiling",
        "mi_batch", "au")


def overrides(args, optimizer: str, method: str, seed: int) -> list[str]:
    base, extra = VARIANTS.get(method, (method, []))
    return [f"data.dir={args.data_dir}", f"method={base}", *extra, f"seed={seed}", *OPTIMIZERS[optimizer],
            *METHOD_EXTRA.get(method, []), "train.max_epochs=100", "train.max_lr_decays=5",
            f"eval.iw_samples={args.iw_samples}", f"train.num_threads={args.threads}",
            f"train.precision={args.precision}", "train.checkpoint_every_steps=500", *args.extra]


def row(args, run: Path, optimizer: str, method: str, seed: int) -> dict:
    """The run's row: every test figure when it has finished, else how far it got."""
    base = {"method": method, "optimizer": optimizer, "seed": seed, "split": "test", "budget": SCHEDULE[optimizer],
            "precision": args.precision, "machine": args.machine,
            "command": f"textvae train {args.recipe} "
                       + " ".join(overrides(args, optimizer, method, seed)).replace(args.data_dir, args.data)}
    valid = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "valid"] \
        if (run / "metrics.jsonl").is_file() else []
    try:
        checkpoint = latest_checkpoint(run) if run.is_dir() else None
        state = load_trainer_state(checkpoint) if checkpoint else {}
    except TextVAEError:  # another process's run removed its oldest checkpoint as this one read it
        state = {}
    halvings = state.get("n_decays", 0)  # of the run's last schedule (ae-fb: its VAE stage's)
    base.update(epochs=state.get("epoch", 0), lr_halvings=halvings, converged=halvings >= 5,
                train_seconds=state.get("train_seconds"),
                best_valid_loss=min((r["loss"] for r in valid), default=None))
    if not (run / "eval_test.json").is_file():
        return {**base, "finished": False, **dict.fromkeys(KEYS), "dnll_vs_lm": None, "dnll_paired_stderr": None}
    result = read_json(run / "eval_test.json")
    out = {**base, "finished": True, **{k: result[k] for k in KEYS}, "dnll_vs_lm": None, "dnll_paired_stderr": None}
    lm = run.parents[1] / "lm" / f"seed-{seed}"
    if method != "lm" and (lm / "eval_test.json").is_file():
        paired = textvae.compare(run, lm)
        out["dnll_vs_lm"], out["dnll_paired_stderr"] = paired.mean_diff, paired.paired_stderr
    elif method == "lm":
        out["dnll_vs_lm"], out["dnll_paired_stderr"] = 0.0, 0.0
    return out


def on_disk(runs: Path) -> list[tuple[str, str, int]]:
    """Every ``<optimiser>/<method>/seed-<s>`` run under ``runs``: another process's plan included."""
    found = []
    for run in sorted(runs.glob("*/*/seed-*")) if runs.is_dir() else []:
        optimizer, method, seed = run.parent.parent.name, run.parent.name, run.name.removeprefix("seed-")
        if optimizer in OPTIMIZERS and seed.isdigit() and run.is_dir():
            found.append((optimizer, method, int(seed)))
    return found


def write_rows(args, plan: list[tuple[str, str, int]]) -> list[dict]:
    """Rewrite the JSON with this process's plan and every other run under ``--runs`` (two processes
    sharing the cores each run their own methods into one table)."""
    everything = plan + [key for key in on_disk(args.runs) if key not in plan]
    rows = [row(args, args.runs / o / m / f"seed-{s}", o, m, s) for o, m, s in everything]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=2) + "\n")
    return rows


def print_table(rows: list[dict]) -> None:
    """The rows as a Markdown table, figures truncated (never rounded up); hours of training."""
    print("\n| optimiser | method | seed | epochs | halvings | nll | ppl | kl | mi | mi_batch | au | "
          "Δnll vs lm (paired s.e.) | training h |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hours = "—" if r["train_seconds"] is None else cut(r["train_seconds"] / 3600, 2)
        head = f"| {r['optimizer']} | {r['method']} | {r['seed']} | {r['epochs']} | {r['lr_halvings']} |"
        if not r["finished"]:
            best = "—" if r["best_valid_loss"] is None else cut(r["best_valid_loss"], 2)
            print(f"{head} unfinished (best valid −ELBO {best}) | | | | | | | {hours} |")
            continue
        d = "—" if r["dnll_vs_lm"] is None else \
            f"{cut(r['dnll_vs_lm'], 3, sign=True)} ({cut(r['dnll_paired_stderr'], 3)})"
        print(f"{head} {cut(r['nll'], 2)} ± {cut(r['nll_stderr'], 2)} | {cut(r['ppl'], 2)} | {cut(r['kl'], 3)} | "
              f"{cut(r['mi'], 3)} (of {cut(r['mi_ceiling'], 2)}) | {cut(r['mi_batch'], 3)} | {r['au']} | {d} | {hours} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--recipe", default="ptb")
    parser.add_argument("--extra", nargs="*", default=[], help="further key=value overrides (a smoke test's budget)")
    parser.add_argument("--runs", type=Path, required=True, help="folder for the run directories")
    parser.add_argument("--methods", default="lm,vae,critic-self,critic-self-fb,bn-vae,ae-fb,cyclical")
    parser.add_argument("--optimizers", default="sgd")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ptb_full.json"))
    parser.add_argument("--report", action="store_true", help="rewrite the JSON and print the table; train nothing")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data).resolve())  # the runs store it absolute; the rows show it as given
    args.machine = machine()
    plan = [(o, m, int(s)) for o in args.optimizers.split(",") for s in args.seeds.split(",")
            for m in args.methods.split(",")]
    for o in {o for o, _, _ in plan}:
        if o not in OPTIMIZERS:
            sys.exit(f"error: unknown optimiser '{o}' (choose from {', '.join(OPTIMIZERS)})")
    rows = write_rows(args, plan)
    if args.report:
        print_table(rows)
        return
    for optimizer, method, seed in plan:
        run = args.runs / optimizer / method / f"seed-{seed}"
        if not (run / "eval_test.json").is_file():
            resume = run.is_dir() and latest_checkpoint(run) is not None
            textvae.train(args.recipe, overrides(args, optimizer, method, seed), run, overwrite=not resume,
                          resume=resume)
        print_table(write_rows(args, plan))


if __name__ == "__main__":
    main()
