"""A step's format describes its contents for `ckpt show`: leaves, shapes and dtypes, no payload.

Framework-free: a user-registered format, the tree format (numpy), and the torch format's
listing of a `state.pt` built by hand (no torch), hostile pickles included.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from ckpt_core import CheckpointManager, CorruptCheckpointError, layout, register_format
from ckpt_core.cli import main
from ckpt_core.formats import DescribableFormat, Format, StepReader, TreeEntry, TreeListing
from ckpt_core.inspect import list_tree
from ckpt_core.run import open_directory, read_manifest


class TextFormat:
    """A user's format: a state's repr in one text file, no `describe`."""

    name = "text-describe-test"

    def accepts(self, state: Any) -> bool:
        return False

    def snapshot(self, state: Any) -> Any:
        return dict(state)

    def write(self, state: Any, writer: Any) -> None:
        with writer.open("state.json") as f:
            f.write(json.dumps(state).encode())

    def read(self, reader: StepReader, like: Any = None) -> Any:
        return json.loads(reader.read_bytes("state.json"))


class DescribedTextFormat(TextFormat):
    """The same format, also saying what a step holds (from the JSON, which holds no arrays)."""

    name = "text-described-test"

    def describe(self, reader: StepReader) -> TreeListing:
        state = json.loads(reader.read_bytes("state.json"))
        entries = [TreeEntry(k, "list", "float32", (len(v),), 4 * len(v)) for k, v in state.items()]
        return TreeListing(entries, "the JSON of state.json")


def show_json(capsys: pytest.CaptureFixture[str], *args: Any) -> Any:
    capsys.readouterr()
    status = main(["show", *map(str, args), "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


def test_a_registered_format_with_describe_shows_its_tree_in_ckpt_show(tmp_path, capsys):
    fmt = DescribedTextFormat()
    assert isinstance(fmt, DescribableFormat)
    register_format(fmt, replace=True)
    with CheckpointManager(tmp_path / "r", format=fmt.name) as mgr:
        mgr.save(2, {"w": [1.0, 2.0, 3.0], "b": [0.0]})
    tree = show_json(capsys, tmp_path / "r")["tree"]
    assert tree["source"] == "the JSON of state.json" and tree["notes"] == []
    assert tree["entries"] == [
        {"path": "w", "kind": "list", "dtype": "float32", "shape": [3], "bytes": 12, "value": None},
        {"path": "b", "kind": "list", "dtype": "float32", "shape": [1], "bytes": 4, "value": None},
    ]
    capsys.readouterr()
    assert main(["show", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "w" in text and "(3,)" in text and "float32" in text


def test_a_registered_format_without_describe_shows_its_files(tmp_path, capsys):
    fmt = TextFormat()
    assert isinstance(fmt, Format) and not isinstance(fmt, DescribableFormat)
    register_format(fmt, replace=True)
    with CheckpointManager(tmp_path / "r", format=fmt.name) as mgr:
        mgr.save(1, {"w": [1.0]})
    doc = show_json(capsys, tmp_path / "r")
    assert [f["name"] for f in doc["files"]] == ["state.json"]
    assert doc["tree"]["entries"] == [] and doc["tree"]["source"] == "nothing"
    assert doc["tree"]["notes"] == [f"format {fmt.name!r} has no header reader; files only"]


def test_a_step_of_a_format_not_registered_here_shows_its_files(tmp_path):
    with CheckpointManager(tmp_path / "r") as mgr:
        mgr.save(1, {"w": np.ones(2)})
    step = tmp_path / "r" / layout.step_dirname(1)
    doc = json.loads((step / layout.MANIFEST).read_text())
    doc["format"] = "someone-elses-format"
    (step / layout.MANIFEST).write_text(json.dumps(doc))
    storage = open_directory(tmp_path / "r")
    listing = list_tree(storage, read_manifest(storage, step.name))
    assert listing.entries == []
    assert listing.notes == [
        "format 'someone-elses-format' is not registered in this process; files only"
    ]


class FailingDescribeFormat(TextFormat):
    """A user's format whose `describe` has a bug."""

    name = "text-failing-describe-test"

    def describe(self, reader: StepReader) -> TreeListing:
        raise KeyError("nodes")


def test_a_format_whose_describe_fails_shows_its_files_and_the_error(tmp_path, capsys):
    register_format(FailingDescribeFormat(), replace=True)
    with CheckpointManager(tmp_path / "r", format=FailingDescribeFormat.name) as mgr:
        mgr.save(1, {"w": [1.0]})
    doc = show_json(capsys, tmp_path / "r")
    assert [f["name"] for f in doc["files"]] == ["state.json"]
    assert doc["tree"]["entries"] == [] and doc["tree"]["error"] is None
    assert doc["tree"]["notes"] == [
        f"format {FailingDescribeFormat.name!r} failed to describe the step "
        "(KeyError: 'nodes'); files only"
    ]
    assert main(["show", str(tmp_path / "r")]) == 0
    assert "KeyError: 'nodes'" in capsys.readouterr().out


# ---------------------------------------------------------------- the tree format


def tree_listing(run: Path, step: int) -> TreeListing:
    storage = open_directory(run)
    return list_tree(storage, read_manifest(storage, layout.step_dirname(step)))


def test_tree_describes_an_incremental_step_without_opening_a_shard(tmp_path):
    state = {"big": np.zeros((300_000, 8), np.float32), "small": np.ones(3, np.int16), "n": 4}
    with CheckpointManager(tmp_path / "r", incremental=True) as mgr:
        mgr.save(1, state)
    step = tmp_path / "r" / layout.step_dirname(1)
    shards = sorted(step.glob("arrays-*.safetensors"))
    assert shards
    for shard in shards:  # tree.json and the index say it all
        shard.write_bytes(b"")
    entries = {e.path: e for e in tree_listing(tmp_path / "r", 1).entries}
    assert entries["big"] == TreeEntry("big", "numpy", "float32", (300_000, 8), 300_000 * 8 * 4)
    assert entries["small"] == TreeEntry("small", "numpy", "int16", (3,), 6)
    assert entries["n"] == TreeEntry("n", "int", value=4)


def test_tree_listing_refuses_a_lying_safetensors_header(tmp_path):
    # The listing uses the format's validated header reader: offsets that do not tile the data
    # are damage, not a tree to show.
    with CheckpointManager(tmp_path / "r") as mgr:
        mgr.save(1, {"w": np.ones((2, 3), np.float32)})
    payload = tmp_path / "r" / layout.step_dirname(1) / "arrays.safetensors"
    data = payload.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["w"]["shape"] = [2, 9]  # 72 bytes claimed in a file that holds 24
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    payload.write_bytes(data[:8] + raw + data[8 + n :])
    with pytest.raises(CorruptCheckpointError, match="invalid safetensors header"):
        tree_listing(tmp_path / "r", 1)


# ---------------------------------------------------------------- the torch format, no torch


class Planted:
    """Unpickling this calls os.mkdir(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def plant_torch_step(run: Path, data_pkl: bytes) -> None:
    """A committed torch-format step whose `state.pt` is a zip holding `data_pkl`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
    payload = buf.getvalue()
    step = run / layout.step_dirname(1)
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(payload)
    manifest = {
        "ckpt_core_manifest": 1,
        "step": 1,
        "time": 1.0,
        "format": "torch",
        "metrics": {},
        "metadata": None,
        "versions": {},
        "payload_dir": "",
        "checksum": "xxh3_64",
        "files": {"state.pt": {"size": len(payload), "xxh3_64": xxhash.xxh3_64_hexdigest(payload)}},
    }
    (step / layout.MANIFEST).write_text(json.dumps(manifest))


def test_torch_listing_never_runs_a_planted_reduce(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    plant_torch_step(tmp_path / "r", pickle.dumps({"epoch": 3, "evil": Planted(marker)}))
    entries = {e.path: e for e in tree_listing(tmp_path / "r", 1).entries}
    assert entries["epoch"] == TreeEntry("epoch", "int", value=3)
    assert entries["evil"].kind == "object" and "mkdir" in entries["evil"].value
    doc = show_json(capsys, tmp_path / "r")
    assert any(r["name"] == "archive/data.pkl" for r in doc["tree"]["records"])
    assert doc["tree"]["summary"].startswith("state.pt: 2 zip records, 0 tensor storages")
    assert not marker.exists(), "listing a torch step ran code from its pickle"


def test_torch_listing_stops_on_a_pickle_that_names_one_object_2_to_the_60_times(tmp_path):
    node: list[Any] = ["leaf"]
    for _ in range(60):  # the pickle's memo keeps this tiny; a naive walk never ends
        node = [node, node]
    plant_torch_step(tmp_path / "r", pickle.dumps(node))
    listing = tree_listing(tmp_path / "r", 1)
    assert any("listing stopped after" in note for note in listing.notes), listing.notes
    assert len(listing.entries) <= 100_000


def test_torch_listing_of_a_damaged_pickle_keeps_the_zip_records(tmp_path):
    plant_torch_step(tmp_path / "r", b"\x80\x05not a pickle at all")
    listing = tree_listing(tmp_path / "r", 1)
    assert listing.entries == [] and listing.source == "nothing"
    assert "could not decode archive/data.pkl" in listing.notes[0]
    assert [name for name, _ in listing.records] == ["archive/data.pkl", "archive/version"]


class HugeBytearray:
    """Unpickling this calls bytearray(10**12): a terabyte from a pickle of a few bytes."""

    def __reduce__(self) -> Any:
        return (bytearray, (10**12,))


@pytest.mark.parametrize("protocol", [2, 5])  # torch.save writes protocol 2
def test_torch_listing_never_allocates_a_bytearray_a_pickle_sizes(tmp_path, protocol):
    state = {"huge": HugeBytearray(), "blob": bytearray(b"abc"), "text": bytearray("xy", "latin1")}
    plant_torch_step(tmp_path / "r", pickle.dumps(state, protocol=protocol))
    entries = {e.path: e for e in tree_listing(tmp_path / "r", 1).entries}
    assert entries["huge"].kind == "object" and "bytearray" in entries["huge"].value
    assert entries["blob"] == TreeEntry("blob", "bytearray", value="<3 bytes>")
    assert entries["text"] == TreeEntry("text", "bytearray", value="<2 bytes>")
