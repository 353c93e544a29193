"""The ``textvae`` command line: parse → call the library → print. Nothing else lives here.

A :class:`TextVAEError` (bad file, key, value, or output directory) becomes one
line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer

from .config import TextVAEError, list_recipes, load_recipe, recipe_path

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Variational autoencoders of text."
)
recipes_app = typer.Typer(no_args_is_help=True, help="List, show and copy the bundled recipes.")
data_app = typer.Typer(no_args_is_help=True, help="Corpus utilities.")
methods_app = typer.Typer(no_args_is_help=True, help="Named methods (override sets).")
app.add_typer(recipes_app, name="recipes")
app.add_typer(data_app, name="data")
app.add_typer(methods_app, name="methods")

TABLE_KEYS = ("nll", "nll_stderr", "ppl", "nll_per_word", "ppl_per_word", "elbo", "rec", "kl", "mi", "mi_ceiling",
              "mi_batch", "au")


def format_result(result: dict, title: str) -> str:
    shown = [key for key in TABLE_KEYS if result.get(key) is not None]  # per-word figures need the texts
    rows = [f"{title}"] + [f"  {key:<12} {result[key]:.4f}" if isinstance(result[key], float)
                            else f"  {key:<12} {result[key]}" for key in shown]
    rows.append(f"  (IW-NLL with K={result['iw_samples']} over {result['num_sequences']} sequences, "
                f"{result['num_tokens']} predicted tokens; nats)")
    return "\n".join(rows)


@app.command(context_settings={"allow_extra_args": False})
def train(
    recipe: str = typer.Argument(..., help="bundled recipe name or YAML path"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.max_steps=50"),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", help="run directory (default runs/RECIPE)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in --output-dir"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
):
    """Train a model from a recipe, then evaluate the best one on the test split."""
    from .train import fit

    cfg = load_recipe(recipe, overrides or [])
    run = fit(cfg, output_dir or Path("runs") / cfg.name, resume=resume, overwrite=overwrite)
    result = json.loads((run / "eval_test.json").read_text())
    typer.echo(format_result(result, f"test results for {run} (method {cfg.method})"))


@app.command()
def study(
    recipe: str = typer.Argument(..., help="bundled recipe name or YAML path"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides shared by every run"),
    methods: str = typer.Option("vae,critic-self", "--methods", help="comma-separated method names"),
    seeds: int = typer.Option(1, "--seeds", help="seeds 0..N-1 per method"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="study directory (reused to resume)"),
):
    """Train every method × seed under the same budget; write study.json, study.md and curves.png."""
    from .study import run_study, to_markdown

    result = run_study(recipe, [m.strip() for m in methods.split(",") if m.strip()], seeds, overrides or [],
                       output_dir)
    typer.echo(to_markdown(result), nl=False)


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory written by `textvae train`"),
    split: str = typer.Option("test", "--split", help="test | valid"),
    iw_samples: int = typer.Option(None, "--iw-samples", help="K for the IW-NLL (default: the recipe's)"),
    limit: int = typer.Option(None, "--limit", help="evaluate only the first N sequences"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Evaluate a run's best model under the protocol (nll, ppl, elbo, kl, mi, mi_batch, au)."""
    from .checkpoint import load_run
    from .evaluate import evaluate
    from .train import build_datasets, resolve_device

    if split not in ("test", "valid"):
        raise TextVAEError(f"--split must be test or valid, not '{split}'")
    device = resolve_device("auto")
    cfg, model, tokenizer = load_run(run_dir, device)
    if iw_samples is not None:
        if iw_samples < 1:
            raise TextVAEError("--iw-samples must be >= 1")
        cfg.eval.iw_samples = iw_samples
    datasets, _ = build_datasets(cfg, tokenizer)
    dataset = datasets[split]
    if limit is not None:
        if limit < 1:
            raise TextVAEError("--limit must be >= 1")
        dataset = dataset.subset(limit)
    result = evaluate(model, dataset, cfg.eval, device, seed=cfg.seed, progress=not as_json).to_dict()
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(format_result(result, f"{split} results for {run_dir}"))


@recipes_app.command("list")
def recipes_list():
    """Names of the bundled recipes."""
    for name in list_recipes():
        typer.echo(name)


@recipes_app.command("show")
def recipes_show(name: str):
    """Print a bundled recipe's YAML."""
    typer.echo(recipe_path(name).read_text(), nl=False)


@recipes_app.command("copy")
def recipes_copy(name: str, dest: Path):
    """Copy a bundled recipe to DEST to edit it."""
    if dest.exists():
        raise TextVAEError(f"{dest} already exists")
    shutil.copyfile(recipe_path(name), dest)
    typer.echo(f"copied {name} to {dest}")


@methods_app.command("list")
def methods_list():
    """Every named method with its one-line description and citation."""
    from .methods import method_table

    rows = method_table()
    width = max(len(name) for name, _, _ in rows)
    for name, description, citation in rows:
        typer.echo(f"{name:<{width}}  {description} [{citation}]")


@data_app.command("synthetic")
def data_synthetic(
    out: Path = typer.Option(..., "--out", help="folder to write synthetic_{train,test}.txt and .z.txt"),
    seed: int = typer.Option(783435, "--seed"),
    num_train: int = typer.Option(16_000, "--num-train"),
    num_test: int = typer.Option(4_000, "--num-test"),
):
    """Generate He et al. (2019)'s synthetic corpus (2-d latent, vocab 1000, length 10)."""
    from .data import generate_synthetic

    paths = generate_synthetic(out, num_train=num_train, num_test=num_test, seed=seed)
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except TextVAEError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
