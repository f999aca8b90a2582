"""Scaling of `smoothgen certify --ray` over 1, 2 and 3 local Ray nodes of one CPU each, next to the local
loop (no Ray), in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_scaling.py [--num 48] [--n 16000] [--nodes 1,2,3]

One ray.cluster_utils.Cluster on this machine: a head without CPUs (it runs no task), and worker nodes of
`num_cpus=1` added one at a time; at each size the CLI certifies the same `--num` digits test images (the
embedded CNN at σ = 0.25, n0 = 100, n = --n) with `--ray ADDRESS`, in this process. Reported per size:

- steady inputs/s: records written per second after the first fifth of them (each run's worker processes
  start and load the model first: a few seconds that a long run does not pay per input);
- end-to-end inputs/s: --num over the wall time of the whole command (connection, start-up included);
- each as a ratio against one node in the same run, and a check that the records equal the local loop's
  (apart from `time` and `worker`).

Every node is a process group on the same machine: with more one-CPU nodes than cores, the nodes share them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

MIB = 1024 * 1024


def _certify(args: argparse.Namespace, out: Path, ray_address: str | None) -> tuple[float, list[float]]:
    """Run `smoothgen certify` in this process; (wall seconds, the time each record was written)."""
    from smoothgen import results
    from smoothgen.cli import main

    written: list[float] = []
    original = results.ResultsFile.append

    def timed_append(self, record):
        original(self, record)
        written.append(time.perf_counter())

    command = ["certify", "--num", str(args.num), "--n0", "100", "--n", str(args.n), "--batch-size", str(args.batch_size),
               "--no-progress", "--out", str(out)]
    if ray_address is not None:
        command += ["--ray", ray_address]
    results.ResultsFile.append = timed_append
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the summary: not needed here
            code = main(command)
        wall = time.perf_counter() - start
    finally:
        results.ResultsFile.append = original
    if code != 0:
        raise SystemExit(f"smoothgen certify exited with {code}")
    return wall, written


def _rates(num: int, wall: float, written: list[float]) -> dict:
    skip = max(1, len(written) // 5)
    steady = (len(written) - skip) / (written[-1] - written[skip - 1])
    return {"steady": steady, "end_to_end": num / wall, "wall_s": wall}


def _records(path: Path) -> dict[int, dict]:
    from smoothgen.jobs import without_timing

    return {r["idx"]: without_timing(r) for r in map(json.loads, path.read_text().splitlines())}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=48, help="inputs per run")
    parser.add_argument("--n", type=int, default=16_000, help="estimation samples per input")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--nodes", default="1,2,3", help="cluster sizes to measure, increasing")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    sizes = [int(v) for v in args.nodes.split(",")]

    import torch
    from ray.cluster_utils import Cluster

    torch.set_num_threads(1)  # the local loop on one core, like one worker
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        wall, written = _certify(args, Path(tmp) / "local.jsonl", None)
        local = _rates(args.num, wall, written)
        expected = _records(Path(tmp) / "local.jsonl")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MIB})
        try:
            for size in sizes:
                while len(cluster.worker_nodes) < size:
                    cluster.add_node(num_cpus=1, object_store_memory=80 * MIB)
                cluster.wait_for_nodes()
                out = Path(tmp) / f"ray{size}.jsonl"
                wall, written = _certify(args, out, cluster.address)
                same = _records(out) == expected
                rows.append({"nodes": size, **_rates(args.num, wall, written), "same_records": same})
        finally:
            cluster.shutdown()

    base = rows[0]
    print(f"device: {_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; date {date.today()}; "
          f"--num {args.num} --n {args.n} --batch-size {args.batch_size}")
    print("| run | steady inputs/s | ratio vs 1 node | end-to-end inputs/s | ratio vs 1 node | wall s | records = local |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| local loop, no Ray (1 thread) | {local['steady']:.2f} | {local['steady'] / base['steady']:.2f} | "
          f"{local['end_to_end']:.2f} | {local['end_to_end'] / base['end_to_end']:.2f} | {local['wall_s']:.1f} | — |")
    for row in rows:
        print(f"| --ray, {row['nodes']} node(s) × 1 CPU | {row['steady']:.2f} | {row['steady'] / base['steady']:.2f} | "
              f"{row['end_to_end']:.2f} | {row['end_to_end'] / base['end_to_end']:.2f} | {row['wall_s']:.1f} | "
              f"{'yes' if row['same_records'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"local": local, "ray": rows, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
