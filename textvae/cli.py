"""The ``textvae`` command line: parse → call the library → print. Nothing else lives here.

A :class:`TextVAEError` (bad file, key, value, or output directory) becomes one
line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import typer

from .config import list_recipes, load_recipe, recipe_path
from .errors import TextVAEError
from .generation import DecodeConfig
from .modules import matmul

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Variational autoencoders of text.")
recipes_app = typer.Typer(help="List, show and copy the bundled recipes.")
data_app = typer.Typer(help="Corpus utilities.")
methods_app = typer.Typer(help="Named methods (override sets).")
app.add_typer(recipes_app, name="recipes")
app.add_typer(data_app, name="data")
app.add_typer(methods_app, name="methods")


def require_command(ctx: typer.Context) -> None:
    """A group called without its command is a usage error: one line, exit 2 (click's own ``no_args_is_help``
    prints the help and exits 0 or 2, depending on its version)."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        names = ", ".join(ctx.command.list_commands(ctx))
        raise TextVAEError(f"missing command ({names}); see '{ctx.command_path} --help'")


for group in (app, recipes_app, data_app, methods_app):
    group.callback(invoke_without_command=True)(require_command)

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
    from .api import train as train_run
    from .distributed import main_process

    run = train_run(recipe, overrides or [], output_dir, overwrite=overwrite, resume=resume)
    if main_process():  # under torchrun, rank 0 reports
        typer.echo(format_result(run.test.to_dict(), f"test results for {run.path} (method {run.config.method})"))


@app.command()
def study(
    recipe: str = typer.Argument(..., help="bundled recipe name or YAML path"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides shared by every run"),
    methods: str = typer.Option("vae,critic-self", "--methods", help="comma-separated method names"),
    seeds: int = typer.Option(1, "--seeds", help="seeds 0..N-1 per method"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="study directory (reused to resume)"),
):
    """Train every method × seed under the same budget; write study.json, study.md and curves.png."""
    from .distributed import main_process
    from .study import run_study, to_markdown

    result = run_study(recipe, [m.strip() for m in methods.split(",") if m.strip()], seeds, overrides or [],
                       output_dir)
    if main_process():
        typer.echo(to_markdown(result), nl=False)


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory written by `textvae train`"),
    split: str = typer.Option("test", "--split", help="test | valid"),
    iw_samples: int = typer.Option(None, "--iw-samples", help="K for the IW-NLL (default: the recipe's)"),
    svi_steps: int = typer.Option(None, "--svi-steps", help="SA-VAE refinement steps first (default: the recipe's)"),
    limit: int = typer.Option(None, "--limit", help="evaluate only the first N sequences"),
    data_dir: Path = typer.Option(None, "--data-dir", help="the run's data files are now in this folder"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check the data files' sha256 against the run's"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Evaluate a run's best model under the protocol (nll, ppl, elbo, kl, mi, mi_batch, au)."""
    from .api import evaluate
    from .distributed import main_process

    result = evaluate(run_dir, split, iw_samples=iw_samples, svi_steps=svi_steps, limit=limit, data_dir=data_dir,
                      verify=verify, progress=not as_json).to_dict()
    if not main_process():  # under torchrun every rank evaluated its share; rank 0 prints
        return
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(format_result(result, f"{split} results for {run_dir}"))


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="run directory A"),
    run_b: Path = typer.Argument(..., help="run directory B"),
    split: str = typer.Option("test", "--split", help="test | valid"),
    iw_samples: int = typer.Option(None, "--iw-samples", help="K (default: each run's saved test evaluation)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Paired comparison A − B of per-sequence IW-NLL on the same sequences, with its paired standard error."""
    from .compare import compare as compare_runs
    from .compare import format_comparison

    result = compare_runs(run_a, run_b, split, iw_samples=iw_samples)
    typer.echo(json.dumps(result.to_dict()) if as_json else format_comparison(result))


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="a run directory written by `textvae train`"),
    repo_id: str = typer.Argument(..., help="the Hugging Face Hub repository, owner/name"),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
):
    """Upload a run's best model, tokenizer and a model card to the Hugging Face Hub."""
    from .api import load
    from .hub import push as push_run

    typer.echo(push_run(load(run_dir), repo_id, private=private))


# --- latent-space tools: sample, reconstruct, interpolate, analogy, plot ---------------------------

RUN_DIR = typer.Argument(..., help="a run directory written by `textvae train`")
SEED = typer.Option(0, "--seed", help="seeds z ~ p(z), posterior samples and token sampling")
AS_JSON = typer.Option(False, "--json", help="print JSON instead of text")
STRICT = typer.Option(False, "--strict", help="a word outside the run's vocabulary is an error, not a warning")

# name → (type, flag, help); the defaults are DecodeConfig's, except --strategy (per command).
DECODING_OPTIONS = {
    "strategy": (str, "--strategy", "greedy | sample | top-k | top-p | beam"),
    "temperature": (float, "--temperature", "sample, top-k, top-p: divide the logits by T"),
    "top_k": (int, "--top-k", "top-k: sample among the K most probable tokens"),
    "top_p": (float, "--top-p", "top-p: sample among the fewest tokens with probability >= P in all"),
    "beam": (int, "--beam", "beam: hypotheses kept per sentence"),
    "max_length": (int, "--max-length", "tokens generated per sentence at most (</s> included)"),
    "no_repeat_ngram": (int, "--no-repeat-ngram", "never repeat an n-gram of this size in a sentence (0 = off)"),
}


def decoding_options(strategy: str):
    """Give a command the options above, handed to it as one validated ``decoding: DecodeConfig``."""

    def wrap(command):
        defaults = {**asdict(DecodeConfig()), "strategy": strategy}
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                   default=typer.Option(defaults[name], flag, help=help))
                 for name, (kind, flag, help) in DECODING_OPTIONS.items()]
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "decoding"]

        @functools.wraps(command)
        def run(**kwargs):
            decoding = DecodeConfig(**{name: kwargs.pop(name) for name in DECODING_OPTIONS}).validate()
            return command(**kwargs, decoding=decoding)

        run.__signature__ = inspect.Signature(own + extra)
        run.__annotations__ = {p.name: p.annotation for p in own + extra}
        return run

    return wrap


def read_input(source: str | Path) -> list[str]:
    """Non-blank lines of a file, or of stdin for ``-``."""
    from .data import read_lines

    if str(source) == "-":
        return read_lines(sys.stdin.buffer.read(), "<stdin>")
    path = Path(source)
    if not path.is_file():
        raise TextVAEError(f"input file not found: {path}")
    return read_lines(path.read_bytes(), path)


@app.command()
@decoding_options("sample")
def sample(
    run_dir: Path = RUN_DIR,
    n: int = typer.Option(10, "-n", "--num-samples", help="sentences to sample"),
    seed: int = SEED,
    as_json: bool = AS_JSON,
    decoding: DecodeConfig = None,
):
    """Sample sentences (z from the prior, then decoded); print them with distinct-1/2 and self-BLEU."""
    from .latent import sample as sample_run

    result = sample_run(run_dir, n, decoding, seed)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo("\n".join(result.texts))
    self_bleu = "n/a" if result.self_bleu is None else f"{result.self_bleu:.2f}"
    typer.echo(f"# distinct-1 {result.distinct_1:.3f}  distinct-2 {result.distinct_2:.3f}  self-BLEU {self_bleu}")


@app.command()
@decoding_options("greedy")
def reconstruct(
    run_dir: Path = RUN_DIR,
    source: str = typer.Option(..., "--input", "-i", help="sentences, one per line (FILE, or - for stdin)"),
    z: str = typer.Option("mean", "--z", help="mean (posterior mean) | sample (one posterior sample)"),
    seed: int = SEED,
    strict: bool = STRICT,
    as_json: bool = AS_JSON,
    decoding: DecodeConfig = None,
):
    """Encode each input line and decode it again; print the outputs, corpus BLEU and exact-match rate."""
    from .latent import reconstruct as reconstruct_run

    result = reconstruct_run(run_dir, read_input(source), decoding, z, seed, strict=strict)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo("\n".join(result.outputs))
    typer.echo(f"# BLEU {result.bleu:.2f}  exact match {result.exact_match:.3f}  ({len(result.outputs)} sentences)")


@app.command()
@decoding_options("greedy")
def interpolate(
    run_dir: Path = RUN_DIR,
    a: str = typer.Argument(None, help="sentence A (t = 0)"),
    b: str = typer.Argument(None, help="sentence B (t = 1)"),
    steps: int = typer.Option(8, "--steps", help="points on the path, both ends included"),
    method: str = typer.Option("linear", "--method", help="linear | slerp"),
    pairs: tuple[Path, Path] | None = typer.Option(None, "--pairs", help="A.txt B.txt: one path per line pair"),
    out: Path = typer.Option(None, "--out", help="with --pairs: write the JSONL here (default: stdout)"),
    seed: int = SEED,
    strict: bool = STRICT,
    as_json: bool = AS_JSON,
    decoding: DecodeConfig = None,
):
    """Decode points on the path between the posterior means of two sentences (or of many pairs)."""
    from .checkpoint import atomic_write_text
    from .latent import interpolate_pairs

    batch = pairs is not None
    if batch == (a is not None or b is not None):
        raise TextVAEError("interpolate takes two sentences A B, or --pairs A.txt B.txt (one of the two)")
    if not batch and b is None:
        raise TextVAEError("interpolate needs two sentences: A and B")
    if out is not None and not batch:
        raise TextVAEError("--out goes with --pairs")
    if batch:
        firsts, seconds = read_input(pairs[0]), read_input(pairs[1])
        if len(firsts) != len(seconds):
            raise TextVAEError(f"--pairs: {pairs[0]} has {len(firsts)} sentences but {pairs[1]} has {len(seconds)}")
        results = interpolate_pairs(run_dir, list(zip(firsts, seconds, strict=True)), steps, method, decoding, seed,
                                    strict=strict)
        jsonl = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
        if out is None:
            typer.echo(jsonl, nl=False)
        else:
            atomic_write_text(out, jsonl)
            typer.echo(f"wrote {len(results)} paths to {out}")
        return
    result = interpolate_pairs(run_dir, [(a, b)], steps, method, decoding, seed, strict=strict)[0]
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for point in result.path:
        typer.echo(f"{point['t']:.3f}  {point['text']}")
    typer.echo(f"# endpoint match {result.endpoint_match}  distinct ratio {result.distinct_ratio:.3f}  "
               f"mean edit distance {result.mean_edit_distance:.2f}")


@app.command()
@decoding_options("greedy")
def analogy(
    run_dir: Path = RUN_DIR,
    a: str = typer.Argument(..., help="sentence A"),
    b: str = typer.Argument(..., help="sentence B"),
    c: str = typer.Argument(..., help="sentence C"),
    seed: int = SEED,
    strict: bool = STRICT,
    as_json: bool = AS_JSON,
    decoding: DecodeConfig = None,
):
    """A is to B as C is to ?: decode z(C) + z(B) − z(A) (posterior means)."""
    from .latent import analogy as analogy_run

    text = analogy_run(run_dir, a, b, c, decoding, seed, strict=strict)
    typer.echo(json.dumps({"a": a, "b": b, "c": c, "text": text}) if as_json else text)


@app.command()
def plot(
    run_dir: Path = RUN_DIR,
    out: Path = typer.Option(None, "--out", help="folder for the PNGs (default: the run directory)"),
    limit: int = typer.Option(None, "--limit", help="plot the first N validation sentences only"),
):
    """Write curves.png (training curves) and latent.png (validation posterior means, PCA, by label)."""
    from .latent import plot_run

    written = plot_run(run_dir, out, limit)
    for kind, path in written.items():
        typer.echo(f"{kind}: {path}")
    if "latent" not in written:
        typer.echo("(a language model has no latent space: no latent.png)")


@recipes_app.command("list")
def recipes_list():
    """Names of the bundled recipes."""
    for name in list_recipes():
        typer.echo(name)


@recipes_app.command("show")
def recipes_show(
    name: str = typer.Argument(..., help="bundled recipe name or YAML path"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides (with --resolved)"),
    resolved: bool = typer.Option(False, "--resolved", help="the fully merged and validated config: defaults, "
                                  "preset, method and overrides, as a run would store it"),
):
    """Print a bundled recipe's YAML (or, with --resolved, the config a run of it would use)."""
    if not resolved:
        if overrides:
            raise TextVAEError("key=value overrides need --resolved (the recipe file itself is printed without)")
        typer.echo(recipe_path(name).read_text(), nl=False)
        return
    from .config import to_yaml

    typer.echo(to_yaml(load_recipe(name, overrides)), nl=False)


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


class _StderrHandler(logging.StreamHandler):
    """Log records to whatever ``sys.stderr`` is when they are emitted (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _LineFormatter(logging.Formatter):
    """``message``, or ``warning: message`` for a warning."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _log_to_stderr() -> None:
    """The ``textvae`` logger's lines (epoch summaries, notices) on stderr, terminal or not."""
    logger = logging.getLogger("textvae")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LineFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _usage_error_types() -> tuple[type, ...]:
    """click's exception base classes: the installed click's, and the copy newer typer versions vendor."""
    found = []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    try:
        from typer._click import exceptions as vendored  # typer >= 0.2x ships its own click
    except ImportError:
        pass
    else:
        found.append(vendored.ClickException)
    return tuple(found)


def usage_line(err: Exception) -> str:
    """One line for a command-line usage error, with a hint to the command's --help."""
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", None) or "textvae"
    message = " ".join(err.format_message().split())
    return f"error: {message} (see '{path} --help')"


def main() -> None:
    _log_to_stderr()
    usage_errors = _usage_error_types()
    try:
        matmul.backend()  # a bad TEXTVAE_CPU_MATMUL is a one-line error before any work starts
        code = app(standalone_mode=False, prog_name="textvae")
    except TextVAEError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except usage_errors as err:
        typer.echo(usage_line(err), err=True)
        sys.exit(2)
    if isinstance(code, int) and code:  # click returns the exit code of an Exit (e.g. --help: 0)
        sys.exit(code)
