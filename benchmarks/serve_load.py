"""Load test of `smoothgen serve`: a real HTTP client (httpx, asyncio) on loopback against a Ray Serve replica,
next to the same requests on the in-process Scheduler, in the same run. The figure of merit is CPU time per
certificate, which does not depend on how busy the shared machine is; throughput and latency are reported too.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,8,64] [--requests 128] [--n 2000] [--json out.json]

Each level runs `--requests` issued CERTIFY requests (n0 = 100, n = --n, alpha = 10⁻⁶, the embedded digits CNN at
σ = 0.25) from `c` concurrent clients, each sending its next request when the last one is answered; each mode runs
--repeat times per level, interleaved with the other.

- In process: c threads calling SmoothedClassifier.certify on one Scheduler (what a replica runs). CPU: this
  process's CPU time over the run.
- Service in process: c threads calling CertificationService.call: the same certificates plus what the service
  adds (the server-keyed seed, the signed document, the audit row), without HTTP or Ray.
- HTTP: c asyncio tasks of one httpx client → Ray Serve's proxy → one replica (one torch thread) → the service,
  which also derives the seed, signs the document and appends it to the audit log (SQLite, on disk). Server CPU:
  the CPU time of every process of the Ray instance (proxy, replica, controller, raylet, GCS, ...) over the run,
  minus what the same processes spend idle over as long (measured before each level); the client's own CPU is
  reported apart. The overhead of serving is server CPU per certificate minus in-process CPU per certificate
  (issue 21's target: at most 5 CPU-ms at n = 2 000).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import numpy as np
import torch

BATCH_SIZE = 1000
ALPHA = 1e-6
TICKS = os.sysconf("SC_CLK_TCK")


def _bodies(count: int, n: int) -> list[dict]:
    from smoothgen.models import load_digits_split

    x = load_digits_split().x_test
    return [{"x": x[i % len(x)].tolist(), "n": n} for i in range(count)]


def _summary(latencies: list[float], seconds: float, samples: int, cpu_s: float, client_cpu_s: float | None = None) -> dict:
    ordered = sorted(latencies)
    row = {"certificates_per_s": len(latencies) / seconds, "samples_per_s": samples / seconds,
           "p50_s": statistics.median(ordered), "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
           "seconds": seconds, "requests": len(latencies), "cpu_ms_per_certificate": 1000 * cpu_s / len(latencies)}
    if client_cpu_s is not None:
        row["client_cpu_ms_per_certificate"] = 1000 * client_cpu_s / len(latencies)
    return row


# ------------------------------------------------------------------------------------------ CPU time
def _descendants(root: int) -> list[int]:
    """Every live process below `root` (from /proc: Ray's raylet, GCS and workers are the driver's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def _role(pid: int) -> str:
    """Which part of the Ray instance a process is: its proxy, a replica, or the rest (controller, raylet, ...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return "other"
    return "proxy" if b"ProxyActor" in command else "replica" if b"ServeReplica" in command else "other"


class RayCPU:
    """CPU seconds spent by the Ray instance's processes between start() and stop() (`parts`: by role)."""

    def start(self) -> None:
        self.before = _cpu_seconds(_descendants(os.getpid()))

    def stop(self) -> float:
        after = _cpu_seconds(_descendants(os.getpid()))
        self.parts = {"proxy": 0.0, "replica": 0.0, "other": 0.0}
        for pid, seconds in after.items():
            self.parts[_role(pid)] += seconds - self.before.get(pid, 0.0)
        return sum(self.parts.values())


def idle_rate(seconds: float = 5.0) -> float:
    """CPU seconds per second the Ray instance spends with no request (heartbeats, metrics, health checks)."""
    meter = RayCPU()
    meter.start()
    time.sleep(seconds)
    return meter.stop() / seconds


# ------------------------------------------------------------------------------------------ the two modes
def measure_in_process(bodies: list[dict], clients: int) -> dict:
    """The bodies as SmoothedClassifier.certify calls from `clients` threads sharing one Scheduler."""
    from smoothgen.classify import SmoothedClassifier
    from smoothgen.engine.scheduler import Scheduler
    from smoothgen.models import load_classifier

    with Scheduler(load_classifier(0.25), batch_size=BATCH_SIZE, max_pending=4 * clients) as scheduler:
        smoothed = SmoothedClassifier(scheduler.runtime, 10, 0.25, sampler=scheduler.sampler())
        inputs = [torch.tensor(np.asarray(b["x"], dtype=np.float32)) for b in bodies]
        smoothed.certify(inputs[0], 100, bodies[0]["n"], ALPHA, seed=0, request_id=0)  # warm-up

        def one(i: int) -> float:
            t0 = time.perf_counter()
            smoothed.certify(inputs[i], 100, bodies[i]["n"], ALPHA, seed=0, request_id=i)
            return time.perf_counter() - t0

        cpu0, start = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(len(bodies))))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return _summary(latencies, seconds, sum(100 + b["n"] for b in bodies), cpu)


def measure_service(service, bodies: list[dict], clients: int) -> dict:
    """The bodies as CertificationService.call from `clients` threads in this process: what a replica computes
    for a request (the certificate, its seed, document, signature and audit row), without HTTP or Ray."""
    def one(body: dict) -> float:
        t0 = time.perf_counter()
        service.call("certify", body)
        return time.perf_counter() - t0

    cpu0, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, bodies))
    return _summary(latencies, time.perf_counter() - start, sum(100 + b["n"] for b in bodies), time.process_time() - cpu0)


def measure_http(url: str, bodies: list[dict], clients: int, idle: float) -> dict:
    """The bodies POSTed to url/v1/certify by `clients` concurrent asyncio clients (one httpx connection pool)."""
    import httpx

    meter = RayCPU()

    async def run() -> tuple[list[float], float, float]:
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
                    if response.status_code != 200 or response.json().get("issued") is not True:
                        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
                    latencies.append(time.perf_counter() - t0)

            meter.start()
            cpu0, start = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return latencies, time.perf_counter() - start, time.process_time() - cpu0

    latencies, seconds, client_cpu = asyncio.run(run())
    server_cpu = meter.stop() - idle * seconds
    row = _summary(latencies, seconds, sum(100 + b["n"] for b in bodies), server_cpu, client_cpu)
    # Idle CPU is subtracted from the total only; the parts are as measured (the proxy and replica idle little).
    row["cpu_ms_per_certificate_by_part"] = {k: 1000 * v / len(latencies) for k, v in meter.parts.items()}
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=128, help="certificates per level and mode")
    parser.add_argument("--n", type=int, default=2000, help="estimation samples per certificate")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode per level, interleaved; medians "
                        "are reported (the added CPU as the median of each run's HTTP minus the in-process run next to it)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from smoothgen._malloc import keep_freed_memory
    from smoothgen.serve import application, proxy_environment
    from smoothgen.service import CertificationService, ServiceConfig
    from smoothgen.trust import ServerKeys

    torch.set_num_threads(1)
    keep_freed_memory()  # as each replica does (smoothgen._malloc), so both modes allocate alike
    levels = [int(c) for c in args.clients.split(",")]
    bodies = _bodies(args.requests, args.n)
    port = _free_port()
    state = tempfile.mkdtemp(prefix="smoothgen-serve-load-")
    config = ServiceConfig(backend="eager", batch_size=BATCH_SIZE, max_queue=max(levels), keys=ServerKeys.load_or_create(state),
                           audit_db=os.path.join(state, "audit.sqlite"))
    proxy_environment(config.max_body)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(application(config, replicas=1, num_cpus=1), name="smoothgen", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        local_service = CertificationService(ServiceConfig(
            backend="eager", batch_size=BATCH_SIZE, max_queue=max(levels), endpoints=("certify",), keys=config.keys,
            audit_db=os.path.join(state, "audit-in-process.sqlite")))
        for clients in levels:
            runs = []
            for _ in range(args.repeat):
                idle = idle_rate()
                runs.append((measure_in_process(bodies, clients), measure_http(url, bodies, clients, idle), idle,
                             measure_service(local_service, bodies, clients)))
            added = [h["cpu_ms_per_certificate"] - local["cpu_ms_per_certificate"] for local, h, *_ in runs]
            median = lambda values: statistics.median(values)  # noqa: E731
            row = {"clients": clients, "runs": [{"in_process": local, "http": h, "idle_ray_cpu_s_per_s": idle, "service": svc}
                                                 for local, h, idle, svc in runs],
                   "service_cpu_ms": median([r[3]["cpu_ms_per_certificate"] for r in runs]),
                   "in_process_cpu_ms": median([r[0]["cpu_ms_per_certificate"] for r in runs]),
                   "http_server_cpu_ms": median([r[1]["cpu_ms_per_certificate"] for r in runs]),
                   "http_client_cpu_ms": median([r[1]["client_cpu_ms_per_certificate"] for r in runs]),
                   "http_parts_cpu_ms": {k: median([r[1]["cpu_ms_per_certificate_by_part"][k] for r in runs])
                                         for k in ("proxy", "replica", "other")},
                   "added_cpu_ms_per_certificate": median(added), "added_each_run": added,
                   "in_process_cert_per_s": median([r[0]["certificates_per_s"] for r in runs]),
                   "http_cert_per_s": median([r[1]["certificates_per_s"] for r in runs])}
            rows.append(row)
            print(f"clients {clients:3d}: CPU-ms per certificate, median of {len(runs)}: in-process "
                  f"{row['in_process_cpu_ms']:.1f}, service in process {row['service_cpu_ms']:.1f}, HTTP server {row['http_server_cpu_ms']:.1f} (client "
                  f"{row['http_client_cpu_ms']:.1f}; proxy {row['http_parts_cpu_ms']['proxy']:.1f}, replica "
                  f"{row['http_parts_cpu_ms']['replica']:.1f}, rest of Ray {row['http_parts_cpu_ms']['other']:.1f} before "
                  f"idle); HTTP adds {row['added_cpu_ms_per_certificate']:+.1f} "
                  f"(each run: {', '.join(f'{a:+.1f}' for a in added)}); cert/s in-process "
                  f"{row['in_process_cert_per_s']:.1f}, HTTP {row['http_cert_per_s']:.1f}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs", "torch": torch.__version__, "command": " ".join(sys.argv),
              "requests": args.requests, "n": args.n, "alpha": ALPHA, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
