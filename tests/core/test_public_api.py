"""The public surface: no framework imported by `import ckpt_core`, `__all__` as documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckpt_core
from ckpt_core import (
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_exists,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)

FRAMEWORKS = ["torch", "jax", "flax", "orbax", "lightning", "gymnasium", "tensorflow"]


def test_import_ckpt_core_imports_no_framework():
    code = (
        "import sys, json, ckpt_core, ckpt_core.formats\n"
        "from ckpt_core import CheckpointManager\n"
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    offenders = [m for m in loaded if m.split(".")[0] in FRAMEWORKS]
    assert offenders == []


def test_all_is_sorted_and_matches_the_documented_api():
    assert list(ckpt_core.__all__) == sorted(ckpt_core.__all__)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## API", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^- `([A-Za-z_]+)", section, flags=re.M))
    assert documented == set(ckpt_core.__all__) - {"__version__"}
    for name in ckpt_core.__all__:
        assert hasattr(ckpt_core, name)


def test_spec_names_exist():
    from ckpt_core import CheckpointManager

    for method in [
        "should_save",
        "save",
        "restore",
        "latest_step",
        "best_step",
        "all_steps",
        "path",
        "info",
        "metrics",
        "metadata",
        "update_run_metadata",
        "mark_complete",
        "backup",
        "size_bytes",
        "clear",
        "wait",
        "close",
    ]:
        assert callable(getattr(CheckpointManager, method)), method
    for prop in ("run_metadata", "is_complete"):
        assert isinstance(getattr(CheckpointManager, prop), property)


def test_error_hierarchy_subclasses_the_builtins():
    assert issubclass(ckpt_core.CheckpointExistsError, FileExistsError)
    assert issubclass(ckpt_core.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(ckpt_core.StructureMismatchError, ValueError)
    for name in [
        "CheckpointExistsError",
        "CheckpointNotFoundError",
        "StructureMismatchError",
        "CorruptCheckpointError",
        "CheckpointLockedError",
        "UnsafeFormatError",
        "DiskFullError",
    ]:
        assert issubclass(getattr(ckpt_core, name), CheckpointError)


def test_one_shot_functions(tmp_path):
    path = tmp_path / "model"
    assert not checkpoint_exists(path)
    save_checkpoint(path, {"w": np.arange(3)}, metadata={"note": "first"})
    assert checkpoint_exists(path) and load_metadata(path) == {"note": "first"}
    save_checkpoint(path, {"w": np.arange(4)}, metadata={"note": "second"})  # replaces atomically
    np.testing.assert_array_equal(load_checkpoint(path)["w"], np.arange(4))
    assert load_metadata(path) == {"note": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(CheckpointNotFoundError, match=r"the directory does not exist.*HINT"):
        load_checkpoint(tmp_path / "missing")


def test_unknown_format_and_bad_options_fail_at_construction(tmp_path):
    from ckpt_core import CheckpointManager

    with pytest.raises(CheckpointError, match="unknown checkpoint format 'npz'"):
        CheckpointManager(tmp_path, format="npz")
    with pytest.raises(ValueError, match="on_existing"):
        CheckpointManager(tmp_path, on_existing="append")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="save_interval_steps"):
        CheckpointManager(tmp_path, save_interval_steps=0)
    with pytest.raises(ValueError, match="storage_options"):
        CheckpointManager(tmp_path, storage_options={"key": "x"})
