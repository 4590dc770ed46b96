"""Load test of ``medssl serve`` on loopback: N clients posting uploads for T seconds.

    python -m benchmarks.serve_load [--clients 16] [--seconds 60] [--model ARTIFACT]

Starts a real uvicorn server in a subprocess (the threshold predictor of the service
tests, or ``--model``'s artifact through ``load_predictor``), then runs ``--clients``
asyncio clients that each post a 3-slice CT series (pydicom's CT_small) back to back.
Reports requests/s, p50/p99 latency and the count of each status; any 5xx fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from tests.inference.server.conftest import AUTH, TOKEN, start_server
from tests.inference.server.payloads import dicom_series, multipart_files


async def client_loop(url: str, files: list, stop_at: float, latencies: list[float], statuses: collections.Counter) -> None:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                r = await client.post("/v1/predict", files=files)
                statuses[r.status_code] += 1
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - start)


async def run_load(url: str, clients: int, seconds: float) -> tuple[list[float], collections.Counter, float]:
    files = multipart_files(dicom_series(3))
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(url, files, start + seconds, latencies, statuses) for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-concurrent", type=int, default=2, help="server's prediction threads")
    p.add_argument("--model", type=Path, help="serve this artifact instead of the threshold predictor")
    args = p.parse_args(argv)
    config = {"settings": {"max_concurrent": args.max_concurrent, "max_queued": args.clients, "request_timeout_s": 120}}
    if args.model:
        config["real_artifact"] = str(args.model.resolve())
    with TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), config, TOKEN)
        try:
            if server.wait_ready(timeout_s=300).status_code != 200:
                print("server never became ready", file=sys.stderr)
                return 1
            rss_before = server.rss_kib()
            latencies, statuses, elapsed = asyncio.run(run_load(server.url, args.clients, args.seconds))
            rss_after = server.rss_kib()
        finally:
            server.stop()
    ok = sum(v for k, v in statuses.items() if k == 200)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"clients {args.clients}, {elapsed:.1f} s, server threads {args.max_concurrent}, predictor {'artifact' if args.model else 'threshold (3 x 128x128 CT slices)'}")
    print(f"requests {sum(statuses.values())}, ok {ok}, {ok / elapsed:.1f} req/s")
    print(f"latency p50 {percentile(latencies, 50) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"status counts {dict(sorted((str(k), v) for k, v in statuses.items()))}")
    print(f"server RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
    failed = sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
