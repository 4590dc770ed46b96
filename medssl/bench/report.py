"""The harness's table and plot: headline metric per task, initialisation and label fraction.

Each cell is the mean ± sample standard deviation over seeds; a column ``Δ vs scratch``
gives the pretrained encoders' gain (or loss) at each fraction, so where pretraining buys
nothing shows as plainly as where it helps.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from medssl.atomic import atomic_write_bytes

Key = tuple[str, str, float]  # task, init, fraction


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


def markdown_table(rows: list[dict], headline: dict[str, str]) -> str:
    """One table per task: rows = initialisations, columns = label fractions (mean ± sd, n seeds)."""
    values = headline_values(rows, headline)
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
                cell = "–" if math.isnan(m) else f"{m:.3f} ± {s:.3f} (n={n})"
                base = values.get((task, "scratch", f))
                if init != "scratch" and base and not math.isnan(m):
                    cell += f", Δ {m - mean_sd(base)[0]:+.3f}"
                cells.append(cell)
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], headline: dict[str, str], path: Path) -> Path | None:
    """Headline metric against label fraction (log axis), one line per initialisation, sd bars."""
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
        for init in sorted({k[1] for k in values if k[0] == task}, key=lambda i: (i != "scratch", i)):
            fractions = sorted(k[2] for k in values if k[0] == task and k[1] == init)
            stats = [mean_sd(values[(task, init, f)]) for f in fractions]
            ax.errorbar([100 * f for f in fractions], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training cases (%)")
        ax.set_ylabel(headline[task])
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(rows: list[dict], headline: dict[str, str], out: Path) -> tuple[Path, Path | None]:
    """``out/table.md`` and ``out/plot.png``."""
    table = Path(out) / "table.md"
    atomic_write_bytes(table, (markdown_table(rows, headline) + "\n").encode())
    return table, plot(rows, headline, Path(out) / "plot.png")
