"""The GPU check's measurements (run by ``benchmarks/gpu_check.sh``): one PTB epoch in bf16 with its
tokens/s, IW-NLL at K = 500 on 500 PTB test sentences batched against a batch-1 loop (same weights,
same figure), and a 1-GPU ``torchrun`` run. Prints a table; writes ``benchmarks/results/gpu_check.json``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from textvae.builders import build_datasets, build_model
from textvae.config import load_recipe
from textvae.data import TextDataset
from textvae.evaluation import evaluate


def train(args, launcher: list[str], out: Path, extra: list[str]) -> dict:
    cmd = [*launcher, "-m", "textvae", "train", "ptb", f"data.dir={args.data}", "device=cuda", *extra,
           "eval.iw_samples=1", "--output-dir", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"][-1]
    return {"command": " ".join(cmd), "tokens_per_s": valid["tokens_per_s"], "valid_loss": valid["loss"],
            "wall_s": time.perf_counter() - t0}


def iw(args) -> dict:
    cfg = load_recipe("ptb", [f"data.dir={args.data}", "device=cuda"])
    datasets, tok = build_datasets(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, tok).cuda().eval()
    test = TextDataset(datasets["test"].ids[:500])
    rows = {}
    for name, batch in (("batched (32 sentences × K)", 32), ("batch-1 loop", 1)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = evaluate(model, test, replace(cfg.eval, iw_samples=500, batch_size=batch), "cuda", progress=False)
        torch.cuda.synchronize()
        rows[name] = {"seconds": time.perf_counter() - t0, "nll": result.nll}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--tests", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "tests": args.tests}
    with tempfile.TemporaryDirectory() as tmp:
        result["ptb_epoch_bf16"] = train(args, [sys.executable], Path(tmp) / "bf16",
                                         ["train.max_epochs=1", "train.precision=bf16"])
        result["torchrun_1_gpu"] = train(args, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=1"], Path(tmp) / "ddp", ["train.max_steps=200"])
    result["iw_nll_k500_500_sentences"] = iw(args)
    print(f"GPU: {result['gpu']}, torch {result['torch']}; CUDA tests: {args.tests}\n")
    print("| check | figure |\n|---|---|")
    print(f"| PTB epoch, bf16 | {result['ptb_epoch_bf16']['tokens_per_s']:.0f} target tokens/s |")
    print(f"| torchrun, 1 GPU, 200 steps | {result['torchrun_1_gpu']['tokens_per_s']:.0f} target tokens/s |")
    for name, row in result["iw_nll_k500_500_sentences"].items():
        print(f"| IW-NLL K=500, 500 sentences, {name} | {row['seconds']:.1f} s, nll {row['nll']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
