"""The `ckpt` command on torch and orbax steps: `show` reads them without running them, `best` names the file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import pytest
import torch

from ckpt_core import CheckpointManager, layout
from ckpt_core.formats import torch as torch_format
from tests.core.test_cli import ckpt, ckpt_json


def test_show_torch_step_without_running_its_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    marker = tmp_path / "pickle_ran"

    class Trap:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    model = torch.nn.Linear(3, 2)
    payload = {
        "model": model.state_dict(),
        "weight": torch.nn.Parameter(torch.ones(2, 5, dtype=torch.bfloat16)),
        "epoch": 7,
        "trap": Trap(),
    }
    # save refuses what torch.load(weights_only=True) refuses: plant it as an older writer would
    monkeypatch.setattr(torch_format, "check_restorable", lambda state: None)
    with CheckpointManager(tmp_path / "r", format="torch") as mgr:
        mgr.save(3, payload)
    doc = ckpt_json("show", tmp_path / "r")
    entries = {e["path"]: e for e in doc["tree"]["entries"]}
    assert entries["model/weight"] == {
        "path": "model/weight",
        "kind": "torch",
        "dtype": "float32",
        "shape": [2, 3],
        "bytes": 24,
        "value": None,
    }
    assert entries["weight"]["kind"] == "parameter" and entries["weight"]["dtype"] == "bfloat16"
    assert entries["epoch"]["value"] == 7
    assert entries["trap"]["kind"] == "object" and "system" in entries["trap"]["value"]
    assert any(r["name"].endswith("data.pkl") for r in doc["tree"]["records"])
    assert re.fullmatch(
        r"state\.pt: \d+ zip records, 3 tensor storages \(.*B\)", doc["tree"]["summary"]
    )
    assert not marker.exists(), "ckpt show ran code from the pickle"


def test_show_orbax_step_from_orbax_metadata(tmp_path: Path) -> None:

    with CheckpointManager(tmp_path / "r", format="orbax") as mgr:
        mgr.save(1, {"params": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4, jnp.bfloat16)}})
    doc = ckpt_json("show", tmp_path / "r", 1)
    entries = {e["path"]: e for e in doc["tree"]["entries"]}
    assert entries["params/w"]["shape"] == [3, 4] and entries["params/w"]["dtype"] == "float32"
    assert entries["params/b"]["dtype"] == "bfloat16" and entries["params/b"]["bytes"] == 8


def test_best_prints_the_file_of_a_torch_step(tmp_path: Path) -> None:

    with CheckpointManager(tmp_path / "r", format="torch", best_fn="loss") as mgr:
        for step, loss in ((1, 0.5), (2, 0.2), (3, 0.4)):
            mgr.save(
                step, {"state_dict": {"w": torch.full((2,), float(step))}}, metrics={"loss": loss}
            )
    path = ckpt("best", tmp_path / "r").stdout.strip()
    assert path == str(tmp_path / "r" / layout.step_dirname(2) / "state.pt")
    assert torch.load(path, weights_only=True)["state_dict"]["w"].tolist() == [2.0, 2.0]
    doc = ckpt_json("best", tmp_path / "r")
    assert doc["path"] == path and doc["step_path"] == str(Path(path).parent)


def test_show_takes_the_file_ckpt_best_prints(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path / "r", format="torch", best_fn="loss") as mgr:
        for step, loss in ((1, 0.5), (2, 0.2), (3, 0.4)):
            mgr.save(step, {"state_dict": {"w": torch.ones(2) * step}}, metrics={"loss": loss})
    path = ckpt("best", tmp_path / "r").stdout.strip()
    assert path.endswith("state.pt")
    doc = ckpt_json("show", path)  # `ckpt show $(ckpt best runs/torch)`
    assert doc["step"] == 2 and doc["best"] is True and doc["format"] == "torch"
