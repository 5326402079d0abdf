"""`CheckpointInfo` (`ckpt_core.info`): what is known of a committed step, from its manifest alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import CheckpointManager, layout
from ckpt_core.info import CheckpointInfo


def test_info_is_read_from_the_manifest_without_the_payload(run_dir: Path) -> None:
    state = {"w": np.zeros((4, 4), np.float32)}
    with CheckpointManager(run_dir, best_fn="loss", max_to_keep=2, keep_period=10) as mgr:
        for step, loss in ((10, 0.1), (11, 0.5), (12, 0.4), (13, 0.3)):
            mgr.save(step, state, metrics={"loss": loss}, metadata={"epoch": step // 10})
        payload = [p for p in mgr.path(12).iterdir() if p.name != layout.MANIFEST]
        assert payload
        for p in payload:
            p.unlink()  # info never opens these
        info = mgr.info(12)
        assert info.step == 12 and info.format == "tree"
        assert info.metrics == {"loss": 0.4} and info.metadata == {"epoch": 1}
        assert info.path == run_dir / layout.step_dirname(12)
        assert info.bytes >= state["w"].nbytes and info.time > 0
        assert info.kept_because == ("recent",)
        assert set(mgr.info(13).kept_because) == {"latest", "recent"}
        assert set(mgr.info(10).kept_because) == {"period", "best"}


def test_a_checkpoint_info_is_a_frozen_record() -> None:
    info = CheckpointInfo(3, 0.0, {"loss": 1.0}, None, "run/step_00000003", 12, "tree")
    assert info.kept_because == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.step = 4  # type: ignore[misc]
    assert dataclasses.replace(info, kept_because=("latest",)).kept_because == ("latest",)
