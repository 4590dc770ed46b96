"""Spec: the ``medssl`` command (DESIGN.md section 3, "CLI").

Failures exit 2 with one line that names the input by an opaque reference and the
reason, never a traceback and never a path that may name a patient. A pipeline recipe is
checked against the real parser before any stage runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.store import dicom_factory as f
from tests.store import store_view as sv

PATIENT_LIKE = "Doe^Jane_19700101"


def medssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medssl.cli", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def series(tmp_path: Path) -> Path:
    f.write_series(tmp_path / "series", 3)
    return tmp_path / "series"


def test_help_lists_the_commands():
    proc = medssl("--help")
    assert proc.returncode == 0
    for command in ("ingest", "pretrain", "finetune", "export", "predict", "serve", "router", "bench", "pipeline"):
        assert command in proc.stdout, command


def test_ingest_help_lists_its_options():
    proc = medssl("ingest", "--help")
    assert proc.returncode == 0
    for option in ("--out", "--key-file", "--workers", "--irregular", "--no-progress"):
        assert option in proc.stdout
    assert "reject" in proc.stdout and "resample" in proc.stdout


SHORT_HELP_RUN = """
import sys
from medssl.cli import main
code = main([sys.argv[1], "--help"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "jsonargparse"))
print("IMPORTED:", heavy[:3])
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("command", "own"),
    [("pretrain", "--probe.path"), ("finetune", "--model.encoder")],
)
def test_training_help_is_short_names_the_main_options_and_imports_no_lightning(command, own):
    # the full LightningCLI parser takes seconds to build: a plain --help must not build it
    proc = subprocess.run([sys.executable, "-c", SHORT_HELP_RUN, command], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED: []" in proc.stdout
    help_text = proc.stdout.split("IMPORTED:")[0]
    assert len(lines(help_text)) < 40
    options = ("-c, --config", "--data.store", "--trainer.max_steps", "--trainer.devices", "--trainer.default_root_dir", "--run_name", "--ckpt_path", "--tracking", own)
    for option in options:
        assert option in help_text, option
    assert f"medssl {command} --help-all" in help_text and "--model.help" in help_text


@pytest.mark.parametrize("command", ["pipeline", "probe-set"])
def test_pipeline_and_probe_set_help_describe_the_command_and_each_option(command):
    proc = medssl(command, "--help")
    assert proc.returncode == 0
    parser = _subparser(command)
    assert parser.description and parser.description.split()[0] in proc.stdout
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not undocumented


def _subparser(command: str):
    from medssl.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sub.choices[command]


def test_ingest_of_a_missing_source_fails_in_one_line_without_the_path(tmp_path):
    missing = tmp_path / PATIENT_LIKE / "CT"
    proc = medssl(
        "ingest",
        missing,
        "--out",
        tmp_path / "store",
        "--key-file",
        tmp_path / "key",
        "--no-progress",
    )
    assert proc.returncode == 2
    assert len(lines(proc.stderr)) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert PATIENT_LIKE not in proc.stderr + proc.stdout
    assert "does not exist" in proc.stderr


def test_ingest_of_a_missing_source_creates_no_store(tmp_path):
    proc = medssl(
        "ingest",
        tmp_path / "absent",
        "--out",
        tmp_path / "store",
        "--key-file",
        tmp_path / "key",
        "--no-progress",
    )
    assert proc.returncode == 2
    assert not (tmp_path / "store").exists()


def test_ingest_writes_a_store_and_prints_a_summary(tmp_path, series):
    proc = medssl(
        "ingest",
        series,
        "--out",
        tmp_path / "store",
        "--key-file",
        tmp_path / "key",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "volumes written" in proc.stdout
    assert len(sv.volumes(tmp_path / "store")) == 1
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0, "the key file is private to its owner"


def test_ingest_with_another_key_into_a_store_fails_in_one_line(tmp_path, series):
    assert (
        medssl(
            "ingest",
            series,
            "--out",
            tmp_path / "store",
            "--key-file",
            tmp_path / "key1",
            "--no-progress",
        ).returncode
        == 0
    )
    proc = medssl(
        "ingest",
        series,
        "--out",
        tmp_path / "store",
        "--key-file",
        tmp_path / "key2",
        "--no-progress",
    )
    assert proc.returncode == 2
    assert len(lines(proc.stderr)) == 1 and "key" in proc.stderr, proc.stderr


def _recipe(tmp_path: Path, *stages: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stages": list(stages)}))
    return path


def _ingest_stage(tmp_path: Path, source: Path, **extra) -> dict:
    return {
        "ingest": {
            "sources": [str(source)],
            "out": str(tmp_path / "store"),
            "key-file": str(tmp_path / "key"),
            "workers": 1,
            "irregular": "reject",
            "no-progress": True,
            **extra,
        }
    }


def test_pipeline_runs_an_ingest_stage(tmp_path, series):
    proc = medssl("pipeline", _recipe(tmp_path, _ingest_stage(tmp_path, series)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = sv.volumes(tmp_path / "store")
    assert [(r["modality"], r["n_images"]) for r in rows] == [("CT", 3)]


def test_pipeline_with_an_unknown_option_fails_before_running(tmp_path, series):
    good = _ingest_stage(tmp_path, series)
    bad = _ingest_stage(tmp_path, series, **{"max-bytez": 3})
    proc = medssl("pipeline", _recipe(tmp_path, good, bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(lines(proc.stderr)) == 1, proc.stderr
    assert "stage 2" in proc.stderr and "ingest" in proc.stderr and "max-bytez" in proc.stderr
    assert not (tmp_path / "store").exists(), "stage 1 must not run when stage 2 cannot"


def test_pipeline_with_a_bad_value_fails_before_running(tmp_path, series):
    proc = medssl(
        "pipeline",
        _recipe(tmp_path, _ingest_stage(tmp_path, series, irregular="sideways")),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "irregular" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_pipeline_with_an_unknown_command_names_it(tmp_path):
    proc = medssl("pipeline", _recipe(tmp_path, {"teleport": {"to": "mars"}}), cwd=tmp_path)
    assert proc.returncode == 2
    assert "teleport" in proc.stderr and "stage 1" in proc.stderr and "Traceback" not in proc.stderr


def test_pipeline_passthrough_options_become_the_flags_a_person_would_type(tmp_path):
    from medssl.cli import build_parser
    from medssl.pipeline import load_stages

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n"
        "  - finetune:\n"
        "      config: [a.yaml, b.yaml]\n"
        "      data.structures: [lung_right, lung_left]\n"
        "      trainer.max_steps: 5\n"
        "  - bench:\n"
        "      positional: [label-efficiency]\n"
        "      fractions: [0.25, 1.0]\n"
        "      no-scratch: true\n"
    )
    (_, finetune), (_, bench) = load_stages(recipe, build_parser())
    assert finetune == ["finetune", "-c", "a.yaml", "-c", "b.yaml", "--data.structures", '["lung_right", "lung_left"]', "--trainer.max_steps", "5"]
    assert bench == ["bench", "label-efficiency", "--fractions", "0.25", "1.0", "--no-scratch"]


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_parses_against_the_real_parser(recipe):
    from medssl.cli import build_parser
    from medssl.pipeline import load_stages

    from medssl.bench.cli import build_parser as bench_parser

    stages = load_stages(recipe, build_parser())  # unknown options and bad values fail here
    assert stages and all(argv[0] == command for command, argv in stages)
    for command, argv in stages:
        if command == "bench":  # a passthrough stage: its own parser checks it
            bench_parser().parse_args(argv[1:])


def test_pipeline_list_values_of_a_fixed_count_option_become_several_words(tmp_path):
    from medssl.cli import build_parser
    from medssl.pipeline import load_stages

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n"
        "  - probe-set:\n"
        "      store: S\n"
        "      out: p.safetensors\n"
        "      crop-size: [32, 32, 16]\n"
        "      structures: [liver, heart]\n"
    )
    ((_, argv),) = load_stages(recipe, build_parser())
    assert argv == ["probe-set", "--store", "S", "--out", "p.safetensors", "--crop-size", "32", "32", "16", "--structures", "liver", "heart"]


# medssl probe-set -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from tests.data.labelled_store import write_labelled_store

    return write_labelled_store(tmp_path_factory.mktemp("probe_cli") / "store")


@pytest.mark.slow  # a 2-step pretraining run: ~40 s on 2 busy cores
def test_probe_set_feeds_the_online_probe_of_pretrain(labelled, tmp_path):
    import csv

    from medssl.cli import main

    out = tmp_path / "probe.safetensors"
    args = ["probe-set", "--store", labelled, "--out", out, "--structures", "liver", "heart", "lung_left"]
    assert main([*map(str, args), "--per-class", "3", "--no-progress"]) == 0
    runs = tmp_path / "runs"
    configs = Path(__file__).resolve().parents[1] / "configs"
    pretrain = [
        "pretrain", "-c", str(configs / "trainer" / "cpu.yaml"),
        "-c", str(configs / "pretrain" / "simclr.yaml"), "-c", str(configs / "pretrain" / "smoke.yaml"),
        "--data.store", str(labelled), "--trainer.max_steps", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(runs),
        "--probe.path", str(out), "--probe.every_n_steps", "1", "--probe.linear_steps", "20",
    ]  # fmt: skip
    assert main(pretrain) == 0
    with open(runs / "simclr" / "version_0" / "probe.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(float(r["knn_acc"]) > float(r["chance"]) for r in rows)


def test_probe_set_errors_are_one_line(labelled, tmp_path):
    out = tmp_path / "p.safetensors"
    proc = medssl("probe-set", "--store", labelled, "--out", out, "--structures", "spleenx", "--no-progress")
    assert proc.returncode == 2 and "structures ['spleenx']: not in the store's labels" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = medssl("probe-set", "--store", tmp_path / "none", "--out", out)
    assert proc.returncode == 2 and "not a store" in proc.stderr
