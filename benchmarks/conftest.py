"""Prints the throughput of each benchmark and the certify/forward ratios at the end of the run."""
from bench_record import LINES, MINIMA, SAMPLES


def pytest_terminal_summary(terminalreporter):
    if not MINIMA and not LINES:
        return
    terminalreporter.section("smoothgen throughput (samples/s, fastest round)")
    rates = {name: SAMPLES[name] / MINIMA[name] for name in MINIMA}
    for name, rate in rates.items():
        terminalreporter.write_line(f"{name:40s} {rate:12.0f}")
    for name in rates:
        if name.startswith("certify:") and "forward:" + name[8:] in rates:
            ratio = rates[name] / rates["forward:" + name[8:]]
            terminalreporter.write_line(f"{'certify / forward ' + name[8:]:40s} {ratio:12.3f}")
    for text in LINES:
        terminalreporter.write_line(text)
