"""The storage contract: the same cases on a local disk and on an object store (`memory://`).

Each case talks to `Storage` and `StepWriter` directly, as the manager and the formats do, so a
backend that passes them keeps every guarantee of a commit: nothing is visible before the
manifest, a failed or killed write leaves the directory as it was (after a sweep), and a
replaced step stays whole until its replacement is committed.
"""

from __future__ import annotations

import uuid

import pytest

from ckpt_core import CheckpointLockedError
from ckpt_core.commit import write_step
from ckpt_core.layout import MANIFEST
from ckpt_core.manifest import FileRecord, Manifest
from ckpt_core.storage import StepWriter, Storage, hash_stream, open_storage

STEP = "step_00000001"
NEXT = "step_00000002"


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return f"memory://ckpt-contract/{uuid.uuid4().hex}"


@pytest.fixture
def storage(where) -> Storage:
    return open_storage(where, None)


def write_files(writer: StepWriter, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with writer.open(name) as f:
            f.write(data)


def commit(storage: Storage, name: str, files: dict[str, bytes], step: int = 1) -> Manifest:
    writer = storage.begin_step(name)
    write_files(writer, files)
    manifest = Manifest(
        step=step, format="raw", files=writer.seal(), payload_dir=writer.payload_dir
    )
    writer.commit(manifest.to_json())
    return manifest


def committed(storage: Storage, name: str) -> Manifest:
    return Manifest.from_json(storage.read_bytes(f"{name}/{MANIFEST}"), storage.join(name))


def contents(storage: Storage, name: str) -> dict[str, bytes]:
    """The payload of the committed step `name`, read through its manifest."""
    manifest = committed(storage, name)
    base = "/".join(p for p in (name, manifest.payload_dir) if p)
    return {file: storage.read_bytes(f"{base}/{file}") for file in manifest.files}


def settled(storage: Storage) -> list[str]:
    """The directory's entries once background removals are done."""
    storage.drain()
    return sorted(storage.list_names())


def test_a_committed_step_reads_back_with_the_records_of_its_files(storage):
    files = {"a.bin": b"alpha" * 1000, "sub/b.bin": b"beta", "empty": b""}
    manifest = commit(storage, STEP, files)
    assert settled(storage) == [STEP]
    assert contents(storage, STEP) == files
    for name, record in manifest.files.items():
        assert record == FileRecord(len(files[name]), record.checksum)
        assert storage.hash_file(f"{STEP}/{name}") == record
        with storage.open_read(f"{STEP}/{name}") as f:
            assert hash_stream(f) == record
    with storage.fetch_dir(STEP) as local:
        assert (local / "sub" / "b.bin").read_bytes() == b"beta"


def test_nothing_is_a_step_before_its_manifest_and_abort_leaves_nothing(storage):
    writer = storage.begin_step(STEP)
    write_files(writer, {"a.bin": b"half written"})
    writer.seal()
    assert not storage.exists(f"{STEP}/{MANIFEST}")
    writer.abort()
    assert settled(storage) == []


def test_a_killed_write_is_invisible_and_the_next_writer_sweeps_it(storage, where):
    commit(storage, STEP, {"a.bin": b"committed"})
    killed = storage.begin_step(NEXT)
    write_files(killed, {"a.bin": b"never committed"})
    killed.seal()  # killed here: neither commit nor abort runs

    reopened = open_storage(where, None)
    assert not reopened.exists(f"{NEXT}/{MANIFEST}")
    assert reopened.sweep() != []
    assert settled(reopened) == [STEP]
    assert contents(reopened, STEP) == {"a.bin": b"committed"}


def test_a_replaced_step_stays_whole_until_the_replacement_commits(storage, where):
    commit(storage, STEP, {"a.bin": b"old", "b.bin": b"old b"})
    writer = storage.begin_step(STEP)
    write_files(writer, {"a.bin": b"new"})
    manifest = Manifest(step=1, format="raw", files=writer.seal(), payload_dir=writer.payload_dir)
    assert contents(storage, STEP) == {"a.bin": b"old", "b.bin": b"old b"}
    writer.commit(manifest.to_json())
    assert contents(storage, STEP) == {"a.bin": b"new"}
    # Nothing of the old step is left behind (once removed in the background), and a sweep
    # finds nothing to repair.
    assert settled(storage) == [STEP]
    assert open_storage(where, None).sweep() == []


def test_an_aborted_replacement_keeps_the_committed_step(storage, where):
    commit(storage, STEP, {"a.bin": b"old"})
    writer = storage.begin_step(STEP)
    write_files(writer, {"a.bin": b"new", "c.bin": b"more"})
    writer.abort()
    assert contents(storage, STEP) == {"a.bin": b"old"}
    assert open_storage(where, None).sweep() == []
    assert settled(storage) == [STEP]


def test_a_killed_replacement_keeps_the_committed_step_and_is_swept(storage, where):
    commit(storage, STEP, {"a.bin": b"old"})
    killed = storage.begin_step(STEP)
    write_files(killed, {"a.bin": b"new", "c.bin": b"more"})
    killed.seal()  # killed before the manifest

    reopened = open_storage(where, None)
    assert contents(reopened, STEP) == {"a.bin": b"old"}
    assert reopened.sweep() != []
    assert settled(reopened) == [STEP]
    assert contents(reopened, STEP) == {"a.bin": b"old"}


def test_a_deleted_step_is_invisible_at_once(storage):
    commit(storage, STEP, {"a.bin": b"one"})
    commit(storage, NEXT, {"a.bin": b"two"}, step=2)
    storage.delete_step(STEP)
    assert not storage.exists(f"{STEP}/{MANIFEST}")
    assert settled(storage) == [NEXT]
    storage.delete_step(STEP)  # already gone: fine


def test_a_shared_file_outlives_the_step_it_was_taken_from(storage):
    base = commit(storage, STEP, {"frozen.bin": b"x" * 4096, "head.bin": b"h1"})
    writer = storage.begin_step(NEXT)
    writer.base_files = dict(base.files)
    writer.base_dir = "/".join(p for p in (STEP, base.payload_dir) if p)
    assert writer.share("frozen.bin", base.files["frozen.bin"])
    assert not writer.share("head.bin", FileRecord(2, "0" * 16))  # changed: must be written
    write_files(writer, {"head.bin": b"h2"})
    manifest = Manifest(step=2, format="raw", files=writer.seal(), payload_dir=writer.payload_dir)
    writer.commit(manifest.to_json())
    assert writer.shared == ["frozen.bin"]
    storage.delete_step(STEP)
    assert settled(storage) == [NEXT]
    assert contents(storage, NEXT) == {"frozen.bin": b"x" * 4096, "head.bin": b"h2"}


def test_files_a_format_writes_itself_are_taken_in_at_seal(storage):
    writer = storage.begin_step(STEP)
    (writer.local_dir() / "nested").mkdir()
    (writer.local_dir() / "nested" / "own.bin").write_bytes(b"written by a library")
    files = writer.seal()
    assert set(files) == {"nested/own.bin"}
    writer.commit(Manifest(1, "raw", files, payload_dir=writer.payload_dir).to_json())
    assert contents(storage, STEP) == {"nested/own.bin": b"written by a library"}
    assert storage.hash_file(f"{STEP}/nested/own.bin") == files["nested/own.bin"]


def test_small_files_are_replaced_whole(storage):
    storage.write_small("latest", b"step_00000001\n")
    storage.write_small("latest", b"step_00000002\n")
    assert storage.read_bytes("latest") == b"step_00000002\n"
    assert settled(storage) == ["latest"]  # no `.latest.partial` left


def test_missing_entries(storage):
    assert storage.list_names() == []
    assert not storage.exists(STEP)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{STEP}/{MANIFEST}")
    storage.remove(STEP)  # missing is fine


def test_the_lock_admits_one_writer(storage, where):
    def owner() -> dict:
        return {"pid": 1, "host": "elsewhere", "since": 0.0, "token": uuid.uuid4().hex}

    lock = storage.acquire_lock(owner())
    try:
        with pytest.raises(CheckpointLockedError):
            open_storage(where, None).acquire_lock(owner())
    finally:
        lock.release()
    open_storage(where, None).acquire_lock(owner()).release()


class _FailingFormat:
    """A format that writes one file, then fails: the write must leave no trace."""

    name = "failing"

    def write(self, state, writer):
        with writer.open("part.bin") as f:
            f.write(b"some bytes")
        raise RuntimeError("the format failed mid-write")


def test_a_failed_write_step_leaves_the_directory_as_it_was(storage):
    commit(storage, STEP, {"a.bin": b"old"})
    with pytest.raises(RuntimeError, match="mid-write"):
        write_step(storage, NEXT, _FailingFormat(), None, step=2)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="mid-write"):
        write_step(storage, STEP, _FailingFormat(), None, step=1)  # type: ignore[arg-type]
    assert settled(storage) == [STEP]
    assert contents(storage, STEP) == {"a.bin": b"old"}
