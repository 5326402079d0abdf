"""The manifest: what commits a step. It is read as hostile input; every flaw names the file."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from ckpt_core.errors import CorruptCheckpointError
from ckpt_core.manifest import (
    FileRecord,
    Manifest,
    check_metadata,
    safe_relpath,
    to_float_metrics,
)

WHERE = "run/step_00000005/manifest.json"


def _manifest(**overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "step": 5,
        "format": "tree",
        "files": {
            "arrays.safetensors": FileRecord(1024, "0123456789abcdef"),
            "tree.json": FileRecord(10, "fedcba9876543210"),
        },
        "time": 1_732_000_000.5,
        "metrics": {"loss": 0.25, "acc": float("nan")},
        "metadata": {"epoch": 1, "note": "warm-up"},
        "versions": {"ckpt_core": "0.1.0"},
    }
    fields.update(overrides)
    return Manifest(**fields)


def _doc(**changes: Any) -> bytes:
    doc = json.loads(_manifest().to_json())
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


_DROP = object()


def test_a_manifest_round_trips_through_json() -> None:
    m = _manifest()
    back = Manifest.from_json(m.to_json(), WHERE)
    assert (back.step, back.format, back.time, back.metadata) == (
        m.step,
        m.format,
        m.time,
        m.metadata,
    )
    assert back.files == m.files
    assert back.metrics["loss"] == 0.25 and math.isnan(back.metrics["acc"])
    assert back.nbytes == 1034


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (_doc(ckpt_core_manifest=99), "upgrade"),
        (_doc(step=-1), "'step'"),
        (_doc(step=True), "'step'"),
        (_doc(format=""), "'format'"),
        (_doc(time=float("inf")), "'time'"),
        (_doc(checksum="md5"), "checksum algorithm"),
        (_doc(files={}), "'files'"),
        (_doc(files=_DROP), "'files'"),
        (_doc(files={"../escape": {"size": 1, "xxh3_64": "0" * 16}}), "plain relative path"),
        (_doc(files={"/abs": {"size": 1, "xxh3_64": "0" * 16}}), "plain relative path"),
        (_doc(files={"a": {"size": -1, "xxh3_64": "0" * 16}}), "size of 'a'"),
        (_doc(files={"a": {"size": 2**64, "xxh3_64": "0" * 16}}), "size of 'a'"),
        (_doc(files={"a": {"size": 1, "xxh3_64": "short"}}), "checksum of 'a'"),
        (_doc(files={"a": [1]}), "record of 'a'"),
        (_doc(metrics={"loss": "0.5"}), "'metrics'"),
        (_doc(versions=[1]), "'versions'"),
        (_doc(payload_dir="../other"), "'payload_dir'"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_file_and_the_flaw(raw: bytes, found: str) -> None:
    with pytest.raises(CorruptCheckpointError) as info:
        Manifest.from_json(raw, WHERE)
    message = str(info.value)
    assert WHERE in message and found in message and "HINT" in message


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("a", True),
        ("sub/dir/file.bin", True),
        ("", False),
        ("/etc/passwd", False),
        ("a/../b", False),
        ("./a", False),
        ("a//b", False),
        ("a\\b", False),
        ("a\x00b", False),
    ],
)
def test_safe_relpath(name: str, safe: bool) -> None:
    assert safe_relpath(name) is safe


def test_metrics_accept_numpy_scalars_and_refuse_what_they_would_have_to_guess() -> None:
    assert to_float_metrics({"loss": np.float32(0.5), "step": np.int64(3), "x": 2}) == {
        "loss": 0.5,
        "step": 3.0,
        "x": 2.0,
    }
    assert to_float_metrics(None) == {}
    for bad in ({"loss": "0.5"}, {"flag": True}, {"v": np.ones(3)}, {1: 0.5}):
        with pytest.raises(TypeError, match="must be"):
            to_float_metrics(bad)
    with pytest.raises(TypeError, match="mapping"):
        to_float_metrics(0.5)  # type: ignore[arg-type]


def test_metadata_must_be_json() -> None:
    check_metadata({"a": [1, 2.5, None, "x"]})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        check_metadata({"a": object()})
