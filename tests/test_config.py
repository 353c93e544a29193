"""Recipes (config.py, methods.py): every bundled recipe loads, overrides, methods, clear errors."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from conftest import REPO_ROOT, SMALL_TEXT, write_corpus

from textvae.config import (
    PRESETS,
    Config,
    ModelConfig,
    TextVAEError,
    config_from_dict,
    list_recipes,
    load_recipe,
    recipe_path,
    to_yaml,
)
from textvae.data import load_texts
from textvae.methods import METHODS, method_overrides


def test_list_recipes_is_the_recipes_folder():
    names = list_recipes()
    assert names == sorted(p.stem for p in (REPO_ROOT / "recipes").glob("*.yaml"))
    assert {"debug", "ptb", "synthetic", "yahoo", "yelp"} <= set(names)


@pytest.mark.parametrize("name", list_recipes())
def test_every_bundled_recipe_loads_and_validates(name):
    cfg = load_recipe(name)
    assert isinstance(cfg, Config)
    assert cfg.name == name
    assert cfg.method in METHODS
    # the architecture resolves: preset known and applied under the recipe's own fields
    args = cfg.model
    assert args.latent_dim >= 0 and args.embed_dim > 0
    recipe_model = yaml.safe_load(recipe_path(name).read_text()).get("model", {})
    for field_name, value in PRESETS.get(cfg.model.preset, {}).items():
        assert getattr(args, field_name) == recipe_model.get(field_name, value), field_name
    # either a built-in corpus or a data.dir to fill in; fingerprints are well formed
    assert cfg.data.builtin is None or cfg.data.dir is None
    for file_name, digest in cfg.data.fingerprints.items():
        assert file_name in (cfg.data.train_file, cfg.data.valid_file, cfg.data.test_file)
        algorithm, _, hexdigest = digest.rpartition(":")
        assert algorithm in ("", "sha256", "md5", "gitblob")
        expected_len = {"": 64, "sha256": 64, "md5": 32, "gitblob": 40}[algorithm]
        assert len(hexdigest) == expected_len and int(hexdigest, 16) >= 0
    # the resolved recipe survives a trip through config.yaml
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg


def test_recipe_by_path_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(recipe_path("debug").read_text())
    cfg = load_recipe(str(path), ["train.max_steps=7", "eval.iw_samples=3", "data.lowercase=true", "seed=4"])
    assert (cfg.train.max_steps, cfg.eval.iw_samples, cfg.data.lowercase, cfg.seed) == (7, 3, True, 4)
    assert load_recipe("debug").train.max_steps is None


def test_model_preset_override_swaps_the_preset():
    base = load_recipe("debug").model
    assert base.embed_dim == PRESETS["lstm-tiny"]["embed_dim"] != ModelConfig().embed_dim
    cfg = load_recipe("debug", ["model.preset=lstm-synthetic"])
    for key, value in PRESETS["lstm-synthetic"].items():
        assert getattr(cfg.model, key) == value
    assert cfg.model.dec_dropout_in == 0.0  # the recipe's own explicit fields still apply
    # a field set by an override beats the preset, whichever layer names the preset
    assert load_recipe("debug", ["model.embed_dim=5", "model.preset=lstm-synthetic"]).model.embed_dim == 5
    with pytest.raises(TextVAEError, match="lstm-nope"):
        load_recipe("debug", ["model.preset=lstm-nope"])


def test_method_lm_sets_latent_dim_zero():
    cfg = load_recipe("debug", ["method=lm"])
    assert cfg.method == "lm"
    assert cfg.model.latent_dim == 0
    assert cfg.model.latent_dim == 0
    # the user's own overrides come after the method's
    assert load_recipe("debug", ["method=lm", "model.latent_dim=3"]).model.latent_dim == 3
    assert load_recipe("debug", ["model.latent_dim=3", "method=lm"]).model.latent_dim == 3


def test_every_method_applies_its_overrides():
    for name in METHODS:
        cfg = load_recipe("debug", [f"method={name}"])
        assert cfg.method == name
        assert method_overrides(name) == list(METHODS[name].overrides)
    anneal = load_recipe("debug", ["method=vae-anneal"])
    assert anneal.train.kl_start == pytest.approx(0.1)


def test_method_named_in_the_recipe_file(tmp_path):
    path = tmp_path / "lm.yaml"
    path.write_text(recipe_path("debug").read_text().replace("method: vae", "method: lm"))
    assert load_recipe(str(path)).model.latent_dim == 0


# --- errors ---------------------------------------------------------------------------------


def test_unknown_recipe_suggests_the_nearest():
    with pytest.raises(TextVAEError, match=r"unknown recipe 'debgu' \(did you mean 'debug'\?\)"):
        load_recipe("debgu")
    with pytest.raises(TextVAEError, match="recipe file not found: .*nope.yaml"):
        load_recipe("nope.yaml")


@pytest.mark.parametrize(("override", "pattern"), [
    ("train.batchsize=8", r"unknown key 'train.batchsize' \(did you mean 'train.batch_size'\?\)"),
    ("eval.iw_sample=8", r"unknown key 'eval.iw_sample' \(did you mean 'eval.iw_samples'\?\)"),
    ("trian.lr=1", r"unknown key 'trian' \(did you mean 'train'\?\)"),
    ("train.batch_size=abc", r"bad value for 'train.batch_size'"),
    ("train.lr=fast", r"bad value for 'train.lr'"),
    ("data.verify=maybe", r"bad value for 'data.verify'"),
    ("train.batch_size=0", r"bad value for 'train.batch_size': 0"),
    ("eval.iw_samples=-1", r"bad value for 'eval.iw_samples'"),
    ("train.optimizer=lbfgs", r"bad value for 'train.optimizer': 'lbfgs'"),
    ("tokenizer.type=chars", r"bad value for 'tokenizer.type'"),
    ("train.max_steps", r"override 'train.max_steps' is not of the form key=value"),
    ("method=vea", r"unknown method 'vea' \(did you mean 'vae'\?\)"),
    ("method=free-bit", r"unknown method 'free-bit' \(did you mean 'free-bits'\?\)"),
    ("method=betta-0.4", r"unknown method 'betta-0.4' \(did you mean 'beta-<b>'\?\)"),
    ("method=beta-abc", r"method 'beta-abc': 'abc' is not a number \(e.g. beta-0.4\)"),
    ("method=beta-", r"method 'beta-': '' is not a number"),
    ("method=beta--0.4", r"method 'beta--0.4': β must be a finite number >= 0"),
    ("method=beta-nan", r"method 'beta-nan': β must be a finite number >= 0"),
    ("method=beta-inf", r"method 'beta-inf': β must be a finite number >= 0"),
    ("train.kl_schedule=cosine", r"bad value for 'train.kl_schedule': 'cosine'"),
    ("train.free_bits_mode=per_dim", r"bad value for 'train.free_bits_mode': 'per_dim'"),
    ("train.free_bits=-0.5", r"bad value for 'train.free_bits': -0.5"),
    ("train.beta=-1", r"bad value for 'train.beta': -1"),
    ("train.kl_ratio_zero=1.5", r"bad value for 'train.kl_ratio_zero': 1.5"),
    ("train.kl_ratio_increase=0", r"bad value for 'train.kl_ratio_increase': 0"),
    ("train.kl_n_cycles=0", r"bad value for 'train.kl_n_cycles': 0"),
    ("train.max_train_minutes=0", r"bad value for 'train.max_train_minutes': 0"),
    ("train.max_train_minutes=nan", r"bad value for 'train.max_train_minutes': nan"),
    ("train.aggressive_check_every_steps=0", r"bad value for 'train.aggressive_check_every_steps': 0"),
    ("model.word_dropout=1.5", r"bad value for 'model.word_dropout': 1.5"),
    ("model.bn_gamma=-0.1", r"bad value for 'model.bn_gamma': -0.1"),
])
def test_bad_overrides_raise_one_line_naming_the_key(override, pattern):
    with pytest.raises(TextVAEError, match=pattern) as info:
        load_recipe("debug", [override])
    assert "\n" not in str(info.value)


def test_bad_recipe_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    with pytest.raises(TextVAEError, match="bad.yaml: not a valid YAML recipe"):
        load_recipe(str(bad_yaml))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\ntrain:\n  batch_sise: 3\n")
    with pytest.raises(TextVAEError, match=r"unknown.yaml: unknown key 'train.batch_sise'.*train.batch_size"):
        load_recipe(str(unknown))


def test_fingerprints_from_a_recipe_file(tmp_path):
    root = write_corpus(tmp_path / "c", SMALL_TEXT)
    good = hashlib.sha256(SMALL_TEXT.encode()).hexdigest()
    path = tmp_path / "r.yaml"
    path.write_text(f"data:\n  dir: {root}\n  fingerprints:\n    train.txt: {good}\n    valid.txt: md5:{'0' * 32}\n")
    with pytest.raises(TextVAEError, match="fingerprint mismatch for .*valid.txt"):
        load_texts(load_recipe(str(path)).data)
    load_texts(load_recipe(str(path), ["data.verify=false"]).data)


def test_fingerprint_override_from_the_command_line_is_checked_or_rejected(tmp_path):
    root = write_corpus(tmp_path / "c", SMALL_TEXT)
    try:
        cfg = load_recipe("debug", [f"data.dir={root}", f"data.fingerprints.train.txt={'0' * 64}"])
    except TextVAEError:
        return
    with pytest.raises(TextVAEError, match="fingerprint mismatch"):
        load_texts(cfg.data)


def test_cyclical_ramp_must_end_inside_its_cycle():
    with pytest.raises(TextVAEError, match=r"'train.kl_ratio_increase': 0.5 \(must be > 0 and at most "
                                           r"1 - train.kl_ratio_zero = 0.25\)"):
        load_recipe("debug", ["train.kl_ratio_zero=0.75", "train.kl_ratio_increase=0.5"])
    cfg = load_recipe("debug", ["train.kl_ratio_zero=0.3", "train.kl_ratio_increase=0.7"])  # exactly fills it
    assert (cfg.train.kl_ratio_zero, cfg.train.kl_ratio_increase) == (0.3, 0.7)
