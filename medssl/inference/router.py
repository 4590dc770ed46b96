"""Orthanc -> medssl-serve -> Orthanc: run inference on every new stable series.

Polls Orthanc's REST ``/changes`` for ``StableSeries`` events; for each new series downloads
``GET /series/{id}/archive`` (a zip of Part-10 files), posts it to medssl-serve
(``POST {serve}/v1/predict?outputs=seg,sr&format=zip``, multipart field ``file``, bearer
token from a file) and stores every DICOM object of the returned zip into Orthanc
(``POST /instances``). Derived modalities (SEG, SR, PR, ...) and anything medssl wrote
(Manufacturer ``medssl``) are skipped, so results never loop back.

A JSON state file, written atomically, holds the last handled change, the series given up
on (with the reason) and transient-failure counts, so a restart neither redoes nor skips a
series. Connection errors, timeouts and HTTP 408/429/5xx are retried with exponential
backoff; a series still failing after ``max_series_polls`` polls, or refused by the service
(4xx), is recorded as failed and skipped with one log line. Logs name series by Orthanc's
opaque id (a hash, not a DICOM UID) and never carry patient data; HTTP 401/403 stop the
router (a configuration error, not a series' fault).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import requests

from medssl.atomic import atomic_write_bytes
from medssl.errors import ConfigError, MedsslError

__all__ = ["Router", "RouterConfig", "RouterError", "RouterState", "dicom_members"]

log = logging.getLogger(__name__)

MEDSSL_MANUFACTURER = "medssl"  # what medssl.io.seg_writer / sr_writer write
SKIP_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC"})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESULT_BYTES = 2 << 30  # a result zip may not unpack to more than this
MAX_RESULT_MEMBERS = 10_000
OUTPUTS = ("seg", "sr", "json", "nifti")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_T = TypeVar("_T")


class RouterError(MedsslError):
    """One series cannot be routed; ``transient`` tells whether a later try may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RouterConfig:
    """Where the servers are and how hard to try. Secrets come from files, never flags."""

    orthanc_url: str
    serve_url: str
    state_file: Path
    orthanc_credentials_file: Path | None = None  # one line "user:password"
    token_file: Path | None = None  # medssl-serve's bearer token
    outputs: tuple[str, ...] = ("seg", "sr")
    poll_interval_s: float = 5.0
    timeout_s: float = 600.0  # one prediction may take minutes on a CPU
    attempts: int = 4  # per request, backoff_s * 2**n apart
    backoff_s: float = 2.0
    max_series_polls: int = 3  # polls a series may fail transiently before it is given up
    heartbeat_file: Path | None = None  # rewritten after every poll (container healthcheck)

    def __post_init__(self) -> None:
        for url in (self.orthanc_url, self.serve_url):
            if not re.match(r"^https?://[^/]", url):
                raise ConfigError(f"server URL must start with http(s)://, got {url!r}")
        if min(self.attempts, self.max_series_polls) < 1:
            raise ConfigError(f"attempts and max_series_polls must be >= 1, got "
                              f"{self.attempts} and {self.max_series_polls}")
        if min(self.poll_interval_s, self.timeout_s) <= 0 or self.backoff_s < 0:
            raise ConfigError("poll interval and timeout must be > 0, backoff >= 0")
        if not self.outputs or not set(self.outputs) <= set(OUTPUTS):
            raise ConfigError(f"outputs must be some of {', '.join(OUTPUTS)}; got {self.outputs}")


@dataclass
class RouterState:
    """What survives a restart (see the module docstring); keys are Orthanc series ids."""

    last_change: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason
    retries: dict[str, int] = field(default_factory=dict)  # id -> polls failed transiently

    @classmethod
    def load(cls, path: Path) -> RouterState:
        """The state in ``path``; a fresh one if the file does not exist yet."""
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"router state file {path} is unreadable ({type(exc).__name__}); "
                              "fix or remove it (removing it reprocesses every series)") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("last_change"), int):
            raise ConfigError(f"router state file {path} has no integer 'last_change'")
        return cls(raw["last_change"], dict(raw.get("failed", {})), dict(raw.get("retries", {})))

    def save(self, path: Path) -> None:
        data = {"last_change": self.last_change, "failed": self.failed, "retries": self.retries}
        atomic_write_bytes(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


class Router:
    """Polls one Orthanc and feeds one medssl-serve; see the module docstring.

    ``poll_once()`` and ``run()`` return a Counter of ``processed``, ``skipped``, ``failed``,
    ``deferred`` (to try again next poll) series and ``stored`` result objects.
    """

    def __init__(self, config: RouterConfig, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.state = RouterState.load(config.state_file)
        self._sleep = sleep
        self.orthanc = requests.Session()
        if config.orthanc_credentials_file is not None:
            user, sep, password = _read_secret(config.orthanc_credentials_file).partition(":")
            if not (sep and user):
                raise ConfigError(f"{config.orthanc_credentials_file}: expected 'user:password'")
            self.orthanc.auth = (user, password)
        self.serve = requests.Session()
        if config.token_file is not None:
            self.serve.headers["Authorization"] = f"Bearer {_read_secret(config.token_file)}"
        self._orthanc_url = config.orthanc_url.rstrip("/")
        self._serve_url = config.serve_url.rstrip("/")

    def run(self, stop: threading.Event | None = None, max_polls: int | None = None) -> Counter:
        """Poll every ``poll_interval_s`` until ``stop`` is set or ``max_polls`` polls ran."""
        stop = stop or threading.Event()
        total: Counter = Counter()
        polls = 0
        while not stop.is_set() and (max_polls is None or polls < max_polls):
            try:
                total.update(self.poll_once())
            except RouterError as err:  # Orthanc unreachable: the next poll tries again
                log.warning("poll failed: %s", err)
            polls += 1
            if max_polls is None or polls < max_polls:
                stop.wait(self.config.poll_interval_s)
        return total

    def poll_once(self) -> Counter:
        """Handle every change Orthanc reports after the last handled one."""
        stats: Counter = Counter()
        try:
            while True:
                page = self._orthanc_json(f"/changes?since={self.state.last_change}&limit=100")
                for change in page.get("Changes", []):
                    stable = change.get("ChangeType") == "StableSeries"
                    if stable and not self._handle(str(change["ID"]), stats):
                        return stats  # deferred: this change comes back next poll
                    self.state.last_change = int(change["Seq"])
                    if stable:
                        self.state.save(self.config.state_file)
                self.state.last_change = max(self.state.last_change, int(page.get("Last", 0)))
                if page.get("Done", True):
                    return stats
        finally:
            self.state.save(self.config.state_file)
            if self.config.heartbeat_file is not None:
                atomic_write_bytes(self.config.heartbeat_file, f"{time.time():.0f}\n".encode())

    def _handle(self, series_id: str, stats: Counter) -> bool:
        """Route one series; False when it failed transiently and is to be tried again."""
        if series_id in self.state.failed:
            stats["skipped"] += 1
            return True
        started = time.monotonic()
        try:
            reason = self._skip_reason(series_id)
            stored = 0 if reason else self._route(series_id)
        except RouterError as err:
            polls = self.state.retries.pop(series_id, 0) + 1
            if err.transient and polls < self.config.max_series_polls:
                self.state.retries[series_id] = polls
                log.warning("series %s: %s; retry next poll (%d of %d)", series_id, err, polls,
                            self.config.max_series_polls)
                stats["deferred"] += 1
                return False
            self.state.failed[series_id] = str(err)
            log.error("series %s: failed, skipped: %s", series_id, err)
            stats["failed"] += 1
            return True
        self.state.retries.pop(series_id, None)
        if reason:
            log.info("series %s: skipped (%s)", series_id, reason)
            stats["skipped"] += 1
        else:
            log.info("series %s: stored %d result object(s) in %.1f s", series_id, stored,
                     time.monotonic() - started)
            stats["processed"] += 1
            stats["stored"] += stored
        return True

    def _skip_reason(self, series_id: str) -> str:
        tags = self._orthanc_json(f"/series/{series_id}").get("MainDicomTags", {})
        modality = str(tags.get("Modality", "")).upper()
        if modality in SKIP_MODALITIES:
            return f"modality {modality}"
        if str(tags.get("Manufacturer", "")).strip() == MEDSSL_MANUFACTURER or str(
            tags.get("SeriesDescription", "")
        ).startswith(f"{MEDSSL_MANUFACTURER} "):
            return "written by medssl"
        return ""

    def _route(self, series_id: str) -> int:
        """Download, predict, store back; returns the number of objects stored."""
        with tempfile.TemporaryFile(prefix="medssl-router-") as archive:
            self._retry(lambda: self._download(series_id, archive), "downloading the series")
            result = self._retry(lambda: self._predict(archive), "prediction")
        members = dicom_members(result)
        if not members:
            raise RouterError("the service returned no DICOM object", transient=False)
        for data in members:
            self._retry(lambda data=data: self._store(data), "storing a result in Orthanc")
        return len(members)

    def _download(self, series_id: str, sink: BinaryIO) -> None:
        sink.seek(0)
        sink.truncate()
        url = f"{self._orthanc_url}/series/{series_id}/archive"
        with self.orthanc.get(url, stream=True, timeout=(5, self.config.timeout_s)) as response:
            _raise_for_status(response, "Orthanc")
            sink.writelines(response.iter_content(1 << 20))

    def _predict(self, archive: BinaryIO) -> bytes:
        archive.seek(0)
        response = self.serve.post(
            f"{self._serve_url}/v1/predict",
            params={"outputs": ",".join(self.config.outputs), "format": "zip"},
            files={"file": ("series.zip", archive, "application/zip")},
            timeout=(5, self.config.timeout_s),
        )
        _raise_for_status(response, "medssl-serve")
        return response.content

    def _store(self, data: bytes) -> None:
        response = self.orthanc.post(f"{self._orthanc_url}/instances", data=data,
                                     headers={"Content-Type": "application/dicom"},
                                     timeout=(5, self.config.timeout_s))
        _raise_for_status(response, "Orthanc")

    def _orthanc_json(self, path: str) -> dict:
        def call() -> dict:
            response = self.orthanc.get(f"{self._orthanc_url}{path}", timeout=(5, 60))
            _raise_for_status(response, "Orthanc")
            return response.json()

        return self._retry(call, f"Orthanc /{path.split('?')[0].split('/')[1]}")

    def _retry(self, call: Callable[[], _T], what: str) -> _T:
        """``call()``, retried on transient failures; messages carry no URL (it holds ids)."""
        reason = ""
        for attempt in range(1, self.config.attempts + 1):
            try:
                return call()
            except RouterError as err:
                if not err.transient:
                    raise RouterError(f"{what}: {err}", transient=False) from None
                reason = str(err)
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = type(exc).__name__
            except (requests.RequestException, ValueError) as exc:  # ValueError: bad JSON
                raise RouterError(f"{what}: {type(exc).__name__}", transient=False) from None
            if attempt < self.config.attempts:
                self._sleep(self.config.backoff_s * 2 ** (attempt - 1))
        raise RouterError(f"{what}: {reason} after {self.config.attempts} attempts",
                          transient=True)


def dicom_members(zip_bytes: bytes) -> list[bytes]:
    """The Part-10 files inside a result zip (JSON, NIfTI and the like are left out).

    Raises RouterError for bytes that are not a zip, or a zip beyond the size bounds.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            too_big = sum(info.file_size for info in infos) > MAX_RESULT_BYTES
            if too_big or len(infos) > MAX_RESULT_MEMBERS:
                raise RouterError("the result zip exceeds the size bounds", transient=False)
            members = [archive.read(info) for info in infos]
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise RouterError(f"the result is not a zip ({type(exc).__name__})",
                          transient=False) from None
    return [data for data in members if len(data) >= 132 and data[128:132] == b"DICM"]


def _raise_for_status(response: requests.Response, server: str) -> None:
    """HTTP errors as RouterError, quoting the server's error code only (never its text)."""
    status = response.status_code
    if status < 400:
        return
    if status in (401, 403):
        raise ConfigError(f"{server} refused the router's credentials (HTTP {status}); "
                          "check the secret files")
    code = ""
    try:
        body = response.json()
        error = str(body.get("error", "")) if isinstance(body, dict) else ""
        code = f" ({error})" if _ERROR_CODE.match(error) else ""
    except ValueError:
        pass
    raise RouterError(f"{server} answered HTTP {status}{code}",
                      transient=status in TRANSIENT_STATUS)


def _read_secret(path: Path) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"secret file {path}: {exc.strerror or type(exc).__name__}") from None
    if not value:
        raise ConfigError(f"secret file {path} is empty")
    return value
