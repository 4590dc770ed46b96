"""``medssl serve --model ARTIFACT [--host 127.0.0.1] [--port 8000]``: the HTTP service.

The API token comes from ``--token-file``, ``$MEDSSL_SERVE_TOKEN_FILE`` or
``$MEDSSL_SERVE_TOKEN`` (never a flag: ``ps`` would show it). ``--no-auth`` is accepted on
a loopback address only. STOW-RS: ``--stow-url`` or ``$MEDSSL_STOW_URL``, credentials in
``$MEDSSL_STOW_TOKEN`` or ``$MEDSSL_STOW_USER`` + ``$MEDSSL_STOW_PASSWORD``.
``--no-api-docs`` leaves out ``/openapi.json`` and ``/docs``. Usage, curl examples, errors
and limits: docs/serving.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from medssl.errors import ConfigError
from medssl.inference.predictor import Predictor
from medssl.inference.server.settings import ServerSettings, read_stow_target, read_token

log = logging.getLogger("medssl.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medssl serve", description="HTTP inference service for one exported artifact."
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="artifact folder (model.safetensors + artifact.json)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--token-file",
        type=Path,
        help="file holding the API token (else $MEDSSL_SERVE_TOKEN[_FILE])",
    )
    p.add_argument("--no-auth", action="store_true", help="no token (loopback addresses only)")
    p.add_argument(
        "--max-upload-gb", type=float, default=2.0, help="largest request body (GiB, default 2)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds per request: upload + prediction (default 300)",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=1, help="predictions running at once (default 1)"
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=4,
        help="requests waiting beyond those; more get 503 (default 4)",
    )
    p.add_argument("--max-files", type=int, default=4096, help="files per upload (default 4096)")
    g = p.add_argument_group("connections and uploads (attack limits, docs/serving.md)")
    g.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a whole request head (default 10)",
    )
    g.add_argument(
        "--keep-alive", type=float, default=5.0, help="idle keep-alive seconds (default 5)"
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=200,
        help="open connections; more evict the oldest idle one (default 200)",
    )
    g.add_argument(
        "--max-header-kib",
        type=int,
        default=64,
        help="request line + headers; more is 431 (KiB, default 64)",
    )
    g.add_argument(
        "--max-uploads", type=int, default=8, help="uploads arriving at once (default 8)"
    )
    g.add_argument(
        "--min-upload-kib-s",
        type=float,
        default=32.0,
        help="an upload slower than this on average after --upload-grace is 408 (default 32)",
    )
    g.add_argument(
        "--upload-grace", type=float, default=10.0, help="seconds before the rate counts (10)"
    )
    g.add_argument(
        "--memory-budget",
        type=float,
        help="GiB the predictions may use together (default $MEDSSL_MEMORY_BUDGET_GB, else "
        "what the host has); a larger declared volume is 413 before it is read",
    )
    p.add_argument(
        "--workdir", type=Path, help="where per-request temporary folders go (default: system temp)"
    )
    p.add_argument(
        "--stow-url", help="DICOMweb base URL to STOW-RS DICOM outputs to (else $MEDSSL_STOW_URL)"
    )
    p.add_argument(
        "--strict-modality",
        action="store_true",
        help="answer 422 for an input whose modality is unknown or not one the model was trained "
        "on (default: predict, with a warning in the answer)",
    )
    p.add_argument(
        "--no-api-docs",
        action="store_true",
        help="do not serve /openapi.json and /docs (default: served, behind the token)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from_args(args: argparse.Namespace, env=None) -> ServerSettings:
    env = os.environ if env is None else env
    token = read_token(env, args.token_file)
    if token is None and not args.no_auth:
        raise ConfigError(
            "no API token: pass --token-file (or set MEDSSL_SERVE_TOKEN_FILE), or --no-auth on "
            "loopback; see docs/serving.md"
        )
    if args.no_auth:
        if not _is_loopback(args.host):
            raise ConfigError(f"--no-auth listens on loopback only, got host {args.host!r}")
        token = None
    return ServerSettings(
        token=token,
        max_upload_bytes=int(args.max_upload_gb * (1 << 30)),
        request_timeout_s=args.timeout,
        max_concurrent=args.max_concurrent,
        max_queued=args.max_queued,
        max_files=args.max_files,
        workdir=args.workdir,
        stow=read_stow_target(env, args.stow_url),
        api_docs=not args.no_api_docs,
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
        max_request_head_bytes=args.max_header_kib << 10,
        max_uploads=args.max_uploads,
        min_upload_bytes_per_s=int(args.min_upload_kib_s * 1024),
        upload_grace_s=args.upload_grace,
        memory_budget_gb=args.memory_budget,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, check the setup, serve until interrupted; 0 on a clean stop."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    model_dir = args.model
    if not model_dir.is_dir():
        raise ConfigError(f"--model {model_dir}: not a folder (expected an exported artifact)")
    if settings.workdir is not None and not settings.workdir.is_dir():
        raise ConfigError(f"--workdir {settings.workdir}: not a folder")

    def factory() -> Predictor:
        from medssl.inference.predict import load_predictor  # the model side, imported when used

        return load_predictor(model_dir, device=args.device, strict_modality=args.strict_modality)

    import uvicorn

    from medssl.inference.server.app import create_app
    from medssl.inference.server.connections import uvicorn_config

    app = create_app(factory, settings)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level)
    uvicorn.Server(config).run()
    return 0
