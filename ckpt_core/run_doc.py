"""`run.json`, the run document: run metadata, the completion mark and the recorded retention.

Written only by the run's writer (metadata, completion, and its retention when that changes);
a damaged one is moved aside by the next writer, never overwritten, and told apart from an
absent one by readers, since defaults in place of its recorded retention could delete steps.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from typing import Any

from . import layout
from .options import describe
from .retention import RetentionPolicy
from .storage import Storage


def read_run_doc(storage: Storage) -> dict[str, Any]:
    """`run.json` (run metadata, completion mark, recorded retention), or {} if absent/unusable."""
    return read_run_doc_checked(storage)[0]


def read_run_doc_checked(storage: Storage) -> tuple[dict[str, Any], str | None]:
    """`run.json` and, when it exists but cannot be used, why: ({}, "<path> is ...").

    A damaged `run.json` must be told apart from an absent one: its recorded retention is
    what protects steps from `ckpt prune`, and defaults in its place could delete them.
    """
    where = storage.join(layout.RUN_FILE)
    try:
        raw = storage.read_bytes(layout.RUN_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return {}, None
    except OSError as e:  # e.g. permissions
        return {}, f"{where} is unreadable ({e.strerror or e})"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return {}, f"{where} is damaged (not JSON: {e})"
    if not isinstance(doc, dict):
        return {}, f"{where} is damaged (a JSON {type(doc).__name__}, not an object)"
    return doc, None


def recorded_policy(run_doc: dict[str, Any]) -> RetentionPolicy | None:
    """The retention a writer recorded in `run.json`, or None (none recorded, or invalid)."""
    recorded = run_doc.get("retention")
    if not isinstance(recorded, dict):
        return None
    try:
        return RetentionPolicy.from_json(recorded)
    except (TypeError, ValueError):  # e.g. a hand-edited run.json
        return None


def ranking_unknown(run_doc: dict[str, Any], run_doc_error: str | None = None) -> bool:
    """Whether a reader given no `best_fn` cannot rank the run's steps as its writer did.

    So when `run.json` is unreadable or records no retention, or records a `best_fn` that
    was a function (by name only): then the writer's `best` pointer stands in for the ranking.
    """
    recorded = run_doc.get("retention")
    if run_doc_error is not None or not isinstance(recorded, dict):
        return True
    return recorded.get("best_fn_callable") is not None


class RunDocument:
    """The `run.json` of one run directory (read fresh each time: another process may write it)."""

    def __init__(self, storage: Storage, *, writes: bool = True) -> None:
        """`writes`: False in the processes of a multi-process job that only follow its primary."""
        self.storage = storage
        self.writes = writes

    def read(self) -> dict[str, Any]:
        """`run.json`, or {} when absent or unusable."""
        return read_run_doc(self.storage)

    def write(self, doc: dict[str, Any]) -> None:
        """Replace `run.json` atomically (TypeError if `doc` is not JSON)."""
        try:
            raw = json.dumps(doc, indent=1).encode()
        except TypeError as e:
            raise TypeError(f"run metadata must be JSON-serialisable: {e}") from None
        if self.writes:
            self.storage.write_small(layout.RUN_FILE, raw)

    def update_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge `values` into the run metadata of `run.json` (written atomically)."""
        if not isinstance(values, Mapping):
            raise TypeError(
                f"update_run_metadata takes a dict of JSON values; found {describe(values)}. "
                "HINT: e.g. update_run_metadata({'seed': 0})."
            )
        doc = self.read()
        doc["metadata"] = {**doc.get("metadata", {}), **values}
        self.write(doc)

    def mark_complete(self, final_step: int | None) -> None:
        """Record in `run.json` that the run finished, at `final_step`."""
        doc = self.read()
        doc.update(complete=True, completed_at=time.time(), final_step=final_step)
        self.write(doc)

    def set_aside_if_damaged(self) -> None:
        """Move a damaged `run.json` aside (never overwrite it): its metadata may be recoverable."""
        try:
            raw = self.storage.read_bytes(layout.RUN_FILE)
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            doc = None
        if isinstance(doc, dict):
            return
        aside = layout.corrupt_run_filename(int(time.time()))
        self.storage.write_small(aside, raw)  # a copy, then the removal: works on every store
        self.storage.remove(layout.RUN_FILE)
        warnings.warn(
            f"{self.storage.join(layout.RUN_FILE)} is damaged (not a JSON object); moved aside "
            f"to {aside} and starting a new one: the run metadata, completion mark and recorded "
            "retention in it are not used. HINT: recover what you need from the file moved aside.",
            RuntimeWarning,
            stacklevel=4,
        )

    def record_retention(self, policy: RetentionPolicy) -> None:
        """Record the writer's retention in `run.json` when none, or other settings, are there.

        A writer that cannot rank as the recorded `best_fn` function did (it has no `best_fn`,
        every other setting equal) leaves the record: that writer's `best` pointer still
        names the run's best step.
        """
        doc = self.read()
        recorded, mine = doc.get("retention"), policy.to_json()
        if isinstance(recorded, dict) and policy.best_fn is None:
            mine = {**mine, "best_fn_callable": recorded.get("best_fn_callable")}
        if recorded != mine:
            doc["retention"] = policy.to_json()
            self.write(doc)
