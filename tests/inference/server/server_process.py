"""Run a real uvicorn server on a free loopback port (for tests and benchmarks/serve_load.py).

    python -m tests.inference.server.server_process '{"settings": {...}, "predictor": {...}}'

Prints ``PORT <n>`` once the socket listens, then serves until terminated. The JSON
config: ``settings`` (ServerSettings fields; the token from ``$MEDSSL_SERVE_TOKEN``),
``predictor`` (ThresholdPredictor keyword arguments), ``artifact`` (a folder: loaded with
``load_artifact`` before the predictor is built, as a model server must), ``real_artifact``
(a folder served by ``medssl.inference.predict.load_predictor``; ``strict_modality`` passed on).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import uvicorn

from medssl.inference.server import ServerSettings, StowTarget, create_app
from medssl.inference.server.connections import uvicorn_config
from tests.inference.server.threshold_predictor import ThresholdPredictor


def build_factory(config: dict):
    if config.get("real_artifact"):
        from medssl.inference.predict import load_predictor

        strict = bool(config.get("strict_modality", False))
        return lambda: load_predictor(
            Path(config["real_artifact"]), device="cpu", strict_modality=strict
        )

    def factory() -> ThresholdPredictor:
        if config.get("artifact"):
            from medssl.inference.artifact import load_artifact  # torch: only where needed

            load_artifact(config["artifact"])  # verifies sha256, parses safetensors only
        return ThresholdPredictor(**config.get("predictor", {}))

    return factory


def main(argv: list[str]) -> int:
    config = json.loads(argv[0]) if argv else {}
    values = dict(config.get("settings", {}))
    if "workdir" in values:
        values["workdir"] = Path(values["workdir"])
    if "stow_url" in values:
        values["stow"] = StowTarget(values.pop("stow_url"), timeout_s=5)
    settings = ServerSettings(token=os.environ.get("MEDSSL_SERVE_TOKEN") or None, **values)
    app = create_app(build_factory(config), settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    # the same uvicorn configuration as ``medssl serve`` (connection guards included)
    server = uvicorn.Server(
        uvicorn_config(app, settings, log_level=config.get("log_level", "warning"))
    )
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
