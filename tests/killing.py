"""Kill a saving process at random instants and check what it left behind.

A child (forked from `python -m tests.killing zygote FORMAT`, which imported everything once)
warms up with one save elsewhere, then opens the directory like a restarted job would and
saves forever. The parent kills it with SIGKILL a random time after it warmed up, so a kill
can land while the manager opens (sweeping temporaries, repairing replacements, removing old
steps under `overwrite`), while a step is written or committed, while retention prunes, or
between saves.

Each saved state is a pure function of one integer, its *content id*, stored in the state
itself, so whatever survives can be checked exactly. The scenarios:

* `plain`: steps 1, 2, 3, ... with `max_to_keep=3, keep_period=10`;
* `prune`: `max_to_keep=1` and the 2 best by a metric: almost every commit deletes steps;
* `replace`: saves cycle over `REPLACE_SLOTS` step numbers, so every save replaces a
  committed step (content id `c` is saved as step `c % REPLACE_SLOTS`);
* `replace-without-exchange`: the same where the filesystem cannot swap two directories
  atomically (renameat2 RENAME_EXCHANGE), so the core moves the old step aside first;
* `overwrite`: every start opens with `on_existing="overwrite"`, removing what the previous
  child left, and starts again at step 1;
* `incremental`: as `plain` with `incremental=True` and a leaf that never changes, so every
  save hard-links shards of the previous step and retention deletes steps whose files later
  steps share.

The child writes progress markers (`opened`, `saving C`, `committed C`, `prune-begin`,
`prune-end`) to a file, unbuffered; the parent reads them after the kill to check durability
(a save that returned is never lost) and to say where the kill landed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = 1 << 19  # 2 MiB of float32 per array: a save takes a few milliseconds
REPLACE_SLOTS = 3
SCENARIOS = ("plain", "prune", "replace", "replace-without-exchange", "overwrite", "incremental")
FROZEN_ELEMENTS = 1 << 19  # the `incremental` scenario's unchanging leaf: 2 MiB, two row blocks
# The longest random delay between the child's warm-up and the kill: orbax saves are slower
# (~0.1 s each), so its kills spread over a longer window.
MAX_DELAY = {"tree": 0.3, "torch": 0.4, "orbax": 1.0, "pickle": 0.3}
TEMPORARY_PREFIXES = (".tmp-", ".old-")


def expected_state(step: int, fmt: str, scenario: str = "plain") -> dict:
    """The state saved with content id `step`: a pure function of it."""
    rng = np.random.default_rng(step)
    arrays = {"a": rng.standard_normal(ELEMENTS, dtype=np.float32), "b": np.full(7, step, np.int64)}
    if scenario == "incremental":
        arrays["frozen"] = np.arange(FROZEN_ELEMENTS, dtype=np.float32)
    if fmt == "torch":
        import torch

        return {k: torch.from_numpy(v) for k, v in arrays.items()} | {"step": step}
    if fmt == "orbax":
        import jax.numpy as jnp

        return {"a": jnp.asarray(arrays["a"]), "b": arrays["b"], "step": step}
    return arrays | {"step": step}


def scenario_options(scenario: str) -> dict[str, Any]:
    """The CheckpointManager options (besides format/async/on_existing) of a scenario."""
    if scenario == "plain":
        return {"max_to_keep": 3, "keep_period": 10}
    if scenario == "prune":
        return {"max_to_keep": 1, "best_fn": "loss", "keep_best": 2}
    if scenario.startswith("replace"):
        return {"max_to_keep": None}
    if scenario == "overwrite":
        return {"max_to_keep": 3}
    if scenario == "incremental":
        return {"max_to_keep": 3, "keep_period": 10, "incremental": True}
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")


def step_of(content: int, scenario: str) -> int:
    """The step number under which content id `content` is saved."""
    return content % REPLACE_SLOTS if scenario.startswith("replace") else content


def loss_of(content: int) -> float:
    # Scrambled, so the best steps move around and `prune` deletes old best steps too.
    return float((content * 7919) % 13)


_MARKER_FD = 1  # where progress markers go: stdout, or a file in a forked child


def _say(text: str) -> None:
    # os.write, unbuffered: a marker is out before the next instruction runs.
    os.write(_MARKER_FD, f"{text}\n".encode())


def _warm_up(fmt: str) -> None:
    """One save into a scratch directory: the first save of a process (orbax: ~0.7 s) is not
    what the kills should be spent on."""
    import shutil
    import tempfile

    from ckpt_core import CheckpointManager

    scratch = tempfile.mkdtemp(prefix="ckpt-warm-")
    try:
        with CheckpointManager(scratch, format=fmt, allow_pickle=True) as mgr:
            mgr.save(0, expected_state(0, fmt))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def child(directory: str, fmt: str, mode: str, on_existing: str, scenario: str = "plain") -> None:
    """Open `directory` like a restarted job and save forever (until killed)."""
    from ckpt_core import CheckpointManager
    from ckpt_core.storage import LocalStorage

    real_delete_step = LocalStorage.delete_step

    def delete_step(self: Any, name: str) -> None:
        _say("prune-begin")
        real_delete_step(self, name)
        _say("prune-end")

    LocalStorage.delete_step = delete_step  # type: ignore[method-assign]
    if scenario == "replace-without-exchange":
        # As on a filesystem without renameat2(RENAME_EXCHANGE): the old step is moved aside,
        # then the new one in, and a kill between the two renames is repaired on open.
        import ckpt_core.storage.atomicity

        ckpt_core.storage.atomicity._exchange = lambda a, b: False
    if scenario == "overwrite":
        on_existing = "overwrite"
    mgr = CheckpointManager(
        directory,
        format=fmt,
        allow_pickle=True,
        async_save=(mode == "async"),
        on_existing=on_existing,
        **scenario_options(scenario),
    )
    _say("opened")
    if scenario.startswith("replace"):
        contents = [int(mgr.metadata(s)["content"]) for s in mgr.all_steps()]
        content = max(contents, default=0) + 1
    else:
        content = (mgr.latest_step() or 0) + 1
    while True:
        state = expected_state(content, fmt, scenario)
        _say(f"saving {content}")
        mgr.save(
            step_of(content, scenario),
            state,
            metrics={"loss": loss_of(content)},
            metadata={"content": content},
        )
        # Async: `save` returned after the previous save was committed.
        _say(f"committed {content if mode == 'sync' else content - 1}")
        content += 1


def zygote(fmt: str) -> None:
    """Import once, then fork one child per request: a kill costs no interpreter start.

    Requests on stdin: `DIR MODE ON_EXISTING SCENARIO MARKERS`. For each, stdout gets
    `forked PID`, then (from the child, once warmed up) `warm`, then `reaped STATUS`.
    JAX is only imported here, never initialised: its thread pools would not survive a fork.
    """
    global _MARKER_FD
    import ckpt_core.formats

    ckpt_core.formats.get_format(fmt)
    if fmt == "torch":
        import torch  # noqa: F401
    elif fmt == "orbax":
        import jax  # noqa: F401
        import orbax.checkpoint  # noqa: F401
    _say("loaded")
    for line in sys.stdin:
        directory, mode, on_existing, scenario, markers = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _MARKER_FD = os.open(markers, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                _warm_up(fmt)
                os.write(1, b"warm\n")
                child(directory, fmt, mode, on_existing, scenario)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 70
            finally:
                os._exit(code)
        _say(f"forked {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"reaped {status}")


def as_numpy(tree: dict) -> dict:
    return {k: np.asarray(v) for k, v in tree.items()}


@dataclass
class KillReport:
    kills: int = 0
    steps_checked: int = 0
    takeovers: int = 0  # reopenings of a directory whose writer was killed holding its lock
    landed: Counter = field(default_factory=Counter)  # where the kills landed
    problems: list[str] = field(default_factory=list)

    def merge(self, other: KillReport) -> None:
        self.kills += other.kills
        self.steps_checked += other.steps_checked
        self.takeovers += other.takeovers
        self.landed.update(other.landed)
        self.problems.extend(other.problems)


def _where_it_landed(markers: list[str]) -> str:
    """The phase of the child's last progress marker before the kill."""
    if "opened" not in markers:
        return "opening"
    pruning = saving = False
    for m in markers:
        if m == "prune-begin":
            pruning = True
        elif m == "prune-end":
            pruning = False
        elif m.startswith("saving"):
            saving = True
        elif m.startswith("committed"):
            saving = False
    return "pruning" if pruning else "saving" if saving else "between saves"


def _last_acknowledged(markers: list[str]) -> int | None:
    acked = [int(m.split()[1]) for m in markers if m.startswith("committed ")]
    acked = [c for c in acked if c > 0]
    return max(acked) if acked else None


def check_directory(
    directory: Path, fmt: str, scenario: str, acked: int | None
) -> tuple[list[str], int]:
    """Reopen like a restarted job and check every visible step.

    Returns:
        The problems found, and how many steps were checked.
    """
    from ckpt_core import CheckpointManager

    problems: list[str] = []
    with CheckpointManager(directory, on_existing="resume", format=fmt, allow_pickle=True) as mgr:
        leftovers = [
            p.name
            for p in directory.iterdir()
            if p.name.startswith(TEMPORARY_PREFIXES) or p.name.endswith(".partial")
        ]
        if leftovers:
            problems.append(f"leftovers after reopening: {leftovers}")
        contents: dict[int, int] = {}
        for step in mgr.all_steps():
            mgr.verify(step)
            got = as_numpy(mgr.restore(step))
            content = int(got["step"])
            contents[step] = content
            want = as_numpy(expected_state(content, fmt, scenario))
            if set(got) != set(want) or any(not np.array_equal(got[k], want[k]) for k in want):
                problems.append(f"{directory}: step {step} differs from what was saved")
            if step_of(content, scenario) != step:
                problems.append(f"step {step} holds content {content} of another step")
            if mgr.metadata(step) != {"content": content}:
                problems.append(f"step {step}: manifest {mgr.metadata(step)} vs payload {content}")
        latest = mgr.latest_step()
        pointer = directory / "latest"
        if latest is None:
            if pointer.exists():
                problems.append(f"a `latest` pointer ({pointer.read_text()!r}) without steps")
        elif not pointer.exists() or pointer.read_text().strip() != f"step_{latest:08d}":
            problems.append(f"`latest` pointer does not name step {latest}")
        if acked is not None:  # a save that returned must survive the kill
            slot = step_of(acked, scenario)
            if scenario.startswith("replace"):
                if contents.get(slot, -1) < acked:
                    problems.append(f"acknowledged content {acked} lost (slot {slot}: {contents})")
            elif latest is None or latest < acked:
                problems.append(f"acknowledged step {acked} lost; latest is {latest}")
    return problems, len(contents)


def kill_and_check(
    directory: Path,
    fmt: str,
    mode: str,
    kills: int,
    seed: int,
    on_existing: str = "resume",
    scenario: str = "plain",
) -> KillReport:
    """Start, SIGKILL at a random instant, reopen with resume and check every step; repeat.

    Each child is forked from a process that imported everything once (see `zygote`), so a
    kill costs milliseconds, not an interpreter start with torch or jax.
    """
    rnd = random.Random(seed)
    report = KillReport()
    markers_path = directory.parent / f".{directory.name}.markers"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.killing", "zygote", fmt],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        line = server.stdout.readline()
        if line.strip() != b"loaded":
            report.problems.append(f"the fork server did not start: {line!r}")
            return report
        for _ in range(kills):
            request = f"{directory} {mode} {on_existing} {scenario} {markers_path}\n"
            server.stdin.write(request.encode())
            server.stdin.flush()
            pid = status = None
            warm = False
            while not warm and status is None:  # `warm` (child) and `forked` race
                words = server.stdout.readline().decode().split()
                if not words:
                    raise RuntimeError("the fork server died")
                if words[0] == "forked":
                    pid = int(words[1])
                elif words[0] == "warm":
                    warm = True
                elif words[0] == "reaped":
                    status = int(words[1])
            if warm:
                # A third of the kills land in the first 20 ms: while the manager opens (sweep,
                # repair, overwrite) or writes its first step.
                early = rnd.random() < 1 / 3
                time.sleep(rnd.uniform(0.0, 0.02) if early else rnd.uniform(0.0, MAX_DELAY[fmt]))
                assert pid is not None
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            while status is None:
                words = server.stdout.readline().decode().split()
                if not words:
                    raise RuntimeError("the fork server died")
                if words[0] == "reaped":
                    status = int(words[1])
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                report.problems.append(f"the child ended by itself (wait status {status})")
                break
            markers = markers_path.read_text().split("\n")
            report.kills += 1
            report.landed[_where_it_landed(markers)] += 1
            acked = _last_acknowledged(markers)
            problems, checked = check_directory(directory, fmt, scenario, acked)
            report.takeovers += 1
            report.steps_checked += checked
            report.problems.extend(problems)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
        markers_path.unlink(missing_ok=True)
    return report


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote(sys.argv[2])
    else:
        child(*sys.argv[1:6])
