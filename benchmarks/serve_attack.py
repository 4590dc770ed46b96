"""``medssl serve`` under the slow-header and bomb attacks of issue 15, before and after.

    python -m benchmarks.serve_attack --attack slow-headers [--seconds 20] [--tree DIR --legacy]

Serves a small real exported artifact (``tests.inference.artifact_builders``) on loopback
and, for ``--seconds``, runs legitimate traffic beside one attacker:

- legitimate: one client posting a 48 x 48 x 20 CT phantom series back to back, and one
  probe polling ``GET /ready`` every 0.2 s (as a healthcheck does);
- ``slow-headers``: 70 connections that never finish their request heads (half of them
  idle, half with half a head sent), each reopened as soon as the server closes it;
- ``bomb``: a 1 MB ``.nii.gz`` declaring a legal 1024 x 1024 x 256 volume, posted again as
  soon as it is answered.

Prints, per kind of legitimate request, how many were served (2xx) of how many sent, their
p50/p99 latency, the attacker's answers and the server's peak RSS (``VmHWM``). ``--tree``
runs the server from another checkout (``git archive <commit> | tar -x -C DIR``) and
``--legacy`` starts it the way ``medssl serve`` did before issue 15 (uvicorn's
``limit_concurrency`` = max(64, 4 x (running + queued)), no connection guards).
``--memory-budget GB`` sets the server's ``MEDSSL_MEMORY_BUDGET_GB`` (without it the budget
is what the host has, and a 1024 x 1024 x 256 volume may legitimately fit).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from tests.inference.server.conftest import AUTH, ROOT, TOKEN

LAUNCH = """
import json, socket, sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from medssl.inference.server import ServerSettings, create_app
from tests.inference.server.server_process import build_factory
config, legacy = json.loads(sys.argv[2]), sys.argv[3] == "1"
settings = ServerSettings(token=config["token"], **config["settings"])
app = create_app(build_factory(config), settings)
if legacy:  # medssl serve's uvicorn.run arguments before issue 15
    limit = max(64, 4 * (settings.max_concurrent + settings.max_queued))
    uv = uvicorn.Config(app, log_level="error", server_header=False, timeout_keep_alive=5,
                        proxy_headers=False, limit_concurrency=limit)
else:
    from medssl.inference.server.connections import uvicorn_config
    uv = uvicorn_config(app, settings, log_level="error")
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0)); sock.listen(2048)
print("PORT", sock.getsockname()[1], flush=True)
uvicorn.Server(uv).run(sockets=[sock])
"""


def start(
    tree: Path, config: dict, legacy: bool, budget_gb: float | None
) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if budget_gb is not None:  # read by both trees' memory checks (medssl.memory.budget)
        env["MEDSSL_MEMORY_BUDGET_GB"] = str(budget_gb)
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(tree), json.dumps(config), "1" if legacy else "0"],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError("the server did not start")
    return process, int(line.split()[1])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def add(self, status: int | str, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(seconds)

    def line(self, name: str) -> str:
        ok = sum(v for k, v in self.statuses.items() if isinstance(k, int) and k < 300)
        total = sum(self.statuses.values())
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
        codes = dict(sorted((str(k), v) for k, v in self.statuses.items()))
        return (
            f"{name}: served {ok}/{total}, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms {codes}"
        )


def timed(tally: Tally, call) -> None:
    start = time.perf_counter()
    try:
        status: int | str = call().status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    tally.add(status, time.perf_counter() - start)


def legit_predictions(url: str, files: list, stop: threading.Event, tally: Tally) -> None:
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        while not stop.is_set():
            timed(tally, lambda: client.post("/v1/predict", files=files))


def probes(url: str, stop: threading.Event, tally: Tally) -> None:
    while not stop.wait(0.2):
        timed(tally, lambda: httpx.get(url + "/ready", timeout=5))


def slow_headers(port: int, stop: threading.Event, tally: Tally, n: int = 70) -> None:
    def opened(i: int) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            tally.add("opened", 0.0)
            return sock
        except OSError:
            return None

    socks = [opened(i) for i in range(n)]
    while not stop.wait(0.1):
        for i, sock in enumerate(socks):
            closed = sock is None
            if sock is not None:
                try:
                    data = sock.recv(4096)
                    closed = data == b""
                    if data.startswith(b"HTTP/1."):  # the server answered the partial head
                        tally.add(data.split(b" ", 2)[1].decode(), 0.0)
                except BlockingIOError:
                    pass
                except OSError:  # reset by the server
                    tally.add("reset", 0.0)
                    closed = True
                if closed:
                    sock.close()
            if closed:
                socks[i] = opened(i)
    for sock in socks:
        if sock is not None:
            sock.close()


def bombs(url: str, bomb: bytes, stop: threading.Event, tally: Tally) -> None:
    files = [("file", ("x.nii.gz", bomb, "application/gzip"))]
    with httpx.Client(base_url=url, headers=AUTH, timeout=400) as client:
        while not stop.is_set():
            timed(tally, lambda: client.post("/v1/predict", files=files))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack", choices=["slow-headers", "bomb", "none"], required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout the server runs from")
    p.add_argument("--legacy", action="store_true", help="start uvicorn as before issue 15")
    p.add_argument("--timeout", type=float, default=60.0, help="server request timeout (s)")
    p.add_argument("--memory-budget", type=float, help="MEDSSL_MEMORY_BUDGET_GB of the server")
    args = p.parse_args(argv)

    from tests.inference.artifact_builders import phantom_series, segmentation_artifact
    from tests.inference.server.test_bombs import declared_nifti_gz

    with TemporaryDirectory() as tmp:
        artifact = segmentation_artifact(Path(tmp) / "artifact")
        files = [
            ("file", (p.name, p.read_bytes(), "application/dicom"))
            for p in phantom_series(Path(tmp) / "series")
        ]
        settings = {"request_timeout_s": args.timeout}
        config = {"token": TOKEN, "real_artifact": str(artifact), "settings": settings}
        process, port = start(args.tree.resolve(), config, args.legacy, args.memory_budget)
        url = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        tallies = {"predict": Tally(), "ready": Tally(), "attacker": Tally()}
        workers: list[threading.Thread] = []
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            httpx.post(url + "/v1/predict", files=files, headers=AUTH, timeout=120)  # warm
            idle_rss = peak_rss_mib(process.pid)
            workers += [
                threading.Thread(
                    target=legit_predictions, args=(url, files, stop, tallies["predict"])
                ),
                threading.Thread(target=probes, args=(url, stop, tallies["ready"])),
            ]
            if args.attack == "slow-headers":
                workers.append(
                    threading.Thread(target=slow_headers, args=(port, stop, tallies["attacker"]))
                )
            elif args.attack == "bomb":
                bomb = declared_nifti_gz((1024, 1024, 256))
                workers.append(
                    threading.Thread(target=bombs, args=(url, bomb, stop, tallies["attacker"]))
                )
            for w in workers:
                w.start()
            time.sleep(args.seconds)
            stop.set()
            for w in workers[:2]:
                w.join(180)
            peak = peak_rss_mib(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            stop.set()
            for w in workers[2:]:
                w.join(30)
    label = (
        "before (legacy uvicorn, tree " + str(args.tree) + ")" if args.legacy else str(args.tree)
    )
    budget = f"{args.memory_budget:g} GiB" if args.memory_budget else "the host's"
    print(
        f"attack {args.attack}, {args.seconds:g} s, server {label}, request timeout "
        f"{args.timeout:g} s, memory budget {budget}"
    )
    for name, tally in tallies.items():
        print("  " + tally.line(name))
    print(f"  server peak RSS {peak:.0f} MiB (after warm-up {idle_rss:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
