"""Damage to every file of a committed step: detected, named, and survived on resume.

For each format, every file of the newest step (payload files and the manifest) is in turn
flipped (one byte), truncated (last byte cut) and deleted. Then:

* the manager that was running when the damage happened raises `CorruptCheckpointError`
  naming the file from `restore` and `verify`;
* a read-only manager opened afterwards does the same (or, for a damaged manifest, no longer
  lists the step: a directory without a valid manifest is not a step);
* a manager opened with `on_existing="resume"` warns, moves the damaged step aside (the bytes
  kept as they were, for a post-mortem), resumes from the newest intact step, and can save
  the damaged step's number again.
"""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_core import CheckpointError, CheckpointManager, CorruptCheckpointError
from tests.reliability.faults import DAMAGES, damage, leftovers, state_in, step_files, which_state

FORMATS = ["tree", "torch", "orbax", "pickle"]
OPTS = {"allow_pickle": True, "max_to_keep": None}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(fmt: str, steps: tuple[int, ...] = (1, 2)) -> Path:
        key = f"{fmt}-{'-'.join(map(str, steps))}"
        if key not in made:
            path = tmp_path_factory.mktemp("damage-template") / key
            with CheckpointManager(path, format=fmt, **OPTS) as mgr:
                for s in steps:
                    mgr.save(s, state_in(fmt, s))
            made[key] = path
        return made[key]

    return get


def copy_of(template: Path, where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(template, where, ignore=shutil.ignore_patterns(".lock"))
    return where


def damage_and_check(run: Path, fmt: str, victim_rel: str, how: str, position: float) -> None:
    """Damage one file of step 2 of `run` (steps 1, 2) and check every promise above."""
    victim = run / "step_00000002" / victim_rel
    is_manifest = victim_rel == "manifest.json"
    live = CheckpointManager(run, format=fmt, on_existing="resume", **OPTS)
    damage(victim, how, position)
    damaged_bytes = victim.read_bytes() if victim.exists() else None
    # The running manager.
    for action in (live.restore, live.verify):
        with pytest.raises(CorruptCheckpointError) as err:
            action(2)
        assert str(victim) in str(err.value), f"{action.__name__}: {err.value}"
        assert err.value.path == str(victim)
    assert which_state(live.restore(1), fmt, [1]) == 1  # the other step is untouched
    live.close()
    # A reader opened afterwards.
    with CheckpointManager(run, read_only=True, format=fmt, **OPTS) as ro:
        if is_manifest:
            assert ro.all_steps() == [1]
        else:
            assert ro.all_steps() == [1, 2]
            with pytest.raises(CorruptCheckpointError, match=str(victim)):
                ro.restore(2)
    # A restarted job.
    with pytest.warns(RuntimeWarning, match="step 2 .* is damaged"):
        mgr = CheckpointManager(run, format=fmt, on_existing="resume", **OPTS)
    with mgr:
        assert mgr.resuming and mgr.latest_step() == 1 and mgr.all_steps() == [1]
        assert which_state(mgr.restore(), fmt, [1]) == 1
        assert (run / "latest").read_text().strip() == "step_00000001"
        aside = sorted(run.glob("step_00000002.corrupt-*"))
        assert len(aside) == 1, sorted(p.name for p in run.iterdir())
        kept = aside[0] / victim_rel
        assert (kept.read_bytes() if kept.exists() else None) == damaged_bytes
        mgr.save(2, state_in(fmt, 20))
        assert which_state(mgr.restore(2), fmt, [20]) == 20
    assert leftovers(run) == []


def file_cases(template: Path) -> list[tuple[str, str]]:
    files = [
        p.relative_to(template / "step_00000002").as_posix()
        for p in step_files(template / "step_00000002")
    ]
    return [(f, how) for f in files for how in DAMAGES]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_file_flipped_truncated_deleted(tmp_path, pristine, tally, fmt):
    template = pristine(fmt)
    cases = file_cases(template)
    for victim_rel, how in cases:
        if how != "delete" and (template / "step_00000002" / victim_rel).stat().st_size == 0:
            continue  # nothing to flip or cut
        damage_and_check(copy_of(template, tmp_path / "run"), fmt, victim_rel, how, 0.5)
    files = len({f for f, _ in cases})
    tally("damage", len(cases), format=fmt, files=files, damages=list(DAMAGES))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_stress_flips_at_many_positions_of_every_file(tmp_path, pristine, tally, fmt):
    template = pristine(fmt)
    files = sorted({f for f, _ in file_cases(template)})
    positions = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999)
    tried = 0
    for victim_rel in files:
        if (template / "step_00000002" / victim_rel).stat().st_size == 0:
            continue
        for position in positions:
            damage_and_check(copy_of(template, tmp_path / "run"), fmt, victim_rel, "flip", position)
            tried += 1
    tally("damage", tried, format=fmt, files=len(files), damages=["flip at 7 positions"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tree", "torch"])
def test_stress_several_damaged_steps_fall_back_to_the_newest_intact(
    tmp_path, pristine, tally, fmt
):
    """Damage a random file of each of the newest k steps: resume lands on the newest intact."""
    template = pristine(fmt, (1, 2, 3, 4, 5))
    rnd = random.Random(5)
    rounds = 30
    for _ in range(rounds):
        run = copy_of(template, tmp_path / "run")
        k = rnd.randint(1, 4)
        for step in range(5, 5 - k, -1):
            files = step_files(run / f"step_{step:08d}")
            damage(rnd.choice(files), rnd.choice(DAMAGES), rnd.random())
        with pytest.warns(RuntimeWarning, match="damaged"):
            mgr = CheckpointManager(run, format=fmt, on_existing="resume", **OPTS)
        with mgr:
            assert mgr.latest_step() == 5 - k
            assert which_state(mgr.restore(), fmt, [5 - k]) == 5 - k
        assert len(list(run.glob("step_*.corrupt-*"))) == k
    tally("damage", rounds, format=fmt, damages=["random file of each of the newest 1-4 steps"])


# ---------------------------------------------------------------- single-bit rot


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def bit_rot_outcome(mgr: CheckpointManager, fmt: str, n: int) -> str:
    """'detected' (CorruptCheckpointError), 'harmless' (exact state back), 'refused' (another
    CheckpointError), or the problem."""
    try:
        got = mgr.restore(2)
    except CorruptCheckpointError:
        return "detected"
    except CheckpointError:
        return "refused"
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:300]
    return "harmless" if which_state(got, fmt, [n]) == n else "WRONG DATA returned"


def test_regression_a_bit_flip_in_the_safetensors_header_is_detected(tmp_path, pristine, tally):
    """Regression (core bug fixed in 006980e): `formats/tree.py` parses the safetensors header before any checksum.

    `TreeFormat.read` reads the header of `arrays.safetensors` and uses its fields
    (`info["shape"]`, `info["data_offsets"]`) before `f.verify()` compares the checksum at
    the end. One flipped bit in a key name (`"shape"` -> `"sha`e"`) raises KeyError instead
    of CorruptCheckpointError; in an exhaustive sweep over the header of a small step, 236 of
    1408 single-bit flips crash like this. Fix: validate the header entries (or verify the
    file first), turning any inconsistency into CorruptCheckpointError naming the file.
    """
    run = copy_of(pristine("tree"), tmp_path / "run")
    victim = run / "step_00000002" / "arrays.safetensors"
    flip_bit(victim, victim.read_bytes().index(b'"shape"') + 4, 4)
    with CheckpointManager(run, read_only=True) as mgr:
        outcome = bit_rot_outcome(mgr, "tree", 2)
    tally("damage", 1, format="tree", damages=["bit flip in a safetensors header key"])
    assert outcome == "detected", outcome


def _bit_rot_cases(template: Path):
    """(file, offset, bit) anywhere in a step."""
    step = template / "step_00000002"
    choices = []
    for p in step_files(step):
        rel = p.relative_to(template).as_posix()
        choices.append(
            st.tuples(st.just(rel), st.integers(0, p.stat().st_size - 1), st.integers(0, 7))
        )
    return st.one_of(choices)


@pytest.mark.parametrize("fmt", ["tree", "torch", "pickle"])
def test_single_bit_flips_anywhere_are_detected(tmp_path, pristine, tally, fmt):
    """A flipped bit in a payload file is always detected. In the manifest (which has no
    checksum of its own) it is detected, refused with a CheckpointError, or harmless to the
    state (the metrics, time or versions changed): the tally counts each outcome."""
    template = pristine(fmt)
    outcomes: dict[str, int] = {}

    @given(case=_bit_rot_cases(template))
    @settings(max_examples=80, deadline=None, database=None)
    def check(case):
        rel, offset, bit = case
        run = copy_of(template, tmp_path / "run")
        live = CheckpointManager(run, format=fmt, on_existing="resume", **OPTS)
        flip_bit(run / rel, offset, bit)
        outcome = bit_rot_outcome(live, fmt, 2)
        live.close()
        where = "manifest" if rel.endswith("manifest.json") else "payload"
        outcomes[f"{where} {outcome}"] = outcomes.get(f"{where} {outcome}", 0) + 1
        allowed = ("detected",) if where == "payload" else ("detected", "refused", "harmless")
        assert outcome in allowed, f"{rel} byte {offset} bit {bit}: {outcome}"

    check()
    tally("damage", sum(outcomes.values()), format=fmt, damages=["single bit flip"], **outcomes)


@pytest.mark.slow
def test_stress_every_bit_of_the_tree_headers_is_detected(tmp_path, pristine, tally):
    """Every single-bit flip in the safetensors header and in tree.json: always detected."""
    template = pristine("tree")
    step = template / "step_00000002"
    header_end = 8 + struct.unpack("<Q", (step / "arrays.safetensors").read_bytes()[:8])[0]
    regions = {"arrays.safetensors": header_end, "tree.json": (step / "tree.json").stat().st_size}
    run = copy_of(template, tmp_path / "run")
    outcomes: dict[str, int] = {}
    with CheckpointManager(run, read_only=True, **OPTS) as ro:
        for name, end in regions.items():
            victim = run / "step_00000002" / name
            original = victim.read_bytes()
            for offset in range(end):
                for bit in range(8):
                    flip_bit(victim, offset, bit)
                    outcome = bit_rot_outcome(ro, "tree", 2)
                    victim.write_bytes(original)
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    assert outcome == "detected", f"{name} byte {offset} bit {bit}: {outcome}"
    tally("damage", sum(outcomes.values()), format="tree", damages=["every bit of the headers"])
