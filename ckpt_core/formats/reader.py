"""`StepReader`: verified read access to the payload files of one committed step."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CorruptCheckpointError
from ..manifest import Manifest
from ..processes import Meeting, split
from ..storage import Storage, VerifyingReader, check_record


@dataclass
class StepReader:
    """Verified read access to the payload of one committed step.

    With `meeting` (a restore in a multi-process job, which every process makes), the
    processes share the work of `verify_all`.
    """

    storage: Storage
    step_dir: str
    manifest: Manifest
    allow_pickle: bool = False
    lazy: bool = False
    meeting: Meeting | None = None

    def rel(self, name: str) -> str:
        """`name`'s path relative to the run directory."""
        if name == "manifest.json":
            return f"{self.step_dir}/{name}"
        parts = [self.step_dir, self.manifest.payload_dir, name]
        return "/".join(p for p in parts if p)

    def display(self, name: str) -> str:
        return self.storage.join(self.rel(name))

    def _record(self, name: str) -> Any:
        try:
            return self.manifest.files[name]
        except KeyError:
            raise CheckpointError(
                f"step {self.manifest.step} ({self.manifest.format} format) has no file {name!r}; "
                f"its manifest lists {sorted(self.manifest.files)}."
            ) from None

    def open(self, name: str) -> VerifyingReader:
        """A stream over `name` that checksums as it is read; call `.verify()` after reading."""
        expected = self._record(name)
        try:
            raw = self.storage.open_read(self.rel(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(self.display(name)) from None
        return VerifyingReader(raw, self.display(name), expected)

    def verify(self, name: str) -> None:
        """Check the size and checksum of one file."""
        expected = self._record(name)
        try:
            found = self.storage.hash_file(self.rel(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(self.display(name)) from None
        check_record(self.display(name), found, expected)

    def verify_all(self) -> None:
        """Check every file; with `meeting`, each process checks its share (the sizes
        balanced) and they meet, so that a damaged file anywhere fails every process.

        Raises:
            CorruptCheckpointError: a file is missing or damaged; the message names it.
            ProcessGroupError: a process did not come to the meeting, or failed otherwise.
        """
        if self.meeting is None or self.meeting.group.count == 1:
            for name in sorted(self.manifest.files):
                self.verify(name)
            return
        meeting = self.meeting
        sizes = {name: record.size for name, record in self.manifest.files.items()}
        share = split(sizes, meeting.group.count)
        mine = sorted(name for name, index in share.items() if index == meeting.group.index)

        def damaged_here() -> dict[str, list[Any]]:
            found: dict[str, list[Any]] = {}
            for name in mine:
                try:
                    self.verify(name)
                except CorruptCheckpointError as e:
                    found[name] = [str(e), e.path]
            return found

        step = self.manifest.step
        verdicts = meeting.pool(
            "verify",
            damaged_here,
            what=f"in verifying step {step}",
            hint="every process must restore the same step together (restore is collective).",
        )
        damaged = {name: found for verdict in verdicts for name, found in verdict.items()}
        if damaged:
            first, *others = sorted(damaged)
            message, path = damaged[first]
            if others:
                message += f" (also damaged: {', '.join(map(self.display, others))})"
            raise CorruptCheckpointError(message, path=path)

    def local_path(self, name: str) -> Path | None:
        return self.storage.local_path(self.rel(name))

    @contextlib.contextmanager
    def fetch_dir(self, subdir: str) -> Iterator[Path]:
        with self.storage.fetch_dir(self.rel(subdir)) as path:
            yield path

    def url(self, name: str, schemes: Collection[str]) -> str | None:
        """The URL of `name` if the store's scheme is one of `schemes` (else None), for a
        library that reads it itself; verify the files first (`verify_all`)."""
        return self.storage.url(self.rel(name), schemes)

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            out = f.read()
            f.verify()
        return bytes(out)


def _missing(display: str) -> CheckpointError:
    return CorruptCheckpointError(
        f"{display} is listed in the manifest but missing (or not a file): the step was "
        "damaged after it was committed. HINT: restore an earlier step.",
        path=display,
    )
