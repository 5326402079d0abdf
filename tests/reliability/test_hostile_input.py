"""Hostile and random manifests, structure files and headers: a clear error, nothing touched outside.

A step directory is input from whoever could write to the disk. Hypothesis builds hostile
versions of a committed step (a manifest with wrong types, huge numbers, unknown versions,
file names with `..` or absolute paths, garbage bytes; `tree.json` and safetensors headers
with matching checksums but lying contents; symlinks to a file or a step outside the
directory) and every reader entry point is run on it: a read-only manager, `restore`,
`verify`, `info`, the one-shot functions, a manager resuming (which moves damaged steps
aside), one overwriting, and saves into it. Every failure must be a `CheckpointError`;
a sentinel directory outside the checkpoint directory must keep its exact contents and
modification times.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    checkpoint_exists,
    load_checkpoint,
    load_metadata,
)

SENTINEL = b"precious bytes outside the checkpoint directory\n" * 4
STATE = {"w": np.arange(6, dtype=np.float32), "nested": {"b": np.ones(2, np.int64)}, "n": 2}
QUICK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STRESS = settings(QUICK, max_examples=500)

# ---------------------------------------------------------------- a world to attack


def _record(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "xxh3_64": xxhash.xxh3_64(data).hexdigest()}


def build_world(root: Path) -> None:
    """`root/run` (steps 1 and 2) and `root/outside` (a sentinel file and a valid step)."""
    with CheckpointManager(root / "run") as mgr:
        mgr.save(1, {**STATE, "n": 1})
        mgr.save(2, STATE)
    (root / "run" / ".lock").unlink()
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SENTINEL)
    shutil.copytree(root / "run" / "step_00000002", outside / "step_00000002")


def snapshot_outside(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in sorted((root / "outside").rglob("*")):
        st_ = p.lstat()
        out[str(p)] = (p.read_bytes() if p.is_file() else b"", st_.st_mtime_ns)
    out["<dir>"] = (b"", (root / "outside").stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def world_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-template")
    build_world(root)
    return root


def attack(template: Path, hostile: Callable[[Path], None]) -> list[str]:
    """Copy the world, make step 2 hostile, run every reader; returns the unhandled errors."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "w"
        shutil.copytree(template, root, symlinks=True)
        hostile(root)
        before = snapshot_outside(root)
        problems = exercise(root / "run", root / "run" / "step_00000002")
        after = snapshot_outside(root)
        if before != after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            problems.append(f"outside the checkpoint directory, changed: {changed}")
        return problems


def exercise(run: Path, step_dir: Path) -> list[str]:
    problems: list[str] = []

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()
        except CheckpointError:
            return None
        except Exception as e:
            problems.append(f"{what}: unhandled {type(e).__name__}: {e}"[:400])
            return None

    def read_only() -> None:
        with CheckpointManager(run, read_only=True, allow_pickle=False) as ro:
            for step in ro.all_steps():
                attempt(f"restore({step})", lambda s=step: ro.restore(s))
                attempt(f"restore({step}, like)", lambda s=step: ro.restore(s, like=STATE))
                attempt(f"verify({step})", lambda s=step: ro.verify(s))
                attempt(f"info({step})", lambda s=step: ro.info(s))
                attempt(f"payload_path({step})", lambda s=step: ro.payload_path(s))

    def resume() -> None:
        with CheckpointManager(run, on_existing="resume") as mgr:
            if mgr.resuming:
                attempt("resume: restore()", mgr.restore)
            mgr.save(3, STATE)
            mgr.update_run_metadata({"seen": True})

    def overwrite() -> None:
        with CheckpointManager(run, on_existing="overwrite") as mgr:
            mgr.save(1, STATE)

    attempt("open read_only", read_only)
    attempt("load_checkpoint", lambda: load_checkpoint(step_dir))
    attempt("load_metadata", lambda: load_metadata(step_dir))
    exists = attempt("checkpoint_exists", lambda: checkpoint_exists(step_dir))
    if exists not in (True, False, None):
        problems.append(f"checkpoint_exists returned {exists!r}")
    attempt("open resume", resume)
    attempt("open overwrite", overwrite)
    return problems


# ---------------------------------------------------------------- hostile values

HUGE = [10**400, -(10**400), 2**63, 2**64, -1, 10**30]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from(HUGE)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
HOSTILE_NAMES = [
    "../secret.bin",
    "../../outside/secret.bin",
    "a/../../../outside/secret.bin",
    "/etc/passwd",
    "OUTSIDE_ABSOLUTE",  # replaced by the absolute path of the sentinel
    "",
    ".",
    "..",
    "a//b",
    "a\\..\\b",
    "nul\x00byte",
    "manifest.json",
    "arrays.safetensors/",
]
MANIFEST_KEYS = [
    "ckpt_core_manifest",
    "step",
    "time",
    "format",
    "metrics",
    "metadata",
    "versions",
    "payload_dir",
    "checksum",
    "files",
]
deep = st.integers(min_value=10_000, max_value=200_000).map(lambda n: "[" * n + "]" * n)


@st.composite
def manifest_edits(draw) -> list[tuple]:
    """A list of edits to a valid manifest document."""
    edit = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(MANIFEST_KEYS), json_values),
        st.tuples(st.just("del"), st.sampled_from(MANIFEST_KEYS)),
        st.tuples(
            st.just("set"),
            st.just("ckpt_core_manifest"),
            st.sampled_from([0, 2, 99, "1", 1.0, True, None, 10**400]),
        ),
        st.tuples(
            st.just("set"),
            st.just("format"),
            st.sampled_from(["torch", "orbax", "pickle", "nope", "", "../tree"]),
        ),
        st.tuples(st.just("set"), st.sampled_from(["step", "time"]), st.sampled_from(HUGE)),
        st.tuples(st.just("metric"), st.sampled_from([*HUGE, float("inf"), float("nan")])),
        st.tuples(st.just("file"), st.sampled_from(HOSTILE_NAMES), st.booleans()),
        st.tuples(
            st.just("record"),
            st.sampled_from(["arrays.safetensors", "tree.json"]),
            st.sampled_from(["size", "xxh3_64"]),
            json_values,
        ),
        st.tuples(st.just("payload_dir"), st.sampled_from(HOSTILE_NAMES)),
        st.tuples(st.just("deep"), deep),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def apply_edits(root: Path, edits: list[tuple]) -> None:
    path = root / "run" / "step_00000002" / "manifest.json"
    doc = json.loads(path.read_text())
    sentinel = str(root / "outside" / "secret.bin")
    raw_tail = None
    for e in edits:
        kind = e[0]
        if kind == "set":
            doc[e[1]] = e[2]
        elif kind == "del":
            doc.pop(e[1], None)
        elif kind == "metric":
            doc["metrics"] = {"loss": e[1]}
        elif kind in ("file", "payload_dir"):
            name = sentinel if e[1] == "OUTSIDE_ABSOLUTE" else e[1]
            if kind == "payload_dir":
                doc["payload_dir"] = name
                continue
            files = doc.get("files") if isinstance(doc.get("files"), dict) else {}
            files[name] = _record(SENTINEL)  # the worst case: it checks out against the sentinel
            if e[2]:  # and the real payload is no longer listed
                files.pop("arrays.safetensors", None)
            doc["files"] = files
        elif kind == "record":
            files = doc.get("files")
            if isinstance(files, dict) and isinstance(files.get(e[1]), dict):
                files[e[1]][e[2]] = e[3]
        elif kind == "deep":
            raw_tail = e[1]
    text = json.dumps(doc, allow_nan=True)
    if raw_tail is not None:  # nesting deeper than any recursion limit, in the metadata
        text = text[:-1] + f', "metadata": {raw_tail}}}'
    path.write_text(text)


@given(edits=manifest_edits())
@QUICK
def test_hostile_manifests_raise_checkpoint_errors_and_touch_nothing_outside(
    world_template, tally, edits
):
    problems = attack(world_template, lambda root: apply_edits(root, edits))
    tally("hostile manifest", 1, kind="edited manifest")
    assert problems == [], f"{edits!r}:\n" + "\n".join(problems)


@given(data=st.binary(max_size=300))
@QUICK
def test_garbage_manifest_bytes(world_template, tally, data):
    def hostile(root):
        (root / "run" / "step_00000002" / "manifest.json").write_bytes(data)

    problems = attack(world_template, hostile)
    tally("hostile manifest", 1, kind="random bytes")
    assert problems == [], "\n".join(problems)


SYMLINKS = {
    # The payload file is a link to the sentinel, and the manifest vouches for the sentinel.
    "payload file -> outside": lambda root: _link_payload(root),
    # The whole step directory is a link to a valid step living outside.
    "step directory -> outside": lambda root: _replace_with_link(
        root / "run" / "step_00000002", root / "outside" / "step_00000002"
    ),
    "manifest -> outside": lambda root: _replace_with_link(
        root / "run" / "step_00000002" / "manifest.json",
        root / "outside" / "step_00000002" / "manifest.json",
    ),
    "latest pointer -> outside": lambda root: _replace_with_link(
        root / "run" / "latest", root / "outside" / "secret.bin"
    ),
    "run.json -> outside": lambda root: _replace_with_link(
        root / "run" / "run.json", root / "outside" / "secret.bin"
    ),
    "temporary -> outside": lambda root: _replace_with_link(
        root / "run" / ".tmp-step_00000009-abcdef", root / "outside" / "step_00000002"
    ),
    "replaced step -> outside": lambda root: _replace_with_link(
        root / "run" / ".old-step_00000002-abcdef", root / "outside" / "step_00000002"
    ),
}


def _replace_with_link(link: Path, target: Path) -> None:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(target, link)


def _link_payload(root: Path) -> None:
    step = root / "run" / "step_00000002"
    _replace_with_link(step / "arrays.safetensors", root / "outside" / "secret.bin")
    doc = json.loads((step / "manifest.json").read_text())
    doc["files"]["arrays.safetensors"] = _record(SENTINEL)
    (step / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("case", sorted(SYMLINKS))
def test_symlinks_pointing_outside_are_never_followed_into_a_write(world_template, tally, case):
    problems = attack(world_template, SYMLINKS[case])
    tally("hostile manifest", 1, kind=f"symlink: {case}")
    assert problems == [], "\n".join(problems)


def test_regression_a_lock_file_symlink_never_touches_a_file_outside(world_template, tally):
    """Regression (core bug fixed in 68ebd23): `lock.FileLock` opens `.lock` following symlinks, then truncates and writes it.

    A `.lock` that is a symlink to a file outside the directory has that file replaced by the
    owner's JSON. Fix: open with `O_NOFOLLOW` (and replace a symlink by a regular file).
    """
    problems = attack(
        world_template,
        lambda root: _replace_with_link(root / "run" / ".lock", root / "outside" / "secret.bin"),
    )
    tally("hostile manifest", 1, kind="symlink: .lock -> outside")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("case", "edits"),
    [
        ("metric 10**400", [("metric", 10**400)]),
        ("time 10**400", [("set", "time", 10**400)]),
        ("metadata nested 100000 deep", [("deep", "[" * 100_000 + "]" * 100_000)]),
    ],
)
def test_regression_manifest_values_that_crashed_the_reader(world_template, tally, case, edits):
    """Regression (core bug fixed in 68ebd23): `Manifest.from_json` lets OverflowError / RecursionError escape.

    `float(10**400)` and `math.isfinite(10**400)` raise OverflowError; `json.loads` of deeply
    nested JSON raises RecursionError. Neither is a CorruptCheckpointError, so even opening a
    read-only manager on the directory crashes. Fix: reject ints outside the float range and
    catch RecursionError around `json.loads` (and in `tree.read_structure`).
    """
    problems = attack(world_template, lambda root: apply_edits(root, edits))
    tally("hostile manifest", 1, kind=case)
    assert problems == [], "\n".join(problems)


def _payload_is_a_directory(root: Path) -> None:
    step = root / "run" / "step_00000002"
    (step / "arrays.safetensors").unlink()
    (step / "arrays.safetensors").mkdir()


@pytest.mark.parametrize(
    "case",
    [
        (
            "payload_dir through a file",
            lambda root: apply_edits(root, [("payload_dir", "tree.json")]),
        ),
        ("listed file is a directory", _payload_is_a_directory),
    ],
    ids=lambda c: c[0],
)
def test_regression_a_listed_file_under_a_file_or_that_is_a_directory(world_template, tally, case):
    """Regression (core bug fixed in 68ebd23): `StepReader.open`/`verify` (formats/reader.py) catch only FileNotFoundError.

    A manifest whose `payload_dir` (or a file's path) goes through a regular file makes
    `open` raise NotADirectoryError (a listed file that is a directory: IsADirectoryError),
    which escapes `restore`, `verify`, `load_checkpoint` and even resuming. Fix: catch
    NotADirectoryError and IsADirectoryError there too (as a missing/damaged file), and in
    `LocalStorage._inside` refuse a path whose parent is not a directory.
    """
    problems = attack(
        world_template, lambda root: apply_edits(root, [("payload_dir", "tree.json")])
    )
    tally("hostile manifest", 1, kind="payload_dir through a file")
    assert problems == [], "\n".join(problems)


def test_regression_orbax_errors_are_checkpoint_errors(world_template, tally):
    """Regression (core bug fixed in 68ebd23): `formats/orbax.py::OrbaxFormat.read` lets orbax's own errors escape.

    A manifest that names the orbax format but lists no `orbax/` files (all listed files
    verify) makes orbax raise FileNotFoundError("Checkpoint at ... not found"), not a
    CheckpointError. Fix: require the manifest to list files under `orbax/` (else
    CorruptCheckpointError), and wrap orbax's restore errors in CorruptCheckpointError naming
    the directory.
    """
    problems = attack(world_template, lambda root: apply_edits(root, [("set", "format", "orbax")]))
    tally("hostile manifest", 1, kind="format says orbax, files are tree")
    assert problems == [], "\n".join(problems)


def test_regression_resume_checks_the_step_a_manifest_names(tmp_path, world_template, tally):
    """Regression (core bug fixed in 006980e): `CheckpointManager._quarantine_damaged_newest` verifies the wrong directory.

    It reads the manifest of directory `step_X` but verifies the files of
    `step_dirname(manifest.step)`. A copied step (`cp -r step_00000001 step_00000003`, whose
    manifest says step 1) therefore "verifies", the loop stops there, and the damaged step 2
    below it is never checked: the resumed run's latest step is the damaged one. A manifest
    with a huge step raises OSError (file name too long). Fix: treat `manifest.step != X` as
    damage there (as `_scan` already does) and build the reader from the directory name.
    """
    problems = attack(world_template, lambda root: apply_edits(root, [("set", "step", 10**400)]))
    run = tmp_path / "run"
    shutil.copytree(world_template / "run", run)
    arrays = run / "step_00000002" / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-1] + b"X")  # step 2 is damaged
    shutil.copytree(run / "step_00000001", run / "step_00000003")  # says it is step 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with CheckpointManager(run, on_existing="resume") as mgr:
            latest = mgr.latest_step()
    tally("hostile manifest", 2, kind="manifest naming another step")
    assert problems == [], "\n".join(problems)
    assert latest == 1, f"resumed from step {latest}, whose payload is damaged"


# ---------------------------------------------------------------- hostile payload descriptions


def rewrite_file(step: Path, name: str, data: bytes) -> None:
    """Replace a payload file and update the manifest so that it checks out."""
    (step / name).write_bytes(data)
    doc = json.loads((step / "manifest.json").read_text())
    doc["files"][name] = _record(data)
    (step / "manifest.json").write_text(json.dumps(doc))


def safetensors_bytes(header: Any, body: bytes = b"\0" * 64) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


header_entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F64", "I64", "BOOL", "BF16", "X9", 3, None]),
        "shape": st.one_of(
            st.lists(st.integers(min_value=-3, max_value=2**40), max_size=3), json_values
        ),
        "data_offsets": st.one_of(
            st.lists(st.integers(min_value=-10, max_value=2**40), min_size=2, max_size=2),
            json_values,
        ),
    },
)
headers = st.dictionaries(
    st.sampled_from(["w", "nested/b", "x", "__metadata__"]),
    header_entries | json_values,
    max_size=3,
)


@given(header=headers)
@QUICK
def test_regression_lying_safetensors_headers(world_template, tally, header):
    """Regression (core bug fixed in 006980e) (see test_regression_safetensors_headers_that_crashed_the_reader)."""

    def hostile(root):
        rewrite_file(
            root / "run" / "step_00000002", "arrays.safetensors", safetensors_bytes(header)
        )

    problems = attack(world_template, hostile)
    tally("hostile manifest", 1, kind="safetensors header")
    assert problems == [], f"{header!r}:\n" + "\n".join(problems)


tree_nodes = st.recursive(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["array", "none", "int", "float", "str", "bool", "bytes", "zzz"])},
        optional={"v": json_values, "name": st.sampled_from(["w", "nested/b", "q", 7])},
    ),
    lambda kids: st.fixed_dictionaries(
        {"t": st.sampled_from(["dict", "list", "tuple", "node"]), "v": st.lists(kids, max_size=3)},
        optional={"k": st.lists(json_leaves, max_size=3), "type": st.text(max_size=5)},
    ),
    max_leaves=6,
)


@given(structure=tree_nodes | json_values, version=st.sampled_from([1, 1, 1, 2, "1", None]))
@QUICK
def test_regression_lying_tree_structures(world_template, tally, structure, version):
    """Regression (core bug fixed in 68ebd23): `formats/tree.py` validates `tree.json` only in `_annotate_paths`.

    A structure that checks out against its manifest but lies (a scalar node without "v", a
    "float" whose "v" is a list, a node without "t" inside a container, keys and values of
    different lengths) raises KeyError/TypeError/ValueError from `_decode`/`_leaf_value`
    instead of CorruptCheckpointError. Fix: validate every node in `read_structure` (or turn
    those errors raised while decoding into CorruptCheckpointError naming tree.json).
    """

    def hostile(root):
        doc = json.dumps({"tree_format": version, "structure": structure}).encode()
        rewrite_file(root / "run" / "step_00000002", "tree.json", doc)

    problems = attack(world_template, hostile)
    tally("hostile manifest", 1, kind="tree.json")
    assert problems == [], f"{structure!r}:\n" + "\n".join(problems)


B = {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}  # a valid entry for nested/b


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F64", "shape": [2**40], "data_offsets": [0, 8]}, "nested/b": B},
        {"w": {"dtype": "F64", "shape": [-3], "data_offsets": [0, 24]}, "nested/b": B},
        {"w": 5, "nested/b": B},
        {"w": {"dtype": "F64", "shape": "abc", "data_offsets": [0, 24]}, "nested/b": B},
    ],
    ids=["huge shape", "negative shape", "entry not an object", "shape not a list"],
)
def test_regression_safetensors_headers_that_crashed_the_reader(world_template, tally, header):
    """Regression (core bug fixed in 006980e): `formats/tree.py::_read_header` trusts shapes and entry types.

    A header whose arrays are huge (MemoryError), negative (ValueError), or not objects
    (AttributeError/TypeError) crashes `restore` instead of raising CorruptCheckpointError.
    Fix: validate every entry (an object; shape a list of non-negative ints; data_offsets
    consistent with shape x itemsize, contiguous, within the file size the manifest records)
    before allocating.
    """
    problems = attack(
        world_template,
        lambda root: rewrite_file(
            root / "run" / "step_00000002", "arrays.safetensors", safetensors_bytes(header)
        ),
    )
    tally("hostile manifest", 1, kind="safetensors header (known crash)")
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- stress


@pytest.mark.slow
@given(
    edits=manifest_edits(),
    link=st.sampled_from([None, *sorted(SYMLINKS)]),
)
@STRESS
def test_stress_hostile_manifests_with_symlinks(world_template, tally, edits, link):
    def hostile(root):
        if link is not None:
            SYMLINKS[link](root)
        step = root / "run" / "step_00000002"
        if not step.is_symlink() and not (step / "manifest.json").is_symlink():
            apply_edits(root, edits)

    problems = attack(world_template, hostile)
    tally("hostile manifest", 1, kind="edited manifest + symlink")
    assert problems == [], f"{edits!r} {link}:\n" + "\n".join(problems)


@pytest.mark.slow
@given(header=headers, structure=tree_nodes)
@STRESS
def test_stress_lying_payload_descriptions(world_template, tally, header, structure):
    """Regression (see test_regression_lying_tree_structures): lying header and tree.json at once."""

    def hostile(root):
        step = root / "run" / "step_00000002"
        rewrite_file(step, "arrays.safetensors", safetensors_bytes(header))
        rewrite_file(
            step, "tree.json", json.dumps({"tree_format": 1, "structure": structure}).encode()
        )

    problems = attack(world_template, hostile)
    tally("hostile manifest", 1, kind="safetensors header + tree.json")
    assert problems == [], "\n".join(problems)
