"""Hub save/load (TextVAE is a ModelHubMixin) and `textvae push`, offline: a local folder and a fake HfApi."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

import textvae
from textvae import TextVAE, TextVAEError
from textvae.hub import model_card


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return textvae.train("debug", ["train.max_steps=10", "eval.iw_samples=2"],
                         output_dir=tmp_path_factory.mktemp("hub") / "run", progress=False)


def test_from_pretrained_round_trips_with_identical_logits(run):
    model = TextVAE.from_pretrained(run.path / "model")
    assert isinstance(model, huggingface_hub.ModelHubMixin)
    ids = torch.tensor([[run.tokenizer.bos_id, 4, 5, 6, run.tokenizer.eos_id]])
    z = torch.randn(1, model.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval().decode(ids, z), run.model.eval().decode(ids, z))
    assert (run.path / "model" / "README.md").is_file()  # the mixin's model card


def test_a_hub_id_that_cannot_be_fetched_is_one_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextVAEError, match="nobody/no-such-model: no such local folder, and not on the Hugging Face"):
        TextVAE.from_pretrained("nobody/no-such-model", local_files_only=True)


class FakeApi:
    """Records what `push` would upload."""

    uploads: list[dict] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.uploads.append({"created": repo_id, "private": private})

    def upload_folder(self, repo_id, folder_path, commit_message):
        kept = Path(FakeApi.keep) / repo_id.replace("/", "--")
        shutil.copytree(folder_path, kept)
        self.uploads.append({"repo": repo_id, "folder": kept, "message": commit_message})
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def test_push_uploads_model_tokenizer_and_card(run, tmp_path, monkeypatch, cli_main):
    FakeApi.uploads, FakeApi.keep = [], tmp_path
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    code, out, err = cli_main("push", run.path, "someone/textvae-debug", "--private")
    assert code == 0, err
    assert out.strip() == "https://huggingface.co/someone/textvae-debug/commit/0"
    created, upload = FakeApi.uploads
    assert created == {"created": "someone/textvae-debug", "private": True}
    files = {p.name for p in upload["folder"].iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    assert files >= {p.name for p in (run.path / "model").iterdir()}  # the tokenizer files travel too
    card = (upload["folder"] / "README.md").read_text()
    assert f"{run.test.nll:.4f}" in card and "Menon, Blei & Vondrick" in card and "`debug`" in card
    loaded = TextVAE.from_pretrained(upload["folder"])  # what was uploaded loads back
    assert loaded.config == run.model.config


def test_model_card_lists_the_data_fingerprints(run):
    card = model_card(run)
    for name, digest in run.config.data.fingerprints.items():
        assert f"`{name}`: sha256 `{digest}`" in card
