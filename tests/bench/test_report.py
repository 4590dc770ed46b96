"""The harness's table and plot from known results; its config refuses what cannot run."""

from __future__ import annotations

import math

import pytest

from medssl.bench.label_efficiency import HEADLINE, HarnessConfig, read_results, write_results
from medssl.bench.report import headline_values, markdown_table, mean_sd, write_report
from medssl.errors import ConfigError


def _rows() -> list[dict]:
    rows = []
    for seed, (scratch, voco) in enumerate([(0.40, 0.60), (0.50, 0.70)]):
        for init, value in (("scratch", scratch), ("voco", voco)):
            rows.append({"task": "segmentation", "init": init, "fraction": 0.1, "seed": seed, "train_cases": 1, "metric": "dice", "value": value})
            rows.append({"task": "segmentation", "init": init, "fraction": 1.0, "seed": seed, "train_cases": 8, "metric": "dice", "value": 0.8})
            rows.append({"task": "segmentation", "init": init, "fraction": 1.0, "seed": seed, "train_cases": 8, "metric": "hd95", "value": 3.0})
    return rows


def test_headline_values_keep_only_the_headline_metric():
    values = headline_values(_rows(), HEADLINE)
    assert values[("segmentation", "voco", 0.1)] == [0.6, 0.7]
    assert len(values) == 4


def test_mean_and_sample_sd():
    m, s = mean_sd([0.4, 0.5])
    assert m == pytest.approx(0.45) and s == pytest.approx(math.sqrt(0.005))
    assert mean_sd([0.3]) == (0.3, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))


def test_table_shows_means_sd_and_the_gain_over_scratch_including_none():
    table = markdown_table(_rows(), HEADLINE)
    assert "| scratch | 0.450 ± 0.071 (n=2) | 0.800 ± 0.000 (n=2) |" in table
    assert "0.650 ± 0.071 (n=2), Δ +0.200" in table  # pretraining helps with 10 % labels
    assert "0.800 ± 0.000 (n=2), Δ +0.000" in table  # and buys nothing with all of them
    assert table.index("| scratch") < table.index("| voco")


def test_report_files_are_written(tmp_path):
    table, png = write_report(_rows(), HEADLINE, tmp_path)
    assert table.read_text().startswith("### segmentation: dice")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_round_trip_through_csv(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, _rows())
    back = read_results(path)
    assert len(back) == len(_rows())
    voco = [r for r in back if r["init"] == "voco" and r["fraction"] == "0.1" and r["seed"] == "0"]
    assert len(voco) == 1 and float(voco[0]["value"]) == 0.6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ("segmentation", "registration")}, "unknown task"),
        ({"fractions": (0.0, 0.5)}, "label fractions"),
        ({"fractions": (1.5,)}, "label fractions"),
        ({"scratch": False}, "nothing to compare"),
        ({"encoders": {"scratch": "x"}}, "encoder name"),
        ({"encoders": {"voco": "/nonexistent"}}, "not an artifact folder"),
    ],
)
def test_config_refuses_what_cannot_run(kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        HarnessConfig(store=str(tmp_path), out=str(tmp_path / "out"), **kwargs)
