"""A malicious pickle placed in a step is refused by default, and none of its code runs.

The payload's `__reduce__` creates a marker directory when unpickled. It is planted as a
`pickle`-format step (written by the manager, and by hand beside a valid step), as a torch
`state.pt` (loaded with `weights_only=True`), and in place of the files of a `tree` step.
Every reader refuses (`UnsafeFormatError`, or `CorruptCheckpointError` where the bytes do not
belong there) and the marker never appears; resuming, listing, `info`, `verify` and the
`ckpt` command never unpickle. With `allow_pickle=True` the same payload does run: the
positive control that proves the payload is live.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
import zstandard

from ckpt_core import (
    CheckpointError,
    CheckpointManager,
    UnsafeFormatError,
    load_checkpoint,
)


class Malicious:
    """Unpickling this calls os.mkdir(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(step_dir: Path, fmt: str, name: str, payload: bytes) -> None:
    """Make `step_dir` a committed step of format `fmt` whose only file is `name`."""
    step_dir.mkdir(parents=True, exist_ok=True)
    (step_dir / name).write_bytes(payload)
    manifest = {
        "ckpt_core_manifest": 1,
        "step": int(step_dir.name.removeprefix("step_")),
        "time": 1.0,
        "format": fmt,
        "metrics": {},
        "metadata": None,
        "versions": {},
        "payload_dir": "",
        "checksum": "xxh3_64",
        "files": {name: {"size": len(payload), "xxh3_64": xxhash.xxh3_64(payload).hexdigest()}},
    }
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


def pickle_payload(marker: Path) -> bytes:
    return zstandard.ZstdCompressor().compress(pickle.dumps({"w": Malicious(marker)}))


def torch_payload(marker: Path, tmp: Path) -> bytes:
    torch.save({"w": torch.ones(2), "evil": Malicious(marker)}, tmp / "evil.pt")
    return (tmp / "evil.pt").read_bytes()


def every_reader(run: Path, step: int) -> list[str]:
    """Run every reader that must not unpickle; returns the exception types raised."""
    raised = []

    def attempt(fn):
        try:
            fn()
        except CheckpointError as e:
            raised.append(type(e).__name__)

    with CheckpointManager(run, read_only=True) as ro:
        attempt(lambda: ro.restore(step))
        attempt(lambda: ro.restore(step, like={"w": np.ones(2)}))
        attempt(lambda: ro.verify(step))
        attempt(lambda: ro.info(step))
    attempt(lambda: load_checkpoint(run / f"step_{step:08d}"))
    with CheckpointManager(run, on_existing="resume") as mgr:  # resume verifies the newest
        attempt(lambda: mgr.restore(step))
    from ckpt_core.cli import main

    for command in (["ls", str(run)], ["show", str(run), str(step)], ["verify", str(run)]):
        main(command)
    return raised


CASES = ["manager pickle step", "planted pickle step", "torch state.pt", "tree files"]


@pytest.mark.parametrize("case", CASES)
def test_malicious_payload_is_refused_and_never_runs(tmp_path, tally, capsys, case):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    with CheckpointManager(run) as mgr:
        mgr.save(1, {"w": np.ones(2)})
    step = run / "step_00000002"
    if case == "manager pickle step":
        with CheckpointManager(
            run, format="pickle", allow_pickle=True, on_existing="resume"
        ) as mgr:
            mgr.save(2, {"w": Malicious(marker)})
    elif case == "planted pickle step":
        plant(step, "pickle", "state.pkl.zst", pickle_payload(marker))
    elif case == "torch state.pt":
        plant(step, "torch", "state.pt", torch_payload(marker, tmp_path))
    else:
        plant(step, "tree", "tree.json", pickle.dumps({"w": Malicious(marker)}))
        shutil.copy(step / "tree.json", step / "arrays.safetensors")
        doc = json.loads((step / "manifest.json").read_text())
        doc["files"]["arrays.safetensors"] = doc["files"]["tree.json"]
        (step / "manifest.json").write_text(json.dumps(doc))
    assert not marker.exists()
    raised = every_reader(run, 2)
    capsys.readouterr()
    tally("malicious pickle", 1, case=case, refusals=len(raised))
    assert not marker.exists(), "the payload's code ran"
    if case != "tree files":
        assert "UnsafeFormatError" in raised, raised
    assert len(raised) >= 3, raised  # restore, restore(like), load_checkpoint at least


@pytest.mark.parametrize("case", ["manager pickle step", "planted pickle step"])
def test_positive_control_with_allow_pickle_the_payload_runs(tmp_path, tally, case):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    if case == "manager pickle step":
        with CheckpointManager(run, format="pickle", allow_pickle=True) as mgr:
            mgr.save(2, {"w": Malicious(marker)})
    else:
        plant(run / "step_00000002", "pickle", "state.pkl.zst", pickle_payload(marker))
    with CheckpointManager(run, read_only=True) as ro:
        with pytest.raises(UnsafeFormatError, match="allow_pickle=True"):
            ro.restore(2)
        assert not marker.exists()
    with CheckpointManager(run, read_only=True, allow_pickle=True) as trusting:
        trusting.restore(2)
    tally("malicious pickle", 1, case=f"positive control: {case}")
    assert marker.is_dir(), "the control payload did not run: the test proves nothing"
