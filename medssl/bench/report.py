"""The harness's table and plot: headline metric per task, initialisation and label fraction.

Each cell is the mean ± sample standard deviation over seeds with the pretrained encoders'
Δ of means against scratch; below it, per task, the paired comparison of
:mod:`medssl.bench.comparison` (mean Δ over seeds, bootstrap 95 % CI, a verdict in words).
Above the tables: the budget the harness ran with (``harness.json``) and whether its positive
control, an encoder pretrained *with* labels, beat scratch. If the control did not at the
lowest fraction, the table says first that its other verdicts are not evidence.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from medssl.atomic import atomic_write_bytes
from medssl.bench.comparison import Comparison, comparisons, write_comparisons

Key = tuple[str, str, float]  # task, init, fraction


@dataclass(frozen=True)
class HarnessRecord:
    """What the harness ran with, as ``harness.json`` in its results folder holds it."""

    tasks: Sequence[str]
    inits: Sequence[str]
    fractions: Sequence[float]
    seeds: Sequence[int]
    max_steps: int
    control: str | None = None

    def write(self, path: Path) -> None:
        atomic_write_bytes(Path(path), (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def read(cls, path: Path) -> HarnessRecord | None:
        """The record at ``path``; ``None`` when there is none (a folder from before records)."""
        path = Path(path)
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return cls(tuple(d["tasks"]), tuple(d["inits"]), tuple(float(f) for f in d["fractions"]), tuple(int(s) for s in d["seeds"]), int(d["max_steps"]), d.get("control"))


def headline_values(rows: list[dict], headline: dict[str, str]) -> dict[Key, list[float]]:
    """``{(task, init, fraction): [value per seed]}`` of each task's headline metric (NaN dropped)."""
    values: dict[Key, list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] != headline.get(r["task"]):
            continue
        v = float(r["value"])
        if math.isfinite(v):
            values[(r["task"], r["init"], float(r["fraction"]))].append(v)
    return dict(values)


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(rows: list[dict], headline: dict[str, str], control: str | None = None) -> str:
    """Per task: a table with rows = initialisations, columns = label fractions (mean ± sd,
    n seeds, Δ of means vs scratch), then the paired comparison against scratch."""
    values = headline_values(rows, headline)
    found = comparisons(rows, headline)
    out = []
    for task in sorted({k[0] for k in values}):
        fractions = sorted({k[2] for k in values if k[0] == task})
        inits = sorted({k[1] for k in values if k[0] == task}, key=lambda i: (i != "scratch", i))
        out.append(f"### {task}: {headline[task]} (mean ± sd over seeds)\n")
        out.append("| init | " + " | ".join(f"{100 * f:g}% labels" for f in fractions) + " |")
        out.append("|---|" + "---|" * len(fractions))
        for init in inits:
            cells = []
            for f in fractions:
                m, s = mean_sd(values.get((task, init, f), []))
                n = len(values.get((task, init, f), []))
                cell = "–" if math.isnan(m) else f"{m:.3f} ± {s:.3f} (n={n})" if n > 1 else f"{m:.3f} (n=1)"
                base = values.get((task, "scratch", f))
                if init != "scratch" and base and not math.isnan(m):
                    cell += f", Δ {m - mean_sd(base)[0]:+.3f}"
                cells.append(cell)
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("")
        out += comparison_table([c for c in found if c.task == task], control)
    return "\n".join(out)


def comparison_table(found: list[Comparison], control: str | None = None) -> list[str]:
    """The paired Δ rows of one task as markdown lines (none when nothing pairs with scratch)."""
    if not found:
        return []
    out = [
        f"Paired Δ {found[0].metric} vs scratch (same seed, same labelled cases; bootstrap 95 % CI of the mean Δ):\n",
        "| init | labels | n | mean Δ | 95 % CI | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(found, key=lambda c: (c.init != control, c.init, c.fraction)):
        name = f"{c.init} (positive control)" if c.init == control else c.init
        mean = "–" if math.isnan(c.mean_delta) else f"{c.mean_delta:+.3f}"
        ci = "–" if math.isnan(c.ci_low) else f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        out.append(f"| {name} | {100 * c.fraction:g}% | {c.n} | {mean} | {ci} | {c.verdict} |")
    return [*out, ""]


NOT_EVIDENCE = "**The harness could not show a known gain at this budget**"


def header_lines(found: list[Comparison], record: HarnessRecord | None) -> list[str]:
    """What goes above the tables: the warning when the positive control did not beat scratch
    at the lowest fraction, the budget, and the control's verdict per task and fraction."""
    if record is None:
        return []
    fractions = ", ".join(f"{100 * f:g}%" for f in sorted(record.fractions))
    seeds = ", ".join(str(s) for s in record.seeds)
    budget = (
        f"Budget: {record.max_steps} optimiser steps per run; label fractions {fractions}; "
        f"seeds {seeds} (n = {len(record.seeds)} runs per cell); initialisations {', '.join(record.inits)}."
    )
    if record.control is None:
        return [budget, "", "Positive control: none was run, so nothing here shows that this harness can detect a known gain at this budget.", ""]
    warnings, verdicts = [], []
    lowest = min(record.fractions)
    for task in record.tasks:
        mine = {c.fraction: c for c in found if c.task == task and c.init == record.control}
        said = ", ".join(f"{100 * f:g}% {c.verdict} (mean Δ {c.mean_delta:+.3f})" for f, c in sorted(mine.items()))
        verdicts.append(f"- {task}: {said or 'no paired runs'}")
        at_lowest = mine[lowest].verdict if lowest in mine else "no paired runs"
        if at_lowest != "better":
            warnings.append(
                f"{NOT_EVIDENCE} ({task}): the positive control `{record.control}`, pretrained with labels, "
                f"did not beat scratch at {100 * lowest:g}% labels ({at_lowest}). The harness is too insensitive "
                f"at {record.max_steps} steps and {len(record.seeds)} seeds, so its other {task} verdicts are not evidence either way."
            )
    control = f"Positive control `{record.control}` (pretrained with labels) against scratch:"
    return [*(w + "\n" for w in warnings), budget, "", control, *verdicts, ""]


def report_text(rows: list[dict], headline: dict[str, str], record: HarnessRecord | None) -> str:
    """``table.md``: the header (budget, positive control), then each task's tables."""
    lines = header_lines(comparisons(rows, headline), record)
    text = "\n".join([*lines, markdown_table(rows, headline, record.control if record else None)])
    if record is None:
        text += "\nBudget and positive control: not recorded (no harness.json in this folder); nothing here shows the harness can detect a known gain.\n"
    return text


def draw_task(ax, values: dict[Key, list[float]], task: str, metric: str) -> None:
    """One task's curves on ``ax``: mean per fraction, an sd bar only where n ≥ 2 seeds."""
    for init in sorted({k[1] for k in values if k[0] == task}, key=lambda i: (i != "scratch", i)):
        fractions = sorted(k[2] for k in values if k[0] == task and k[1] == init)
        stats = [mean_sd(values[(task, init, f)]) for f in fractions]
        (line,) = ax.plot([100 * f for f in fractions], [m for m, _ in stats], marker="o", label=init)
        spread = [(100 * f, m, s) for f, (m, s) in zip(fractions, stats) if len(values[(task, init, f)]) > 1]
        if spread:
            x, m, s = zip(*spread)
            ax.errorbar(x, m, yerr=s, fmt="none", ecolor=line.get_color(), capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training cases (%)")
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend()


def plot(rows: list[dict], headline: dict[str, str], path: Path) -> Path | None:
    """Headline metric against label fraction (log axis), one line per initialisation, sd bars
    where a cell has two seeds or more."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    values = headline_values(rows, headline)
    tasks = sorted({k[0] for k in values})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        draw_task(ax, values, task, headline[task])
    fig.tight_layout()
    path = Path(path)
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(rows: list[dict], headline: dict[str, str], out: Path) -> tuple[Path, Path | None]:
    """``out/table.md``, ``out/comparison.csv`` and ``out/plot.png``; the budget and the
    positive control come from ``out/harness.json`` when the harness wrote one."""
    out = Path(out)
    table = out / "table.md"
    atomic_write_bytes(table, (report_text(rows, headline, HarnessRecord.read(out / "harness.json")) + "\n").encode())
    write_comparisons(out / "comparison.csv", comparisons(rows, headline))
    return table, plot(rows, headline, out / "plot.png")
