"""Latent-space examples and their scores for several runs, side by side (the README's PTB examples).

For each run (``NAME=RUN_DIR``), everything decoded greedily (optionally with
``--no-repeat-ngram``) so that any variety comes from z: prior samples (``--show`` shown;
distinct-1/2 and self-BLEU over ``--n-samples``), reconstructions of test sentences from the
posterior mean (``--show-recon`` shown; corpus BLEU and exact match over ``--n-recon``),
``--steps``-point linear interpolations between ``--n-pairs`` pairs of test sentences (their
path metrics averaged; the path shown is the pair with the median mean edit distance under the
first run, a typical path rather than the best), plus the run's ``curves.png`` and
``latent.png`` (``textvae plot``), copied to ``--png-dir/NAME-*.png``. Every run sees the same
sentences and seeds. Prints markdown and writes JSON.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/latent_examples.py --test ../shared/data/ptb/ptb.test.txt \\
        critic-self=runs/ptb_study10/critic-self/seed-0 vae=runs/ptb_study10/vae/seed-0 \\
        --no-repeat-ngram 3 --png-dir docs/ptb_examples --out benchmarks/results/latent_examples_ptb.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
from pathlib import Path

import textvae
from textvae import DecodeConfig
from textvae.latent import load


def pick_sentences(path: Path, n: int, seed: int, min_words: int = 6, max_words: int = 16) -> list[str]:
    """``n`` distinct test sentences of ``min_words``–``max_words`` words, in a seeded random order."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    pool = sorted({ln for ln in lines if min_words <= len(ln.split()) <= max_words})
    random.Random(seed).shuffle(pool)
    return pool[:n]


def examples(run: str, sentences: list[str], args) -> dict:
    greedy = DecodeConfig(no_repeat_ngram=args.no_repeat_ngram)
    lm = load(run)  # once for the three tools
    samples = textvae.sample(lm, n=args.n_samples, decoding=greedy, seed=args.seed)
    recon = textvae.reconstruct(lm, sentences[: args.n_recon], decoding=greedy)
    pairs = list(zip(sentences[args.n_recon : args.n_recon + args.n_pairs],
                     sentences[args.n_recon + args.n_pairs : args.n_recon + 2 * args.n_pairs], strict=True))
    paths = textvae.interpolate_pairs(lm, pairs, steps=args.steps, decoding=greedy, seed=args.seed)
    return {
        "samples": samples.to_dict(),
        "reconstruct": recon.to_dict(),
        "interpolations": [{"a": a, "b": b, **path.to_dict()} for (a, b), path in zip(pairs, paths, strict=True)],
        "paths": {
            "pairs": len(paths),
            "endpoint_match": statistics.fmean(m for p in paths for m in p.endpoint_match),
            "distinct_ratio": statistics.fmean(p.distinct_ratio for p in paths),
            "mean_edit_distance": statistics.fmean(p.mean_edit_distance for p in paths),
        },
    }


def cell(text: str) -> str:
    """Text for a markdown table cell: ``<unk>`` would be swallowed as an HTML tag, ``|`` would split the cell."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def markdown(results: dict, show: int, show_recon: int) -> str:
    names = list(results)
    out = ["| run | distinct-1 | distinct-2 | self-BLEU | recon BLEU | exact match | path distinct | "
           "path edit dist. | endpoint match |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, c, p = r["samples"], r["reconstruct"], r["paths"]
        out.append(f"| {name} | {s['distinct_1']:.3f} | {s['distinct_2']:.3f} | {s['self_bleu']:.2f} | "
                   f"{c['bleu']:.2f} | {c['exact_match']:.3f} | {p['distinct_ratio']:.3f} | "
                   f"{p['mean_edit_distance']:.2f} | {p['endpoint_match']:.3f} |")
    out += ["", "Prior samples:", "", "| # | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in range(show):
        out.append(f"| {i + 1} | " + " | ".join(cell(results[n]["samples"]["texts"][i]) for n in names) + " |")
    out += ["", "Reconstructions (posterior mean, greedy):", "",
            "| input | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    first = results[names[0]]["reconstruct"]
    for i in range(show_recon):
        out.append(f"| {cell(first['references'][i])} | "
                   + " | ".join(cell(results[n]["reconstruct"]["outputs"][i]) for n in names) + " |")
    path = results[names[0]]["interpolation"]
    out += ["", f'Interpolation (linear, greedy) from A = "{cell(path["a"])}" to B = "{cell(path["b"])}" '
                f'(pair {path["pair"] + 1} of {results[names[0]]["paths"]["pairs"]}: the median mean edit '
                f"distance of {names[0]}'s paths):", "",
            "| t | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, point in enumerate(path["path"]):
        out.append(f"| {point['t']:.2f} | " + " | ".join(cell(results[n]["interpolation"]["path"][i]["text"])
                                                      for n in names) + " |")
    for n in names:
        ip = results[n]["interpolation"]
        out.append(f"\n{n}: endpoint_match {ip['endpoint_match']}, distinct_ratio {ip['distinct_ratio']:.3f}, "
                   f"mean_edit_distance {ip['mean_edit_distance']:.2f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--test", type=Path, required=True, help="test split, one sentence per line")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--n-recon", type=int, default=500)
    parser.add_argument("--n-pairs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--show", type=int, default=5, help="prior samples shown")
    parser.add_argument("--show-recon", type=int, default=3, help="reconstructions shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-repeat-ngram", type=int, default=0, help="greedy without repeated n-grams of this size")
    parser.add_argument("--png-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_examples.json"))
    args = parser.parse_args()
    sentences = pick_sentences(args.test, args.n_recon + 2 * args.n_pairs, args.seed)
    results = {}
    for spec in args.runs:
        name, _, run = spec.partition("=")
        results[name] = {"run": run, **examples(run, sentences, args)}
        if args.png_dir:
            args.png_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                for kind, png in textvae.plot(run, out_dir=tmp).items():
                    shutil.move(png, args.png_dir / f"{name}-{kind}.png")
    # The path shown: the pair whose path, under the first run, has the median mean_edit_distance
    # (a typical path, not the best one); every run shows that same pair.
    first = results[next(iter(results))]["interpolations"]
    order = sorted(range(len(first)), key=lambda i: (first[i]["mean_edit_distance"], i))
    shown = order[(len(order) - 1) // 2]
    for r in results.values():
        r["interpolation"] = {"pair": shown, **r["interpolations"][shown]}
    print(markdown(results, args.show, args.show_recon))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                   indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
