"""The harness's table and plot from known results; its config refuses what cannot run."""

from __future__ import annotations

import math

import pytest

from medssl.bench.label_efficiency import HEADLINE, HarnessConfig, read_results, write_results
from medssl.bench.report import (
    NOT_EVIDENCE,
    HarnessRecord,
    draw_task,
    headline_values,
    markdown_table,
    mean_sd,
    report_text,
    write_report,
)
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


def _control_rows(control_deltas: list[float], fractions=(0.1, 1.0)) -> list[dict]:
    """Scratch, voco (+0.01) and a supervised control (+Δ_s at the lowest fraction, 0 above)."""
    rows = []
    for fraction in fractions:
        for seed, delta in enumerate(control_deltas):
            scratch = 0.5 + 0.02 * seed
            gain = delta if fraction == min(fractions) else 0.0
            for init, value in (("scratch", scratch), ("voco", scratch + 0.01 * (-1) ** seed), ("supervised", scratch + gain)):
                rows.append({"task": "segmentation", "init": init, "fraction": fraction, "seed": seed, "train_cases": 1, "metric": "dice", "value": value})
    return rows


def _record(control: str | None = "supervised", seeds=(0, 1, 2, 3, 4)) -> HarnessRecord:
    inits = ("scratch", "supervised", "voco") if control else ("scratch", "voco")
    return HarnessRecord(tasks=("segmentation",), inits=inits, fractions=(0.1, 1.0), seeds=seeds, max_steps=200, control=control)


def test_header_states_the_budget_and_the_control_that_beat_scratch():
    text = report_text(_control_rows([0.2, 0.25, 0.18, 0.22, 0.21]), HEADLINE, _record())
    assert text.startswith("Budget: 200 optimiser steps per run; label fractions 10%, 100%; seeds 0, 1, 2, 3, 4 (n = 5 runs per cell)")
    assert NOT_EVIDENCE not in text
    assert "- segmentation: 10% better (mean Δ +0.212), 100% not distinguishable (mean Δ +0.000)" in text
    assert "| supervised (positive control) | 10% | 5 | +0.212 |" in text
    assert "| voco | 10% | 5 | +0.002 |" in text and text.rstrip().endswith("not distinguishable |")


def test_a_control_that_does_not_beat_scratch_voids_the_other_verdicts_first():
    text = report_text(_control_rows([0.02, -0.03, 0.01, -0.01, 0.0]), HEADLINE, _record())
    assert text.startswith(NOT_EVIDENCE + " (segmentation): the positive control `supervised`")
    assert "did not beat scratch at 10% labels (not distinguishable)" in text and "not evidence" in text
    too_few = report_text(_control_rows([0.2, 0.25]), HEADLINE, _record(seeds=(0, 1)))
    assert too_few.startswith(NOT_EVIDENCE) and "(too few seeds)" in too_few


def test_without_a_control_the_report_says_none_was_run_and_without_a_record_that_none_is_known():
    rows = _control_rows([0.2, 0.25, 0.18])
    text = report_text(rows, HEADLINE, _record(control=None))
    assert "Positive control: none was run" in text and NOT_EVIDENCE not in text
    assert "not recorded (no harness.json" in report_text(rows, HEADLINE, None)


def test_the_report_is_the_same_twice_and_writes_comparison_csv(tmp_path):
    rows = _control_rows([0.02, 0.1, 0.05, 0.08, 0.0])
    _record().write(tmp_path / "harness.json")
    assert HarnessRecord.read(tmp_path / "harness.json") == _record()
    table, _ = write_report(rows, HEADLINE, tmp_path)
    first = (table.read_text(), (tmp_path / "comparison.csv").read_text())
    write_report(rows, HEADLINE, tmp_path)
    assert (table.read_text(), (tmp_path / "comparison.csv").read_text()) == first
    assert first[0].startswith("Budget: 200") and "segmentation,dice,supervised,0.1,5," in first[1]


def test_the_harness_records_its_budget_and_control(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "artifact.json").write_text("{}")
    config = HarnessConfig(store="S", out=str(tmp_path), encoders={"supervised": str(tmp_path / "art")}, control="supervised", seeds=(0, 1, 2, 3), max_steps=50)
    assert config.record() == HarnessRecord(("segmentation",), ("scratch", "supervised"), (0.1, 0.5, 1.0), (0, 1, 2, 3), 50, "supervised")
    with pytest.raises(ConfigError, match="not one of the encoders"):
        HarnessConfig(store="S", out=str(tmp_path), control="supervised")
    with pytest.raises(ConfigError, match="judged against scratch"):
        HarnessConfig(store="S", out=str(tmp_path), encoders={"supervised": str(tmp_path / "art")}, control="supervised", scratch=False)


def test_plot_draws_sd_bars_only_where_a_cell_has_two_seeds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_seed = [r for r in _rows() if r["seed"] == 0]
    fig, ax = plt.subplots()
    draw_task(ax, headline_values(one_seed, HEADLINE), "segmentation", "dice")
    assert len(ax.lines) == 2 and not ax.containers and not ax.collections  # a mean per init, no bars
    plt.close(fig)
    fig, ax = plt.subplots()
    draw_task(ax, headline_values(_rows(), HEADLINE), "segmentation", "dice")
    assert len(ax.containers) == 2  # one sd bar set per init with n = 2
    plt.close(fig)
    assert "0.400 (n=1)" in markdown_table(one_seed, HEADLINE)  # and no "± 0.000" for one seed
