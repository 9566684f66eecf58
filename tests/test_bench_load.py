"""bench/load.py's report: the table and the goals, from measured numbers (the run itself needs a server)."""

from __future__ import annotations

import argparse

from bench.load import GOAL_PEAK_GB, Run, report

GB = 1024**3


def _report(start: float, warm: float, first: float, second: float, peak: float) -> str:
    latencies, failures = [0.5, 1.0, 2.0, 1.5], ["png16: AppError: x"]
    run = Run(clients=2, requests=3, rounds=2, latencies=latencies, failures=failures)
    gigabytes = {"start": start, "after warm-up": warm, "after round 1": first, "after round 2": second,
                 "peak": peak}  # fmt: skip
    run.rss = {name: int(value * GB) for name, value in gigabytes.items()}
    return report(run, argparse.Namespace(model="tiny", huge_every=20))


def test_the_table_has_every_measurement_and_the_goals() -> None:
    text = _report(1.0, 1.2, 1.25, 1.3, 1.5)
    assert text.startswith("## Load\n") and "default model `tiny`" in text
    for row in ("| requests under load | 5 (2 clients x 3 x 2 rounds) |", "| failures | 1 |",
                "| latency p50 / p95 / max | 1.25 s / 1.92 s / 2.00 s |", "| server RSS peak | 1.50 GB |",
                "| RSS growth after the warm-up (20 requests) to the end | +8.3 % |"):  # fmt: skip
        assert row in text, row
    assert f"failures 0: NOT met; peak RSS <= {GOAL_PEAK_GB} GB: met; growth within 15 %: met." in text
    assert "- png16: AppError: x" in text


def test_goals_not_met_say_so() -> None:
    text = _report(1.0, 1.0, 1.5, 1.7, 1.9)
    assert "peak RSS <= 1.6 GB: NOT met; growth within 15 %: NOT met" in text
