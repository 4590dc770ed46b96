"""A DICOMweb (QIDO-RS / WADO-RS) source for ingest: find series on a PACS, fetch them to disk.

A source is one URL, so the CLI and pipelines can name a PACS the way they name a folder::

    dicomweb+http://127.0.0.1:8042/dicom-web?modality=CT&study_date=20200101-20201231

Credentials never appear in the URL (it ends up in shell history, logs and configs): they come
from ``MEDSSL_DICOMWEB_TOKEN`` (bearer) or ``MEDSSL_DICOMWEB_USER`` +
``MEDSSL_DICOMWEB_PASSWORD`` (basic). Error messages name the server and an opaque reference
given by the caller, never a UID: UIDs are identifiers and must not leave ingest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medssl.atomic import atomic_writer
from medssl.errors import ConfigError, IngestError
from medssl.types import RejectReason

__all__ = ["DicomWebQuery", "RemoteSeries", "fetch_series", "list_series", "parse_dicomweb_source"]

log = logging.getLogger(__name__)

TOKEN_ENV = "MEDSSL_DICOMWEB_TOKEN"
USER_ENV = "MEDSSL_DICOMWEB_USER"
PASSWORD_ENV = "MEDSSL_DICOMWEB_PASSWORD"

_SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https"}
_QUERY_KEYS = ("modality", "study_date", "study", "series")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Ask for the stored transfer syntax: no server-side transcoding, the bytes the PACS holds.
_AS_STORED = (("application/dicom", "*"),)
_T = TypeVar("_T")

DateRange = tuple[dt.date | None, dt.date | None]


@dataclass(frozen=True)
class DicomWebQuery:
    """Where the server is and which series to take; the parsed form of a source URL."""

    base_url: str
    modality: str | None = None
    study_date_range: DateRange | None = None
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass(frozen=True)
class RemoteSeries:
    """One series the server holds, as QIDO-RS describes it."""

    study_uid: str
    series_uid: str
    modality: str | None
    n_instances: int | None


def parse_dicomweb_source(source: str) -> DicomWebQuery:
    """Parse ``dicomweb+http(s)://host[:port]/prefix?modality=..&study_date=..&study=..&series=..``.

    Raises ConfigError naming what is wrong; the message never repeats a password or UID.
    """
    scheme, sep, _ = source.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ConfigError("DICOMweb source must start with dicomweb+http:// or dicomweb+https://")
    parts = urlsplit(source)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "DICOMweb source URL must not carry credentials; set "
            f"{TOKEN_ENV} (bearer) or {USER_ENV} and {PASSWORD_ENV} (basic) instead"
        )
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise ConfigError("DICOMweb source URL has an invalid port") from None
    if not parts.hostname:
        raise ConfigError("DICOMweb source URL has no host")
    if parts.fragment:
        raise ConfigError("DICOMweb source URL must not have a #fragment")
    # netloc is host[:port] only: a URL with user info was refused above.
    base_url = f"{_SCHEMES[scheme.lower()]}://{parts.netloc}{parts.path.rstrip('/')}"

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            raise ConfigError(
                f"DICOMweb source: unknown parameter {key!r}; known: {', '.join(_QUERY_KEYS)}"
            )
        if key in params:
            raise ConfigError(f"DICOMweb source: parameter {key!r} given twice")
        if not value:
            raise ConfigError(f"DICOMweb source: parameter {key!r} is empty")
        params[key] = value

    modality = params["modality"].upper() if "modality" in params else None
    if modality is not None and not _MODALITY.match(modality):
        raise ConfigError("DICOMweb source: modality must be one DICOM modality code, e.g. CT")
    return DicomWebQuery(
        base_url=base_url,
        modality=modality,
        study_date_range=_parse_date_range(params.get("study_date")),
        study_uid=_check_uid("study", params.get("study")),
        series_uid=_check_uid("series", params.get("series")),
    )


def list_series(
    query: DicomWebQuery,
    *,
    page_size: int = 500,
    timeout_s: float = 30.0,
    attempts: int = 4,
    backoff_s: float = 0.5,
    env: Mapping[str, str] | None = None,
) -> list[RemoteSeries]:
    """Every series matching ``query``, found with QIDO-RS.

    Studies are searched first (date, study UID, ModalitiesInStudy), then the series of each
    study (Modality, series UID): every QIDO-RS server supports these two levels, while
    study-level keys on an all-series search are optional in the standard. Pages with
    limit/offset until the server returns nothing new, so a server-side cap loses nothing.
    Raises IngestError(FETCH) when the server stays unreachable, ConfigError on 401/403.
    """
    client = _client(query, timeout_s, env)
    dates = _qido_date_range(query.study_date_range) if query.study_date_range else None
    study_filters = _present(
        StudyInstanceUID=query.study_uid, ModalitiesInStudy=query.modality, StudyDate=dates
    )
    series_filters = _present(Modality=query.modality, SeriesInstanceUID=query.series_uid)

    def search_studies(limit: int, offset: int) -> list[dict]:
        return client.search_for_studies(search_filters=study_filters, limit=limit, offset=offset)

    found: dict[str, RemoteSeries] = {}
    retry = _Retry(attempts, backoff_s, ref="series search", base_url=query.base_url)
    studies = _paged(search_studies, page_size, "0020000D", retry)
    for study_uid in studies:

        def search_series(limit: int, offset: int, study_uid: str = study_uid) -> list[dict]:
            return client.search_for_series(
                study_instance_uid=study_uid,
                search_filters=series_filters,
                fields=["Modality", "NumberOfSeriesRelatedInstances"],
                limit=limit,
                offset=offset,
            )

        for series_uid, item in _paged(search_series, page_size, "0020000E", retry).items():
            modality, count = _first(item, "00080060"), _first(item, "00201209")
            n_instances = int(count) if count and count.isdigit() else None
            found[series_uid] = RemoteSeries(study_uid, series_uid, modality, n_instances)
    return list(found.values())


def fetch_series(
    query: DicomWebQuery,
    series: RemoteSeries,
    dest_dir: Path,
    *,
    ref: str = "series",
    timeout_s: float = 60.0,
    attempts: int = 4,
    backoff_s: float = 0.5,
    env: Mapping[str, str] | None = None,
) -> list[Path]:
    """WADO-RS retrieve every instance of ``series`` into ``dest_dir/{index:06d}.dcm``.

    Each file is a DICOM Part-10 file written atomically (temporary name, fsync,
    ``os.replace``), so an interrupted fetch never leaves a partial file under a final name.
    A transient failure (connection, timeout, 5xx) retries the whole series with
    exponential backoff; the last failure raises IngestError(FETCH) naming only ``ref``
    (an opaque reference the caller chooses) and the server. Returns the paths in order.
    """
    client = _client(query, timeout_s, env)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)

    def retrieve() -> list[Path]:
        paths: list[Path] = []
        instances = client.iter_series(series.study_uid, series.series_uid, media_types=_AS_STORED)
        for index, dataset in enumerate(instances):
            path = dest_dir / f"{index:06d}.dcm"
            _write_part10(dataset, path)
            paths.append(path)
        return paths

    retry = _Retry(attempts, backoff_s, ref=ref, base_url=query.base_url)
    try:
        paths = retry(retrieve)
    except InvalidDicomError:
        message = f"{ref}: server sent a part that is not DICOM"
        raise IngestError(RejectReason.MALFORMED, message) from None
    if not paths:
        raise IngestError(RejectReason.FETCH, f"{ref}: server returned no instances")
    _remove_stale(dest_dir, keep=len(paths))
    return paths


# -- plumbing ------------------------------------------------------------------------------


def _client(
    query: DicomWebQuery, timeout_s: float, env: Mapping[str, str] | None
) -> DICOMwebClient:
    """A client whose session carries the auth; our retry loop is the only one."""
    session = _session(query.base_url, os.environ if env is None else env)
    timeout = (min(5.0, timeout_s), timeout_s)  # (connect, read between bytes)
    client = DICOMwebClient(query.base_url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


def _session(base_url: str, env: Mapping[str, str]) -> requests.Session:
    """A requests.Session with bearer or basic auth taken from the environment."""
    token = env.get(TOKEN_ENV) or None
    user = env.get(USER_ENV) or None
    password = env.get(PASSWORD_ENV)
    session = requests.Session()
    if token and user:
        raise ConfigError(f"set either {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}, not both")
    if user and password is None:
        raise ConfigError(f"{USER_ENV} is set but {PASSWORD_ENV} is not")
    if password is not None and not user:
        raise ConfigError(f"{PASSWORD_ENV} is set but {USER_ENV} is not")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = requests.auth.HTTPBasicAuth(user, password or "")
    host = urlsplit(base_url).hostname or ""
    if (token or user) and base_url.startswith("http://") and not _is_loopback(host):
        log.warning("DICOMweb credentials are sent unencrypted to %s; use https", host)
    return session


class _Retry:
    """Run a call, retrying transient network failures with exponential backoff.

    Maps what remains to medssl errors with messages that carry no URL path or query
    (requests puts both, with UIDs, into its exception text).
    """

    def __init__(self, attempts: int, backoff_s: float, *, ref: str, base_url: str) -> None:
        if attempts < 1:
            raise ConfigError("DICOMweb attempts must be at least 1")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.ref = ref
        self.server = urlsplit(base_url).netloc

    def __call__(self, call: Callable[[], _T]) -> _T:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status in (401, 403):
                    raise ConfigError(
                        f"DICOMweb server {self.server} refused access (HTTP {status}); set "
                        f"{TOKEN_ENV} or {USER_ENV} and {PASSWORD_ENV}"
                    ) from None
                if status not in _TRANSIENT_STATUS:
                    raise IngestError(
                        RejectReason.FETCH, f"{self.ref}: {self.server} answered HTTP {status}"
                    ) from None
                reason = f"HTTP {status}"
            except requests.RequestException as exc:  # connection, timeout, broken stream
                reason = type(exc).__name__
            if attempt < self.attempts:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.info("%s: %s from %s, retry in %.1f s", self.ref, reason, self.server, delay)
                time.sleep(delay)
        raise IngestError(
            RejectReason.FETCH,
            f"{self.ref}: {self.server} failed after {self.attempts} attempts ({reason})",
        )


def _paged(
    search: Callable[[int, int], list[dict]], page_size: int, uid_tag: str, retry: _Retry
) -> dict[str, dict]:
    """All QIDO results keyed by UID; stops at an empty page or one with nothing new.

    A page shorter than the limit is not the end: servers may cap results below it.
    """
    results: dict[str, dict] = {}
    offset = 0
    while True:
        page = retry(lambda: search(page_size, offset))
        new = 0
        for item in page:
            uid = _first(item, uid_tag)
            if uid and uid not in results:
                results[uid] = item
                new += 1
        if not page or not new:  # a server ignoring offset would otherwise loop forever
            return results
        offset += len(page)


def _write_part10(dataset: Dataset, path: Path) -> None:
    """Write one instance as Part-10 under ``path`` without ever exposing a partial file."""
    with atomic_writer(path) as stream:
        dataset.save_as(stream, enforce_file_format=True)


def _remove_stale(dest_dir: Path, keep: int) -> None:
    """Drop numbered files from an earlier, longer attempt so the folder is one series."""
    for path in dest_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].dcm"):
        if int(path.stem) >= keep:
            path.unlink()


def _parse_date_range(text: str | None) -> DateRange | None:
    """``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-`` or ``-YYYYMMDD``."""
    if text is None:
        return None
    start_text, dash, end_text = text.partition("-")
    if not dash:
        end_text = start_text
    if not start_text and not end_text:
        raise ConfigError("DICOMweb source: study_date needs at least one date (YYYYMMDD)")
    start, end = _parse_date(start_text), _parse_date(end_text)
    if start and end and start > end:
        raise ConfigError("DICOMweb source: study_date range ends before it starts")
    return (start, end)


def _parse_date(text: str) -> dt.date | None:
    if not text:
        return None
    if len(text) == 8 and text.isdigit():
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(text, "%Y%m%d").date()
    raise ConfigError(f"DICOMweb source: study_date {text!r} is not a date in the form YYYYMMDD")


def _qido_date_range(date_range: DateRange) -> str:
    start, end = (f"{d:%Y%m%d}" if d else "" for d in date_range)
    return start if start and start == end else f"{start}-{end}"


def _check_uid(name: str, value: str | None) -> str | None:
    # The value is an identifier, so the message describes the rule instead of echoing it.
    if value is not None and (len(value) > 64 or not _UID.match(value)):
        raise ConfigError(
            f"DICOMweb source: {name} is not a DICOM UID (digits and dots, at most 64 characters)"
        )
    return value


def _present(**filters: str | None) -> dict[str, str]:
    return {key: value for key, value in filters.items() if value}


def _first(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
