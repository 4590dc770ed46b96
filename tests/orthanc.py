"""A real Orthanc (with its DICOMweb plugin) for tests, started from a JSON config in a tmp dir.

Tests talk to the real server rather than a mock, so QIDO/WADO quirks, multipart parsing and
auth are exercised as at a hospital. Fixtures:

- ``orthanc``: one open server for the whole session::

      @pytest.mark.orthanc
      def test_x(orthanc):
          orthanc.upload(pydicom.data.get_testdata_file("CT_small.dcm"))
          requests.get(f"{orthanc.dicomweb_url}/studies")

- ``orthanc_factory``: start more servers with other settings (stopped at session end)::

      server = orthanc_factory(users={"alice": "secret"})  # basic auth required
      server = orthanc_factory(config={"StableAge": 1})    # any Orthanc option, over the defaults

Skips with a reason where the Debian packages ``orthanc`` / ``orthanc-dicomweb`` are absent.
Orthanc has no bind-address option; ``RemoteAccessAllowed: false`` keeps it to loopback
callers, and the server is stopped by its own PID, never by name.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests

ORTHANC_BINARY = os.environ.get("MEDSSL_TEST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get(
    "MEDSSL_TEST_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)
START_TIMEOUT_S = 30.0


class OrthancServer:
    """One Orthanc process: its URLs, an uploader and a clean stop."""

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, config: dict | None = None
    ) -> None:
        self.workdir = workdir
        self.users = users
        self.extra_config = dict(config or {})
        self.auth = next(iter(users.items())) if users else None
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def source(self) -> str:
        """The medssl source URL of this server (``dicomweb+http://…/dicom-web``)."""
        return f"dicomweb+{self.dicomweb_url}"

    def start(self) -> None:
        """Start on a free port; retry with a new port if another process took it first."""
        for _ in range(3):
            self.port = _free_port()
            config = self.workdir / "orthanc.json"
            config.write_text(json.dumps(self._config(), indent=2))
            log = (self.workdir / "orthanc.log").open("ab")
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"Orthanc did not start; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate by PID, kill if it does not exit in 10 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def upload(self, data: str | os.PathLike[str] | bytes | pydicom.Dataset) -> dict:
        """POST one DICOM instance (file path, Part-10 bytes or dataset) to ``/instances``."""
        if isinstance(data, pydicom.Dataset):
            buffer = io.BytesIO()
            data.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        elif not isinstance(data, bytes):
            data = Path(data).read_bytes()
        response = requests.post(
            f"{self.url}/instances",
            data=data,
            headers={"Content-Type": "application/dicom"},
            auth=self.auth,
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        """Delete every patient, so a test can start from an empty archive."""
        patients = requests.get(f"{self.url}/patients", auth=self.auth, timeout=10)
        patients.raise_for_status()
        for patient in patients.json():
            requests.delete(
                f"{self.url}/patients/{patient}", auth=self.auth, timeout=10
            ).raise_for_status()

    def log_tail(self, n_chars: int = 4000) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-n_chars:] if path.exists() else ""

    def _config(self) -> dict:
        return {
            "Name": "medssl-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users or {}),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **self.extra_config,
        }

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited: port taken or bad config; the log says which
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _skip_if_missing() -> None:
    if not (Path(ORTHANC_BINARY).is_file() or shutil.which(ORTHANC_BINARY)):
        pytest.skip(f"Orthanc binary not found at {ORTHANC_BINARY} (apt-get install orthanc)")
    if not Path(DICOMWEB_PLUGIN).is_file():
        pytest.skip(
            f"Orthanc DICOMweb plugin not found at {DICOMWEB_PLUGIN} "
            "(apt-get install orthanc-dicomweb)"
        )


@pytest.fixture(scope="session")
def orthanc_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc servers on demand: ``orthanc_factory(users={"u": "p"}, config={...})``."""
    _skip_if_missing()
    servers: list[OrthancServer] = []

    def start(users: dict[str, str] | None = None, config: dict | None = None) -> OrthancServer:
        server = OrthancServer(tmp_path_factory.mktemp("orthanc"), users=users, config=config)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """One Orthanc without authentication, shared by the whole session."""
    return orthanc_factory()
