"""Medians of the throughput benchmarks of one run, so that their ratio is printed at the end."""

MEDIANS: dict[str, float] = {}
SAMPLES: dict[str, int] = {}


def record(benchmark, name: str, samples: int) -> None:
    """Remember a finished benchmark's median (seconds) and how many model evaluations it made."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not benchmark.disabled:
        MEDIANS[name] = stats.stats.median
        SAMPLES[name] = samples
