"""``medssl ingest``: sources -> validated, de-identified, canonical volumes in a store.

Two passes over each batch of files. Pass 1 (parallel) reads headers and sniffs formats;
the main process then groups DICOM images into stacks and decides which units are new.
Pass 2 (parallel, a bounded number in flight so memory stays bounded) converts each unit
and writes its files atomically; the main process records each outcome in the manifest
as it arrives. A unit already in the manifest with its file present is skipped, so a
rerun writes nothing and an interrupted run resumes where it stopped.

Local sources form one batch (a series may be spread over folders and archives); each
remote DICOMweb series is fetched into a private temporary folder and is its own batch.

With a label table (``IngestOptions.labels``, docs/labels.md) the table's images join the
local sources, its masks and support files are never taken for images, and after the batch
each case is linked to its volume and its labels written (``label_ingest``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medssl.atomic import remove_stale_temporaries
from medssl.deid import DeidOptions, Pseudonymizer
from medssl.errors import ConfigError, IngestError
from medssl.io.dicom_stack import build_stacks
from medssl.io.nifti import MAX_VOLUME_BYTES
from medssl.io.sources import MAX_ZIP_MEMBERS, BadItem, FileFormat, SourceItem, iter_source_items
from medssl.progress import Progress
from medssl.store import ingest_work as work
from medssl.store.label_ingest import ingest_labels
from medssl.store.label_table import LabelTable, read_label_table
from medssl.store.manifest import Manifest
from medssl.store.workers import Job, WorkerPool
from medssl.types import IrregularPolicy, RejectReason, SourceKind

log = logging.getLogger("medssl.ingest")
KEY_CHECK = "medssl-key-check"
FILE_REFUSALS_PER_COMMIT = 500


@dataclass(frozen=True)
class IngestOptions:
    workers: int = 1
    irregular: IrregularPolicy = IrregularPolicy.REJECT
    allow_burned_in: bool = False
    skip_localizers: bool = False  # localizers/scouts: stored as 2D images unless skipped
    deid: DeidOptions = field(default_factory=DeidOptions)
    max_bytes: int = MAX_VOLUME_BYTES
    progress: bool = True
    volume_modality: str | None = None  # NIfTI/NRRD carry no modality: what to record for them
    labels: Path | None = None  # a label table (YAML/CSV): its images are ingested, then its labels
    follow_links: bool = False  # read symbolic links to files outside the given sources too
    max_zip_members: int = MAX_ZIP_MEMBERS  # an archive with more entries is refused whole (one row)


@dataclass
class IngestSummary:
    written: int = 0
    skipped: int = 0
    rejected: Counter = field(default_factory=Counter)
    files: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    labels_written: int = 0
    labels_skipped: int = 0
    labels_rejected: int = 0  # also counted by code in ``rejected`` (label_* codes)

    def add(self, other: IngestSummary) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.rejected.update(other.rejected)
        self.files += other.files
        self.bytes_written += other.bytes_written
        self.labels_written += other.labels_written
        self.labels_skipped += other.labels_skipped
        self.labels_rejected += other.labels_rejected


def ingest(sources: Iterable[str | Path], store: Path, key: bytes, options: IngestOptions = IngestOptions()) -> IngestSummary:
    """Ingest every source into ``store``; never raises for bad input, only for bad setup."""
    start = time.perf_counter()
    table = read_label_table(options.labels) if options.labels is not None else None
    sources = [str(s) for s in sources]
    local = [s for s in sources if not s.startswith("dicomweb+")]
    remote = [s for s in sources if s.startswith("dicomweb+")]
    for index, source in enumerate(local):
        if not Path(source).exists():  # the path is not echoed: folder names may name patients
            raise ConfigError(f"local source {index + 1} of {len(local)} does not exist")
    store = Path(store)
    for sub, mode in (("", 0o755), ("volumes", 0o755), ("quarantine", 0o700)):
        (store / sub).mkdir(mode=mode, parents=True, exist_ok=True)
        remove_stale_temporaries(store / sub)
    pseudo = Pseudonymizer(key)
    ctx = work.WorkContext(str(store), key, options.deid, options.irregular, options.allow_burned_in, options.max_bytes, options.volume_modality, options.skip_localizers)
    work.init_worker(ctx)  # the main process also quarantines and names things
    summary = IngestSummary()
    with Manifest(store / "manifest.sqlite") as manifest, Progress(enabled=options.progress) as progress:
        _check_key(manifest, pseudo)
        with WorkerPool(options.workers, work.init_worker, (ctx,)) as pool:
            scans: dict = {}
            if local or table is not None:
                items, modalities = _local_items(local, table, manifest, summary, options)
                summary.add(_batch(items, lambda item: SourceKind.DICOM_ZIP if item.in_zip else SourceKind.DICOM_FILES, manifest, pool, pseudo, options, progress, scans, modalities))
            if table is not None:
                labelled = ingest_labels(table, manifest, pseudo, scans, options.max_bytes)
                summary.labels_written, summary.labels_skipped = labelled.written, labelled.skipped
                summary.labels_rejected = sum(labelled.rejected.values())
                summary.rejected.update(labelled.rejected)
            for source in remote:
                summary.add(_remote(source, manifest, pool, pseudo, options, progress))
    summary.seconds = time.perf_counter() - start
    return summary


def _local_items(local: list[str], table: LabelTable | None, manifest: Manifest, summary: IngestSummary, options: IngestOptions) -> tuple[list[SourceItem], dict[tuple[str, str], str]]:
    """Every file of the local sources and the table's images, once each, masks left out; and
    the modality the table gives the files under a case image (NIfTI/NRRD carry none)."""
    roots = local + ([str(case.image) for case in table.cases] if table is not None else [])
    not_images = table.non_images() if table is not None else set()
    given = table.image_modalities() if table is not None else {}
    items, seen, refused, modalities = [], set(), [], {}
    for source in roots:
        modality = given.get(os.path.realpath(source))
        for entry in iter_source_items(source, roots=roots, follow_links=options.follow_links, max_zip_members=options.max_zip_members):
            item = entry.item if isinstance(entry, BadItem) else entry
            key = work.item_key(item)
            if modality is not None:  # also when a plain source listed the same file first
                modalities[key] = modality
            if key in seen or (not item.member and key[0] in not_images):
                continue
            seen.add(key)
            if isinstance(entry, BadItem):
                refused.append(work.reject_file(entry.item, entry.error))
            else:
                items.append(entry)
    _record_files(manifest, refused, summary)
    return items, modalities


def _check_key(manifest: Manifest, pseudo: Pseudonymizer) -> None:
    check = pseudo.token(KEY_CHECK, "keycheck")
    stored = manifest.get_meta("key_check")
    if stored is None:
        manifest.set_meta("key_check", check)
    elif stored != check:
        raise ConfigError("this store was written with a different key file: its pseudonyms would not match; use the original key or a new store")


def _batch(items: list[SourceItem], kind_of: Callable[[SourceItem], SourceKind], manifest: Manifest, pool: WorkerPool, pseudo: Pseudonymizer, options: IngestOptions, progress: Progress, scans_out: dict | None = None, modalities: dict[tuple[str, str], str] | None = None) -> IngestSummary:
    summary = IngestSummary(files=len(items))
    modalities = modalities or {}
    records, files = [], []
    task = progress.task("scanning", total=len(items))
    scans, refused = [(work.scan_item, (item,)) for item in items], []
    for scan in pool.run(scans, options.workers * 4, _crashed, ordered=True):
        progress.advance(task)
        if scans_out is not None:  # label linking reuses the scans instead of reading again
            scans_out[work.item_key(scan.item)] = scan
        if len(refused) >= FILE_REFUSALS_PER_COMMIT:
            _record_files(manifest, refused, summary)
            refused = []
        if scan.error is not None:
            refused.append(work.reject_file(scan.item, scan.error))
        elif scan.fmt == FileFormat.DICOM:
            records.extend(scan.records)
        else:
            files.append(scan)
    _record_files(manifest, refused, summary)
    stacks, failed = build_stacks(records)
    jobs: list[Job] = []
    for group, err in failed:
        jobs.append((work.reject_records, (group, err, pseudo.token(repr(sorted(r.sop_uid for r in group)), "volume"))))
    for stack in stacks:
        vid = work.volume_id_of_stack(pseudo, stack)
        digest = pseudo.token(repr(sorted(r.sop_uid for r in stack.records)), "instances")
        if not _done(manifest, vid, digest, summary):
            jobs.append((work.convert_stack, (stack, vid, kind_of(stack.first.item), digest)))
    for scan in files:
        vid = work.volume_id_of_file(pseudo, scan.sha256)
        if not _done(manifest, vid, vid, summary):
            jobs.append((work.convert_file, (scan.item, scan.fmt, vid, modalities.get(work.item_key(scan.item)))))
    task = progress.task("converting", total=len(jobs))
    for outcome in pool.run(jobs, max(2, options.workers * 2), _crashed):
        progress.advance(task)
        _record(manifest, outcome, summary)
    return summary


def _remote(source: str, manifest: Manifest, pool: WorkerPool, pseudo: Pseudonymizer, options: IngestOptions, progress: Progress) -> IngestSummary:
    from medssl.io import dicomweb  # only remote ingests need the HTTP client

    query = dicomweb.parse_dicomweb_source(source)
    summary = IngestSummary()
    try:
        series_list = dicomweb.list_series(query)
    except IngestError as err:  # server down: record it, the other sources still run
        ref = pseudo.token(f"{query.base_url}", "remote-source")
        _record(manifest, work.Outcome("rejected", ref, "remote-source", code=str(err.code), message=err.message), summary)
        return summary
    for index, series in enumerate(series_list):
        ref = pseudo.token(f"{series.study_uid}/{series.series_uid}", "remote-series")
        if manifest.source_done(ref):
            continue
        staging = Path(tempfile.mkdtemp(prefix="medssl-fetch-"))  # private (0700), outside the store
        try:
            try:
                paths = dicomweb.fetch_series(query, series, staging, ref=f"{index + 1} of {len(series_list)}")
            except IngestError as err:
                _record(manifest, work.Outcome("rejected", ref, "remote-series", code=str(err.code), message=err.message), summary)
                continue
            items = [SourceItem(str(p)) for p in paths]
            summary.add(_batch(items, lambda _item: SourceKind.DICOMWEB, manifest, pool, pseudo, options, progress))
            manifest.mark_source_done(ref)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def _crashed(job: Job):
    """What a unit becomes when the worker converting it dies (decoder crash, out of memory)."""
    fn, args = job
    err = IngestError(RejectReason.INTERNAL, "worker process died on this input (decoder crash or out of memory)")
    if fn is work.scan_item:
        return work.Scan(args[0], FileFormat.UNKNOWN, error=err)
    if fn is work.convert_stack:
        item, unit = args[0].first.item, args[1]
    elif fn is work.convert_file:
        item, unit = args[0], args[2]
    else:  # reject_records
        item, unit = args[0][0].item, args[2]
    return work.Outcome("rejected", work.source_ref(work._PSEUDO, item), unit, code=str(err.code), message=err.message)


def _done(manifest: Manifest, volume_id: str, digest: str, summary: IngestSummary) -> bool:
    """Already converted from the same instances, and its file is there."""
    row = manifest.volume(volume_id)
    if row is not None and row.source_digest == digest and (Path(manifest.path).parent / row.path).is_file():
        summary.skipped += 1
        return True
    return False


def _record(manifest: Manifest, outcome: work.Outcome, summary: IngestSummary) -> None:
    if outcome.kind == "volume":
        manifest.add_volume(outcome.row)
        manifest.clear_rejected(outcome.source_ref, outcome.unit)
        summary.written += 1
        summary.bytes_written += int(outcome.row.get("nbytes") or 0)
    else:
        if manifest.add_rejected(outcome.source_ref, outcome.unit, outcome.code, outcome.message, outcome.quarantine_path):
            log.warning("rejected %s [%s] %s", outcome.source_ref[:12], outcome.code, outcome.message)
        summary.rejected[outcome.code] += 1


def _record_files(manifest: Manifest, outcomes: list[work.Outcome], summary: IngestSummary) -> None:
    """File refusals in one transaction. A rerun's scan finds them again, so a kill loses
    nothing that matters, and one commit (fsync) per row made a zip of junk cost 3 ms a member."""
    added = manifest.add_rejected_many([(o.source_ref, o.unit, o.code, o.message, o.quarantine_path) for o in outcomes])
    for outcome, new in zip(outcomes, added):
        if new:
            log.warning("rejected %s [%s] %s", outcome.source_ref[:12], outcome.code, outcome.message)
        summary.rejected[outcome.code] += 1


def locate(ref: str, sources: Iterable[str], key: bytes) -> list[str]:
    """Local files whose opaque source reference starts with ``ref`` (for the key holder only)."""
    pseudo = Pseudonymizer(key)
    found, sources = [], [str(s) for s in sources]
    for source in sources:
        for entry in iter_source_items(source, roots=sources):  # refused items too: nothing is read
            item = entry.item if isinstance(entry, BadItem) else entry
            archive = SourceItem(item.path) if item.member else None  # an archive refused whole under another bound
            if work.source_ref(pseudo, item).startswith(ref):
                found.append(item.path + (f" :: {item.member}" if item.member else ""))
            elif archive is not None and item.path not in found and work.source_ref(pseudo, archive).startswith(ref):
                found.append(item.path)
    return found
