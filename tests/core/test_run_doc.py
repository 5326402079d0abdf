"""`run.json` (`ckpt_core.run_doc`): metadata merged, completion recorded, a damaged one told
apart from an absent one and moved aside, never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckpt_core import layout
from ckpt_core.retention import RetentionPolicy
from ckpt_core.run import open_directory
from ckpt_core.run_doc import (
    RunDocument,
    ranking_unknown,
    read_run_doc_checked,
    recorded_policy,
)


@pytest.fixture
def doc(run_dir: Path) -> RunDocument:
    run_dir.mkdir()
    return RunDocument(open_directory(run_dir))


def test_an_absent_run_json_is_empty_and_no_error(doc: RunDocument) -> None:
    assert doc.read() == {}
    assert read_run_doc_checked(doc.storage) == ({}, None)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "is damaged (not JSON"),
        (b"[1, 2]", "is damaged (a JSON list, not an object)"),
    ],
    ids=["not-json", "a-list"],
)
def test_a_damaged_run_json_reads_as_empty_with_the_reason(
    doc: RunDocument, run_dir: Path, raw: bytes, why: str
) -> None:
    (run_dir / layout.RUN_FILE).write_bytes(raw)
    found, error = read_run_doc_checked(doc.storage)
    assert found == {} and doc.read() == {}
    assert error is not None and why in error and str(run_dir / layout.RUN_FILE) in error


def test_metadata_updates_merge_and_completion_is_recorded(doc: RunDocument, run_dir: Path) -> None:
    doc.update_metadata({"seed": 0, "lr": 0.1})
    doc.update_metadata({"lr": 0.01})
    doc.mark_complete(final_step=42)
    on_disk = json.loads((run_dir / layout.RUN_FILE).read_text())
    assert on_disk["metadata"] == {"seed": 0, "lr": 0.01}
    assert on_disk["complete"] is True and on_disk["final_step"] == 42
    assert isinstance(on_disk["completed_at"], float)


def test_metadata_that_is_no_mapping_or_no_json_is_refused_and_nothing_written(
    doc: RunDocument, run_dir: Path
) -> None:
    with pytest.raises(TypeError, match=r"found a list.*HINT: e\.g\. update_run_metadata"):
        doc.update_metadata([("seed", 0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be JSON-serialisable"):
        doc.update_metadata({"path": Path("/data")})
    assert not (run_dir / layout.RUN_FILE).exists()


def test_a_damaged_run_json_is_moved_aside_with_a_warning_never_overwritten(
    doc: RunDocument, run_dir: Path
) -> None:
    (run_dir / layout.RUN_FILE).write_bytes(b'{"metadata": {"seed": 7}')  # cut short
    with pytest.warns(RuntimeWarning, match="is damaged .* moved aside to run.json.corrupt-"):
        doc.set_aside_if_damaged()
    assert not (run_dir / layout.RUN_FILE).exists()
    (aside,) = run_dir.glob("run.json.corrupt-*")
    assert aside.read_bytes() == b'{"metadata": {"seed": 7}'  # recoverable by hand


def test_an_intact_or_absent_run_json_is_left_alone(doc: RunDocument, run_dir: Path) -> None:
    doc.set_aside_if_damaged()  # absent: nothing to do
    doc.update_metadata({"seed": 1})
    doc.set_aside_if_damaged()
    assert sorted(p.name for p in run_dir.iterdir()) == [layout.RUN_FILE]
    assert doc.read()["metadata"] == {"seed": 1}


def test_the_recorded_retention_round_trips_and_an_edited_one_is_none(doc: RunDocument) -> None:
    policy = RetentionPolicy(max_to_keep=3, keep_period=10, best_fn="loss", keep_best=2)
    doc.record_retention(policy)
    assert recorded_policy(doc.read()) == policy
    assert not ranking_unknown(doc.read())
    assert recorded_policy({}) is None
    assert recorded_policy({"retention": {"max_to_keep": "three"}}) is None  # hand-edited


def test_a_reader_cannot_rank_as_a_writer_whose_best_fn_was_a_function(doc: RunDocument) -> None:
    def score(metrics):
        return metrics["loss"]

    doc.record_retention(RetentionPolicy(best_fn=score))
    recorded = doc.read()
    assert recorded["retention"]["best_fn_callable"].endswith("score")
    assert ranking_unknown(recorded)
    assert ranking_unknown({})  # nothing recorded
    assert ranking_unknown(recorded, "run.json is damaged")
    # a later writer without best_fn keeps the record: its `best` pointer still names the best
    doc.record_retention(RetentionPolicy())
    assert doc.read()["retention"]["best_fn_callable"].endswith("score")
