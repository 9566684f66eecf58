"""Shared helpers of the benchmarks: sections of docs/benchmarks.md and number formatting."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# chexlab benchmarks\n\nEach section is rewritten by the script named in it; do not edit them by hand.\n"
)


def replace_section(name: str, body: str, doc: Path = DOC) -> None:
    """Put `body` between the markers of section `name`, keeping every other section as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.is_file() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def with_ci(metric: dict | None, digits: int = 3) -> str:
    """'0.812 (0.751-0.866)' from a metrics.json {"value", "ci"} entry; 'n/a' when undefined."""
    if not metric or metric.get("value") is None:
        return "n/a"
    text = f"{metric['value']:.{digits}f}"
    if metric.get("ci"):
        low, high = metric["ci"]
        text += f" ({low:.{digits}f}–{high:.{digits}f})"
    return text
