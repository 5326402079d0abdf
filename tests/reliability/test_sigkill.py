"""SIGKILL at random instants of sync and async saves, during pruning, replacement and overwrite.

Each kill is followed by what a restarted job does: open the directory with
`on_existing="resume"` (taking over the dead writer's lock), and then every visible step must
verify and restore to exactly what was saved under it, no temporary may remain, `latest` must
name the newest step, and no save that had returned may be lost. See `tests/killing.py` for
the child and the scenarios (`plain`, `prune`, `replace`, `overwrite`).
"""

from __future__ import annotations

import pytest

from tests.killing import SCENARIOS, kill_and_check

# Kills per (format, mode, scenario) in the stress run: 10 x 12 + 8 x 8 + 8 x 6 = 232
# (the two-rename fallback of `replace-without-exchange` is the same for every format: tree).
STRESS_KILLS = {"tree": 12, "torch": 8, "orbax": 6}
STRESS_CASES = [
    (fmt, mode, scenario)
    for fmt in sorted(STRESS_KILLS)
    for mode in ("sync", "async")
    for scenario in SCENARIOS
    if scenario != "replace-without-exchange" or fmt == "tree"
]


def _kill(tmp_path, tally, fmt, mode, scenario, kills, seed):
    report = kill_and_check(tmp_path / "run", fmt, mode, kills, seed, scenario=scenario)
    tally(
        "SIGKILL",
        report.kills,
        format=fmt,
        mode=mode,
        scenario=scenario,
        steps_checked=report.steps_checked,
        lock_takeovers=report.takeovers,
        landed=dict(report.landed),
    )
    assert report.problems == [], "\n".join(report.problems)
    assert report.kills == kills and report.steps_checked > 0


@pytest.mark.parametrize(
    ("fmt", "mode", "scenario", "kills"),
    [
        ("tree", "sync", "prune", 4),
        ("tree", "async", "replace", 4),
        ("tree", "sync", "replace-without-exchange", 4),
        ("tree", "sync", "overwrite", 4),
        ("torch", "async", "prune", 3),
        ("orbax", "sync", "replace", 3),
    ],
)
def test_sigkill_sample(tmp_path, tally, fmt, mode, scenario, kills):
    _kill(tmp_path, tally, fmt, mode, scenario, kills, seed=kills)


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "mode", "scenario"), STRESS_CASES)
def test_stress_sigkill(tmp_path, tally, fmt, mode, scenario):
    seed = sum(map(ord, f"{fmt}{mode}{scenario}"))
    _kill(tmp_path, tally, fmt, mode, scenario, STRESS_KILLS[fmt], seed)
