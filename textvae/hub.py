"""``textvae push RUN_DIR REPO_ID``: a run's best model, tokenizer and a model card, uploaded to the Hugging Face
Hub. ``TextVAE.from_pretrained(REPO_ID)`` (and ``textvae.load``'s model folder) read it back."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .checkpoint import MODEL_DIR
from .methods import METHODS
from .run import Run

PAPERS = [
    "He, Spokoyny, Neubig & Berg-Kirkpatrick (2019). Lagging Inference Networks and Posterior Collapse in "
    "Variational Autoencoders. ICLR.",
    "Menon, Blei & Vondrick (2022). Forget-me-not! Contrastive Critics for Mitigating Posterior Collapse. UAI.",
]


def model_card(run: Run) -> str:
    """The README.md of a pushed model: recipe, method, data fingerprints, the test table and citations."""
    cfg, test = run.config, run.test
    lines = ["---", "library_name: textvae", "tags:", "- text-vae", "- variational-autoencoder", "---", "",
             f"# textvae: `{cfg.name}`, method `{cfg.method}`", "",
             "A variational autoencoder of text trained with textvae. Load it with",
             "`textvae.TextVAE.from_pretrained(REPO_ID)`; its tokenizer files are in this repository.", "",
             "## Training data", ""]
    prints = cfg.data.fingerprints or {}
    lines += [f"- `{name}`: sha256 `{digest}`" for name, digest in sorted(prints.items())] or ["- (built-in corpus)"]
    lines += ["", "## Test figures (textvae protocol: nats per sequence, IW-NLL)", ""]
    if test is None:
        lines.append("Not evaluated yet.")
    else:
        lines += ["| nll | ppl | elbo | kl | mi | au | K | sequences |", "|---|---|---|---|---|---|---|---|",
                  f"| {test.nll:.4f} | {test.ppl:.2f} | {test.elbo:.4f} | {test.kl:.4f} | {test.mi:.4f} | {test.au} "
                  f"| {test.iw_samples} | {test.num_sequences} |"]
    method = METHODS.get(cfg.method)
    lines += ["", "## Citations", "", *(f"- {paper}" for paper in PAPERS)]
    if method is not None and method.citation not in " ".join(PAPERS):
        lines.append(f"- Method `{cfg.method}`: {method.citation}")
    return "\n".join(lines) + "\n"


def push(run: Run, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload ``run``'s model folder and its model card to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(run.path / MODEL_DIR, folder)
        (folder / "README.md").write_text(model_card(run))
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 commit_message=f"textvae: {run.config.name} ({run.config.method})")
    return str(getattr(info, "commit_url", info))
