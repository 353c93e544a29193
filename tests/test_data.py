"""Corpora → ids → length-bucketed batches (data.py): checks, formats, batching, synthetic data."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections import Counter

import pytest
import torch
from conftest import ASSETS, DEBUG_DIR, SMALL_TEXT, write_corpus

from textvae.builders import build_datasets
from textvae.config import DataConfig, TextVAEError, TokenizerConfig, load_recipe
from textvae.data import TextDataset, check_file, data_paths, generate_synthetic, load_texts
from textvae.tokenization import train_tokenizer


@pytest.fixture(scope="module")
def debug_train() -> TextDataset:
    texts = [line for line in (DEBUG_DIR / "train.txt").read_text().splitlines() if line.strip()]
    tokenizer = train_tokenizer(texts, TokenizerConfig(type="word"))
    return TextDataset.from_texts(texts, tokenizer)


# --- batching -----------------------------------------------------------------------------------


def test_collate_frames_pads_and_masks():
    ds = TextDataset([[5, 6, 7], [8], [9, 10]])
    batch = ds.collate([0, 1, 2])
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 10, 2, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch.lengths.tolist() == [5, 3, 4]
    assert batch.indices.tolist() == [0, 1, 2]
    assert batch.class_labels is None
    assert batch.num_predicted_tokens == 4 + 2 + 3  # words + </s>
    assert ds.num_predicted_tokens == batch.num_predicted_tokens


def test_every_sequence_exactly_once_per_epoch_with_little_padding(debug_train):
    ds = debug_train
    for shuffle, seed in ((False, 0), (True, 0), (True, 1)):
        batches = ds.batches(16, shuffle=shuffle, seed=seed)
        seen = Counter(i for b in batches for i in b.indices.tolist())
        assert sorted(seen) == list(range(len(ds))) and set(seen.values()) == {1}
        assert all(b.input_ids.size(0) <= 16 for b in batches)
        for b in batches:  # each row holds its own sequence
            for row, i in enumerate(b.indices.tolist()):
                n = len(ds.ids[i]) + 2
                assert b.input_ids[row, 1 : n - 1].tolist() == ds.ids[i]
        cells = sum(b.input_ids.numel() for b in batches)
        padding = sum(int((b.attention_mask == 0).sum()) for b in batches)
        assert padding / cells < 0.05, padding / cells
    # what bucketing saves: random batches of the same corpus would pad far more
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(ds), generator=gen).tolist()
    rand = [ds.collate(perm[i : i + 16]) for i in range(0, len(ds), 16)]
    rand_fraction = sum(int((b.attention_mask == 0).sum()) for b in rand) / sum(b.input_ids.numel() for b in rand)
    assert rand_fraction > 2 * padding / cells


def test_shuffle_is_seeded(debug_train):
    def order(seed):
        return [b.indices.tolist() for b in debug_train.batches(16, shuffle=True, seed=seed)]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert [i for b in order(3) for i in b] != [i for b in order(4) for i in b]
    # without shuffling, batches are sorted by length and do not depend on the seed
    plain = debug_train.batches(16, shuffle=False, seed=5)
    assert [b.indices.tolist() for b in plain] == [b.indices.tolist() for b in debug_train.batches(16, seed=9)]
    lengths = [int(n) for b in plain for n in b.lengths]
    assert lengths == sorted(lengths)


def test_subset_and_max_length():
    texts = ["a b c d e f g", "a b", "c d e"]
    tokenizer = train_tokenizer(texts, TokenizerConfig(type="word"))
    ds = TextDataset.from_texts(texts, tokenizer, labels=[1, 2, 3], max_length=3)
    assert [len(s) for s in ds.ids] == [3, 2, 3]
    assert ds.ids[0] == tokenizer.encode("a b c")
    sub = ds.subset(2)
    assert len(sub) == 2 and sub.labels == [1, 2] and sub.texts == texts[:2]


def test_max_length_truncates_train_with_a_notice_and_refuses_long_evaluation_lines(tmp_path, caplog):
    long = "".join(" ".join(f"w{j}" for j in range(i % 9 + 1)) + "\n" for i in range(30))
    short = "".join(" ".join(f"w{j}" for j in range(i % 4 + 1)) + "\n" for i in range(30))
    root = write_corpus(tmp_path / "c", long, short, short)
    cfg = load_recipe("debug", [f"data.dir={root}", "data.max_length=4"])
    with caplog.at_level("WARNING", logger="textvae"):
        datasets, _ = build_datasets(cfg)
    assert max(len(s) for s in datasets["train"].ids) == 4
    assert len(datasets["train"]) == 30  # truncated, not dropped
    [notice] = [r.getMessage() for r in caplog.records]
    assert "train.txt: 15 of 30 lines are longer than data.max_length = 4" in notice and "line 9, has 9" in notice
    assert max(len(s) for s in datasets["valid"].ids) == 4  # evaluation lines are never cut
    # evaluation never truncates: a long test line is refused with its file and line number
    write_corpus(tmp_path / "d", short, short, short + "\n\n" + " ".join(["w"] * 5) + "\n")
    with pytest.raises(TextVAEError, match=r"d/test.txt:33: 5 tokens, more than data.max_length = 4"):
        build_datasets(load_recipe("debug", [f"data.dir={tmp_path / 'd'}", "data.max_length=4"]))


def test_blank_lines_dropped_and_lowercase(tmp_path):
    root = write_corpus(tmp_path / "c", "The Cat\n\n   \nA DOG runs\n")
    texts = load_texts(DataConfig(dir=str(root), lowercase=True))
    assert (texts["train"].texts, texts["train"].labels, texts["train"].lines) == (["the cat", "a dog runs"], None,
                                                                                   [1, 4])
    assert load_texts(DataConfig(dir=str(root)))["valid"].texts == ["The Cat", "A DOG runs"]


def test_builtin_debug_corpus_loads():
    texts = load_texts(DataConfig(builtin="debug"))
    assert [len(texts[s].texts) for s in ("train", "valid", "test")] == [400, 60, 60]


# --- tsv_label ----------------------------------------------------------------------------------


def test_tsv_label_files_load_labels(tmp_path):
    root = tmp_path / "yelp"
    root.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        shutil.copy(ASSETS / "yelp_sample.tsv", root / name)
    texts = load_texts(DataConfig(dir=str(root), format="tsv_label"))
    lines = (ASSETS / "yelp_sample.tsv").read_text().splitlines()
    assert texts["train"].texts == [line.split("\t")[1] for line in lines]
    assert texts["train"].labels == [int(line.split("\t")[0]) for line in lines]
    tokenizer = train_tokenizer(texts["train"].texts, TokenizerConfig(type="word"))
    ds = TextDataset.from_texts(texts["test"].texts, tokenizer, labels=texts["test"].labels)
    assert ds.collate([1, 0]).class_labels.tolist() == [0, 4]


def test_tsv_label_text_with_a_tab_loads_or_fails_cleanly(tmp_path):
    root = write_corpus(tmp_path / "c", "1\tgood food\n2\ttab\tinside\n")
    try:
        texts = load_texts(DataConfig(dir=str(root), format="tsv_label"))
    except TextVAEError as err:
        assert "train.txt:2" in str(err)
    else:
        assert texts["train"] == (["good food", "tab\tinside"], [1, 2])


@pytest.mark.parametrize("bad_line", ["no tab here", "x\tlabel is not a number", "\tno label"])
def test_malformed_tsv_label_line_names_file_and_line(tmp_path, bad_line):
    root = write_corpus(tmp_path / "c", f"1\tfine\n{bad_line}\n")
    with pytest.raises(TextVAEError, match=r"train\.txt:2: malformed line"):
        load_texts(DataConfig(dir=str(root), format="tsv_label"))


# --- file checks --------------------------------------------------------------------------------


def test_missing_data_file(tmp_path):
    root = write_corpus(tmp_path / "c", SMALL_TEXT)
    (root / "valid.txt").unlink()
    with pytest.raises(TextVAEError, match=r"data file not found: .*valid\.txt"):
        load_texts(DataConfig(dir=str(root)))


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_empty_data_file(tmp_path, content):
    root = write_corpus(tmp_path / "c", SMALL_TEXT, test=content)
    with pytest.raises(TextVAEError, match=r"data file is empty: .*test\.txt"):
        load_texts(DataConfig(dir=str(root)))


def test_non_utf8_byte_names_file_and_line(tmp_path):
    root = write_corpus(tmp_path / "c", b"good line\nstill good\nbad \xff byte\n")
    with pytest.raises(TextVAEError, match=r"train\.txt:3: not valid UTF-8 \(byte 0xff\)"):
        load_texts(DataConfig(dir=str(root)))


def test_data_dir_errors(tmp_path):
    with pytest.raises(TextVAEError, match="data.dir"):
        data_paths(DataConfig())
    with pytest.raises(TextVAEError, match="nowhere"):
        data_paths(DataConfig(dir=str(tmp_path / "nowhere")))
    with pytest.raises(TextVAEError, match="data.builtin=nope"):
        data_paths(DataConfig(builtin="nope"))


# --- fingerprints -------------------------------------------------------------------------------


def _digests(path) -> dict[str, str]:
    raw = path.read_bytes()
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    return {"sha256": hashlib.sha256(raw).hexdigest(), "sha256:": "sha256:" + hashlib.sha256(raw).hexdigest(),
            "md5:": "md5:" + hashlib.md5(raw).hexdigest(), "gitblob:": "gitblob:" + blob}


@pytest.mark.parametrize("kind", ["sha256", "sha256:", "md5:", "gitblob:"])
def test_fingerprint_match_and_mismatch(tmp_path, kind):
    root = write_corpus(tmp_path / "c", SMALL_TEXT, test="a different test file\n")
    expected = _digests(root / "train.txt")[kind]
    load_texts(DataConfig(dir=str(root), fingerprints={"train.txt": expected}))  # matches: no error
    prefix, colon, digest = expected.rpartition(":")
    load_texts(DataConfig(dir=str(root), fingerprints={"train.txt": prefix + colon + digest.upper()}))  # hex case
    # the valid/test files differ from train: a wrong digest names the file
    with pytest.raises(TextVAEError, match=r"fingerprint mismatch for .*test\.txt.*data\.verify=false"):
        load_texts(DataConfig(dir=str(root), fingerprints={"train.txt": expected, "test.txt": expected}))
    # and opting out skips the check
    texts = load_texts(DataConfig(dir=str(root), fingerprints={"test.txt": expected}, verify=False))
    assert texts["test"].texts == ["a different test file"]


def test_fingerprint_detects_a_one_byte_change(tmp_path):
    root = write_corpus(tmp_path / "c", SMALL_TEXT)
    digest = hashlib.sha256((root / "train.txt").read_bytes()).hexdigest()
    (root / "train.txt").write_text(SMALL_TEXT.replace("cat", "cap", 1))
    with pytest.raises(TextVAEError, match="train.txt"):
        check_file(root / "train.txt", "text", digest)


def test_fingerprint_unknown_algorithm(tmp_path):
    root = write_corpus(tmp_path / "c", SMALL_TEXT)
    with pytest.raises(TextVAEError, match="sha1"):
        load_texts(DataConfig(dir=str(root), fingerprints={"train.txt": "sha1:abc"}))


# --- synthetic corpus ---------------------------------------------------------------------------


def test_generate_synthetic_files_and_determinism(tmp_path):
    paths = generate_synthetic(tmp_path / "a", num_train=30, num_test=8, seed=5)
    assert set(paths) == {"train", "test"}
    for split, n in (("train", 30), ("test", 8)):
        lines = (tmp_path / "a" / f"synthetic_{split}.txt").read_text().splitlines()
        assert len(lines) == n
        ids = [[int(t) for t in line.split()] for line in lines]
        assert all(len(row) == 10 for row in ids)
        assert all(0 <= t < 1000 for row in ids for t in row)
        zs = [[float(v) for v in line.split()] for line in
              (tmp_path / "a" / f"synthetic_{split}.z.txt").read_text().splitlines()]
        assert len(zs) == n and all(len(z) == 2 for z in zs)
    generate_synthetic(tmp_path / "b", num_train=30, num_test=8, seed=5)
    generate_synthetic(tmp_path / "c", num_train=30, num_test=8, seed=6)
    for name in ("synthetic_train.txt", "synthetic_test.z.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_synthetic_latents_come_from_four_clusters(tmp_path):
    generate_synthetic(tmp_path, num_train=200, num_test=1, seed=1)
    z = torch.tensor([[float(v) for v in line.split()] for line in
                      (tmp_path / "synthetic_train.z.txt").read_text().splitlines()])
    quadrants = Counter(zip((z[:, 0] > 0).tolist(), (z[:, 1] > 0).tolist(), strict=True))
    assert len(quadrants) == 4 and min(quadrants.values()) > 25  # (±2, ±2) mixture, unit variance
    assert abs(float(z.abs().mean()) - 2.0) < 0.4
