"""Figures of the benchmarks of one run, so that their ratios are printed together at the end."""

MEDIANS: dict[str, float] = {}
SAMPLES: dict[str, int] = {}
LINES: list[str] = []


def record(benchmark, name: str, samples: int) -> None:
    """Remember a finished benchmark's median (seconds) and how many model evaluations it made.

    Names "forward:<model>" and "certify:<model>" are paired into a certify/forward ratio.
    """
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not benchmark.disabled:
        MEDIANS[name] = stats.stats.median
        SAMPLES[name] = samples


def line(text: str) -> None:
    """A free-form figure for the summary (e.g. latency percentiles)."""
    LINES.append(text)
