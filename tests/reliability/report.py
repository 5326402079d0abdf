"""Render `RELIABILITY.md` from the tallies of a reliability run.

make stress                                  # writes build/reliability/stress.json
.venv/bin/pytest -m "not slow" tests/reliability   # writes build/reliability/quick.json
.venv/bin/python -m tests.reliability.report > RELIABILITY.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "build" / "reliability"

# What each fault checks, in the order the report lists them.
FAULTS = {
    "SIGKILL": (
        "SIGKILL at a random instant of a process that opens the directory and saves forever "
        "(a third of the kills within 20 ms of its start: while the manager opens or writes "
        "its first step); then a restarted job opens with `on_existing='resume'` "
        "(taking over the dead writer's lock) and every step must verify and restore exactly, "
        "no temporary may remain, `latest` must name the newest step, and no save that had "
        "returned may be lost. Scenarios: `plain` (max_to_keep=3, keep_period=10), `prune` "
        "(max_to_keep=1 + 2 best: nearly every commit deletes), `replace` (every save replaces "
        "a committed step; `-without-exchange`: as on a filesystem without renameat2 "
        "RENAME_EXCHANGE), `overwrite` (every start opens with `on_existing='overwrite'`)."
    ),
    "disk full": (
        "A real 16 MiB tmpfs (mounted by the test as root) or injected ENOSPC after a byte "
        "budget; a ballast file leaves 256 KiB, then a 4 MiB save. Must raise a "
        "CheckpointError saying the disk is full, leave no partial step or temporary, keep "
        "earlier steps intact; after the ballast is removed the same save succeeds."
    ),
    "I/O error (EIO)": (
        "A first pass counts the write-side calls of one save (file writes, fsync, "
        "rename/replace, opens for writing, mkdir; pruning and pointer updates included); "
        "then one run per call site fails that call with EIO. The error must reach the caller "
        "(async: at the next save/wait/close), the same manager must list only restorable "
        "steps and save again, and a reopened directory must be valid with nothing lost."
    ),
    "disk full (ENOSPC injected)": (
        "As the EIO sweep, failing each call with ENOSPC: every failure must be a "
        "CheckpointError saying the disk is full."
    ),
    "damage": (
        "Every file of the newest step (payload and manifest) flipped, truncated and deleted: "
        "restore and verify raise CorruptCheckpointError naming the file; resume warns, moves "
        "the step aside untouched and continues from the newest intact step. Plus random "
        "single-bit flips anywhere."
    ),
    "two writers": (
        "Racing writers (exactly one wins, the others get CheckpointLockedError); a writer "
        "SIGKILLed mid async save (refused while alive, taken over once dead, what it left is "
        "valid); object-store leases (expired taken over, live respected)."
    ),
    "SIGTERM preemption": (
        "`save_on_signals=(SIGTERM,)`: a subprocess training loop receives SIGTERM after step "
        "K and must save step K+1, stop on `preempted` and exit 0 by itself; resumed, it must "
        "end with the same weights, bit for bit, as an uninterrupted run. The same for each "
        "adapter: a Flax `CkptHook` loop, `integrations.gym.run` (saved at the next episode "
        "end) and a Lightning `Trainer` (SIGTERM, and SIGUSR1 through `trainer.should_stop`)."
    ),
    "hostile manifest": (
        "Hypothesis-built hostile steps (manifests with wrong types, huge numbers, unknown "
        "versions, `..` and absolute names, garbage bytes; lying tree.json and safetensors "
        "headers with matching checksums; symlinks to outside files and steps) run through "
        "every reader, resume, overwrite and a save: only CheckpointErrors, and a sentinel "
        "directory outside keeps its exact contents and mtimes."
    ),
    "random pytree round trip": (
        "Hypothesis-built nested dict/list/tuple trees of numpy/torch/jax arrays in every "
        "stored dtype (bfloat16, bool; empty, 0-d, non-contiguous; arbitrary bit patterns) and "
        "Python scalars, strings, bytes and None: identical types, dtypes, shapes and bytes."
    ),
    "malicious pickle": (
        "A payload whose `__reduce__` creates a directory, planted as a pickle step, a torch "
        "`state.pt` and tree files: every reader refuses (UnsafeFormatError) and no code runs; "
        "with allow_pickle=True it does run (positive control)."
    ),
}


NOTES = [
    "Orbax: when a failure is injected early in an orbax save (e.g. creating its temporary "
    "directory), orbax-checkpoint leaves worker threads (`np_type_handler`, "
    "`array_type_handler`, `write_metadata_after_commits`) waiting on a 300 s timeout; the "
    "error reaches the caller at once, but the interpreter cannot exit until they give up. "
    "This is most of the gap between the stress run's test time and its wall time.",
    "The manifest has no checksum of its own: a single flipped bit in it is detected when it "
    "breaks the JSON, a file record or the format name, and otherwise changes a metric, the "
    "time or a version silently (the `manifest harmless` counts of the bit-flip tests: the "
    "state always restores exactly). A checksum of the manifest inside the manifest would "
    "close this; retention ranks by those metrics.",
    "ENOSPC injection patches Python's file calls, which tensorstore (orbax's C++ writer) "
    "does not use: orbax's disk-full cases run on the real tmpfs only.",
]


def family(fault: str) -> str:
    return fault.split(":")[0]


def load(kind: str) -> dict[str, Any] | None:
    path = RESULTS / f"{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


def variant(details: dict[str, Any]) -> str:
    keys = ("format", "mode", "scenario", "filesystem", "framework", "kind", "case")
    parts = [str(details[k]) for k in keys if k in details]
    return " / ".join(parts) or "-"


def extra(details: dict[str, Any]) -> str:
    shown = {
        k: v
        for k, v in details.items()
        if k not in ("format", "mode", "scenario", "filesystem", "framework", "kind", "case")
    }
    return ", ".join(f"{k}: {v}" for k, v in shown.items())


def render(run: dict[str, Any], title: str) -> list[str]:
    records = run["records"]
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        t = totals[family(r["fault"])]
        t["tries"] += r["tries"]
        t[r["outcome"]] += 1
    order = [f for f in FAULTS if f in totals] + sorted(set(totals) - set(FAULTS))
    took = f" after {run['seconds'] / 60:.1f} minutes of tests" if "seconds" in run else ""
    machine = f" on {run['machine']}" if "machine" in run else ""
    lines = [f"## {title}", "", f"Run finished {run['finished']}{took}{machine}.", ""]
    lines += ["| fault | times tried | test cases passed | failed |", "|---|---:|---:|---:|"]
    for f in order:
        t = totals[f]
        lines.append(f"| {f} | {t['tries']} | {t['passed']} | {t['failed']} |")
    lines.append("")
    for f in order:
        lines += [f"### {f}", "", FAULTS.get(f, ""), ""]
        lines += ["| variant | tried | result | details |", "|---|---:|---|---|"]
        for r in records:
            if family(r["fault"]) != f:
                continue
            result = "pass" if r["outcome"] == "passed" else f"**{r['outcome'].upper()}**"
            name = r["test"].split("::")[-1]
            if "core_bug" in name or "regression" in name:
                result += " (core bug, see below)" if r["outcome"] == "failed" else " (fixed)"
            lines.append(
                f"| {r['fault']} — {variant(r['details'])} | {r['tries']} | {result} | "
                f"{extra(r['details'])} |"
            )
        lines.append("")
    failed = sorted({r["test"] for r in records if r["outcome"] == "failed"})
    if failed:
        lines += ["Failing test cases in this run:", ""]
        lines += [f"- `{t}`" for t in failed]
        lines.append("")
    return lines


def core_bugs() -> list[tuple[str, str]]:
    """(test name, docstring) of every `test_core_bug_*` (open) and `test_regression_*` (fixed)."""
    import importlib
    import inspect

    found = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(f"tests.reliability.{path.stem}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            wanted = name.startswith(("test_core_bug", "test_regression", "test_stress_core_bug"))
            if wanted and fn.__module__ == module.__name__:
                found.append((f"{path.name}::{name}", inspect.getdoc(fn) or ""))
    return found


def render_bugs(runs: list[dict[str, Any]]) -> list[str]:
    outcome: dict[str, str] = {}
    for run in runs:
        for r in run["records"]:
            key = r["test"].split("/")[-1].split("[")[0]
            if outcome.get(key) != "failed":
                outcome[key] = r["outcome"]
    lines = [
        "## Core bugs found by this suite",
        "",
        "Each is pinned by a test: `test_core_bug_*` fails until the core is fixed, "
        "`test_regression_*` guards a bug the core has fixed since (status from the runs above).",
        "",
    ]
    for name, doc in core_bugs():
        status = {"failed": "open", "passed": "fixed"}.get(outcome.get(name, ""), "not run")
        lines += [f"### `{name}` ({status})", "", doc, ""]
    return lines


def main() -> None:
    out = [
        "# Reliability",
        "",
        "What `tests/reliability/` does to ckpt-core and what happened, generated by "
        "`python -m tests.reliability.report` from the tallies of real runs: the stress run "
        "is `pytest -m slow tests/reliability` (what `make stress` runs), the quick sample is "
        'the rest of `tests/reliability`, which `make test` runs. "Times tried" counts '
        "faults injected (kills, failed calls, damaged files, hostile inputs, ...); a test "
        "case fails if any one of its tries breaks a promise. The core bugs this suite found are "
        "listed at the end, each pinned by its own test.",
        "",
    ]
    runs = []
    for kind, title in (("stress", "Stress run (`make stress`)"), ("quick", "Quick sample")):
        run = load(kind)
        if run is not None:
            out += render(run, title)
            runs.append(run)
    out += render_bugs(runs)
    out += ["## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
