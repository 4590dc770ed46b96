"""Ingest fuzz mutants batch by batch in this process and report what happened, as JSON.

Run as its own process (``python -m tests.store.ingest_fuzz_run``) so that its peak RSS is
the ingest's: ingest runs inline (``workers=1``); the unmutated seeds are ingested first so
every decoder is loaded, then the peak (VmHWM) is reset and the RSS is the baseline. Each batch is ingested into a fresh store with the given
``--max-mb`` budget, checked, then deleted, so disk use stays one batch.

Checks per batch, each failure listed by mutant name in the report:

- ``uncaught``: ``ingest`` raised;
- ``no_outcome``: a mutant (or zip member) with no manifest row naming it;
- ``internal_error``: a row with that code (a bug, by its definition);
- ``partial``: a volume row whose file is missing, does not load, has another shape or
  digest, a store file no row names, a temporary left, a refusal whose quarantine folder is
  missing or lacks reason.json, a quarantine folder no row names;
- ``bad_geometry``: a stored affine or spacing that is not finite, or a spacing <= 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl.deid import Pseudonymizer
from medssl.io.sources import SourceItem
from medssl.store import ingest_work
from medssl.store.ingest import IngestOptions, ingest
from tests.store import fuzz_mutator as fm
from tests.store import store_view as sv

KEY = bytes(range(40, 72))


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``: the peak since the last reset), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Start VmHWM afresh at the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def run(count: int, seed: int, batch: int, max_mb: float, work: Path, start: int = 0) -> dict:
    logging.disable(logging.WARNING)  # one "rejected" line per mutant is noise here
    seeds = fm.load_seeds(work / "seeds")
    report: dict = {"count": count, "seed": seed, "batch": batch, "max_mb": max_mb, "seeds": [s.label for s in seeds],
                    "by_source": Counter(), "by_kind": Counter(), "by_field": Counter(), "outcomes": Counter(),
                    "problems": {k: [] for k in ("uncaught", "no_outcome", "internal_error", "partial", "bad_geometry")},
                    "slowest_batch_s": 0.0}
    max_bytes = int(max_mb * (1 << 20))
    warm = _warm_up(seeds, work / "warm", max_bytes)  # every decoder and library loaded before the baseline
    report["warm_up_peak_rss_mib"] = round(status_mib("VmHWM"), 1)
    reset_peak()
    baseline = status_mib("VmRSS")
    began = time.perf_counter()
    for first in range(start, start + count, batch):
        mutants = fm.make_mutants(seeds, first, min(batch, start + count - first), seed)
        _run_batch(mutants, work / f"b{first}", max_bytes, report)
    peak = status_mib("VmHWM")
    report.update(seconds=round(time.perf_counter() - began, 1), seeds_written_unmutated=warm,
                  baseline_rss_mib=round(baseline, 1), peak_rss_mib=round(peak, 1), peak_growth_mib=round(peak - baseline, 1))
    return report


def _warm_up(seeds: list[fm.Seed], root: Path, max_bytes: int) -> int:
    """Ingest the unmutated seeds once; returns how many became volumes."""
    src = root / "src"
    src.mkdir(parents=True)
    for n, s in enumerate(seeds):
        (src / f"seed{n}{s.suffix}").write_bytes(s.data)
    written = ingest([str(src)], root / "store", KEY, IngestOptions(progress=False, max_bytes=max_bytes)).written
    shutil.rmtree(root)
    return written


def _run_batch(mutants: list[fm.Mutant], root: Path, max_bytes: int, report: dict) -> None:
    src, store = root / "src", root / "store"
    src.mkdir(parents=True)
    for m in mutants:
        (src / m.name).write_bytes(m.data)
        report["by_source"][m.seed] += 1
        report["by_kind"][m.kind] += 1
        if m.detail:
            report["by_field"][m.detail.split(" (")[0]] += 1
    began = time.perf_counter()
    try:
        ingest([str(src)], store, KEY, IngestOptions(progress=False, max_bytes=max_bytes))
    except BaseException as exc:  # noqa: BLE001 - the point: report anything that escapes
        report["problems"]["uncaught"].append(f"{mutants[0].name}..{mutants[-1].name}: {type(exc).__name__}: {exc}"[:300])
        shutil.rmtree(root, ignore_errors=True)
        return
    report["slowest_batch_s"] = max(report["slowest_batch_s"], round(time.perf_counter() - began, 1))
    _check_outcomes(mutants, src, store, report)
    report["problems"]["partial"] += _partial_outputs(store)
    report["problems"]["bad_geometry"] += _bad_geometry(store)
    shutil.rmtree(root, ignore_errors=True)


def _check_outcomes(mutants: list[fm.Mutant], src: Path, store: Path, report: dict) -> None:
    """Each mutant's rows: by its source reference, or (NIfTI/NRRD, named by content) by the
    volume id of its bytes, which a byte-identical twin elsewhere in the batch may have taken."""
    pseudo = Pseudonymizer(KEY)
    rows: dict[str, list[str]] = {}
    for row in sv.rejected(store):
        rows.setdefault(row["source_ref"], []).append(row["code"])
        rows.setdefault(row["unit"], []).append(row["code"])
    for row in sv.volumes(store):
        rows.setdefault(row["source_ref"], []).append("written")
        rows.setdefault(row["volume_id"], []).append("written")
    for m in mutants:
        path = str(src / m.name)
        parts = [(SourceItem(path), m.data)] + [(SourceItem(path, name), data) for name, data in m.members]
        found: list[str] = []
        for item, data in parts:
            found += rows.get(ingest_work.source_ref(pseudo, item), []) or rows.get(
                ingest_work.volume_id_of_file(pseudo, hashlib.sha256(data).hexdigest()), [])
        if not found:
            report["problems"]["no_outcome"].append(f"{m.name} ({m.seed}, {m.kind} {m.detail})")
        if "internal_error" in found:
            report["problems"]["internal_error"].append(f"{m.name} ({m.seed}, {m.kind} {m.detail})")
        for code in sorted(set(found)):
            report["outcomes"][code] += 1


def _partial_outputs(store: Path) -> list[str]:
    wrong = [f"temporary {p.name}" for p in sv.temporaries(store)]
    rows = sv.volumes(store)
    named = set()
    for row in rows:
        path = store / row["path"]
        named.add(row["path"])
        if row.get("header_path"):
            named.add(row["header_path"])
            try:
                json.loads((store / row["header_path"]).read_text())
            except (OSError, ValueError):
                wrong.append(f"header {row['header_path']}")
        if not path.is_file() or not sv.is_complete_gzip(path) or sv.sha256(path) != row["sha256"]:
            wrong.append(f"volume file {row['path']}")
        elif nib.load(path).shape != tuple(json.loads(row["shape"])):
            wrong.append(f"volume shape {row['path']}")
    wrong += [f"unnamed {rel}" for rel in sv.files(store, "volumes") if str(rel) not in named]
    quarantined = set()
    for row in sv.rejected(store):
        if row["quarantine_path"]:
            quarantined.add(row["quarantine_path"])
            reason = store / row["quarantine_path"] / "reason.json"
            if not reason.is_file() or json.loads(reason.read_text())["code"] != row["code"]:
                wrong.append(f"quarantine {row['quarantine_path']}")
    folders = {f"quarantine/{p.name}" for p in (store / "quarantine").iterdir()}
    wrong += [f"unnamed {q}" for q in sorted(folders - quarantined)]
    return wrong


def _bad_geometry(store: Path) -> list[str]:
    wrong = []
    for row in sv.volumes(store):
        affine, spacing = np.array(json.loads(row["affine"]), float), np.array(json.loads(row["spacing"]), float)
        if not (np.isfinite(affine).all() and np.isfinite(spacing).all() and (spacing > 0).all()):
            wrong.append(f"{row['path']} spacing {spacing.tolist()}")
    return wrong


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--max-mb", type=float, default=32.0)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args(argv)
    report = run(args.count, args.seed, args.batch, args.max_mb, args.work, args.start)
    args.report.write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
