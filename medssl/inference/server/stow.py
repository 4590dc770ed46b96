"""Optional STOW-RS of a prediction's DICOM outputs (SEG, SR) to a configured PACS.

A failed store never fails the prediction: it is logged in one line and reported in the
response as ``{"status": "failed", "detail": ...}``. Messages carry the exception type and
HTTP status only (request URLs can hold study UIDs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from medssl.inference.server.settings import StowTarget

log = logging.getLogger("medssl.serve")


def _session(target: StowTarget) -> requests.Session:
    session = requests.Session()
    if target.token:
        session.headers["Authorization"] = f"Bearer {target.token}"
    elif target.user:
        session.auth = requests.auth.HTTPBasicAuth(target.user, target.password or "")
    return session


def store_outputs(target: StowTarget, files: list[Path]) -> dict[str, Any]:
    """STOW-RS ``files`` (DICOM Part 10) to ``target``; a report, never an exception."""
    if not files:
        return {"status": "skipped", "instances": 0, "detail": "no DICOM outputs"}
    try:
        datasets = [pydicom.dcmread(path) for path in files]
        client = DICOMwebClient(target.url, session=_session(target), timeout=target.timeout_s)
        client.set_http_retry_params(retry=False)
        client.store_instances(datasets)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        log.warning("STOW-RS of %d instances refused: HTTP %s", len(files), code)
        return {"status": "failed", "instances": len(files), "detail": f"PACS answered HTTP {code}"}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
        log.warning("STOW-RS of %d instances failed: %s", len(files), type(exc).__name__)
        return {
            "status": "failed",
            "instances": len(files),
            "detail": f"STOW-RS failed ({type(exc).__name__})",
        }
    return {"status": "stored", "instances": len(files)}
