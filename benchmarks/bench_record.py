"""Figures of the benchmarks of one run, so that their ratios are printed together at the end."""

#: Fastest round of each benchmark (seconds). Ratios use the fastest rounds: on a shared machine a
#: transient load slows some rounds, and the minimum is what the code costs without it.
MINIMA: dict[str, float] = {}
SAMPLES: dict[str, int] = {}
LINES: list[str] = []


def record(benchmark, name: str, samples: int) -> None:
    """Remember a finished benchmark's fastest round (seconds) and how many model evaluations it made.

    Names "forward:<model>" and "certify:<model>" are paired into a certify/forward ratio.
    """
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not benchmark.disabled:
        MINIMA[name] = stats.stats.min
        SAMPLES[name] = samples


def line(text: str) -> None:
    """A free-form figure for the summary (e.g. latency percentiles)."""
    LINES.append(text)
