"""Incremental saves: only what changed is written, the rest is shared with the previous step.

Local disks share by hard link, object stores (here fsspec's memory://) by server-side copy.
Every step must still restore on its own and open with safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors import safe_open

import ckpt_core.storage
from ckpt_core import CheckpointManager, CorruptCheckpointError, layout
from ckpt_core.cli import main as ckpt_main

# The file names of the tree format's two layouts (not imported from ckpt_core.formats.tree:
# importing that module first would keep the other built-in formats from registering).
ARRAYS_FILE, INDEX_FILE, STRUCTURE_FILE = (
    "arrays.safetensors",
    "arrays.safetensors.index.json",
    "tree.json",
)

FROZEN = np.random.default_rng(0).standard_normal((4096, 1024), dtype=np.float32)  # 16 MiB


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    yield f"memory://ckpt-incremental/{uuid.uuid4().hex}"


@pytest.fixture
def bytes_written(monkeypatch):
    """Payload bytes that went through a writer (what a save actually wrote or uploaded)."""
    counted = [0]
    real_write = ckpt_core.storage.HashingWriter.write

    def write(self, data):
        n = real_write(self, data)
        counted[0] += n
        return n

    monkeypatch.setattr(ckpt_core.storage.HashingWriter, "write", write)
    return counted


def state(step: int) -> dict:
    return {
        "base": {"frozen": FROZEN, "embedding": np.arange(300_000, dtype=np.int64)},
        "adapter": np.full((64, 64), step, dtype=np.float32),
        "step": step,
    }


def step_files(where: str, step: int) -> dict[str, str]:
    """Payload file -> where it lives, for one step, through the backend's own filesystem."""
    fs, root = fsspec.core.url_to_fs(where)
    step_dir = f"{root}/step_{step:08d}"
    manifest = json.loads(fs.cat(f"{step_dir}/manifest.json"))
    prefix = "/".join(p for p in (step_dir, manifest.get("payload_dir", "")) if p)
    return {name: f"{prefix}/{name}" for name in manifest["files"]}


def test_unchanged_leaves_are_shared_not_written(where, bytes_written):
    with CheckpointManager(where, incremental=True, max_to_keep=None) as mgr:
        mgr.save(0, state(0))
        full = bytes_written[0]
        bytes_written[0] = 0
        mgr.save(1, state(1))
        assert bytes_written[0] < 0.05 * full, (bytes_written[0], full)
        for s in (0, 1):
            got = mgr.restore(s)
            np.testing.assert_array_equal(got["base"]["frozen"], FROZEN)
            np.testing.assert_array_equal(got["adapter"], state(s)["adapter"])
    if where.startswith("memory://"):
        return
    files0, files1 = step_files(where, 0), step_files(where, 1)
    linked = [n for n in files1 if os.stat(files1[n]).st_ino == os.stat(files0[n]).st_ino]
    assert len(linked) >= 3 and all(os.stat(files1[n]).st_nlink == 2 for n in linked)


def test_ring_buffer_band_rewrites_only_its_blocks(where, bytes_written):
    buffer = np.zeros((1_000_000, 8), dtype=np.float32)  # 32 MB, written as a ring
    with CheckpointManager(where, incremental=True, max_to_keep=2) as mgr:
        mgr.save(0, {"replay": buffer, "cursor": 0})
        for s in range(1, 4):
            bytes_written[0] = 0
            cursor = s * 60_000  # the third band crosses a row block boundary
            buffer[cursor : cursor + 10_000] = s
            mgr.save(s, {"replay": buffer, "cursor": cursor})
            assert bytes_written[0] <= 0.15 * buffer.nbytes, (s, bytes_written[0])
        np.testing.assert_array_equal(mgr.restore()["replay"], buffer)


def test_retention_deleting_the_base_step_leaves_later_steps_intact(where):
    with CheckpointManager(where, incremental=True, max_to_keep=1) as mgr:
        for s in range(4):
            mgr.save(s, state(s))
            mgr.wait()
        assert mgr.all_steps() == [3]
        mgr.verify(3)
        np.testing.assert_array_equal(mgr.restore(3)["base"]["frozen"], FROZEN)


def test_shards_open_with_safetensors_and_blocks_reassemble(tmp_path):
    with CheckpointManager(tmp_path, incremental=True) as mgr:
        mgr.save(0, state(0))
        step_dir = Path(mgr.path(0))
        assert mgr.payload_path(0) == step_dir / INDEX_FILE
    assert not (step_dir / ARRAYS_FILE).exists()
    index = json.loads((step_dir / INDEX_FILE).read_text())
    tensors = {}
    for name, shard in index["weight_map"].items():
        with safe_open(str(step_dir / shard), "np") as f:
            tensors[name] = f.get_tensor(name)
    assert sum(t.nbytes for t in tensors.values()) == index["metadata"]["total_size"]
    structure = json.loads((step_dir / STRUCTURE_FILE).read_text())["structure"]
    base = structure["v"][structure["k"].index("base")]
    blocks = [name for name, _ in base["v"][base["k"].index("frozen")]["tensors"]]
    assert len(blocks) == 8
    np.testing.assert_array_equal(np.concatenate([tensors[b] for b in blocks]), FROZEN)
    np.testing.assert_array_equal(tensors["adapter"], state(0)["adapter"])


def test_a_damaged_shared_file_is_reported_for_every_step_and_resume_falls_back(tmp_path, capsys):
    run = tmp_path / "run"
    with CheckpointManager(run, incremental=True, max_to_keep=None) as mgr:
        mgr.save(0, state(0) | {"base": {"frozen": -FROZEN, "embedding": np.zeros(3)}})
        mgr.save(1, state(1))
        mgr.save(2, state(2))  # shares the frozen base with step 1, not with step 0
    frozen_shard = next(
        p for p in sorted((run / "step_00000002").glob("arrays-*")) if p.stat().st_nlink == 2
    )
    with open(frozen_shard, "r+b") as f:  # damaged in place: every link sees it
        f.seek(4096)
        f.write(b"\xff" * 16)
    assert ckpt_main(["verify", str(run)]) != 0
    report = capsys.readouterr().out
    assert "1 of 3 steps intact" in report
    assert f"step_00000001/{frozen_shard.name}" in report
    assert f"step_00000002/{frozen_shard.name}" in report
    with CheckpointManager(run, read_only=True) as mgr:
        for s in (1, 2):
            with pytest.raises(CorruptCheckpointError, match=frozen_shard.name):
                mgr.verify(s)
        mgr.verify(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr = CheckpointManager(run, on_existing="resume")
    with mgr:
        assert mgr.latest_step() == 0  # step 2 moved aside, then step 1 which shared the file
        np.testing.assert_array_equal(mgr.restore()["base"]["frozen"], -FROZEN)
    assert sum("damaged" in str(w.message) for w in caught) == 2
    aside = sorted(p.name for p in run.iterdir() if layout.CORRUPT_MARK in p.name)
    assert [n.split(layout.CORRUPT_MARK)[0] for n in aside] == ["step_00000001", "step_00000002"]


def test_off_keeps_the_single_file_layout_and_both_layouts_restore(tmp_path):
    run = tmp_path / "run"
    with CheckpointManager(run, incremental=False, max_to_keep=None) as mgr:
        mgr.save(0, state(0))
    assert (run / "step_00000000" / ARRAYS_FILE).exists()
    with CheckpointManager(run, on_existing="resume", incremental=True, max_to_keep=None) as mgr:
        mgr.save(1, state(1))  # nothing to share with a single-file step: written whole
        assert (Path(mgr.path(1)) / INDEX_FILE).exists()
        for s in (0, 1):
            np.testing.assert_array_equal(mgr.restore(s)["adapter"], state(s)["adapter"])
    assert ckpt_main(["show", str(run), "1"]) == 0


def test_incremental_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="incremental must be True or False"):
        CheckpointManager(tmp_path, incremental="yes")
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_a_filesystem_without_hard_links_writes_copies(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    with CheckpointManager(tmp_path, incremental=True, max_to_keep=None) as mgr:
        mgr.save(0, state(0))
        mgr.save(1, state(1))
        np.testing.assert_array_equal(mgr.restore(1)["base"]["frozen"], FROZEN)
    assert all(p.stat().st_nlink == 1 for p in tmp_path.glob("step_*/arrays-*"))
    shutil.rmtree(tmp_path / "step_00000000")
    with CheckpointManager(tmp_path, on_existing="resume") as mgr:
        np.testing.assert_array_equal(mgr.restore(1)["base"]["frozen"], FROZEN)
