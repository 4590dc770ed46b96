"""Paired comparison against scratch: per seed Δ, a bootstrap CI of its mean, a verdict in words.

For every (task, headline metric, initialisation other than scratch, label fraction), the
differences Δ_s = value(init, s) − value(scratch, s) over the seeds both have (same seed: the
same labelled subset and the same head initialisation, so the pair shares its noise), their
mean, and a percentile bootstrap 95 % interval of that mean (Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993, ch. 13): resample the seeds with replacement, a fixed
RNG seed so a report is the same every time. With few seeds the interval is optimistic (three
seeds give at most ten distinct resamples), hence no interval at all below :data:`MIN_SEEDS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.atomic import atomic_write_bytes

MIN_SEEDS = 3
RESAMPLES = 10_000
BOOTSTRAP_SEED = 13
FIELDS = ("task", "metric", "init", "fraction", "n", "mean_delta", "ci_low", "ci_high", "verdict")


@dataclass(frozen=True)
class Comparison:
    """One initialisation against scratch at one label fraction; ``ci_*`` NaN when ``n`` < 3."""

    task: str
    metric: str
    init: str
    fraction: float
    n: int
    mean_delta: float
    ci_low: float
    ci_high: float
    verdict: str


def bootstrap_ci(deltas: list[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``deltas`` (resampled with replacement)."""
    if not deltas:
        raise ValueError("bootstrap_ci: no paired differences to resample")
    x = np.asarray(deltas, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def verdict(n: int, ci_low: float, ci_high: float) -> str:
    """``better`` (interval above 0), ``worse`` (below), ``not distinguishable`` (covers 0),
    ``too few seeds`` (fewer than :data:`MIN_SEEDS` pairs: no interval)."""
    if n < MIN_SEEDS:
        return "too few seeds"
    if ci_low > 0:
        return "better"
    if ci_high < 0:
        return "worse"
    return "not distinguishable"


def compare(values: dict[str, float], scratch: dict[str, float]) -> tuple[int, float, float, float, str]:
    """``values`` and ``scratch`` map seed → headline value; returns n, mean Δ, CI and verdict."""
    deltas = [values[s] - scratch[s] for s in sorted(values.keys() & scratch.keys())]
    n = len(deltas)
    mean = float(np.mean(deltas)) if deltas else math.nan
    low, high = bootstrap_ci(deltas) if n >= MIN_SEEDS else (math.nan, math.nan)
    return n, mean, low, high, verdict(n, low, high)


def comparisons(rows: list[dict], headline: dict[str, str]) -> list[Comparison]:
    """Every (task, init ≠ scratch, fraction) of ``rows`` (``results.csv``) against scratch."""
    per_seed: dict[tuple[str, str, float], dict[str, float]] = {}
    for r in rows:
        if r["metric"] != headline.get(r["task"]):
            continue
        v = float(r["value"])
        if math.isfinite(v):
            per_seed.setdefault((r["task"], r["init"], float(r["fraction"])), {})[str(r["seed"])] = v
    out = []
    for (task, init, fraction), values in sorted(per_seed.items()):
        if init == "scratch":
            continue
        n, mean, low, high, word = compare(values, per_seed.get((task, "scratch", fraction), {}))
        out.append(Comparison(task, headline[task], init, fraction, n, mean, low, high, word))
    return out


def write_comparisons(path: Path, found: list[Comparison]) -> None:
    """``comparison.csv``: one row per :class:`Comparison`, NaN where there is no interval."""
    lines = [",".join(FIELDS)]
    for c in found:
        cells = [c.task, c.metric, c.init, f"{c.fraction:g}", str(c.n), *(_number(v) for v in (c.mean_delta, c.ci_low, c.ci_high)), c.verdict]
        lines.append(",".join(cells))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"
