"""Load test for `mnistgan serve`: a fixed number of requests, a fixed number in flight.

Starts `mnistgan serve RUN --port 0` in a child process on loopback, sends each scenario's
requests from `--concurrency` clients at once, and prints per scenario: requests, errors (any
status other than the expected one), requests/s (median of the rounds), images/s, and p50/p99
latency over every request. Exits 1 if any request failed. The clients share the machine
with the server, as a browser would.

    python benchmarks/serve_load.py RUN --requests 200 --concurrency 16

Without RUN it trains a `best` run for 50 steps first (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# (name, path and query, expected status, images per request)
SCENARIOS = [
    ("info (JSON)", "/api/info", 200, 0),
    ("grid 64 (PNG)", "/api/grid.png?n=64&seed={i}", 200, 64),
    ("grid 256 (PNG)", "/api/grid.png?n=256&seed={i}", 200, 256),
    ("samples 16 (JSON)", "/api/samples?n=16&seed={i}", 200, 16),
    ("interpolation 24 (GIF)", "/api/interpolation.gif?seed_a={i}&seed_b=1&scale=1", 200, 24),
    ("refused: n=999", "/api/grid.png?n=999&seed={i}", 422, 0),
]


async def scenario(base: str, path: str, expected: int, requests: int,
                   concurrency: int) -> tuple[list[float], int, float]:
    """Latencies (s), failures, and wall time for `requests` GETs, `concurrency` at a time."""
    latencies: list[float] = []
    failures = 0
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal failures
            for i in queue:
                start = time.perf_counter()
                try:
                    response = await client.get(path.format(i=i))
                    ok = response.status_code == expected
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                failures += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, failures, time.perf_counter() - t0


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "serve", str(run), "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"at (http://\S+/)", line)
    if not match:
        process.kill()
        sys.exit(f"serve_load: the server did not start: {line.strip()}")
    return process, match.group(1)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="run folder (default: a fresh 50-step best)")
    parser.add_argument("--requests", type=int, default=200, help="per scenario (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per scenario: req/s is their median, latencies pooled")
    args = parser.parse_args(argv)

    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="serve-load-")) / "best"
        subprocess.run([sys.executable, "-m", "mnistgan", "train", "--preset", "best", "--steps", "50",
                        "--out", str(run), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    process, base = start_server(run)
    failed = 0
    try:
        print(f"server: {base} serving {run}; {args.repeats} x {args.requests} requests per "
              f"scenario, {args.concurrency} in flight; {os.cpu_count()} CPUs shared with the clients")
        print("| scenario | requests | errors | req/s | images/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for name, path, expected, images in SCENARIOS:
            asyncio.run(scenario(base, path, expected, args.concurrency, args.concurrency))  # warm-up
            latencies, failures, rates = [], 0, []
            for _ in range(args.repeats):
                times, failures_now, wall = asyncio.run(
                    scenario(base, path, expected, args.requests, args.concurrency))
                latencies += times
                failures += failures_now
                rates.append(len(times) / wall)
            failed += failures
            rate = statistics.median(rates)
            p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
            print(f"| {name} | {len(latencies)} | {failures} | {rate:.1f} | "
                  f"{rate * images:.0f} | {1000 * statistics.median(latencies):.1f} | "
                  f"{1000 * p99:.1f} |", flush=True)
        print(f"server peak RSS: {peak_rss_mb(process.pid):.0f} MB")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
