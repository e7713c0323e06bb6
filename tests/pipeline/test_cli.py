"""The console script: every command has --help; `python -m movielens_sids` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from movielens_sids.cli import COMMANDS, build_parser, main, overrides_from_args
from movielens_sids.errors import SidsError


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"movielens-sids {command}" in out and "--run-dir" in out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "movielens_sids", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("movielens-sids ")


def test_help_and_config_do_not_import_torch():
    # `--help` and reading a config stay fast: torch, Lightning and the models load on first use.
    code = ("import sys\nfrom movielens_sids.cli import main\nfrom movielens_sids.config import load_config\n"
            "load_config('ml-32m')\n"
            "for argv in (['--help'], ['retrieval', '--help'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_retrieval_settings_are_a_config_section():
    from movielens_sids.cli import build_parser, overrides_from_args
    from movielens_sids.config import load_config
    from movielens_sids.retrieval import RetrievalConfig

    cfg = load_config("demo", {"retrieval.d_model": 128, "retrieval.seeds": [4]})
    assert isinstance(cfg.retrieval, RetrievalConfig) and cfg.retrieval.d_model == 128
    args = build_parser().parse_args(["retrieval", "--max-epochs", "3", "--seeds", "1,2", "--protocol",
                                      "leave_one_out", "--set", "retrieval.d_model=32"])
    assert overrides_from_args(args) == {"retrieval.max_epochs": 3, "retrieval.seeds": [1, 2],
                                         "retrieval.protocol": "leave_one_out", "retrieval.d_model": 32}
    cfg = load_config("demo", overrides_from_args(args))  # a command flag sets its setting, nothing else
    assert (cfg.retrieval.max_epochs, cfg.retrieval.seeds, cfg.train.max_epochs) == (3, [1, 2],
                                                                                    load_config("demo").train.max_epochs)
    with pytest.raises(SidsError, match="d_model"):
        load_config("demo", {"retrieval.d_model": 0})


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--dataset", "ml-1m", "--limit", "3", "--model", "m", "--device", "cpu", "--tokenizer", "rqkmeans",
      "--accelerator", "cpu", "--devices", "1", "--strategy", "ddp", "--push-to-hub"],
     {"data.dataset": "ml-1m", "data.limit": 3, "embed.model": "m", "embed.device": "cpu",
      "train.tokenizer": "rqkmeans", "train.accelerator": "cpu", "train.devices": "1", "train.strategy": "ddp",
      "export.push_to_hub": True}),
    (["assign", "--dedup", "suffix", "--device", "cpu", "--batch-size", "64"],
     {"assign.strategy": "suffix", "assign.device": "cpu", "assign.batch_size": 64}),
    (["train", "--strategy", "ddp", "--seed", "3", "--latent-dim", "16", "--no-progress-bar"],
     {"train.strategy": "ddp", "train.seed": 3, "model.latent_dim": 16, "train.progress_bar": False}),
    (["catalog", "--seed", "2", "--skip-bad-rows"], {"data.seed": 2, "data.skip_bad_rows": True}),
    (["embed", "--from", "v.npy", "--ids", "i.txt", "--no-normalize"],
     {"embed.from_file": "v.npy", "embed.from_ids": "i.txt", "embed.normalize": False}),
    (["evaluate", "--probe", "A (1999)", "--probe", "B (2000)", "--no-charts", "--set", "model.levels=4"],
     {"evaluate.extra_probes": ["A (1999)", "B (2000)"], "evaluate.charts": False, "model.levels": 4}),
    (["visualize", "--seed", "5", "--sample", "100"], {"visualize.seed": 5, "visualize.sample": 100}),
])
def test_a_flag_sets_its_setting_and_nothing_else(argv, expected):
    """The same flag name sets a different setting per command (--seed, --device), each declared once."""
    assert overrides_from_args(build_parser().parse_args(argv)) == expected


def test_a_flag_name_means_one_kind_of_setting_across_commands():
    """``--seed`` is each command's own seed; a name never stands for two different settings (``--strategy``
    is Lightning's, and assign's dedup rule is ``--dedup``)."""
    from movielens_sids.cli import FLAGS

    kinds: dict[str, set[str]] = {}
    for (name, key), flag in FLAGS.items():
        kinds.setdefault(name, set()).add(f"{key.split('.')[1]} {flag.choices}")
    assert {n: k for n, k in kinds.items() if len(k) > 1} == {}
    assert [k for n, k in FLAGS if n == "--strategy"] == ["train.strategy"]
    assert build_parser().parse_args(["assign", "--dedup", "suffix"]) is not None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["assign", "--strategy", "suffix"])
