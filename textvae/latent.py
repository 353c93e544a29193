"""The latent-space tools, on a run directory or a loaded model + tokenizer.

``sample`` (z from the prior), ``reconstruct`` (z from the posterior), ``interpolate``
(linear or spherical paths between two posterior means) and ``analogy``
(z(C) + z(B) − z(A)), each decoded with :func:`textvae.generation.generate` and scored
with :mod:`textvae.scoring`; ``plot_run`` draws a run's training curves and its posterior means
(PCA). The CLI commands of the same names are thin layers over them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .data import TextDataset
from .errors import TextVAEError
from .generation import DecodeConfig, check_path, eval_mode, generate, interpolation_path, num_latents
from .run import Run
from .scoring import corpus_bleu, distinct_n, exact_match, path_metrics, self_bleu
from .tracking import plot_training_curves, pyplot, save_figure

log = logging.getLogger("textvae")


@dataclass
class Loaded:
    """A model ready for the latent tools: its tokenizer, and how the run prepared its text."""

    model: object
    tokenizer: object
    name: str  # the run directory, for error messages
    lowercase: bool = False  # the run's data.lowercase: inputs are lowercased the same way
    device: torch.device = torch.device("cpu")
    cfg: object = None  # the run's Config (None for a model given directly)


def load(run, tokenizer=None, device: str | torch.device | None = None) -> Loaded:
    """A run directory (its best model), a :class:`textvae.Run`, or a ``TextVAE`` with its tokenizer, as
    :class:`Loaded`."""
    if isinstance(run, Loaded):
        return run
    if isinstance(run, Run):
        device = next(run.model.parameters()).device if device is None else torch.device(device)
        return Loaded(run.model.to(device).eval(), run.tokenizer, str(run.path), run.config.data.lowercase, device,
                      run.config)
    if isinstance(run, (str, Path)):
        from .builders import resolve_device
        from .checkpoint import load_run

        device = resolve_device("auto") if device is None else torch.device(device)
        cfg, model, tok = load_run(Path(run), device)
        return Loaded(model.eval(), tok, str(run), cfg.data.lowercase, device, cfg)
    if tokenizer is None:
        raise TextVAEError("pass the tokenizer with the model (or a run directory)")
    return Loaded(run, tokenizer, type(run).__name__, False, next(run.parameters()).device)


def _need_latent(lm: Loaded, what: str) -> None:
    if lm.model.latent_dim == 0:
        raise TextVAEError(f"{lm.name}: a language model (latent_dim 0) has no latent to {what}")


def _seeded(lm: Loaded, seed: int) -> torch.Generator:
    return torch.Generator(device=lm.device).manual_seed(seed)


def check_sentences(lm: Loaded, texts: list[str], names: list[str] | None = None, strict: bool = False) -> None:
    """Refuse empty or over-long sentences; report words the run's tokenizer does not know (an error with
    ``strict``). ``names`` label the sentences in messages (default: "sentence 1", ...)."""
    names = names or [f"sentence {i + 1}" for i in range(len(texts))]
    prepared = [t.lower() if lm.lowercase else t for t in texts]
    tok = lm.tokenizer
    ids = tok.encode_batch(prepared)
    max_length = lm.cfg.data.max_length if lm.cfg is not None else None
    for name, text, seq in zip(names, prepared, ids, strict=True):
        if not text.strip() or not seq:
            raise TextVAEError(f"{name} is empty")
        if max_length is not None and len(seq) > max_length:
            raise TextVAEError(f"{name} has {len(seq)} tokens, more than the run's data.max_length = {max_length}")
    unknown = tok.unknown_words(prepared)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        message = f"{lm.name}: {len(unknown)} word(s) not in the vocabulary, read as {tok.unk_token}: {shown}"
        if strict:
            raise TextVAEError(message + " (--strict)")
        log.warning(message)


@torch.no_grad()
def encode_texts(lm: Loaded, texts: list[str], z: str = "mean", generator=None, batch_size: int = 64):
    """Posterior means (or one posterior sample each) of sentences, in order.

    Sentences go through the run's tokenizer (unknown words become ``<unk>``;
    :func:`check_sentences` reports them). Shape: N texts → (N, D).
    """
    if z not in ("mean", "sample"):
        raise TextVAEError(f"--z must be mean or sample, not '{z}'")
    _need_latent(lm, "encode into")
    tok = lm.tokenizer
    dataset = TextDataset.from_texts([t.lower() if lm.lowercase else t for t in texts], tok)
    out = []
    with eval_mode(lm.model):
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))),
                                    tok.pad_id, tok.bos_id, tok.eos_id).to(lm.device)
            q = lm.model.encode(batch.encoder_input_ids, batch.encoder_attention_mask).base_dist  # (B, D)
            noise = torch.randn(q.loc.shape, generator=generator, device=lm.device) if z == "sample" else 0.0
            out.append(q.loc + q.scale * noise)
    return torch.cat(out)


def decode_texts(lm: Loaded, z: torch.Tensor | None, cfg: DecodeConfig | None = None, generator=None,
                 num_sequences: int | None = None, batch_size: int = 256) -> list[str]:
    """:func:`generate` in batches of ``batch_size`` latents, decoded to text by the run's tokenizer."""
    tok = lm.tokenizer
    n = num_latents(lm.model, z, num_sequences)
    texts = []
    for start in range(0, n, batch_size):
        rows = None if z is None else z[start : start + batch_size]
        ids = generate(lm.model, rows, cfg, bos_id=tok.bos_id, eos_id=tok.eos_id,
                       num_sequences=min(batch_size, n - start), generator=generator)
        texts += [tok.decode(seq) for seq in ids]
    return texts


@dataclass
class SampleResult:
    texts: list[str]
    distinct_1: float  # distinct unigrams / unigrams over all samples (Li et al. 2016)
    distinct_2: float
    self_bleu: float | None  # each sample against the others (Zhu et al. 2018); None for one sample

    def to_dict(self) -> dict:
        return asdict(self)


def sample(run, n: int = 10, decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
           device=None) -> SampleResult:
    """``n`` sentences: z ~ p(z), then decoded (for a language model, decoded from nothing)."""
    if n < 1:
        raise TextVAEError(f"-n must be >= 1, not {n}")
    lm = load(run, tokenizer, device)
    gen = _seeded(lm, seed)
    z = None
    if lm.model.latent_dim > 0:
        prior = lm.model.prior().base_dist
        z = prior.loc + prior.scale * torch.randn((n, lm.model.latent_dim), generator=gen, device=lm.device)
    texts = decode_texts(lm, z, decoding, gen, num_sequences=n)
    return SampleResult(texts, distinct_n(texts, 1), distinct_n(texts, 2), self_bleu(texts))


@dataclass
class ReconstructResult:
    inputs: list[str]
    references: list[str]  # the inputs as the model sees them (after the tokenizer: unknown words are <unk>)
    outputs: list[str]
    bleu: float  # corpus BLEU of outputs against references (sacrebleu)
    exact_match: float  # fraction of outputs equal to their reference

    def to_dict(self) -> dict:
        return asdict(self)


def references_of(lm: Loaded, texts: list[str]) -> list[str]:
    """Sentences after a round trip through the run's tokenizer: what a perfect reconstruction reads."""
    tok = lm.tokenizer
    return [tok.decode(ids) for ids in tok.encode_batch([t.lower() if lm.lowercase else t for t in texts])]


def reconstruct(run, texts: list[str], decoding: DecodeConfig | None = None, z: str = "mean", seed: int = 0,
                tokenizer=None, device=None, strict: bool = False) -> ReconstructResult:
    """Encode each sentence (posterior mean, or a sample with ``z="sample"``) and decode it again.

    Unknown words are reported (an error with ``strict``); an empty sentence is an error.
    """
    if z not in ("mean", "sample"):
        raise TextVAEError(f"--z must be mean or sample, not '{z}'")
    if not texts:
        raise TextVAEError("reconstruct: no sentences")
    lm = load(run, tokenizer, device)
    _need_latent(lm, "reconstruct through")
    check_sentences(lm, texts, strict=strict)
    gen = _seeded(lm, seed)
    outputs = decode_texts(lm, encode_texts(lm, texts, z, gen), decoding, gen)
    refs = references_of(lm, texts)
    return ReconstructResult(list(texts), refs, outputs, corpus_bleu(outputs, refs), exact_match(outputs, refs))


@dataclass
class InterpolationResult:
    path: list[dict]  # {"t": float, "text": str} from sentence A (t = 0) to sentence B (t = 1)
    endpoint_match: list[bool]  # each end's text equals the greedy reconstruction of its sentence
    distinct_ratio: float  # distinct texts / points
    mean_edit_distance: float  # mean token (whitespace) edit distance between neighbouring points

    def to_dict(self) -> dict:
        return asdict(self)


def interpolate_pairs(run, pairs: list[tuple[str, str]], steps: int = 8, method: str = "linear",
                      decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
                      device=None, strict: bool = False) -> list[InterpolationResult]:
    """:func:`interpolate` for many (A, B) pairs, encoded and decoded in batches.

    Unknown words are reported (an error with ``strict``); an empty sentence is an error.
    """
    check_path(steps, method)
    decoding = (decoding or DecodeConfig()).validate()
    if not pairs:
        raise TextVAEError("interpolate: no sentence pairs")
    lm = load(run, tokenizer, device)
    _need_latent(lm, "interpolate in")
    p = len(pairs)
    single = ["sentence A", "sentence B"] if p == 1 else None
    check_sentences(lm, [a for a, _ in pairs] + [b for _, b in pairs], single or
                    [f"pair {i % p + 1} sentence {'AB'[i // p]}" for i in range(2 * p)], strict)
    gen = _seeded(lm, seed)
    ends = encode_texts(lm, [a for a, _ in pairs] + [b for _, b in pairs])  # (2P, D)
    z_a, z_b = ends[:p], ends[p:]
    points = interpolation_path(z_a, z_b, steps, method).reshape(p * steps, -1)  # (P·S, D)
    # The endpoints' greedy reconstructions ride in the same batch as a greedy path.
    greedy = decoding.strategy == "greedy"
    texts = decode_texts(lm, torch.cat([points, ends]) if greedy else points, decoding, gen)
    recs = texts[p * steps:] if greedy else decode_texts(lm, ends, replace(decoding, strategy="greedy"))
    ts = [i / (steps - 1) for i in range(steps)]
    results = []
    for i in range(p):
        row = texts[i * steps : (i + 1) * steps]
        metrics = path_metrics(row, (recs[i], recs[p + i]))
        results.append(InterpolationResult([{"t": t, "text": s} for t, s in zip(ts, row, strict=True)], **metrics))
    return results


def interpolate(run, a: str, b: str, steps: int = 8, method: str = "linear", decoding: DecodeConfig | None = None,
                seed: int = 0, tokenizer=None, device=None, strict: bool = False) -> InterpolationResult:
    """Decode ``steps`` points on the path between the posterior means of sentences ``a`` and ``b``."""
    return interpolate_pairs(run, [(a, b)], steps, method, decoding, seed, tokenizer, device, strict)[0]


def analogy(run, a: str, b: str, c: str, decoding: DecodeConfig | None = None, seed: int = 0, tokenizer=None,
            device=None, strict: bool = False) -> str:
    """"A is to B as C is to ?": decode z(C) + z(B) − z(A), with posterior means."""
    lm = load(run, tokenizer, device)
    _need_latent(lm, "do analogies in")
    check_sentences(lm, [a, b, c], ["sentence A", "sentence B", "sentence C"], strict)
    z_a, z_b, z_c = encode_texts(lm, [a, b, c])
    return decode_texts(lm, (z_c + z_b - z_a)[None], decoding, _seeded(lm, seed))[0]


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection on the two principal components (an exact SVD of the centred points).

    Returns the projected points and the fraction of the variance each component
    explains. Shape: x (N, D) → (N, 2), (2,); missing components (D < 2) are zeros.
    """
    x = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # vh (min(N, D), D)
    proj = x @ vh[:2].T  # (N, ≤2)
    var = s**2
    explained = var[:2] / var.sum().clamp_min(1e-300)
    pad = 2 - proj.size(1)
    return torch.nn.functional.pad(proj, (0, pad)).float(), torch.nn.functional.pad(explained, (0, pad)).float()


def plot_latent_space(points: torch.Tensor, labels: list[int] | None, out_png: Path, title: str = "") -> Path:
    """Scatter of 2-D points, coloured by class label when there are labels. Shape: points (N, 2)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xy = points.cpu().numpy()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    else:
        dots = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=6, alpha=0.7)
        ax.legend(*dots.legend_elements(num=min(len(set(labels)), 10)), title="label", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_run(run, out_dir: str | Path | None = None, limit: int | None = None, device=None) -> dict[str, Path]:
    """``curves.png`` (training curves) and ``latent.png`` (validation posterior means, PCA) of a run.

    Written into ``out_dir`` (default: the run directory); points are coloured by label
    when the corpus has labels (``data.format=tsv_label``). A language model has no
    latent space, so it gets the curves only. ``limit`` keeps the first N validation
    sentences. Returns ``{"curves": path, "latent": path}``.
    """
    from .data import load_split

    if limit is not None and limit < 1:
        raise TextVAEError(f"--limit must be >= 1, not {limit}")
    run = Path(run)
    lm = load(run, device=device)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise TextVAEError(f"{run}: no metrics.jsonl to plot")
    out = run if out_dir is None else Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TextVAEError(f"--out must be a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    written = {"curves": plot_training_curves(metrics, out / "curves.png")}
    if lm.model.latent_dim > 0:
        read = load_split(lm.cfg.data, "valid")
        texts, labels = read.texts[:limit], None if read.labels is None else read.labels[:limit]
        points, explained = pca_2d(encode_texts(lm, texts).cpu())
        title = (f"{lm.cfg.name}, method {lm.cfg.method}, seed {lm.cfg.seed}: "
                 f"posterior means of {len(texts)} validation sentences\n"
                 f"PCA: {explained[0]:.1%} + {explained[1]:.1%} of the variance")
        written["latent"] = plot_latent_space(points, labels, out / "latent.png", title)
    return written
