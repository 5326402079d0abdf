"""CheckpointManager behaviour: resume table, intervals, signals, locking, async, run metadata."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointManager,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnrankedStepWarning,
)


def state(step: int) -> dict:
    return {"w": np.full((4,), step, dtype=np.float32), "step": step}


def fill(run_dir, steps, **kwargs):
    with CheckpointManager(run_dir, **kwargs) as mgr:
        for s in steps:
            mgr.save(s, state(s), metrics={"loss": 1.0 / (s + 1)})


# ---------------------------------------------------------------- the resume table, row by row


@pytest.mark.parametrize("on_existing", ["error", "resume", "overwrite"])
def test_no_committed_steps_is_a_fresh_start_and_sweeps_temporaries(run_dir, on_existing):
    run_dir.mkdir()
    stale = run_dir / ".tmp-step_00000007-abc123"
    stale.mkdir()
    (stale / "arrays.safetensors").write_bytes(b"partial")
    with CheckpointManager(run_dir, on_existing=on_existing) as mgr:
        assert mgr.resuming is False
        assert mgr.all_steps() == []
    assert not stale.exists()


def test_resume_continues_from_the_latest_step(run_dir):
    fill(run_dir, [0, 5, 10])
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.resuming is True
        assert mgr.latest_step() == 10
        np.testing.assert_array_equal(mgr.restore()["w"], state(10)["w"])


def test_overwrite_removes_library_entries_and_leaves_other_files(run_dir):
    fill(run_dir, [1, 2])
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events").write_text("mine too")
    (run_dir / "step_notes").mkdir()  # not a step name: not ours
    with CheckpointManager(run_dir, on_existing="overwrite") as mgr:
        assert mgr.resuming is False and mgr.all_steps() == []
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == [".lock", "notes.txt", "run.json", "step_notes", "tensorboard"]
    assert (run_dir / "tensorboard" / "events").read_text() == "mine too"


def test_error_names_directory_latest_step_and_the_options(run_dir):
    fill(run_dir, [3, 4])
    with pytest.raises(CheckpointExistsError) as err:
        CheckpointManager(run_dir)
    message = str(err.value)
    assert str(run_dir) in message and "step 4" in message
    assert "on_existing='resume'" in message and "on_existing='overwrite'" in message
    assert isinstance(err.value, FileExistsError)
    with CheckpointManager(run_dir, on_existing="resume"):  # the failed open released the lock
        pass


def test_read_only_ignores_on_existing_and_refuses_writes(run_dir):
    fill(run_dir, [1])
    with CheckpointManager(run_dir, read_only=True) as mgr:
        assert mgr.latest_step() == 1
        with pytest.raises(CheckpointError, match="read_only=True"):
            mgr.save(2, state(2))
        with pytest.raises(CheckpointError, match="read_only"):
            mgr.update_run_metadata({"a": 1})


# ---------------------------------------------------------------- saving decisions


def test_save_interval_steps_and_force(run_dir):
    with CheckpointManager(run_dir, save_interval_steps=10, max_to_keep=None) as mgr:
        saved = [s for s in range(25) if mgr.save(s, state(s))]
        assert saved == [0, 10, 20]
        assert mgr.save(23, state(23), force=True)
        assert mgr.all_steps() == [0, 10, 20, 23]


def test_save_interval_secs(run_dir):
    with CheckpointManager(run_dir, save_interval_steps=None, save_interval_secs=0.05) as mgr:
        assert not mgr.should_save(1)
        time.sleep(0.06)
        assert mgr.should_save(1) and mgr.save(1, state(1))
        assert not mgr.should_save(2)


def test_save_on_signal_makes_the_next_should_save_true(run_dir):
    with CheckpointManager(
        run_dir, save_interval_steps=1000, save_on_signals=(signal.SIGUSR1,)
    ) as mgr:
        assert not mgr.should_save(7)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert mgr.preemption_signal == signal.SIGUSR1
        assert mgr.should_save(7) and mgr.save(7, state(7))
        assert not mgr.should_save(8)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # restored at close


def test_missing_best_metric_warns_and_leaves_the_step_unranked(run_dir):
    with CheckpointManager(run_dir, best_fn="val_loss") as mgr:
        with pytest.warns(UnrankedStepWarning, match="'val_loss' is not among the saved metrics"):
            mgr.save(1, state(1), metrics={"loss": 1.0})
        assert mgr.best_step() is None
        mgr.save(2, state(2), metrics={"val_loss": 1.0})
        assert mgr.best_step() == 2


def test_retention_best_tracking_and_pointers_survive_restarts(run_dir):
    losses = {0: 0.9, 1: 0.2, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}
    opts = dict(max_to_keep=2, best_fn="loss", keep_best=1, keep_period=4)
    with CheckpointManager(run_dir, **opts) as mgr:
        for s in range(3):
            mgr.save(s, state(s), metrics={"loss": losses[s]})
    with CheckpointManager(run_dir, on_existing="resume", **opts) as mgr:
        assert mgr.best_step() == 1
        for s in range(3, 6):
            mgr.save(s, state(s), metrics={"loss": losses[s]})
        assert mgr.all_steps() == [0, 1, 4, 5]
        assert mgr.info(1).kept_because == ("best",)
        assert mgr.info(0).kept_because == ("period",)
        assert mgr.info(5).kept_because == ("latest", "recent")
        np.testing.assert_array_equal(mgr.restore("best")["w"], state(1)["w"])
    assert (run_dir / "latest").read_text().strip() == "step_00000005"
    assert (run_dir / "best").read_text().strip() == "step_00000001"
    assert sorted(p.name for p in run_dir.glob("step_*")) == [
        "step_00000000",
        "step_00000001",
        "step_00000004",
        "step_00000005",
    ]


def test_saving_an_existing_step_replaces_it(run_dir):
    with CheckpointManager(run_dir) as mgr:
        mgr.save(3, state(3), metrics={"v": 1})
        mgr.save(3, state(30), metrics={"v": 2})
        assert mgr.all_steps() == [3] and mgr.metrics(3) == {"v": 2.0}
        np.testing.assert_array_equal(mgr.restore(3)["w"], state(30)["w"])
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".old-")]


def test_interrupted_replacement_is_repaired_on_open(run_dir):
    fill(run_dir, [3])
    os.rename(run_dir / "step_00000003", run_dir / ".old-step_00000003-0123456789ab")  # killed here
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.all_steps() == [3]
        np.testing.assert_array_equal(mgr.restore()["w"], state(3)["w"])


def test_readers_rank_best_with_the_writers_recorded_retention(run_dir):
    fill(run_dir, [1, 2, 3], best_fn="loss", best_mode="max", max_to_keep=2, keep_best=1)
    with CheckpointManager(run_dir, read_only=True) as mgr:
        assert mgr.policy.best_fn == "loss" and mgr.policy.best_mode == "max"
        assert mgr.best_step() == 1  # loss = 1 / (step + 1): highest at step 1
        assert mgr.info(1).kept_because == ("best",)
    with CheckpointManager(run_dir, read_only=True, best_fn="loss") as mgr:
        assert mgr.best_step() == 3  # an explicit best_fn wins (mode min)


def test_info_and_queries_read_the_manifest(run_dir):
    fill(run_dir, [2, 4])
    with CheckpointManager(run_dir, read_only=True) as mgr:
        info = mgr.info(4)
        assert (info.step, info.format, info.path) == (4, "tree", run_dir / "step_00000004")
        assert info.bytes == sum(
            p.stat().st_size for p in Path(info.path).iterdir() if p.name != "manifest.json"
        )
        assert mgr.size_bytes() == info.bytes + mgr.info(2).bytes
        assert mgr.all_steps() == [2, 4]
        with pytest.raises(CheckpointNotFoundError, match=r"no step 3 checkpoint .*\[2, 4\]"):
            mgr.restore(3)
        with pytest.raises(CheckpointNotFoundError, match="needs a best_fn"):
            mgr.restore("best")


def test_restore_from_an_empty_directory_says_so(run_dir):
    with CheckpointManager(run_dir) as mgr, pytest.raises(CheckpointNotFoundError) as err:
        mgr.restore()
    assert isinstance(err.value, FileNotFoundError) and str(run_dir) in str(err.value)


# ---------------------------------------------------------------- run level


def test_run_metadata_mark_complete_backup_and_clear(run_dir, tmp_path):
    with CheckpointManager(run_dir) as mgr:
        mgr.update_run_metadata({"seed": 3, "config": {"lr": 0.1}})
        mgr.update_run_metadata({"seed": 4})
        mgr.save(1, state(1))
        mgr.save(2, state(2))
        assert not mgr.is_complete
        mgr.mark_complete()
        assert mgr.is_complete
        zip_path = mgr.backup(tmp_path / "backup.zip")
    with CheckpointManager(run_dir, on_existing="resume") as mgr:
        assert mgr.run_metadata == {"seed": 4, "config": {"lr": 0.1}}
        assert mgr.is_complete
        (run_dir / "keep.txt").write_text("x")
        mgr.clear()
        assert mgr.all_steps() == [] and not mgr.is_complete and mgr.run_metadata == {}
    assert (run_dir / "keep.txt").exists()
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    assert {"run.json", "step_00000001/manifest.json", "step_00000002/arrays.safetensors"} <= names


# ---------------------------------------------------------------- async


def test_async_save_commits_and_close_waits(run_dir):
    mgr = CheckpointManager(run_dir, async_save=True, max_to_keep=2)
    for s in range(4):
        assert mgr.save(s, state(s))
    mgr.close()
    with CheckpointManager(run_dir, read_only=True) as ro:
        assert ro.all_steps() == [2, 3]
        np.testing.assert_array_equal(ro.restore()["w"], state(3)["w"])


def test_background_error_is_raised_by_the_next_call(run_dir):
    class Exploding:
        name = "exploding-test"

        def accepts(self, s):
            return False

        def snapshot(self, s):
            return s

        def write(self, s, writer):
            with writer.open("x") as f:
                f.write(b"abc")
            raise OSError(5, "simulated I/O error")

        def read(self, reader, like=None):  # pragma: no cover
            raise AssertionError

    with CheckpointManager(run_dir, async_save=True, format=Exploding()) as mgr:
        mgr.save(1, state(1))
        with pytest.raises(OSError, match="simulated I/O error"):  # the type a sync save raises
            mgr.wait()
        mgr.save(2, state(2))
        with pytest.raises(OSError, match="simulated I/O error") as err:
            mgr.save(3, state(3))
        assert "background save of step 2" in err.value.__notes__[-1]
        assert mgr.all_steps() == []
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "run.json"]  # no step


def test_pending_async_save_is_committed_at_interpreter_exit(run_dir):
    script = textwrap.dedent(
        f"""
        import numpy as np
        from ckpt_core import CheckpointManager
        mgr = CheckpointManager({str(run_dir)!r}, async_save=True)
        mgr.save(1, {{"w": np.ones(2_000_000)}})
        # no wait(), no close(): the interpreter exits with the save in flight
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with CheckpointManager(run_dir, read_only=True) as mgr:
        assert mgr.all_steps() == [1]
        assert mgr.restore()["w"].sum() == 2_000_000


# ---------------------------------------------------------------- single writer


def test_second_writer_gets_locked_error_naming_the_holder(run_dir):
    with CheckpointManager(run_dir):
        code = (
            "from ckpt_core import CheckpointManager, CheckpointLockedError\n"
            f"try:\n    CheckpointManager({str(run_dir)!r})\n"
            "except CheckpointLockedError as e:\n    print('LOCKED', e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert "LOCKED" in out.stdout and f"pid {os.getpid()}" in out.stdout
    with pytest.raises(CheckpointLockedError), CheckpointManager(run_dir):
        CheckpointManager(run_dir)


def test_lock_of_a_killed_process_is_taken_over(run_dir):
    code = (
        "import time\nfrom ckpt_core import CheckpointManager\n"
        f"m = CheckpointManager({str(run_dir)!r})\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    with CheckpointManager(run_dir) as mgr:
        assert mgr.save(1, state(1))


# ---------------------------------------------------------------- damage on resume


def test_resume_moves_a_damaged_newest_step_aside_and_uses_the_newest_intact(run_dir):
    fill(run_dir, [1, 2, 3])
    payload = run_dir / "step_00000003" / "arrays.safetensors"
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    (run_dir / "step_00000002" / "manifest.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="damaged"):
        mgr = CheckpointManager(run_dir, on_existing="resume")
    with mgr:
        assert mgr.latest_step() == 1
        np.testing.assert_array_equal(mgr.restore()["w"], state(1)["w"])
    aside = sorted(p.name for p in run_dir.iterdir() if ".corrupt-" in p.name)
    assert [n.split(".")[0] for n in aside] == ["step_00000002", "step_00000003"]
    assert (run_dir / "latest").read_text().strip() == "step_00000001"


def test_restore_of_damaged_step_names_the_file(run_dir):
    fill(run_dir, [1])
    (run_dir / "step_00000001" / "tree.json").write_text("[]")
    with CheckpointManager(run_dir, read_only=True) as mgr:
        with pytest.raises(CorruptCheckpointError, match=r"tree\.json"):
            mgr.restore()


# ---------------------------------------------------------------- a damaged run.json


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_damaged_run_json_is_moved_aside_never_overwritten(tmp_path, where):
    import uuid

    import fsspec

    run = str(tmp_path / "run") if where == "local" else f"memory://ckpt-tests/{uuid.uuid4().hex}"
    with CheckpointManager(run) as mgr:
        mgr.save(1, {"w": np.ones(2)})
        mgr.update_run_metadata({"seed": 7})
    fs, root = fsspec.core.url_to_fs(run)
    damaged = b'{"metadata": {"seed": 7}, "complete": tr'  # cut short by a bad copy
    fs.pipe_file(f"{root}/run.json", damaged)
    with pytest.warns(
        RuntimeWarning, match=r"run\.json is damaged.*moved aside to run\.json\.corrupt-"
    ):
        mgr = CheckpointManager(run, on_existing="resume")
    with mgr:
        assert mgr.latest_step() == 1 and mgr.run_metadata == {}
    aside = [n for n in fs.ls(root, detail=False) if "run.json.corrupt-" in n]
    assert len(aside) == 1 and fs.cat_file(aside[0]) == damaged  # kept, byte for byte
    with CheckpointManager(run, on_existing="overwrite"):  # the library's own: overwrite removes it
        pass
    assert not [n for n in fs.ls(root, detail=False) if "corrupt" in n]
