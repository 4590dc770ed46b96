"""``medssl bench label-efficiency`` arguments: several values per option, as a pipeline stage writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medssl.bench.cli import _pairs, _task_configs, build_parser


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


def test_a_task_config_is_a_list_and_entries_for_one_task_add_up_in_order():
    configs = _task_configs(
        [
            "segmentation=seg.yaml, smoke.yaml,data/demo.yaml",
            "detection=det.yaml",  # the old single-path form: a list of one
            "segmentation={data: {structures: [a, b]}, model: {init_args: {lr: 3.0e-3}}}",  # inline, commas and all
            "segmentation=last.yaml",
        ]
    )
    assert configs == {
        "segmentation": ("seg.yaml", "smoke.yaml", "data/demo.yaml", "{data: {structures: [a, b]}, model: {init_args: {lr: 3.0e-3}}}", "last.yaml"),
        "detection": ("det.yaml",),
    }
    for bad in ("segmentation", "=a.yaml", "segmentation=", "segmentation=a.yaml,,b.yaml"):
        with pytest.raises(Exception, match="expected TASK=FILE"):
            _task_configs([bad])


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_task_config_a_shipped_pipeline_names_exists(recipe):
    from medssl.cli import build_parser as medssl_parser
    from medssl.pipeline import load_stages

    for command, argv in load_stages(recipe, medssl_parser()):
        if command != "bench" or argv[1] != "label-efficiency":
            continue
        for task, configs in _task_configs(build_parser().parse_args(argv[1:]).task_config).items():
            for item in configs:
                if item.startswith("{"):  # an inline mapping, as -c takes it
                    assert isinstance(yaml.safe_load(item), dict), (task, item)
                else:
                    assert (ROOT / item).is_file(), (recipe.name, task, item)


def test_control_runs_end_to_end_into_harness_json_and_the_table(tmp_path, monkeypatch, capsys):
    import medssl.bench.label_efficiency as harness
    from medssl.bench.cli import bench_main

    (tmp_path / "sup").mkdir()
    (tmp_path / "sup" / "artifact.json").write_text("{}")

    def fake_run(config, task, init, artifact, fraction, seed):  # the control gains 0.2 (+ seed wobble) at every fraction
        return {"dice": 0.5 + 0.01 * seed + (0.2 + 0.01 * seed if init == "supervised" else 0.0)}, 4

    monkeypatch.setattr(harness, "_one_run", fake_run)
    out = tmp_path / "out"
    argv = ["label-efficiency", "--store", "S", "--out", str(out), "--fractions", "0.25", "1", "--seeds", "0", "1", "2"]
    assert bench_main([*argv, "--encoder", f"supervised={tmp_path / 'sup'}", "--control", "supervised", "--max-steps", "7"]) == 0
    assert '"control": "supervised"' in (out / "harness.json").read_text()
    table = (out / "table.md").read_text()
    assert table.startswith("Budget: 7 optimiser steps per run; label fractions 25%, 100%; seeds 0, 1, 2 (n = 3 runs per cell)")
    assert "- segmentation: 25% better" in table and "The harness could not show" not in table
    assert (out / "comparison.csv").read_text().count(",better") == 2
    assert table in capsys.readouterr().out
