"""``medssl bench label-efficiency`` arguments: several values per option, as a pipeline stage writes them."""

from __future__ import annotations

import pytest

from medssl.bench.cli import _pairs, build_parser


def test_task_configs_and_encoders_take_several_values_or_repeat():
    args = build_parser().parse_args(
        [
            "label-efficiency",
            "--store",
            "s",
            "--out",
            "o",
            "--tasks",
            "segmentation",
            "detection",
            "classification",
            "--task-config",
            "segmentation=a.yaml",
            "detection=b.yaml",
            "--task-config",
            "classification=c.yaml",
            "--encoder",
            "voco=art1",
            "--encoder",
            "swav=art2",
        ]
    )
    assert args.task_config == ["segmentation=a.yaml", "detection=b.yaml", "classification=c.yaml"]
    assert args.encoder == ["voco=art1", "swav=art2"]
    assert args.extra == []  # a second TASK=FILE is not mistaken for a finetune argument


def test_arguments_after_the_separator_go_to_every_run():
    args = build_parser().parse_args(
        ["label-efficiency", "--store", "s", "--out", "o", "--", "--data.batch_size", "4"]
    )
    assert args.extra == ["--data.batch_size", "4"] and args.task_config == []


def test_a_pair_without_a_name_or_a_path_is_refused():
    assert _pairs(["voco=x/y"], "--encoder") == {"voco": "x/y"}
    with pytest.raises(Exception, match="expected NAME=PATH"):
        _pairs(["voco"], "--encoder")
