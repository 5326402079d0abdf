"""The `ckpt` console command, run as a user runs it: the installed script, in a subprocess.

Every directory here is written by the core (`CheckpointManager.save`), then damaged by hand
where a test needs damage (a flipped byte, a deleted manifest, a killed writer's temporary).
"""

from __future__ import annotations

import json
import math
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import CheckpointManager, layout

CKPT = Path(sys.executable).with_name("ckpt")
STATE_SHAPES = {"params/w": (4, 3), "params/b": (3,)}


def ckpt(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CKPT), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def ckpt_json(*args: Any) -> Any:
    result = ckpt(*args, "--json")
    assert result.returncode == 0, result.stderr

    def strict(constant: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {constant} in the output")

    return json.loads(result.stdout, parse_constant=strict)


def state(step: int) -> dict[str, Any]:
    return {
        "params": {"w": np.full((4, 3), step, np.float32), "b": np.zeros(3, np.float32)},
        "step": step,
        "name": "mlp",
    }


def val_loss(step: int) -> float:
    return abs(5.5 - step) / 10  # best at steps 5 and 6 (tie: the newer, 6, wins)


def write_run(directory: Path, steps: range, *, complete: bool, **options: Any) -> None:
    with CheckpointManager(directory, **options) as mgr:
        for step in steps:
            mgr.save(
                step,
                state(step),
                metrics={"val_loss": val_loss(step), "acc": step / 10},
                metadata={"epoch": step // 3},
            )
        if complete:
            mgr.mark_complete()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mlp/` (10 saves, max_to_keep=3, keep_period=4, best val_loss; complete) and a sweep
    of two nested trials (one complete)."""
    root = tmp_path_factory.mktemp("runs")
    write_run(
        root / "mlp", range(1, 11), complete=True, max_to_keep=3, keep_period=4, best_fn="val_loss"
    )
    for trial in range(2):
        write_run(
            root / "sweep" / f"trial_{trial}",
            range(100, 400, 100),
            complete=trial == 1,
            max_to_keep=2,
        )
    return root


@pytest.fixture
def mlp(runs: Path, tmp_path: Path) -> Path:
    """A private copy of the `mlp` run, free to damage."""
    return Path(shutil.copytree(runs / "mlp", tmp_path / "mlp"))


def flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ckpt "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# ---------------------------------------------------------------- ls


def test_ls_json_matches_the_core_under_the_runs_recorded_policy(runs: Path) -> None:
    (run,) = ckpt_json("ls", runs / "mlp")["runs"]
    assert run["retention"]["source"] == "recorded in run.json"
    assert run["retention"]["max_to_keep"] == 3 and run["retention"]["keep_period"] == 4
    with CheckpointManager(runs / "mlp", read_only=True) as mgr:  # adopts the recorded policy
        assert [s["step"] for s in run["steps"]] == mgr.all_steps() == [4, 6, 8, 9, 10]
        for s in run["steps"]:
            assert tuple(s["kept_because"]) == mgr.info(s["step"]).kept_because
            assert s["metrics"] == dict(mgr.metrics(s["step"]))
            assert s["bytes"] == mgr.info(s["step"]).bytes
        assert run["latest"] == mgr.latest_step() == 10
        assert run["best"] == mgr.best_step() == 6
    assert [s["step"] for s in run["steps"] if s["latest"]] == [10]
    assert [s["step"] for s in run["steps"] if s["best"]] == [6]
    assert run["complete"] is True and run["final_step"] == 10


def test_ls_options_preview_another_policy(runs: Path) -> None:
    (run,) = ckpt_json("ls", runs / "mlp", "--max-to-keep", 1, "--metric", "acc", "--mode", "max")[
        "runs"
    ]
    assert run["retention"]["source"] == "command line + recorded in run.json"
    with CheckpointManager(
        runs / "mlp", read_only=True, max_to_keep=1, keep_period=4, best_fn="acc", best_mode="max"
    ) as mgr:
        why = {s["step"]: tuple(s["kept_because"]) for s in run["steps"]}
        assert why == {s: mgr.info(s).kept_because for s in mgr.all_steps()}
        assert why[9] == () and why[10] == ("latest", "recent", "best")


def test_ls_plain_text_when_piped(runs: Path) -> None:
    result = ckpt("ls", runs / "mlp")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # no colour codes in a pipe
    lines = out.splitlines()
    assert lines[0].startswith(str(runs / "mlp")) and "complete (final step 10)" in lines[0]
    header = next(line for line in lines if "STEP" in line)
    assert header.split() == ["STEP", "SAVED", "AGE", "SIZE", "METRICS", "MARK", "KEPT", "BECAUSE"]
    row10 = next(line for line in lines if line.split()[0] == "10")
    assert "val_loss=0.45" in row10 and "latest" in row10
    # without options: the retention the run recorded (best by val_loss: step 6)
    row6 = next(line for line in lines if line.split()[0] == "6")
    assert "best" in row6.split("acc=0.6")[1]


def test_ls_rich_table_on_a_terminal(runs: Path) -> None:
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    proc = subprocess.Popen(
        [str(CKPT), "ls", str(runs / "mlp")],
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**env, "COLUMNS": "160", "TERM": "xterm-256color"},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode()
    assert "\x1b[" in out  # colour
    assert "━" in out or "─" in out  # a rich table rule
    assert "val_loss=0.45" in out


def test_ls_recurses_into_nested_runs_with_completion_state(runs: Path) -> None:
    doc = ckpt_json("ls", runs)
    by_dir = {Path(r["directory"]).relative_to(runs).as_posix(): r for r in doc["runs"]}
    assert list(by_dir) == ["mlp", "sweep/trial_0", "sweep/trial_1"]
    assert [by_dir[k]["complete"] for k in by_dir] == [True, False, True]
    assert [s["step"] for s in by_dir["sweep/trial_0"]["steps"]] == [200, 300]
    text = ckpt("ls", runs / "sweep").stdout
    sections = [line for line in text.splitlines() if line.startswith(str(runs / "sweep"))]
    assert len(sections) == 2
    assert "not marked complete" in sections[0] and "complete" in sections[1]


def test_ls_marks_temporaries_quarantined_and_invalid_steps(mlp: Path) -> None:
    (mlp / layout.tmp_dirname(layout.step_dirname(11), "1f2e3d4c5b6a")).mkdir()  # killed writer
    (mlp / layout.step_dirname(8) / layout.MANIFEST).unlink()  # not a step any more
    flip_byte(mlp / layout.step_dirname(10) / "arrays.safetensors")
    with pytest.warns(RuntimeWarning, match="damaged"):  # resume moves step 10 aside
        CheckpointManager(mlp, on_existing="resume", max_to_keep=3).close()
    (mlp / layout.tmp_dirname(layout.step_dirname(11), "aaaaaaaaaaaa")).mkdir()
    doc = ckpt_json("ls", mlp)
    (run,) = doc["runs"]
    assert [s["step"] for s in run["steps"]] == [4, 6, 9]
    kinds = {(o["kind"], o["step"]) for o in run["other"]}
    assert kinds == {("invalid", 8), ("quarantined", 10), ("temporary", 11)}
    invalid = next(o for o in run["other"] if o["kind"] == "invalid")
    assert "manifest.json is missing" in invalid["detail"]
    out = ckpt("ls", mlp).stdout
    assert "QUARANTINED" in out and "TEMPORARY" in out and "INVALID" in out


def test_ls_json_is_strict_even_with_nan_metrics(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path / "r") as mgr:
        mgr.save(1, state(1), metrics={"loss": math.nan})
    (run,) = ckpt_json("ls", tmp_path / "r")["runs"]
    assert run["steps"][0]["metrics"] == {"loss": None}


# ---------------------------------------------------------------- show


def test_show_reads_the_tree_from_headers_only(mlp: Path) -> None:
    # Cut the payload right after the safetensors header: only a header reader still works.
    payload = mlp / layout.step_dirname(10) / "arrays.safetensors"
    data = payload.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    payload.write_bytes(data[:header_end])
    doc = ckpt_json("show", mlp, 10)
    assert doc["step"] == 10 and doc["format"] == "tree" and doc["latest"] is True
    assert doc["metrics"] == {"val_loss": val_loss(10), "acc": 1.0}
    assert doc["metadata"] == {"epoch": 3}
    assert doc["versions"]["ckpt_core"]
    assert {f["name"] for f in doc["files"]} == {"arrays.safetensors", "tree.json"}
    entries = {e["path"]: e for e in doc["tree"]["entries"]}
    for path, shape in STATE_SHAPES.items():
        assert entries[path]["shape"] == list(shape)
        assert entries[path]["dtype"] == "float32"
        assert entries[path]["bytes"] == 4 * math.prod(shape)
        assert entries[path]["kind"] == "numpy"
    assert entries["step"]["value"] == 10 and entries["name"]["value"] == "mlp"
    text = ckpt("show", mlp).stdout  # latest by default
    assert "step 10" in text and "params/w" in text and "(4, 3)" in text


def test_show_torch_step_without_running_its_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ckpt_core.formats import torch as torch_format

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
    assert not marker.exists(), "ckpt show ran code from the pickle"


def test_show_orbax_step_from_orbax_metadata(tmp_path: Path) -> None:
    import jax.numpy as jnp

    with CheckpointManager(tmp_path / "r", format="orbax") as mgr:
        mgr.save(1, {"params": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4, jnp.bfloat16)}})
    doc = ckpt_json("show", tmp_path / "r", 1)
    entries = {e["path"]: e for e in doc["tree"]["entries"]}
    assert entries["params/w"]["shape"] == [3, 4] and entries["params/w"]["dtype"] == "float32"
    assert entries["params/b"]["dtype"] == "bfloat16" and entries["params/b"]["bytes"] == 8


def test_show_a_step_directory_directly(runs: Path) -> None:
    doc = ckpt_json("show", runs / "mlp" / layout.step_dirname(6))
    assert doc["step"] == 6 and doc["best"] is True


def test_bad_input_is_one_line_and_status_2(runs: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert_one_line_error(ckpt("ls", tmp_path / "empty"), "not a checkpoint directory")
    assert_one_line_error(ckpt("ls", tmp_path / "missing"), "does not exist")
    assert_one_line_error(ckpt("verify", tmp_path / "file.txt"), "is a file")
    assert_one_line_error(ckpt("show", runs / "mlp", 5), "no step 5", "4, 6, 8-10")
    assert_one_line_error(ckpt("show", runs / "mlp", "five"), "STEP must be")
    assert_one_line_error(ckpt("show", runs / "sweep"), "nested run", "trial_0")
    assert_one_line_error(ckpt("best", runs / "sweep" / "trial_0"), "no best pointer")
    assert_one_line_error(
        ckpt("best", runs / "mlp", "--metric", "bleu"), "'bleu'", "['acc', 'val_loss']"
    )
    assert_one_line_error(ckpt("ls", runs / "mlp" / layout.step_dirname(6)), "single checkpoint")
    assert_one_line_error(ckpt("ls", runs, "--max-to-keep", "x"), "--max-to-keep")
    assert_one_line_error(ckpt("prune", runs / "mlp", "--keep-period", 0), "positive integer")


def test_an_empty_dir_argument_never_acts_on_the_current_directory(runs: Path) -> None:
    # `ckpt prune "$RUN" --max-to-keep 1` with RUN unset used to prune the current directory.
    before = sorted(p.name for p in (runs / "mlp").iterdir())
    for command in (("prune", "", "--max-to-keep", 1), ("ls", ""), ("verify", " ")):
        result = subprocess.run(
            [str(CKPT), *map(str, command)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=runs / "mlp",
        )
        assert_one_line_error(result, "names no directory", "'.'")
    assert sorted(p.name for p in (runs / "mlp").iterdir()) == before


def test_show_damaged_manifest_is_bad_input(mlp: Path) -> None:
    (mlp / layout.step_dirname(9) / layout.MANIFEST).write_text('{"ckpt_core_manifest": 1, "st')
    assert_one_line_error(ckpt("show", mlp, 9), "step 9", "not valid JSON")


# ---------------------------------------------------------------- verify


def test_verify_intact_exits_0(runs: Path) -> None:
    result = ckpt("verify", runs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 of 9 steps intact." in result.stdout  # 5 + 2 + 2 steps in three runs


def test_verify_names_every_damaged_file_and_invalid_manifest(mlp: Path) -> None:
    step9 = mlp / layout.step_dirname(9)
    flip_byte(step9 / "arrays.safetensors")
    flip_byte(step9 / "tree.json", offset=5)
    (mlp / layout.step_dirname(4) / layout.MANIFEST).unlink()
    result = ckpt("verify", mlp)
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(step9 / "arrays.safetensors") in result.stdout
    assert str(step9 / "tree.json") in result.stdout
    assert str(mlp / layout.step_dirname(4) / layout.MANIFEST) in result.stdout
    assert "3 of 5 steps intact; 2 damaged files, 1 invalid manifest." in result.stdout

    doc = json.loads(ckpt("verify", mlp, "--json").stdout)
    assert doc["intact"] is False
    status = {s["step"]: s["status"] for s in doc["runs"][0]["steps"]}
    assert status == {4: "invalid", 6: "ok", 8: "ok", 9: "damaged", 10: "ok"}
    damaged = next(s for s in doc["runs"][0]["steps"] if s["step"] == 9)["damaged"]
    assert sorted(Path(d["path"]).name for d in damaged) == ["arrays.safetensors", "tree.json"]
    # one intact step checks out on its own, with damage elsewhere
    assert ckpt("verify", mlp, 6).returncode == 0
    assert ckpt("verify", mlp, 9).returncode == 1


def test_verify_missing_payload_file(mlp: Path) -> None:
    (mlp / layout.step_dirname(8) / "tree.json").unlink()
    result = ckpt("verify", mlp, 8)
    assert result.returncode == 1
    assert "tree.json is listed in the manifest but missing" in result.stdout


# ---------------------------------------------------------------- prune


def test_prune_dry_run_deletes_nothing(mlp: Path) -> None:
    before = sorted(os.listdir(mlp))
    result = ckpt("prune", mlp, "--max-to-keep", 1, "--dry-run")
    assert result.returncode == 0, result.stderr
    # the run's recorded keep_period=4 and best val_loss still keep 4, 8 and 6
    assert "would delete 1 of 5 steps" in result.stdout
    assert "would delete: 9" in result.stdout
    assert sorted(os.listdir(mlp)) == before


def test_prune_applies_the_core_policy(mlp: Path) -> None:
    recorded = json.loads((mlp / layout.RUN_FILE).read_text())["retention"]
    doc = ckpt_json("prune", mlp, "--max-to-keep", 2, "--metric", "acc", "--mode", "max")
    assert doc["deleted"] == [6] and doc["dry_run"] is False  # 4 and 8: the run's keep_period
    with CheckpointManager(mlp, read_only=True, best_fn="acc", best_mode="max") as mgr:
        assert mgr.all_steps() == [4, 8, 9, 10]
        assert mgr.best_step() == 10
        mgr.verify(9)
    # pruning by hand does not change the run's own retention record
    assert json.loads((mlp / layout.RUN_FILE).read_text())["retention"] == recorded
    # the run's best pointer named a deleted step: it now names the best remaining one
    assert (mlp / layout.BEST_POINTER).read_text().strip() == layout.step_dirname(10)
    assert not any(name.startswith(".tmp-") for name in os.listdir(mlp))


def test_prune_refuses_while_a_run_is_writing(mlp: Path) -> None:
    with CheckpointManager(mlp, on_existing="resume"):
        result = ckpt("prune", mlp, "--max-to-keep", 1)
    assert_one_line_error(result, "being written")
    assert len([n for n in os.listdir(mlp) if layout.parse_step(n) is not None]) == 5


def test_prune_without_a_policy_is_bad_input(mlp: Path) -> None:
    assert_one_line_error(ckpt("prune", mlp), "--max-to-keep")


# ---------------------------------------------------------------- best


def test_best_prints_the_path_for_scripts(runs: Path) -> None:
    result = ckpt("best", runs / "mlp")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{runs / 'mlp' / layout.step_dirname(6)}\n"
    by_acc = ckpt("best", runs / "mlp", "--metric", "acc", "--mode", "max").stdout.strip()
    assert by_acc == str(runs / "mlp" / layout.step_dirname(10))
    doc = ckpt_json("best", runs / "mlp", "--metric", "val_loss")
    assert doc["step"] == 6 and doc["metrics"]["val_loss"] == val_loss(6)


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_core.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for command in ("ls", "show", "verify", "prune", "best"):
        assert command in result.stdout
