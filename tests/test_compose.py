"""docker-compose.yml and docker/Dockerfile: parse with the real tool, then check the hardening.

No Docker engine runs here: ``docker-compose config`` (Debian package docker-compose) validates
and resolves the file; the security properties are then asserted on the YAML itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker" / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
MEDSSL_SERVICES = ("medssl-serve", "medssl-router")
API_OVERRIDE = ROOT / "docker" / "docker-compose.api.yml"
ORTHANC_SETTINGS = ROOT / "docker" / "orthanc" / "orthanc.json"
SERVICES = {"orthanc-db-owner", "orthanc", "medssl-serve", "medssl-router"}
LONG_RUNNING = ("orthanc", "medssl-serve", "medssl-router")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *anchor) resolved


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _docker_compose_config(*files: Path) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    args = [exe, "--project-directory", str(ROOT)]
    for file in files:
        args += ["-f", str(file)]
    result = subprocess.run(
        [*args, "config"], check=False, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_file(services):
    resolved = _docker_compose_config(COMPOSE)
    assert set(resolved["services"]) == SERVICES
    for name, service in resolved["services"].items():  # the tool's view agrees with ours
        assert service["cap_drop"] == ["ALL"], name
        assert service.get("pids_limit") == services[name]["pids_limit"], name


def test_gpu_override_is_accepted():
    resolved = _docker_compose_config(COMPOSE, GPU_OVERRIDE)
    serve = resolved["services"]["medssl-serve"]
    assert serve["build"]["args"]["BASE"].startswith("nvidia/cuda:")
    assert serve["read_only"] is True and serve["cap_drop"] == ["ALL"]  # hardening survives


def test_api_override_publishes_serve_on_loopback_only():
    resolved = _docker_compose_config(COMPOSE, API_OVERRIDE)
    serve = resolved["services"]["medssl-serve"]
    assert serve["ports"] == ["127.0.0.1:8000:8000/tcp"]
    assert set(serve["networks"]) == {"inference", "api"}
    assert not (resolved["networks"]["api"] or {}).get("internal")


def test_expected_services(services):
    assert set(services) == SERVICES
    orthanc = services["orthanc"]
    # an exact version tag by default, a site's own pin through ORTHANC_IMAGE
    assert re.fullmatch(r"\$\{ORTHANC_IMAGE:-orthancteam/orthanc:\d+\.\d+\.\d+\}", orthanc["image"])
    assert orthanc["ports"] == ["127.0.0.1:8042:8042"]
    assert (
        orthanc["depends_on"]["orthanc-db-owner"]["condition"] == "service_completed_successfully"
    )
    settings = json.loads(ORTHANC_SETTINGS.read_text())  # DICOMweb on, authentication on
    assert settings["AuthenticationEnabled"] is True and settings["DicomWeb"]["Enable"] is True
    assert any(p.endswith("libOrthancDicomWeb.so") for p in settings["Plugins"])
    assert settings["DicomServerEnabled"] is False  # DIMSE off unless a site enables it


def test_networks_keep_the_model_server_internal(compose, services):
    assert compose["networks"]["inference"]["internal"] is True
    assert services["medssl-serve"]["networks"] == ["inference"]
    assert "ports" not in services["medssl-serve"]  # published only by the API override
    assert set(services["medssl-router"]["networks"]) == {"pacs", "inference"}
    assert services["orthanc"]["networks"] == ["pacs"]


def test_the_database_owner_runs_once_with_chown_only_and_no_network(services):
    owner = services["orthanc-db-owner"]
    assert owner["cap_drop"] == ["ALL"] and owner["cap_add"] == ["CHOWN"]
    assert owner["network_mode"] == "none" and owner["restart"] == "no"
    assert owner["read_only"] is True


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_service_is_hardened(services, name):
    service = services[name]
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert service["read_only"] is True
    assert str(service["user"]).split(":")[0] not in ("0", "root")
    assert 0 < float(service["cpus"]) <= 16
    for tmpfs in service.get("tmpfs", []):  # a tmpfs is memory: well below the limit
        size = re.search(r"size=(\w+)", tmpfs)
        assert size and _bytes(size.group(1)) * 4 <= _bytes(service["mem_limit"]), tmpfs
    assert any(re.fullmatch(r"no-new-privileges(:true)?", opt) for opt in service["security_opt"])
    assert _bytes(service["mem_limit"]) > 0
    assert 0 < int(service["pids_limit"]) <= 1024
    health = service["healthcheck"]
    assert health["test"][0] == "CMD" and not health.get("disable")
    assert "curl" not in " ".join(health["test"]) and "wget" not in " ".join(health["test"])
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


@pytest.mark.parametrize("name", MEDSSL_SERVICES)
def test_medssl_services_run_unprivileged_on_a_read_only_root(services, name):
    service = services[name]
    assert service["read_only"] is True
    assert str(service["user"]).split(":")[0] == "10001"
    assert any(str(t).startswith("/tmp") for t in service["tmpfs"])
    assert "privileged" not in service and "network_mode" not in service


def test_serve_mounts_the_model_read_only_and_probes_ready(services):
    serve = services["medssl-serve"]
    (model,) = [v for v in serve["volumes"] if ":/models/artifact" in v]
    assert model.endswith(":/models/artifact:ro")
    assert serve["command"][:3] == ["serve", "--model", "/models/artifact"]
    assert "/ready" in " ".join(serve["healthcheck"]["test"])
    assert serve["build"]["dockerfile"] == "docker/Dockerfile"


def test_router_waits_for_healthy_dependencies(services):
    router = services["medssl-router"]
    assert router["command"][0] == "router"
    for dependency in ("orthanc", "medssl-serve"):
        assert router["depends_on"][dependency]["condition"] == "service_healthy"
    assert "--state-file" in router["command"]
    assert any(v.endswith(":/var/lib/medssl-router") for v in router["volumes"])


def test_secrets_are_files_never_values(compose, services):
    secrets = compose["secrets"]
    assert set(secrets) == {
        "serve_token",
        "orthanc_users",
        "orthanc_settings",
        "router_orthanc_credentials",
    }
    for name, secret in secrets.items():
        assert set(secret) == {"file"}, name
        folder = "./docker/orthanc/" if name == "orthanc_settings" else "./secrets/"
        assert secret["file"].startswith(folder), name
    used = {
        (s if isinstance(s, str) else s["source"])
        for svc in services.values()
        for s in svc.get("secrets", [])
    }
    assert used == set(secrets)
    text = COMPOSE.read_text().lower()
    for service in services.values():  # nothing secret-looking in plain environment values
        for key in dict(service.get("environment") or {}):
            assert not re.search(r"password|token|secret", key.lower()), key
    assert "--token " not in text and "password:" not in text
    for name in MEDSSL_SERVICES:  # secrets reach medssl as file paths under /run/secrets
        command = services[name]["command"]
        for flag in ("--token-file", "--orthanc-credentials-file"):
            if flag in command:
                assert command[command.index(flag) + 1].startswith("/run/secrets/")


def test_secrets_folder_is_documented_and_ignored():
    assert (ROOT / "secrets" / "README.md").is_file()
    if shutil.which("git") and (ROOT / ".git").exists():
        probe = subprocess.run(
            ["git", "check-ignore", "-q", "secrets/serve_token"], check=False, cwd=ROOT
        )
        if probe.returncode != 0:
            pytest.xfail(".gitignore does not ignore secrets/* yet (requested in the E2 report)")


def test_dockerfile_is_non_root_read_only_friendly_and_checks_ready():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.11\.\d+-slim-\w+$", text, re.MULTILINE)  # exact tag
    assert re.search(r'^ARG TORCH_SPEC="torch==[\d.]+"$', text, re.MULTILINE)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 3  # multi-stage
    assert re.search(r"^USER 10001(:10001)?$", text, re.MULTILINE)
    assert "useradd --uid 10001" in text
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE) and "/ready" in text
    assert re.search(r'^ENTRYPOINT \["medssl"\]$', text, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "HOME=/tmp" in text
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore[dockerignore.index("*")] == "*"  # deny by default: no data, no secrets
    assert not any(line.startswith(("!secrets", "!data")) for line in dockerignore)


def _bytes(value) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", str(value).lower())
    assert match, f"memory limit {value!r}"
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")
