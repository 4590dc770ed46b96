"""``/openapi.json`` and ``/docs``: behind the token, switchable off, and true to the routes."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute

from medssl.inference.predictor import OUTPUT_KINDS
from medssl.inference.server import ServerSettings, create_app
from medssl.inference.server.cli import build_parser, settings_from_args
from tests.inference.server.conftest import AUTH, TOKEN
from tests.inference.server.payloads import dicom_series, multipart_files
from tests.inference.server.threshold_predictor import ThresholdPredictor

ROUTES = {"/live", "/ready", "/metrics", "/v1/models", "/v1/predict"}
DOC_PATHS = ["/openapi.json", "/docs"]


@pytest.fixture(scope="module")
def schema(server) -> dict:
    r = httpx.get(server.url + "/openapi.json", headers=AUTH)
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def no_docs_server(server_factory):
    running = server_factory({"settings": {"api_docs": False}})
    assert running.wait_ready().status_code == 200
    return running


@pytest.mark.parametrize("path", DOC_PATHS)
def test_docs_need_the_token(server, path):
    missing = httpx.get(server.url + path)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert wrong.status_code == 403
    assert httpx.get(server.url + path, headers=AUTH).status_code == 200


def test_docs_page_loads_the_schema(server):
    page = httpx.get(server.url + "/docs", headers=AUTH)
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in page.text and "/openapi.json" in page.text


def test_schema_lists_exactly_the_routes_the_app_serves(schema):
    assert set(schema["paths"]) == ROUTES
    app = create_app(ThresholdPredictor, ServerSettings(token=TOKEN))
    served = {r.path for r in app.routes if r.path not in DOC_PATHS}
    assert served == ROUTES
    assert all(isinstance(r, APIRoute) for r in app.routes if r.path in ROUTES)


def test_schema_describes_the_predict_upload_and_options(schema):
    operation = schema["paths"]["/v1/predict"]["post"]
    assert operation["summary"]
    body = operation["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"]["items"] == {"type": "string", "format": "binary"}
    assert {"application/dicom", "application/zip", "application/octet-stream"} <= set(body)
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"outputs", "format", "modality"}
    assert all(p["in"] == "query" and p["description"] for p in params.values())
    assert all(kind in params["outputs"]["description"] for kind in OUTPUT_KINDS)
    assert params["format"]["schema"]["enum"] == ["json", "zip"]
    codes = set(operation["responses"])
    assert codes == {"200", "400", "401", "403", "408", "413", "415", "422", "431", "503", "504"}
    assert {"application/json", "application/zip"} <= set(operation["responses"]["200"]["content"])


def test_probes_are_open_and_the_rest_needs_the_bearer_token(schema):
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearerAuth": []}]
    for path in ("/live", "/ready"):
        operation = schema["paths"][path]["get"]
        assert operation["security"] == [] and "401" not in operation["responses"]
    for path in ("/metrics", "/v1/models"):
        operation = schema["paths"][path]["get"]
        assert "security" not in operation and {"401", "403"} <= set(operation["responses"])
    assert "503" in schema["paths"]["/v1/models"]["get"]["responses"]


def test_every_documented_route_answers(server, schema):
    for path, operations in schema["paths"].items():
        for method in operations:
            r = httpx.request(method, server.url + path, headers=AUTH)
            assert r.status_code not in (404, 405), (method, path)


@pytest.mark.parametrize(
    "query,kwargs",
    [
        ("outputs=mesh", {"files": multipart_files(dicom_series(1))}),
        ("format=tar", {"files": multipart_files(dicom_series(1))}),
        ("", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
        ("", {"content": b"not dicom", "headers": {"Content-Type": "application/octet-stream"}}),
        ("", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}),
    ],
)
def test_refusals_are_documented_answers(server, schema, query, kwargs):
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = httpx.post(f"{server.url}/v1/predict?{query}", headers=headers, **kwargs)
    documented = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert str(r.status_code) in documented
    assert set(r.json()) == {"error", "detail"}


@pytest.mark.parametrize("path", DOC_PATHS)
def test_docs_switched_off_are_404(no_docs_server, path):
    assert httpx.get(no_docs_server.url + path, headers=AUTH).status_code == 404
    assert httpx.get(no_docs_server.url + path).status_code == 401  # no hint without the token


def test_probes_and_routes_stay_when_docs_are_off(no_docs_server):
    for probe in ("/live", "/ready"):
        assert httpx.get(no_docs_server.url + probe).status_code == 200
    assert httpx.get(no_docs_server.url + "/v1/models", headers=AUTH).status_code == 200


def test_no_api_docs_flag(tmp_path):
    env = {"MEDSSL_SERVE_TOKEN": TOKEN}
    default = build_parser().parse_args(["--model", str(tmp_path)])
    off = build_parser().parse_args(["--model", str(tmp_path), "--no-api-docs"])
    assert settings_from_args(default, env).api_docs is True
    assert settings_from_args(off, env).api_docs is False
