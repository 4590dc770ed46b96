"""Every route but the probes needs the bearer token; the probes need none."""

from __future__ import annotations

import httpx
import pytest

from medssl.inference.server.auth import token_matches
from tests.inference.server.conftest import AUTH, TOKEN


@pytest.mark.parametrize("path", ["/live", "/ready"])
def test_probes_answer_without_a_token(server, path):
    r = httpx.get(server.url + path)
    assert r.status_code == 200


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/predict"), ("GET", "/nowhere")])
def test_missing_token_is_401_with_a_json_reason(server, method, path):
    r = httpx.request(method, server.url + path, content=b"x" * 100)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", TOKEN])
def test_malformed_authorization_is_401(server, header):
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": header})
    assert r.status_code == 401


@pytest.mark.parametrize("guess", ["wrong-token-0123456789", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_wrong_token_is_403(server, guess):
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {guess}"})
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "detail": "the bearer token is not valid"}


def test_right_token_opens_models_and_metrics(server):
    models = httpx.get(server.url + "/v1/models", headers=AUTH)
    assert models.status_code == 200 and models.json()["models"][0]["name"] == "threshold"
    metrics = httpx.get(server.url + "/metrics", headers=AUTH)
    assert metrics.status_code == 200
    assert "medssl_model_ready 1.0" in metrics.text
    assert 'medssl_http_requests_total{route="/v1/models",status="403"}' in metrics.text


def test_unknown_route_with_token_is_a_json_404(server):
    r = httpx.get(server.url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_token_matches_is_exact_and_scheme_insensitive():
    assert token_matches(b"Bearer " + TOKEN.encode(), TOKEN) is True
    assert token_matches(b"bearer  " + TOKEN.encode(), TOKEN) is True
    assert token_matches(b"Bearer nope", TOKEN) is False
    assert token_matches(None, TOKEN) is None
    assert token_matches(b"Token " + TOKEN.encode(), TOKEN) is None
