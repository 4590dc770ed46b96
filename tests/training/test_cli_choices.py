"""String choices are ``Literal`` types: the CLI rejects a typo while parsing, before it builds a
model, a data module or a cache (``--print_config`` exits after parsing, so a value that got
past the parser would print and exit 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl.methods.cli import build_cli as pretrain_cli
from medssl.tasks.cli import build_cli as finetune_cli

ROOT = Path(__file__).resolve().parents[2]
CASES = [  # (CLI, config, flag, a valid choice, a typo)
    (pretrain_cli, "configs/pretrain/simclr.yaml", "--data.augment_on", "loader", "lodaer"),
    (pretrain_cli, "configs/pretrain/simclr.yaml", "--model.form", "joint", "jiont"),
    (pretrain_cli, "configs/pretrain/joint2d3d.yaml", "--data.slice_sampling", "consecutive", "consecutiv"),
    (finetune_cli, "configs/finetune/segmentation.yaml", "--model.freeze", "partial", "partal"),
]


def parse(cli, config: str, flag: str, value: str) -> int:
    argv = ["-c", str(ROOT / config), "--data.store", "/nonexistent", flag, value, "--print_config"]
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    return exit_.value.code


@pytest.mark.parametrize(("cli", "config", "flag", "good", "typo"), CASES, ids=[c[2] for c in CASES])
def test_a_typo_in_a_choice_fails_at_parse_time(cli, config, flag, good, typo, capsys):
    assert parse(cli, config, flag, good) == 0
    assert f"{flag.rsplit('.', 1)[1]}: {good}" in capsys.readouterr().out
    assert parse(cli, config, flag, typo) == 2
    error = capsys.readouterr().err
    assert typo in error and "Literal" in error and repr(good) in error  # names the choices
