"""Load test of `smoothgen serve`: a real HTTP client (httpx, asyncio) on loopback against a Ray Serve replica,
next to the same requests on the in-process Scheduler, in the same run.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,8,64] [--requests 128] [--n 2000] [--json out.json]

Each level runs `--requests` CERTIFY requests (n0 = 100, n = --n, the embedded digits CNN at σ = 0.25) from
`c` concurrent clients, each sending its next request when the last one is answered; each mode runs --repeat times per level,
interleaved with the other, and the best run of each is reported (the machine is shared and noisy). In process, the
clients are threads calling SmoothedClassifier.certify on one Scheduler (what a replica runs); over HTTP
they are asyncio tasks of one httpx client. Both use one torch thread for the model (the replica is given
one CPU), so the serving overhead is what the HTTP proxy, JSON and Ray add. Reports certificates/s,
samples/s and p50/p99 latency, and the ratio HTTP / in-process (the issue's target: ≥ 0.90 at 64 clients).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import numpy as np
import torch

BATCH_SIZE = 1000


def _bodies(count: int, n: int) -> list[dict]:
    from smoothgen.models import load_digits_split

    x = load_digits_split().x_test
    return [{"x": x[i % len(x)].tolist(), "seed": 0, "request_id": i, "n": n} for i in range(count)]


def _summary(latencies: list[float], seconds: float, samples: int) -> dict:
    ordered = sorted(latencies)
    return {"certificates_per_s": len(latencies) / seconds, "samples_per_s": samples / seconds,
            "p50_s": statistics.median(ordered), "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "seconds": seconds, "requests": len(latencies)}


def measure_in_process(bodies: list[dict], clients: int) -> dict:
    """The bodies as SmoothedClassifier.certify calls from `clients` threads sharing one Scheduler."""
    from smoothgen.classify import SmoothedClassifier
    from smoothgen.engine.scheduler import Scheduler
    from smoothgen.models import load_classifier

    with Scheduler(load_classifier(0.25), batch_size=BATCH_SIZE, max_pending=4 * clients) as scheduler:
        smoothed = SmoothedClassifier(scheduler.runtime, 10, 0.25, sampler=scheduler.sampler())
        inputs = [torch.tensor(np.asarray(b["x"], dtype=np.float32)) for b in bodies]
        smoothed.certify(inputs[0], 100, bodies[0]["n"], 0.001, seed=0, request_id=0)  # warm-up

        def one(i: int) -> float:
            t0 = time.perf_counter()
            smoothed.certify(inputs[i], 100, bodies[i]["n"], 0.001, seed=0, request_id=bodies[i]["request_id"])
            return time.perf_counter() - t0

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(len(bodies))))
        seconds = time.perf_counter() - start
    return _summary(latencies, seconds, sum(100 + b["n"] for b in bodies))


def measure_http(url: str, bodies: list[dict], clients: int) -> dict:
    """The bodies POSTed to url/v1/certify by `clients` concurrent asyncio clients (one httpx connection pool)."""
    import httpx

    async def run() -> tuple[list[float], float]:
        queue: asyncio.Queue = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            await client.post(f"{url}/v1/certify", json=bodies[0])  # warm-up

            async def worker():
                while not queue.empty():
                    body = queue.get_nowait()
                    t0 = time.perf_counter()
                    response = await client.post(f"{url}/v1/certify", json=body)
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
                    latencies.append(time.perf_counter() - t0)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return latencies, time.perf_counter() - start

    latencies, seconds = asyncio.run(run())
    return _summary(latencies, seconds, sum(100 + b["n"] for b in bodies))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=128, help="certificates per level and mode")
    parser.add_argument("--n", type=int, default=2000, help="estimation samples per certificate")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode per level, interleaved; the best is kept")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from smoothgen.serve import application
    from smoothgen.service import ServiceConfig

    torch.set_num_threads(1)
    levels = [int(c) for c in args.clients.split(",")]
    bodies = _bodies(args.requests, args.n)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServiceConfig(backend="eager", batch_size=BATCH_SIZE, max_queue=max(levels))
        serve.run(application(config, replicas=1, num_cpus=1), name="smoothgen", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        best = lambda runs: max(runs, key=lambda r: r["certificates_per_s"])  # noqa: E731
        for clients in levels:
            runs = [(measure_in_process(bodies, clients), measure_http(url, bodies, clients)) for _ in range(args.repeat)]
            local, http = best([r[0] for r in runs]), best([r[1] for r in runs])
            rows.append({"clients": clients, "in_process": local, "http": http,
                         "ratio": http["certificates_per_s"] / local["certificates_per_s"]})
            print(f"clients {clients:3d}: in-process {local['certificates_per_s']:7.2f} cert/s "
                  f"({local['samples_per_s']:9.0f} samples/s, p50 {local['p50_s']:.3f} s, p99 {local['p99_s']:.3f} s) | "
                  f"HTTP {http['certificates_per_s']:7.2f} cert/s ({http['samples_per_s']:9.0f} samples/s, "
                  f"p50 {http['p50_s']:.3f} s, p99 {http['p99_s']:.3f} s) | HTTP / in-process {rows[-1]['ratio']:.3f}",
                  flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} CPUs", "torch": torch.__version__, "command": " ".join(sys.argv),
              "requests": args.requests, "n": args.n, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
