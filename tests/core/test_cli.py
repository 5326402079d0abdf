"""The `ckpt` console command, run as a user runs it: the installed script, in a subprocess.

Every directory here is written by the core (`CheckpointManager.save`), then damaged by hand
where a test needs damage (a flipped byte, a deleted manifest, a killed writer's temporary).
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
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


def ckpt_on_terminal(*args: Any, columns: int) -> str:
    """What `ckpt` prints on a terminal `columns` wide (ANSI codes removed)."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    proc = subprocess.Popen(
        [str(CKPT), *map(str, args)],
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**env, "COLUMNS": str(columns), "TERM": "xterm-256color"},
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
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r", "")


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


def test_ls_lists_several_directories_with_json_before_or_after(runs: Path) -> None:
    a, b = runs / "mlp", runs / "sweep" / "trial_1"
    result = ckpt("ls", a, b)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(a)) and f"\n{b}  ·  complete" in result.stdout
    after = ckpt_json("ls", a, b)
    before = ckpt("--json", "ls", a, b)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == after
    assert after["directories"] == [str(a), str(b)]
    assert [Path(r["directory"]) for r in after["runs"]] == [a, b]
    # a run named twice (itself and through its parent) is listed once
    doc = ckpt_json("ls", runs / "sweep", b)
    assert [Path(r["directory"]).name for r in doc["runs"]] == ["trial_0", "trial_1"]
    assert json.loads(ckpt("--json", "best", a).stdout)["step"] == 6  # every command


def write_long_metric_run(directory: Path) -> None:
    """Lightning-style metric names; the run monitors the last of them."""
    with CheckpointManager(directory, max_to_keep=3, best_fn="val/loss_epoch_average") as mgr:
        for step in range(1, 6):
            metrics = {
                "lr-Adam": 1e-3,
                "train/loss_step_average": 1 / step,
                "val/accuracy_epoch": step / 10,
                "val/loss_epoch_average": abs(3.5 - step),
            }
            mgr.save(step, state(step), metrics=metrics)


def test_ls_fits_80_columns_with_long_metric_names(tmp_path: Path) -> None:
    write_long_metric_run(tmp_path / "run")
    out = ckpt_on_terminal("ls", tmp_path / "run", columns=80)
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, out
    assert "…" not in out  # nothing cut
    for name in ("lr-Adam=", "train/loss_step_average=", "val/accuracy_epoch="):
        assert out.count(name) == 3, out  # never broken mid-word: 3 steps, 3 whole names
    # the monitored metric first: on the line of its step, before any other metric
    column = next(line for line in lines if "METRICS" in line).index("METRICS")
    row = next(line for line in lines if line.split()[:1] == ["4"])
    assert row[column:].startswith("val/loss_epoch_average=0.5"), row
    assert "best" in row[column:]  # ties: the newer step (4, not 3) is best
    # piped: one line per step (for grep), the monitored metric first too
    piped = ckpt("ls", tmp_path / "run").stdout
    row = next(line for line in piped.splitlines() if line.split()[:1] == ["3"])
    assert row.index("val/loss_epoch_average=") < row.index("lr-Adam=")


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
    # the run's best pointer named a deleted step (6): it now names the best remaining one by
    # the run's own val_loss (4), not by the prune's one-off acc ranking (10)
    assert (mlp / layout.BEST_POINTER).read_text().strip() == layout.step_dirname(4)
    with CheckpointManager(mlp, read_only=True) as mgr:
        assert mgr.best_step() == 4
    assert ckpt("best", mlp).stdout.strip() == str(mlp / layout.step_dirname(4))
    assert [r["step"] for r in ckpt_json("ls", mlp)["runs"][0]["steps"] if r["best"]] == [4]
    assert not any(name.startswith(".tmp-") for name in os.listdir(mlp))


def test_prune_refuses_while_a_run_is_writing(mlp: Path) -> None:
    with CheckpointManager(mlp, on_existing="resume"):
        result = ckpt("prune", mlp, "--max-to-keep", 1)
    assert_one_line_error(result, "being written")
    assert len([n for n in os.listdir(mlp) if layout.parse_step(n) is not None]) == 5


def test_prune_without_a_policy_is_bad_input(mlp: Path) -> None:
    assert_one_line_error(ckpt("prune", mlp), "--max-to-keep")


def test_prune_turns_recorded_rules_off(mlp: Path) -> None:
    # recorded: max_to_keep=3, keep_period=4, best by val_loss; step 4 is kept by its period only
    doc = ckpt_json("prune", mlp, "--keep-period", "none", "--dry-run")
    assert doc["retention"]["keep_period"] is None and doc["deleted"] == [4]
    doc = ckpt_json("prune", mlp, "--metric", "none", "--max-to-keep", 1, "--dry-run")
    assert doc["retention"]["best_fn"] is None
    assert doc["deleted"] == [9]  # 4, 8: period; 6: the run's best pointer; 10: latest
    doc = ckpt_json("prune", mlp, "--max-to-keep", "all", "--keep-period", "none")
    assert doc["deleted"] == [] and doc["retention"]["max_to_keep"] is None
    result = ckpt("prune", mlp, "--keep-period", "none", "--max-to-keep", 2)
    assert result.returncode == 0, result.stderr
    assert "deleted: 4, 8" in result.stdout
    with CheckpointManager(mlp, read_only=True) as mgr:
        assert mgr.all_steps() == [6, 9, 10]
    assert_one_line_error(ckpt("prune", mlp, "--keep-period", "never"), "'none'")


def test_prune_lists_the_temporaries_it_deletes_with_their_size(mlp: Path) -> None:
    temporary = mlp / layout.tmp_dirname(layout.step_dirname(11), "1f2e3d4c5b6a")
    (temporary / "arrays").mkdir(parents=True)  # a killed writer's 2.5 MB
    (temporary / "arrays" / "arrays.safetensors").write_bytes(b"\0" * 2_500_000)
    (temporary / "tree.json").write_bytes(b"\0" * 100)
    (run,) = ckpt_json("ls", mlp)["runs"]
    assert [o["bytes"] for o in run["other"]] == [2_500_100]
    assert "2.5 MB" in ckpt("ls", mlp).stdout
    dry = ckpt("prune", mlp, "--max-to-keep", 3, "--dry-run").stdout
    assert f"would delete: {temporary.name} (2.5 MB" in dry and "1 temporary" in dry
    assert temporary.exists()
    result = ckpt("prune", mlp, "--max-to-keep", 3)
    assert result.returncode == 0, result.stderr
    assert f"deleted: {temporary.name} (2.5 MB" in result.stdout
    assert "deleted 0 of 5 steps and 1 temporary (2.5 MB)" in result.stdout
    assert not temporary.exists()


def test_a_damaged_run_json_is_reported_and_prune_needs_every_rule(mlp: Path) -> None:
    run_json = mlp / layout.RUN_FILE
    damaged = run_json.read_bytes()[:-20]  # e.g. a disk that filled up mid-write
    run_json.write_bytes(damaged)
    steps = sorted(os.listdir(mlp))
    result = ckpt("ls", mlp)
    assert result.returncode == 0, result.stderr
    assert "run.json is damaged" in result.stdout and "unreadable" in result.stdout
    (run,) = ckpt_json("ls", mlp)["runs"]
    assert "run.json is damaged" in run["run_json_error"]
    assert "run.json is unreadable" in run["retention"]["source"]
    for command in ("show", "best"):
        result = ckpt(command, mlp)
        assert result.returncode == 0, result.stderr
        assert "warning" in result.stderr and "run.json is damaged" in result.stderr
    # the defaults (max_to_keep=5) in place of the recorded rules would delete nothing here,
    # but keep_period=4 and best-by-val_loss protected steps a tighter rule would delete
    for given in (["--max-to-keep", 1], ["--max-to-keep", 1, "--keep-period", "none"]):
        result = ckpt("prune", mlp, *given)
        assert_one_line_error(result, "run.json is damaged", "nothing was deleted", "--metric")
        assert ckpt("prune", mlp, *given, "--dry-run").returncode == 2
    assert sorted(os.listdir(mlp)) == steps and run_json.read_bytes() == damaged
    doc = ckpt_json("prune", mlp, "--max-to-keep", 1, "--keep-period", 4, "--metric", "val_loss")
    assert doc["deleted"] == [9]
    assert run_json.read_bytes() == damaged  # left for the user to repair, not replaced


def test_show_depth_and_path_filter(tmp_path: Path) -> None:
    counters = {"total": {"ready": 3, "completed": 3}, "current": {"ready": 1, "completed": 1}}
    lightning_like = {
        "state_dict": {"layer.weight": np.ones((2, 3), np.float32), "layer.bias": np.zeros(2)},
        "loops": {
            "fit_loop": {"epoch_progress": counters, "batch_progress": counters},
            "validate_loop": {"batch_progress": counters},
        },
        "epoch": 3,
    }
    with CheckpointManager(tmp_path / "r") as mgr:
        mgr.save(3, lightning_like)
    out = ckpt("show", tmp_path / "r", "--depth", 1)
    assert out.returncode == 0, out.stderr
    assert "loops/" in out.stdout and "12 leaves, 0 arrays" in out.stdout
    assert "state_dict/" in out.stdout and "2 leaves, 2 arrays" in out.stdout
    assert "fit_loop" not in out.stdout and "3 of 15 leaves shown" not in out.stdout
    assert "1 of 15 leaves shown (1 level deep, deeper ones folded" in out.stdout
    doc = ckpt_json("show", tmp_path / "r", "--depth", 1)
    entries = {e["path"]: e for e in doc["tree"]["entries"]}
    assert set(entries) == {"state_dict/", "loops/", "epoch"}
    assert entries["loops/"]["leaves"] == 12 and entries["state_dict/"]["bytes"] == 24 + 16
    doc = ckpt_json("show", tmp_path / "r", "--path", "state_dict")
    assert [e["path"] for e in doc["tree"]["entries"]] == [
        "state_dict/layer.weight",
        "state_dict/layer.bias",
    ]
    doc = ckpt_json("show", tmp_path / "r", "--path", "loops/*/batch_progress", "--depth", 3)
    assert [e["path"] for e in doc["tree"]["entries"]] == [
        "loops/fit_loop/batch_progress/",
        "loops/validate_loop/batch_progress/",
    ]
    out = ckpt("show", tmp_path / "r", "--path", "optimizer_states").stdout
    assert "no leaf path matches 'optimizer_states'" in out


def test_show_shortens_long_metadata_and_leaves_out_none(tmp_path: Path) -> None:
    rng = "ab" * 5000  # e.g. the hex of an RNG state, as CkptHook(save_global_rng=True) saves
    with CheckpointManager(tmp_path / "r") as mgr:
        mgr.save(1, state(1), metadata={"epoch": 3, "rng": {"numpy": rng, "python": rng}})
        mgr.save(2, state(2))
    out = ckpt("show", tmp_path / "r", 1).stdout
    line = next(x for x in out.splitlines() if x.strip().startswith("metadata"))
    assert "epoch=3" in line and "rng={numpy, python} <" in line and "--json" in line
    assert len(line) < 120 and rng not in out
    doc = ckpt_json("show", tmp_path / "r", 1)
    assert doc["metadata"]["rng"]["numpy"] == rng  # in full for scripts
    out = ckpt("show", tmp_path / "r").stdout  # no metadata: no line (as README's sample)
    assert "metadata" not in out and "null" not in out
    assert ckpt_json("show", tmp_path / "r")["metadata"] is None


def test_show_accepts_pointer_files_and_files_inside_a_step(runs: Path) -> None:
    mlp = runs / "mlp"
    assert ckpt_json("show", mlp / layout.LATEST_POINTER)["step"] == 10
    assert ckpt_json("show", mlp / layout.BEST_POINTER)["step"] == 6
    step_6 = mlp / layout.step_dirname(6)
    for file in sorted(step_6.iterdir()):
        doc = ckpt_json("show", file)
        assert doc["step"] == 6 and doc["best"] is True, file
    assert_one_line_error(ckpt("show", mlp / layout.LATEST_POINTER, 4), "drop STEP")
    assert_one_line_error(ckpt("show", mlp / layout.RUN_FILE), "is a file", "pointer")


def test_ranking_options_that_would_be_ignored_are_refused(runs: Path) -> None:
    mlp = runs / "mlp"
    assert_one_line_error(ckpt("best", mlp, "--mode", "max"), "--mode max needs --metric")
    assert_one_line_error(ckpt("show", mlp, "--metric", "acc"), "only for STEP 'best'")
    assert_one_line_error(ckpt("show", mlp, 6, "--mode", "max"), "only for STEP 'best'")
    assert_one_line_error(ckpt("show", mlp, "best", "--mode", "max"), "needs --metric")
    assert ckpt_json("show", mlp, "best", "--metric", "acc", "--mode", "max")["step"] == 10
    assert ckpt_json("best", mlp, "--metric", "acc", "--mode", "max")["step"] == 10


def test_single_checkpoints_are_verified_and_listed(runs: Path, tmp_path: Path) -> None:
    from ckpt_core import save_checkpoint

    models = tmp_path / "models"
    save_checkpoint(models / "agent", state(7), metadata={"env": "CartPole-v1"})
    shutil.copytree(runs / "mlp", models / "mlp")
    result = ckpt("verify", models / "agent")
    assert result.returncode == 0, result.stderr
    assert "a single checkpoint" in result.stdout and "1 of 1 steps intact" in result.stdout
    doc = ckpt_json("verify", models / "agent")
    assert doc["intact"] is True and doc["runs"][0]["single"] is True
    assert doc["runs"][0]["steps"][0]["status"] == "ok"
    assert ckpt("verify", models / "mlp" / layout.step_dirname(6)).returncode == 0
    assert_one_line_error(ckpt("verify", models / "agent", 0), "single checkpoint", "drop STEP")
    # `ckpt ls PARENT` names it instead of leaving it out; --json has it too
    out = ckpt("ls", models).stdout
    assert "agent" in out and "a single checkpoint" in out and "mlp" in out
    doc = ckpt_json("ls", models)
    assert [c["path"] for c in doc["checkpoints"]] == [str(models / "agent")]
    assert [r["directory"] for r in doc["runs"]] == [str(models / "mlp")]
    assert ckpt_json("ls", runs)["checkpoints"] == []
    # `ckpt verify PARENT` checks it with the runs, and finds its damage
    payload = next(f for f in (models / "agent").iterdir() if f.name != layout.MANIFEST)
    flip_byte(payload)
    assert ckpt("verify", models / "agent").returncode == 1
    doc = json.loads(ckpt("verify", models, "--json").stdout)
    assert doc["intact"] is False and [r["single"] for r in doc["runs"]] == [False, True]


# ---------------------------------------------------------------- best


def test_best_prints_the_path_for_scripts(runs: Path) -> None:
    result = ckpt("best", runs / "mlp")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{runs / 'mlp' / layout.step_dirname(6)}\n"
    by_acc = ckpt("best", runs / "mlp", "--metric", "acc", "--mode", "max").stdout.strip()
    assert by_acc == str(runs / "mlp" / layout.step_dirname(10))
    doc = ckpt_json("best", runs / "mlp", "--metric", "val_loss")
    assert doc["step"] == 6 and doc["metrics"]["val_loss"] == val_loss(6)


def test_best_skips_a_step_that_fails_its_checksums(mlp: Path) -> None:
    flip_byte(mlp / layout.step_dirname(6) / "arrays.safetensors")  # the best by val_loss
    result = ckpt("best", mlp)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{mlp / layout.step_dirname(4)}\n"  # the best intact one
    assert "warning: step 6 fails its checks" in result.stderr and "ckpt verify" in result.stderr
    doc = ckpt_json("best", mlp)
    assert doc["step"] == 4 and [s["step"] for s in doc["skipped"]] == [6]
    flip_byte(mlp / layout.step_dirname(10) / "arrays.safetensors")
    by_acc = ckpt("best", mlp, "--metric", "acc", "--mode", "max")
    assert by_acc.stdout == f"{mlp / layout.step_dirname(9)}\n"
    for step in (4, 8, 9):
        flip_byte(mlp / layout.step_dirname(step) / "arrays.safetensors")
    result = ckpt("best", mlp)
    assert result.returncode == 1 and result.stdout == ""
    assert "no intact step among the 5 ranked steps" in result.stderr


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


# ---------------------------------------------------------------- the byte budget


def budget_run(directory: Path, **options: Any) -> Path:
    """Eight 100 kB steps, best (loss) at 2, keep_period=4: recorded in run.json."""
    with CheckpointManager(
        directory, max_to_keep=None, keep_period=4, best_fn="loss", **options
    ) as mgr:
        for step in range(8):
            mgr.save(step, {"x": np.zeros(25_000, np.float32)}, metrics={"loss": abs(step - 2)})
    return directory


def test_prune_max_bytes_explains_and_deletes_what_is_over_budget(tmp_path: Path) -> None:
    run = budget_run(tmp_path / "run")
    dry = ckpt("prune", run, "--max-bytes", "450kB", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # recent only, oldest first: 1, 3, 5, 6 (0 and 4 by period, 2 best, 7 latest)
    assert "would delete 4 of 8 steps" in dry.stdout and "over budget: 1, 3, 5-6" in dry.stdout
    assert "within max_bytes=450.0 kB" in dry.stdout
    assert len(os.listdir(run)) > 8
    doc = ckpt_json("prune", run, "--max-bytes", "450kB")
    assert doc["deleted"] == doc["over_budget"] == [1, 3, 5, 6]
    assert doc["retention"]["max_bytes"] == 450_000
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.all_steps() == [0, 2, 4, 7] and mgr.size_bytes() <= 450_000
    assert_one_line_error(ckpt("prune", run, "--max-bytes", "45 furlongs"), "--max-bytes", "20GB")


def test_ls_shows_the_total_against_a_recorded_budget_and_none_turns_it_off(
    tmp_path: Path,
) -> None:
    run = budget_run(tmp_path / "run", max_bytes="1MB")
    result = ckpt("ls", run)
    assert result.returncode == 0, result.stderr
    assert re.search(r"8 steps, 80\d\.\d kB of 1\.0 MB budget", result.stdout), result.stdout
    (listed,) = ckpt_json("ls", run)["runs"]
    assert listed["retention"]["max_bytes"] == 1_000_000
    assert listed["total_bytes"] == sum(s["bytes"] for s in listed["steps"])
    # a smaller budget on the command line: `ls` says which steps it would delete, and why
    (listed,) = ckpt_json("ls", run, "--max-bytes", "450kB")["runs"]
    assert [s["step"] for s in listed["steps"] if s["over_budget"]] == [1, 3, 5, 6]
    assert "over budget" in ckpt("ls", run, "--max-bytes", "450kB").stdout
    doc = ckpt_json("prune", run, "--max-bytes", "none", "--max-to-keep", 2, "--dry-run")
    assert doc["retention"]["max_bytes"] is None and doc["over_budget"] == []
