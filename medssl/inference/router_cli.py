"""``medssl router``: the command line of :mod:`medssl.inference.router`.

Every flag defaults to an environment variable ``MEDSSL_ROUTER_<NAME>`` (containers set them
in docker-compose.yml); secrets come from files.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from medssl.errors import ConfigError, MedsslError
from medssl.inference.router import OUTPUTS, Router, RouterConfig

log = logging.getLogger("medssl.inference.router")

# -- command line: every flag defaults to an environment variable MEDSSL_ROUTER_<NAME> -----

_FLAGS: tuple[tuple[str, type, str | None, str], ...] = (
    ("orthanc-url", str, "http://127.0.0.1:8042", "Orthanc's REST root"),
    ("orthanc-credentials-file", Path, None, "file with one line 'user:password'"),
    ("serve-url", str, "http://127.0.0.1:8000", "medssl-serve's root"),
    ("token-file", Path, None, "file holding medssl-serve's bearer token"),
    ("state-file", Path, None, "JSON progress file on a persistent volume (required)"),
    ("outputs", str, "seg,sr", f"comma-separated, of {','.join(OUTPUTS)}"),
    ("poll-interval", float, "5", "seconds between polls"),
    ("timeout", float, "600", "seconds per request"),
    ("attempts", int, "4", "tries per request"),
    ("heartbeat-file", Path, None, "rewritten after every poll (container healthcheck)"),
)


def build_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(
        prog="medssl router",
        description="Watch Orthanc for new stable series, run medssl-serve on each and "
        "store the returned DICOM SEG/SR back into Orthanc.",
    )
    for name, kind, fallback, text in _FLAGS:
        variable = "MEDSSL_ROUTER_" + name.upper().replace("-", "_")
        parser.add_argument(f"--{name}", type=kind, default=env.get(variable, fallback),
                            help=f"{text} (env {variable})")  # argparse converts str defaults
    parser.add_argument("--once", action="store_true", help="poll once, then exit")
    return parser


def router_main(argv: Sequence[str] | None = None) -> int:
    """``medssl router``: poll until SIGTERM/SIGINT; 2 on a configuration error."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.state_file is None:
            raise ConfigError("--state-file (or MEDSSL_ROUTER_STATE_FILE) is required")
        config = RouterConfig(
            orthanc_url=args.orthanc_url,
            serve_url=args.serve_url,
            state_file=args.state_file,
            orthanc_credentials_file=args.orthanc_credentials_file,
            token_file=args.token_file,
            outputs=tuple(v.strip() for v in args.outputs.split(",") if v.strip()),
            poll_interval_s=args.poll_interval,
            timeout_s=args.timeout,
            attempts=args.attempts,
            heartbeat_file=args.heartbeat_file,
        )
        router = Router(config)
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        log.info("router: polling Orthanc every %.0f s", config.poll_interval_s)
        stats = router.run(stop, max_polls=1 if args.once else None)
    except MedsslError as err:
        print(f"medssl router: {err}", file=sys.stderr, flush=True)
        return 2
    log.info("router: stopped; %s", dict(stats))
    return 0
