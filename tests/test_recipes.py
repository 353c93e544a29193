"""The Yahoo and Yelp recipes, run on fixtures in their corpora's exact format and file names."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ASSETS, run_cli

from textvae.config import TextVAEError, load_recipe
from textvae.data import load_texts


@pytest.mark.parametrize(("recipe", "asset"), [("yahoo", "yahoo_sample.txt"), ("yelp", "yelp_sample.tsv")])
def test_benchmark_recipe_verifies_then_trains_on_a_fixture(tmp_path, recipe, asset):
    root = tmp_path / recipe
    root.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(ASSETS / asset, root / f"{recipe}.{split}.txt")
    # the fixture is not the published corpus: the recipe's fingerprint check names the file
    with pytest.raises(TextVAEError, match=rf"fingerprint mismatch for .*{recipe}\.train\.txt"):
        load_texts(load_recipe(recipe, [f"data.dir={root}"]).data)
    run = tmp_path / "run"
    proc = run_cli("train", recipe, f"data.dir={root}", "data.verify=false", "model.preset=lstm-tiny",
                   "train.max_steps=4", "train.batch_size=4", "eval.iw_samples=2", "--output-dir", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run / "eval_test.json").read_text())
    assert result["num_sequences"] == len((ASSETS / asset).read_text().splitlines())
    assert "_UNK" in (run / "model" / "tokenizer.json").read_text()  # an ordinary word of the corpus
