"""Data-parallel scaling: PTB training tokens/s of one process against N torchrun ranks.

    python benchmarks/scaling.py --data ../shared/data/ptb            # CPU: 1 × 2 threads vs 2 × 1 thread
    python benchmarks/scaling.py --data DIR --device cuda --ranks 1,2,4,8 --threads 4   # a multi-GPU node

Each configuration is a real ``textvae train ptb`` (``torchrun --standalone`` for more than one
rank) for ``--steps`` steps of the global batch of 32; its rate is the last training record's
``tokens_per_s`` (target tokens of the global batches over training time, the validation pass
excluded). Efficiency = rate(N ranks) / (N × rate(1 rank at the same threads per rank)) where that
row exists, and rate(N) / rate(1 process × N threads) for the CPU comparison. Prints a table and
writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run(ranks: int, threads: int, args, out: Path) -> float:
    overrides = [f"data.dir={args.data}", f"train.max_steps={args.steps}", f"train.num_threads={threads}",
                 "train.log_every_steps=10", "eval.iw_samples=1", f"device={args.device}"]
    cli = ["-m", "textvae", "train", "ptb", *overrides, "--output-dir", str(out)]
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([*launcher, *cli], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(launcher + cli)} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "train"][-1]["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts, each at --threads per rank")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--single-threads", type=int, default=2,
                        help="threads of the one-process comparison row (0: none)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(1, args.single_threads)] if args.single_threads else []
        configs += [(int(n), args.threads) for n in args.ranks.split(",")]
        for i, (ranks, threads) in enumerate(configs):
            rate = run(ranks, threads, args, Path(tmp) / f"run-{i}")
            rows.append({"ranks": ranks, "threads_per_rank": threads, "tokens_per_s": rate})
            print(f"{ranks} rank(s) × {threads} thread(s): {rate:.0f} target tokens/s", flush=True)
    base = {r["threads_per_rank"]: r["tokens_per_s"] for r in rows if r["ranks"] == 1}
    for r in rows:
        n, t = r["ranks"], r["threads_per_rank"]
        r["efficiency_vs_1_rank"] = r["tokens_per_s"] / (n * base[t]) if t in base and n > 1 else None
        same_cores = base.get(n * t) if n > 1 else None
        r["ratio_vs_1_process_same_cores"] = r["tokens_per_s"] / same_cores if same_cores else None
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name()},
              "budget": f"{args.steps} PTB training steps (global batch 32, split train, seed 0) per row",
              "device": args.device, "rows": rows}
    print("\n| ranks | threads/rank | target tokens/s | vs 1 rank × N | vs 1 process, same cores |\n|---|---|---|---|---|")
    for r in rows:
        eff = "—" if r["efficiency_vs_1_rank"] is None else f"{r['efficiency_vs_1_rank']:.2f}"
        same = "—" if r["ratio_vs_1_process_same_cores"] is None else f"{r['ratio_vs_1_process_same_cores']:.2f}×"
        print(f"| {r['ranks']} | {r['threads_per_rank']} | {r['tokens_per_s']:.0f} | {eff} | {same} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
