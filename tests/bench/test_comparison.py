"""Paired comparison against scratch: a clear gain is ``better``, noise is ``not distinguishable``,
two seeds get no interval, and the same rows give the same interval every time."""

from __future__ import annotations

import math

import pytest

from medssl.bench.comparison import bootstrap_ci, comparisons, verdict, write_comparisons
from medssl.bench.label_efficiency import HEADLINE


def paired_rows(deltas: list[float], init: str = "voco", fraction: float = 0.1, base: float = 0.5) -> list[dict]:
    """Scratch at ``base`` ± a seed wobble shared by both arms; ``init`` at scratch + Δ_s."""
    rows = []
    for seed, delta in enumerate(deltas):
        scratch = base + 0.05 * math.sin(seed)  # the shared seed noise the pairing removes
        for name, value in (("scratch", scratch), (init, scratch + delta)):
            rows.append({"task": "segmentation", "init": name, "fraction": fraction, "seed": seed, "train_cases": 1, "metric": "dice", "value": value})
            rows.append({"task": "segmentation", "init": name, "fraction": fraction, "seed": seed, "train_cases": 1, "metric": "hd95", "value": 9.0})
    return rows


def test_a_clear_gain_over_five_seeds_is_better():
    (c,) = comparisons(paired_rows([0.10, 0.12, 0.08, 0.11, 0.09]), HEADLINE)
    assert (c.task, c.metric, c.init, c.fraction, c.n) == ("segmentation", "dice", "voco", 0.1, 5)
    assert c.mean_delta == pytest.approx(0.10)
    assert 0 < c.ci_low < c.mean_delta < c.ci_high
    assert c.verdict == "better"


def test_noise_around_zero_is_not_distinguishable_and_a_clear_loss_is_worse():
    (c,) = comparisons(paired_rows([0.03, -0.02, 0.01, -0.04, 0.02]), HEADLINE)
    assert c.ci_low < 0 < c.ci_high and c.verdict == "not distinguishable"
    (c,) = comparisons(paired_rows([-0.10, -0.12, -0.08]), HEADLINE)
    assert c.verdict == "worse"


def test_two_seeds_are_too_few_for_an_interval():
    (c,) = comparisons(paired_rows([0.3, 0.3]), HEADLINE)
    assert c.n == 2 and c.mean_delta == pytest.approx(0.3)
    assert math.isnan(c.ci_low) and math.isnan(c.ci_high) and c.verdict == "too few seeds"


def test_only_seeds_both_arms_have_are_paired():
    rows = paired_rows([0.1, 0.1, 0.1, 0.1])
    rows = [r for r in rows if not (r["init"] == "scratch" and r["seed"] == 3)]
    (c,) = comparisons(rows, HEADLINE)
    assert c.n == 3


def test_the_interval_is_reproducible():
    deltas = [0.03, -0.02, 0.01, -0.04, 0.02, 0.05]
    assert bootstrap_ci(deltas) == bootstrap_ci(deltas)
    assert comparisons(paired_rows(deltas), HEADLINE) == comparisons(paired_rows(deltas), HEADLINE)
    with pytest.raises(ValueError, match="no paired differences"):
        bootstrap_ci([])


def test_verdict_words():
    assert verdict(5, 0.01, 0.2) == "better"
    assert verdict(5, -0.2, -0.01) == "worse"
    assert verdict(5, -0.01, 0.2) == "not distinguishable"
    assert verdict(5, 0.0, 0.0) == "not distinguishable"  # identical runs: no gain
    assert verdict(2, 0.1, 0.2) == "too few seeds"


def test_comparison_csv(tmp_path):
    path = tmp_path / "comparison.csv"
    write_comparisons(path, comparisons(paired_rows([0.1, 0.12, 0.08]) + paired_rows([0.1, 0.1], fraction=1.0), HEADLINE))
    lines = path.read_text().splitlines()
    assert lines[0] == "task,metric,init,fraction,n,mean_delta,ci_low,ci_high,verdict"
    assert lines[1].startswith("segmentation,dice,voco,0.1,3,0.1,") and lines[1].endswith(",better")
    assert lines[2] == "segmentation,dice,voco,1,2,0.1,nan,nan,too few seeds"
