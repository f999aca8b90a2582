"""Prints the throughput of each benchmark and the certify/forward ratio at the end of the run."""
from bench_record import MEDIANS, SAMPLES


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    terminalreporter.section("smoothgen throughput (samples/s, median round)")
    rates = {name: SAMPLES[name] / MEDIANS[name] for name in MEDIANS}
    for name, rate in rates.items():
        terminalreporter.write_line(f"{name:32s} {rate:12.0f}")
    if "forward" in rates and "certify" in rates:
        terminalreporter.write_line(f"{'certify / forward ratio':32s} {rates['certify'] / rates['forward']:12.3f}")
