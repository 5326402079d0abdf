"""Counts the faults each reliability test injects, for `RELIABILITY.md`.

Every test records what it tried with the `tally` fixture; at the end of the session the
records, with each test's outcome and duration, are written to
`build/reliability/<stress|quick>.json` (or `$CKPT_RELIABILITY_RESULTS`), which
`python -m tests.reliability.report` turns into `RELIABILITY.md`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "build" / "reliability"

_RECORDS: list[dict[str, Any]] = []
_STARTED = time.monotonic()


class Tally:
    """What one test tried: `tally(fault, tries, **details)`, callable several times."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.entries: list[dict[str, Any]] = []

    def __call__(self, fault: str, tries: int, **details: Any) -> None:
        for entry in self.entries:  # hypothesis calls once per example: add up
            if entry["fault"] == fault and entry["details"] == details:
                entry["tries"] += int(tries)
                return
        self.entries.append({"fault": fault, "tries": int(tries), "details": details})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    tally = getattr(item, "_reliability_tally", None)
    if tally is None or report.when != "call":
        return
    for entry in tally.entries:
        _RECORDS.append(
            {
                "test": item.nodeid,
                "slow": item.get_closest_marker("slow") is not None,
                "outcome": report.outcome,
                "seconds": round(report.duration, 2),
                **entry,
            }
        )


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    """Record the faults this test injects (how many times, and the details)."""
    t = Tally(request.node.nodeid)
    request.node._reliability_tally = t
    return t


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RECORDS:
        return
    target = os.environ.get("CKPT_RELIABILITY_RESULTS")
    if target is None:
        kind = "stress" if any(r["slow"] for r in _RECORDS) else "quick"
        target = str(RESULTS_DIR / f"{kind}.json")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.monotonic() - _STARTED, 1),
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {'root' if os.geteuid() == 0 else 'not root'}",
        "records": _RECORDS,
    }
    Path(target).write_text(json.dumps(doc, indent=1, default=str))
