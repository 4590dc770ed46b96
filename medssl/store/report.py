"""The closing summary of an ingest run: a table a person reads at a glance."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from medssl.store.ingest import IngestSummary


def print_summary(summary: IngestSummary, store: Path, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="medssl ingest", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("files read", str(summary.files))
    table.add_row("volumes written", str(summary.written))
    table.add_row("already in store", str(summary.skipped))
    if summary.labels_written or summary.labels_skipped or summary.labels_rejected:
        table.add_row("labels written", str(summary.labels_written))
        table.add_row("labels already in store", str(summary.labels_skipped))
        table.add_row("labels refused", str(summary.labels_rejected))
    for code, count in sorted(summary.rejected.items()):
        table.add_row(f"rejected: {code}", str(count))
    rate = summary.bytes_written / max(summary.seconds, 1e-9) / 1e6
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:.1f} MB/s written)")
    console.print(table)
    if summary.rejected:
        console.print(f"refusals and their reasons: table 'rejected' in {Path(store).name}/manifest.sqlite; copies for review in quarantine/")
