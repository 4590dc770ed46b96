"""Settings, the serve command's checks, STOW-RS reports and the upload parser, without a server."""

from __future__ import annotations

import asyncio
import os

import pytest

from medssl.errors import ConfigError
from medssl.inference.predictor import InputError, PredictionRequest
from medssl.inference.server.cli import build_parser, serve_main, settings_from_args
from medssl.inference.server.jobs import safe_name
from medssl.inference.server.responses import ApiError
from medssl.inference.server.settings import (
    ServerSettings,
    StowTarget,
    read_stow_target,
    read_token,
)
from medssl.inference.server.stow import store_outputs
from medssl.inference.server.uploads import receive_upload
from tests.inference.server.payloads import dicom_series

TOKEN = "x" * 24


def test_token_from_file_wins_over_env(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    assert read_token({"MEDSSL_SERVE_TOKEN": "other" * 5}, path) == TOKEN
    assert read_token({"MEDSSL_SERVE_TOKEN_FILE": str(path)}) == TOKEN
    assert read_token({"MEDSSL_SERVE_TOKEN": "y" * 20}) == "y" * 20
    assert read_token({}) is None


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_token_file_is_refused(tmp_path, content):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match="empty"):
        read_token({}, path)


def test_settings_refuse_short_tokens_and_bad_limits():
    with pytest.raises(ConfigError, match="at least 16"):
        ServerSettings(token="short")
    with pytest.raises(ConfigError, match="max_concurrent"):
        ServerSettings(max_concurrent=0)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        ServerSettings(request_timeout_s=0)
    assert TOKEN not in repr(ServerSettings(token=TOKEN))


def test_stow_target_from_env_keeps_secrets_out_of_repr():
    target = read_stow_target({"MEDSSL_STOW_URL": "http://pacs/dicom-web/", "MEDSSL_STOW_USER": "u", "MEDSSL_STOW_PASSWORD": "pw-secret"})
    assert target.url == "http://pacs/dicom-web" and "pw-secret" not in repr(target)
    with pytest.raises(ConfigError, match="not both"):
        read_stow_target({"MEDSSL_STOW_URL": "http://p", "MEDSSL_STOW_TOKEN": "t", "MEDSSL_STOW_USER": "u"})
    with pytest.raises(ConfigError, match="http"):
        read_stow_target({}, "ftp://pacs")
    assert read_stow_target({}) is None


def test_serve_refuses_to_start_without_a_token_or_off_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSSL_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("MEDSSL_SERVE_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigError, match="no API token"):
        serve_main(["--model", str(tmp_path)])
    with pytest.raises(ConfigError, match="loopback"):
        serve_main(["--model", str(tmp_path), "--no-auth", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="not a folder"):
        serve_main(["--model", str(tmp_path / "missing"), "--no-auth"])
    args = build_parser().parse_args(["--model", str(tmp_path), "--max-upload-gb", "0.5", "--max-concurrent", "3"])
    settings = settings_from_args(args, {"MEDSSL_SERVE_TOKEN": TOKEN})
    assert settings.max_upload_bytes == 1 << 29 and settings.max_concurrent == 3 and settings.token == TOKEN


def test_failed_stow_is_a_report_not_an_exception(tmp_path):
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom_series(1)[0])
    report = store_outputs(StowTarget("http://127.0.0.1:9", timeout_s=2), [path])
    assert report["status"] == "failed" and "ConnectionError" in report["detail"]
    assert store_outputs(StowTarget("http://127.0.0.1:9"), [])["status"] == "skipped"


@pytest.mark.orthanc
def test_stow_stores_dicom_outputs_in_a_real_pacs(orthanc, tmp_path):
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom_series(1)[0])
    report = store_outputs(StowTarget(orthanc.dicomweb_url), [path])
    assert report == {"status": "stored", "instances": 1}


def test_prediction_request_checks_its_fields(tmp_path):
    with pytest.raises(InputError, match="no input"):
        PredictionRequest(())
    with pytest.raises(InputError, match="unknown outputs"):
        PredictionRequest((tmp_path,), outputs=frozenset({"exe"}))


@pytest.mark.parametrize("name,expected", [("../../etc/passwd", "passwd"), ("..", "output-3"), ("a b;c.nii.gz", "a_b_c.nii.gz"), ("", "output-3")])
def test_output_names_are_made_safe(name, expected):
    assert safe_name(name, 3) == expected


async def _chunks(data: bytes, size: int = 7):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _receive(body: bytes, content_type: str, folder, **caps):
    caps = {"max_files": 4, "max_header_bytes": 1024, **caps}
    return asyncio.run(receive_upload(_chunks(body), content_type, folder, **caps))


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "BB") -> bytes:
    out = b""
    for name, data in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="../x"\r\n\r\n'.encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_parts_are_written_by_number_and_sniffed_extension(tmp_path):
    blobs = dicom_series(2)
    paths = _receive(_multipart([("file", b) for b in blobs]), "multipart/form-data; boundary=BB", tmp_path)
    assert [p.name for p in paths] == ["input-00001.dcm", "input-00002.dcm"]
    assert [p.read_bytes() for p in paths] == blobs
    assert sorted(os.listdir(tmp_path)) == ["input-00001.dcm", "input-00002.dcm"]


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (_multipart([("file", b"x")] * 5), "multipart/form-data; boundary=BB", 413),
        (_multipart([("other", b"x")]), "multipart/form-data; boundary=BB", 422),
        (b"--BB\r\nX: " + b"a" * 2000 + b"\r\n\r\nx\r\n--BB--\r\n", "multipart/form-data; boundary=BB", 400),
        (_multipart([("file", b"x")])[:-8], "multipart/form-data; boundary=BB", 400),
        (_multipart([("file", b"")]), "multipart/form-data; boundary=BB", 422),
        (b"", "multipart/form-data", 400),
        (b"abc", "text/plain", 415),
    ],
    ids=["too-many-files", "other-field", "header-bomb", "unterminated", "empty-file", "no-boundary", "text"],
)
def test_upload_refusals(tmp_path, body, content_type, status):
    with pytest.raises(ApiError) as info:
        _receive(body, content_type, tmp_path)
    assert info.value.status in (status, 431) if status == 400 else info.value.status == status
