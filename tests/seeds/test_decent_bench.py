"""decent_bench's benchmark checkpoints, ported: one run per algorithm x trial, progress and
completion markers, resuming an interrupted benchmark (finished trials are loaded, not rerun),
zstd-compressed pickles that keep shared references, and a backup zip.

Names map to ours as in the README's "Coming from ..." table: `algorithm_i/trial_j/` is one
`CheckpointManager(..., format="pickle", allow_pickle=True)`; `progress.json` is
`latest_step()`; `complete.json` is `mark_complete()` / `is_complete`; `metadata.json` is the
run metadata; `create_backup()` is `backup(path)`.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckpt_core import (
    CheckpointManager,
    UnsafeFormatError,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ALGORITHMS = ("DGD", "ADMM")
N_TRIALS = 2
ITERATIONS = 30


class Network:
    """Agents' states; the algorithm holds a reference to it (a shared object)."""

    def __init__(self, seed: int) -> None:
        self.x = np.random.default_rng(seed).standard_normal((3, 2))


class Algorithm:
    def __init__(self, name: str, network: Network) -> None:
        self.name = name
        self.network = network
        self.step_size = 0.5 if name == "DGD" else 0.25

    def iterate(self, iteration: int) -> None:
        self.network.x = self.network.x * (1 - self.step_size) + 1.0 / (iteration + 1)


class Stop(Exception):
    """A crash in the middle of a trial."""


def trial_manager(root: Path, alg: int, trial: int) -> CheckpointManager:
    return CheckpointManager(
        root / f"algorithm_{alg}" / f"trial_{trial}",
        save_interval_steps=10,  # checkpoint_step
        max_to_keep=2,  # keep_n_checkpoints
        format="pickle",
        allow_pickle=True,
        on_existing="resume",
    )


def run_benchmark(root: Path, stop_at: tuple[int, int, int] | None = None) -> dict[Any, Any]:
    """Every algorithm x trial; a finished trial is loaded, an interrupted one continues."""
    with CheckpointManager(root, on_existing="resume") as bench:
        if not bench.run_metadata:  # metadata.json: written once at initialisation
            bench.update_run_metadata(
                {"n_trials": N_TRIALS, "algorithms": list(ALGORITHMS), "user": {"seed": 7}}
            )
            save_checkpoint(root / "benchmark_problem", {"seed": 7}, format="pickle")
    results = {}
    for alg, name in enumerate(ALGORITHMS):
        for trial in range(N_TRIALS):
            with trial_manager(root, alg, trial) as mgr:
                if mgr.is_complete:  # load_trial_result
                    results[alg, trial] = mgr.restore("latest")["network"].x
                    continue
                if mgr.resuming:  # load_checkpoint: the last completed iteration
                    saved = mgr.restore("latest")
                    algorithm, start = saved["algorithm"], saved["iteration"] + 1
                else:
                    algorithm, start = Algorithm(name, Network(seed=trial)), 0
                for iteration in range(start, ITERATIONS):
                    if stop_at == (alg, trial, iteration):
                        raise Stop
                    algorithm.iterate(iteration)
                    checkpoint = {
                        "algorithm": algorithm,
                        "network": algorithm.network,
                        "iteration": iteration,
                    }
                    mgr.save(iteration, checkpoint, force=iteration == ITERATIONS - 1)
                mgr.mark_complete()  # mark_trial_complete
                results[alg, trial] = algorithm.network.x
    return results


def is_benchmark_completed(root: Path) -> bool:
    with CheckpointManager(root, read_only=True) as bench:
        meta = bench.run_metadata
    return all(
        CheckpointManager(root / f"algorithm_{a}" / f"trial_{t}", read_only=True).is_complete
        for a in range(len(meta["algorithms"]))
        for t in range(meta["n_trials"])
    )


def test_an_interrupted_benchmark_resumes_and_loads_finished_trials(tmp_path):
    reference = run_benchmark(tmp_path / "reference")

    root = tmp_path / "bench"
    with pytest.raises(Stop):
        run_benchmark(root, stop_at=(1, 1, 25))
    assert not is_benchmark_completed(root)
    done = CheckpointManager(root / "algorithm_0" / "trial_0", read_only=True)
    assert done.is_complete and done.all_steps() == [20, 29]  # keep_n_checkpoints=2
    stopped = CheckpointManager(root / "algorithm_1" / "trial_1", read_only=True)
    assert not stopped.is_complete and stopped.latest_step() == 20  # progress.json

    before = (root / "algorithm_0" / "trial_0" / "step_00000029").stat().st_mtime_ns
    results = run_benchmark(root)
    assert is_benchmark_completed(root)
    assert (root / "algorithm_0" / "trial_0" / "step_00000029").stat().st_mtime_ns == before
    for key, value in reference.items():
        np.testing.assert_array_equal(results[key], value)
    assert load_metadata(root / "algorithm_1" / "trial_1", step=29) is None
    with CheckpointManager(root, read_only=True) as bench:
        assert bench.run_metadata["user"] == {"seed": 7}
    assert load_checkpoint(root / "benchmark_problem", allow_pickle=True) == {"seed": 7}
    listing = subprocess.run(
        [sys.executable, "-m", "ckpt_core.cli", "ls", str(root)], capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert all(f"algorithm_{a}/trial_{t}" in listing.stdout for a, t in reference)


def test_pickles_are_zstd_compressed_keep_shared_references_and_load_only_when_allowed(
    tmp_path,
):
    run_benchmark(tmp_path)
    step = tmp_path / "algorithm_0" / "trial_1" / "step_00000029"
    payload = step / "state.pkl.zst"
    assert payload.read_bytes()[:4] == ZSTD_MAGIC
    saved = load_checkpoint(step, allow_pickle=True)
    assert saved["algorithm"].network is saved["network"]  # one object, as saved
    assert saved["iteration"] == ITERATIONS - 1
    with pytest.raises(UnsafeFormatError, match="allow_pickle"):
        load_checkpoint(step)


def test_backup_zip_holds_every_committed_step_and_restores(tmp_path):
    root = tmp_path / "bench"
    run_benchmark(root)
    trial = root / "algorithm_1" / "trial_0"
    with trial_manager(root, 1, 0) as mgr:
        backup = mgr.backup(tmp_path / "trial_backup.zip")
        final = mgr.restore("latest")["network"].x
    with zipfile.ZipFile(backup) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "restored")
    assert "run.json" in names and any(n.startswith("step_00000029/") for n in names)
    assert CheckpointManager(tmp_path / "restored", read_only=True).is_complete
    restored = load_checkpoint(tmp_path / "restored", step=29, allow_pickle=True)
    np.testing.assert_array_equal(restored["network"].x, final)
    assert trial.exists()
