#!/usr/bin/env python
"""What a test run spent its time on: each phase's wall time (``ci/phase.sh``), the vLLM starts
of the end-to-end tests (``$E2E_SERVER_STARTS_FILE``) and the ten slowest tests (pytest's JUnit
XML reports). ``make test`` prints it at its end, whether the run passed or not.

usage: python ci/report.py REPORT_DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def phases(report: Path) -> list[tuple[str, int, int, int]]:
    """Each phase's name, seconds, exit status and start (epoch seconds)."""
    path = report / "phases.tsv"
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line]
    return [(name, int(seconds), int(code), int(start)) for name, seconds, code, start in rows]


def wall_seconds(rows: list[tuple[str, int, int, int]]) -> int:
    """From the first phase's start to the last one's end: phases that ran beside another (the
    older releases' venvs, beside the end-to-end tier) count once."""
    if not rows:
        return 0
    return max(start + seconds for _, seconds, _, start in rows) - min(r[3] for r in rows)


def starts(report: Path) -> list[dict[str, object]]:
    path = report / "starts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def slowest(report: Path, n: int = 10) -> list[tuple[float, str]]:
    cases = []
    for xml in sorted(report.glob("*.xml")):
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            cases.append((float(case.get("time") or 0.0), f"{xml.stem}: {name}"))
    return sorted(cases, reverse=True)[:n]


def main(report: Path) -> None:
    rows = sorted(phases(report), key=lambda row: row[3])  # by start: some run beside others
    print("\n== where the run's time went")
    print(f"{'phase':<40} {'seconds':>8} {'min':>6}  result")
    for name, seconds, code, _ in rows:
        result = "ok" if code == 0 else f"FAILED ({code})"
        print(f"{name:<40} {seconds:>8} {seconds / 60:>6.1f}  {result}")
    total = wall_seconds(rows)
    print(f"{'total (wall)':<40} {total:>8} {total / 60:>6.1f}")
    started = starts(report)
    waited = sum(float(s.get("seconds") or 0) for s in started)
    print(f"\nvLLM starts: {len(started)} (servers and engines; {waited:.0f} s until healthy)")
    print("\nten slowest tests:")
    for seconds, name in slowest(report):
        print(f"{seconds:>8.1f} s  {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
