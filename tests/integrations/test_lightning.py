"""`integrations.lightning.CkptCallback` with a real `Trainer` on tiny models, on CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

import integrations.lightning as lightning_adapter
from ckpt_core import CheckpointError, CheckpointExistsError, CheckpointManager
from integrations.lightning import CkptCallback
from tests.legacy_rng import lightning_rng_layout_before

ROOT = Path(__file__).resolve().parents[2]
BATCH = 4
N_TRAIN = 32  # 8 optimizer steps per epoch
EPOCHS = 4


# ---------------------------------------------------------------- tiny training setup


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return x, x.sum(dim=1, keepdim=True).sin()


class TinyModule(LightningModule):
    """Dropout, Adam and a step LR schedule; the loss also draws from Python's and numpy's RNG,
    so a resume is exact only if every RNG stream and every optimizer state comes back."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        loss = F.mse_loss(self.net(x), y) * jitter
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class ResumableSampler(Sampler[int]):
    """A per-epoch shuffled order from its own generator, resumable mid-epoch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epoch, self.position, self._resuming = -1, 0, False

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self._resuming or self.position >= self.size:
            self.epoch, self.position = self.epoch + 1, 0
        self._resuming = False
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch))
        while self.position < self.size:
            self.position += 1
            yield int(order[self.position - 1])


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict`: what Lightning calls stateful. Like
    any DataLoader it draws from the global torch RNG each time an iterator is created."""

    def __init__(self, dataset: TensorDataset, batch_size: int) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=ResumableSampler(len(dataset)))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "position": self.sampler.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch, self.sampler.position = state["epoch"], state["position"]
        self.sampler._resuming = True


class Stream(IterableDataset):
    """An IterableDataset with no saved position: a resumed run cannot continue it mid-epoch."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[Any]:
        return iter(self.dataset)


class EveryOther(Sampler[int]):
    """A custom sampler: its order cannot be replayed."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter([*range(0, self.size, 2), *range(1, self.size, 2)])


def loaders(kind: str, n_train: int = N_TRAIN) -> tuple[DataLoader, DataLoader]:
    """The train loader of `kind`: "stateful" has `state_dict`; the others are plain loaders,
    shuffled by the global torch RNG ("shuffled", "workers": with 2 worker processes) or by a
    generator seeded from it ("generator", "batch_sampler"), or by a fixed seed and the
    epoch ("distributed"), or not replayable ("stream",
    "custom_sampler")."""
    x, y = make_data(n_train, seed=0)
    dataset = TensorDataset(x, y)
    # Seeded from the run's seed: a resumed run with another seed starts it elsewhere.
    generator = torch.Generator().manual_seed(torch.initial_seed() + 1)
    train: DataLoader
    if kind == "stateful":
        train = ResumableLoader(dataset, BATCH)
    elif kind == "shuffled":
        train = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    elif kind == "workers":
        train = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    elif kind == "generator":
        train = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator)
    elif kind == "batch_sampler":
        sampler = BatchSampler(RandomSampler(dataset, generator=generator), BATCH, False)
        train = DataLoader(dataset, batch_sampler=sampler)
    elif kind == "distributed":  # the sampler Lightning puts in under DDP; one replica here
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=5)
        train = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    elif kind == "stream":
        train = DataLoader(Stream(dataset), batch_size=BATCH)
    else:
        assert kind == "custom_sampler", kind
        train = DataLoader(dataset, batch_size=BATCH, sampler=EveryOther(len(dataset)))
    vx, vy = make_data(8, seed=1)
    return train, DataLoader(TensorDataset(vx, vy), batch_size=BATCH)


class CountBatches(Callback):
    """A stateful callback: its count must come back on resume."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


class Crash(RuntimeError):
    pass


class CrashAt(Callback):
    """Interrupts training by raising at the end of the batch that reaches `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"interrupted at step {self.step}")


class KillAt(Callback):
    """SIGKILLs its own process at the end of the batch that reaches `step`: no cleanup runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def make_trainer(callbacks: list[Callback], max_epochs: int = EPOCHS, **kwargs: Any) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def fit(
    directory: Path,
    kind: str,
    seed: int = 0,
    extra: list[Callback] | None = None,
    max_epochs: int = EPOCHS,
    module: type[TinyModule] | None = None,
    n_train: int = N_TRAIN,
    **cb_options: Any,
) -> tuple[TinyModule, Trainer, CkptCallback, CountBatches]:
    """Seed, build and fit; a different seed makes a different model and RNG streams."""
    seed_everything(seed, verbose=False)
    model = (module or TinyModule)()
    counter = CountBatches()
    cb = CkptCallback(directory, **cb_options)
    trainer = make_trainer([counter, *(extra or []), cb], max_epochs=max_epochs)
    train, val = loaders(kind, n_train)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return model, trainer, cb, counter


def final_state(model: LightningModule, trainer: Trainer, counter: CountBatches) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": trainer.optimizers[0].state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "global_step": trainer.global_step,
        "batches": counter.batches,
    }


def assert_bit_equal(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, where
        assert torch.equal(got, want), f"{where} differs"
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_bit_equal(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_bit_equal(g, w, f"{where}/{i}")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# Epoch-boundary runs save at every epoch end (steps 8, 16, ...); mid-epoch runs every 3 steps
# (steps 3, 6, ..., 18, ...), so step 18 is 2 batches into epoch 2: with the stateful loader
# Lightning restores its position; plain loaders are replayed by the callback. All are kept, so
# the runs can be compared checkpoint by checkpoint.
MID_EPOCH = {"every_n_train_steps": 3, "max_to_keep": None}
SCENARIOS = {
    "epoch_boundary": ("shuffled", {"max_to_keep": None}, 20, 16),
    "mid_epoch": ("stateful", MID_EPOCH, 20, 18),
    "mid_epoch_shuffled": ("shuffled", MID_EPOCH, 20, 18),
    "mid_epoch_workers": ("workers", MID_EPOCH, 20, 18),
    "mid_epoch_generator": ("generator", MID_EPOCH, 20, 18),
    "mid_epoch_batch_sampler": ("batch_sampler", MID_EPOCH, 20, 18),
    "mid_epoch_distributed": ("distributed", MID_EPOCH, 20, 18),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    results = {}
    for name, (kind, options, _, _) in SCENARIOS.items():
        directory = tmp_path_factory.mktemp(name)
        model, trainer, _, counter = fit(directory, kind, **options)
        results[name] = final_state(model, trainer, counter) | {"manifests": manifests(directory)}
    return results


def manifests(directory: Path) -> dict[int, Any]:
    """The committed steps with their metrics and metadata."""
    with CheckpointManager(directory, read_only=True) as manager:
        return {s: (dict(manager.metrics(s)), manager.metadata(s)) for s in manager.all_steps()}


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_resume_after_exception_is_bit_exact(scenario, uninterrupted, tmp_path, recwarn):
    kind, options, crash_step, expected_resume = SCENARIOS[scenario]
    with pytest.raises(Crash):
        fit(tmp_path, kind, extra=[CrashAt(crash_step)], **options)
    # Another seed: the model, the RNG streams and the loader all start elsewhere.
    model, trainer, cb, counter = fit(tmp_path, kind, seed=99, resume=True, **options)
    assert cb.resumed_step == expected_resume
    # Neither Lightning ("dataloader is not resumable") nor the callback warns: it is exact.
    assert not [w for w in recwarn if "resumable" in str(w.message) or "exact" in str(w.message)]
    # Same weights, optimizer and scheduler states, and the same checkpoints on disk, with the
    # same logged metrics (a resumed run starts from the metrics of the step it resumed).
    resumed = final_state(model, trainer, counter) | {"manifests": manifests(tmp_path)}
    assert_bit_equal(resumed, uninterrupted[scenario])


def test_save_on_exception_resumes_from_the_failed_step(uninterrupted, tmp_path):
    kind, options, crash_step, _ = SCENARIOS["mid_epoch"]
    with pytest.raises(Crash):
        fit(tmp_path, kind, extra=[CrashAt(crash_step)], save_on_exception=True, **options)
    with CheckpointManager(tmp_path, read_only=True) as manager:
        assert manager.latest_step() == crash_step
        assert manager.metadata(crash_step)["trigger"] == "exception"
    model, trainer, cb, counter = fit(tmp_path, kind, seed=3, resume=True, **options)
    assert cb.resumed_step == crash_step
    want = {k: v for k, v in uninterrupted["mid_epoch"].items() if k != "manifests"}
    assert_bit_equal(final_state(model, trainer, counter), want)


@pytest.mark.parametrize("scenario", ["epoch_boundary", "mid_epoch_shuffled"])
def test_checkpoints_with_the_rng_layout_of_before_resume_bit_exact(
    scenario, uninterrupted, tmp_path, monkeypatch
):
    """Steps written by the callback before (its own tensor layout of the RNG states)."""
    kind, options, crash_step, expected_resume = SCENARIOS[scenario]
    monkeypatch.setattr(lightning_adapter, "global_rng_state", lightning_rng_layout_before)
    with pytest.raises(Crash):
        fit(tmp_path, kind, extra=[CrashAt(crash_step)], **options)
    monkeypatch.undo()
    model, trainer, cb, counter = fit(tmp_path, kind, seed=99, resume=True, **options)
    assert cb.resumed_step == expected_resume
    resumed = final_state(model, trainer, counter) | {"manifests": manifests(tmp_path)}
    assert_bit_equal(resumed, uninterrupted[scenario])


@pytest.mark.parametrize(
    ("kind", "reason"), [("stream", "IterableDataset"), ("custom_sampler", "custom EveryOther")]
)
def test_unreplayable_loader_warns_at_the_first_mid_epoch_save(kind, reason, tmp_path):
    with pytest.warns(UserWarning) as caught:
        fit(tmp_path, kind, max_epochs=1, every_n_train_steps=3)  # mid-epoch saves: 3 and 6
    warned = [str(w.message) for w in caught if str(w.message).startswith("CkptCallback")]
    assert len(warned) == 1, warned
    message = warned[0]
    assert "step 3 is mid-epoch" in message and "not exact" in message, message
    assert "DataLoader(dataset=" in message and reason in message, message
    assert "HINT" in message and "state_dict()" in message and len(message) < 600, message


KILLED_SCRIPT = """
import sys
from pathlib import Path
from tests.integrations.test_lightning import KillAt, SCENARIOS, fit

scenario, directory = sys.argv[1], Path(sys.argv[2])
kind, options, kill_step, _ = SCENARIOS[scenario]
fit(directory, kind, extra=[KillAt(kill_step)], async_save=True, **options)
raise SystemExit("not killed")
"""


def start_script(script: Path, *args: Any) -> subprocess.Popen[bytes]:
    """Start a test script in its own session, so that it and any process it starts can be
    killed together."""
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Its output once it exits; past `timeout`, its whole session is killed and the test fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} ran over {timeout} s: {out.decode()[-2000:]}")
    return out.decode()


def test_resume_after_sigkill_is_bit_exact(uninterrupted, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    procs = {name: start_script(script, name, tmp_path / name) for name in SCENARIOS}
    for proc in procs.values():
        out = finish(proc, timeout=120)
        assert proc.returncode == -signal.SIGKILL, out[-2000:]
    for name, (kind, options, kill_step, _) in SCENARIOS.items():
        model, trainer, cb, counter = fit(tmp_path / name, kind, seed=7, resume=True, **options)
        # With async saves, the step in flight at the kill may be lost, never a committed one.
        assert cb.resumed_step is not None and cb.resumed_step <= kill_step
        resumed = final_state(model, trainer, counter) | {"manifests": manifests(tmp_path / name)}
        assert_bit_equal(resumed, uninterrupted[name], name)


# ---------------------------------------------------------------- retention across a resume


def committed_steps(directory: Path) -> list[int]:
    with CheckpointManager(directory, read_only=True) as manager:
        return manager.all_steps()


def payload(directory: Path, step: int) -> str:
    return str(directory / f"step_{step:08d}" / "state.pt")


class ScoredModule(TinyModule):
    """Logs a scripted `score` at each epoch's validation, so the ranking is known."""

    SCORES = (5.0, 3.0, 4.0, 1.0, 2.0, 6.0)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", self.SCORES[self.current_epoch])


# One batch per epoch: epoch e ends at step e + 1 with score SCORES[e]. Kept: the 2 best by
# score, plus the latest (max_to_keep=1).
@pytest.mark.parametrize(
    "mode, after_first, after_resume, best_k",
    [("min", [2, 3], [4, 5, 6], [4, 5]), ("max", [1, 3], [1, 6], [6, 1])],
)
def test_top_k_and_max_to_keep_across_resume(tmp_path, mode, after_first, after_resume, best_k):
    options = dict(monitor="score", mode=mode, save_top_k=2, max_to_keep=1)
    fit(tmp_path, "shuffled", max_epochs=3, module=ScoredModule, n_train=BATCH, **options)
    assert committed_steps(tmp_path) == after_first

    _, _, cb, _ = fit(
        tmp_path,
        "shuffled",
        max_epochs=6,
        module=ScoredModule,
        n_train=BATCH,
        resume=True,
        **options,
    )
    assert cb.resumed_step == 3
    assert committed_steps(tmp_path) == after_resume
    best = best_k[0]
    assert cb.best_model_path == payload(tmp_path, best)
    assert cb.best_model_score == torch.tensor(ScoredModule.SCORES[best - 1])
    assert cb.best_k_models == {
        payload(tmp_path, s): torch.tensor(ScoredModule.SCORES[s - 1]) for s in best_k
    }
    assert cb.last_model_path == payload(tmp_path, 6)


def test_keep_period_across_resume(tmp_path):
    options = dict(every_n_train_steps=2, keep_period=4, max_to_keep=1)
    fit(tmp_path, "shuffled", max_epochs=1, **options)
    assert committed_steps(tmp_path) == [4, 8]
    _, trainer, cb, _ = fit(tmp_path, "shuffled", max_epochs=2, resume=True, **options)
    assert cb.resumed_step == 8 and trainer.global_step == 16
    assert committed_steps(tmp_path) == [4, 8, 12, 16]


# ---------------------------------------------------------------- Lightning's own entry points


def test_fit_ckpt_path_last_continues_the_run(tmp_path, recwarn):
    _, _, first, _ = fit(tmp_path, "shuffled", max_epochs=2)
    last = first.last_model_path
    assert last == payload(tmp_path, 16)

    seed_everything(5, verbose=False)
    cb = CkptCallback(tmp_path)  # no resume=True: ckpt_path="last" is the request to continue
    trainer = make_trainer([cb], max_epochs=3)
    trainer.fit(TinyModule(), *loaders("shuffled"), ckpt_path="last")
    assert trainer.ckpt_path == last
    assert trainer.global_step == 24
    assert committed_steps(tmp_path) == [8, 16, 24]
    assert not [w for w in recwarn if "no last checkpoint" in str(w.message)]


def test_best_checkpoint_serves_validate_test_and_load_from_checkpoint(tmp_path):
    model, trainer, cb, _ = fit(tmp_path, "shuffled", monitor="val_loss", max_to_keep=1)
    with CheckpointManager(tmp_path, read_only=True, best_fn="val_loss") as manager:
        best_step = manager.best_step()
        assert best_step is not None
        assert cb.best_model_path == str(manager.payload_path(best_step))
        metrics = manager.metrics(best_step)
    # Every logged number is in the manifest, plus epoch and step.
    assert {"train_loss", "val_loss", "epoch", "step"} <= set(metrics)
    assert cb.best_model_score == torch.tensor(metrics["val_loss"])

    saved = torch.load(cb.best_model_path, weights_only=True)  # torch alone opens the payload
    assert saved["global_step"] == best_step and "optimizer_states" in saved

    loaded = TinyModule.load_from_checkpoint(cb.best_model_path)
    assert_bit_equal(loaded.state_dict(), saved["state_dict"])
    assert loaded.hparams.lr == model.hparams.lr

    _, val = loaders("shuffled")
    [validated] = trainer.validate(model, val, ckpt_path="best", verbose=False)
    assert trainer.ckpt_path == cb.best_model_path
    assert_bit_equal(model.state_dict(), saved["state_dict"])
    assert validated["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    [tested] = trainer.test(model, val, ckpt_path="best", verbose=False)
    assert tested["test_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)


def test_save_weights_only(tmp_path):
    model, _, cb, _ = fit(tmp_path, "shuffled", max_epochs=1, save_weights_only=True)
    saved = torch.load(cb.last_model_path, weights_only=True)
    assert "optimizer_states" not in saved and "callbacks" not in saved
    assert_bit_equal(saved["state_dict"], model.state_dict())
    assert_bit_equal(
        TinyModule.load_from_checkpoint(cb.last_model_path).state_dict(), model.state_dict()
    )


class RecordWeights(Callback):
    """Copies the weights at each even step, before the checkpoint callback runs."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step % 2 == 0:
            self.at[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_async_save_commits_each_step_as_it_was(tmp_path):
    record = RecordWeights()
    fit(
        tmp_path,
        "shuffled",
        extra=[record],
        async_save=True,
        every_n_train_steps=2,
        max_to_keep=None,
    )
    with CheckpointManager(tmp_path, read_only=True) as manager:
        assert manager.all_steps() == list(range(2, 33, 2))
        for step in manager.all_steps():
            # Training went on while the background thread wrote: the payload is still the
            # state at its own step.
            assert_bit_equal(manager.restore(step)["state_dict"], record.at[step], f"step {step}")


def test_train_time_interval_saves_when_the_time_is_up(tmp_path):
    # A microsecond interval is always up: every batch end saves.
    fit(tmp_path, "shuffled", max_epochs=1, train_time_interval=1e-6, max_to_keep=None)
    assert committed_steps(tmp_path) == list(range(1, 9))
    with CheckpointManager(tmp_path, read_only=True) as manager:
        assert manager.metadata(8)["trigger"] == "train_time_interval"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resume": True, "overwrite": True}, "resume=True and overwrite=True"),
        ({"every_n_train_steps": 5, "every_n_epochs": 1}, "conflicting triggers"),
        ({"every_n_epochs": 2, "train_time_interval": 60}, "conflicting triggers"),
        ({"save_top_k": 2}, "without monitor"),
        ({"monitor": "val_loss", "mode": "best"}, "expected 'min' or 'max'"),
        ({"every_n_train_steps": 0}, "expected a positive integer"),
        ({"resume": True, "save_weights_only": True}, "weights-only checkpoints"),
    ],
)
def test_conflicting_arguments_raise_value_error(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        CkptCallback(tmp_path, **options)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"max_to_keep": -1}, ValueError, r"max_to_keep .* found -1"),
        ({"max_to_keep": "3"}, TypeError, r"max_to_keep .* found '3' \(str\)"),
        ({"keep_period": 0}, ValueError, r"keep_period .* found 0"),
        ({"train_time_interval": "60"}, TypeError, "train_time_interval must be a number"),
        ({"async_save": "no"}, TypeError, "async_save must be True or False"),
        ({"resume": "no"}, TypeError, "resume must be True or False"),
        ({"save_weights_only": "yes"}, TypeError, "save_weights_only must be True or False"),
        ({"storage_options": "key=x"}, TypeError, "storage_options must be a dict"),
        ({"monitor": 3}, TypeError, r"monitor=3 \(int\); expected the name"),
        ({"monitor": "val_loss", "save_top_k": True}, TypeError, "save_top_k=True"),
        ({"monitor": "val_loss", "save_top_k": "2"}, TypeError, "save_top_k='2'"),
        ({"monitor": "val_loss", "save_top_k": -2}, ValueError, "save_top_k=-2"),
        ({"every_n_train_steps": "5"}, TypeError, "every_n_train_steps='5'"),
    ],
)
def test_careless_arguments_fail_at_construction_not_at_fit(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        CkptCallback(tmp_path / "run", **options)
    with pytest.raises(ValueError, match=r"dirpath='' \(str\)"):
        CkptCallback("")
    assert list(tmp_path.iterdir()) == []


def test_paths_before_anything_is_saved_are_empty_and_create_nothing(tmp_path):
    cb = CkptCallback(tmp_path / "run", monitor="val_loss")
    assert (cb.best_model_path, cb.last_model_path) == ("", "")
    assert (cb.best_model_score, cb.best_k_models) == (None, {})
    assert not (tmp_path / "run").exists()


def test_existing_checkpoints_need_resume_or_overwrite(tmp_path):
    fit(tmp_path, "shuffled", max_epochs=1)
    with pytest.raises(CheckpointExistsError, match="resume=True"):
        fit(tmp_path, "shuffled", max_epochs=1)
    fit(tmp_path, "shuffled", max_epochs=1, overwrite=True, every_n_train_steps=4)
    with CheckpointManager(tmp_path, read_only=True) as manager:
        assert manager.all_steps() == [4, 8]
        assert manager.metadata(8)["trigger"] == "every_n_train_steps"


def test_resuming_a_directory_of_other_checkpoints_is_a_clear_error(tmp_path):
    directory = tmp_path / "run"
    with CheckpointManager(directory) as mgr:  # a plain numpy run saved there before
        mgr.save(3, {"weights": np.zeros(4)})
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint") as err:
        fit(directory, "shuffled", resume=True, every_n_epochs=1)
    assert "'weights'" in str(err.value) and "dirpath of its own" in str(err.value)
    with CheckpointManager(directory, read_only=True) as ro:
        assert ro.all_steps() == [3]  # nothing of the run was touched


def test_missing_monitored_key_is_a_clear_error(tmp_path):
    expected = (
        r"`CkptCallback\(monitor='val_acc'\)` could not find the monitored key in the logged"
        r" metrics: \['epoch', 'step', 'train_loss', 'val_loss'\]\. HINT: Did you call"
        r" `self.log\('val_acc', value\)`"
    )
    with pytest.raises(MisconfigurationException, match=expected):
        fit(tmp_path, "shuffled", max_epochs=1, monitor="val_acc")


def test_checkpoints_before_the_first_validation_are_saved_unranked(tmp_path, recwarn):
    options = dict(monitor="val_loss", every_n_train_steps=4, max_to_keep=None)
    fit(tmp_path, "shuffled", max_epochs=2, **options)
    with CheckpointManager(tmp_path, read_only=True, best_fn="val_loss") as manager:
        assert manager.all_steps() == [4, 8, 12, 16]
        assert "val_loss" not in manager.metrics(4)  # saved before any validation, unranked
        # Steps 8 and 16 fall on an epoch's last batch: saved at the epoch end, after validation.
        assert [manager.metadata(s)["trigger"] for s in (8, 16)] == ["every_n_train_steps"] * 2
        assert all("val_loss" in manager.metrics(s) for s in (8, 12, 16))
    assert not [w for w in recwarn if "val_loss" in str(w.message)]


def test_every_hook_of_model_checkpoint_is_overridden():
    # CkptCallback subclasses ModelCheckpoint only to be found by ckpt_path="last"; none of
    # ModelCheckpoint's own hooks may run.
    hooks = [name for name in vars(ModelCheckpoint) if hasattr(Callback, name)]
    assert "on_train_batch_end" in hooks
    assert [name for name in hooks if name not in vars(CkptCallback)] == []


# ---------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer, seed_everything

import ckpt_core
from integrations.lightning import CkptCallback
from tests.integrations.test_lightning import TinyModule, loaders

directory, log = Path(sys.argv[1]), Path(sys.argv[2])
save = ckpt_core.CheckpointManager.save


def recording_save(self, step, *args, **kwargs):
    with open(log / "saves.txt", "a") as f:
        f.write(f"{dist.get_rank()} {step}\\n")
    return save(self, step, *args, **kwargs)


ckpt_core.CheckpointManager.save = recording_save


class Report(Callback):
    def __init__(self, run):
        self.run = run

    def on_train_start(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        report = {"step": trainer.global_step, "weights": weights.tolist()}
        (log / f"{self.run}-rank{trainer.global_rank}.json").write_text(json.dumps(report))


for run, epochs, resume in (("first", 2, False), ("second", 3, True)):
    seed_everything(0 if run == "first" else 1, verbose=False)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=2, strategy="ddp", logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Report(run), CkptCallback(directory, resume=resume, max_to_keep=None)],
    )
    trainer.fit(TinyModule(), *loaders("shuffled"))
"""


def test_ddp_two_processes_one_writer_and_resume(tmp_path):
    script, log = tmp_path / "ddp.py", tmp_path / "log"
    script.write_text(DDP_SCRIPT)
    log.mkdir()
    proc = start_script(script, tmp_path / "run", log)
    out = finish(proc, timeout=240)
    assert proc.returncode == 0, out[-3000:]
    # 32 samples over 2 ranks in batches of 4: 4 steps per epoch. The first fit saves at 4 and
    # 8, the resumed one at 12, and only global rank 0 ever called save.
    saves = (log / "saves.txt").read_text().split("\n")
    assert [line for line in saves if line] == ["0 4", "0 8", "0 12"]
    assert committed_steps(tmp_path / "run") == [4, 8, 12]
    with CheckpointManager(tmp_path / "run", read_only=True) as manager:
        at_8 = manager.restore(8)["state_dict"]
    expected = torch.cat([v.flatten() for v in at_8.values()]).tolist()
    for rank in (0, 1):
        report = json.loads((log / f"second-rank{rank}.json").read_text())
        assert report["step"] == 8  # both ranks resumed from the same checkpoint
        assert report["weights"] == expected


def test_max_bytes_keeps_the_run_within_its_budget(tmp_path):
    fit(tmp_path, "shuffled", every_n_train_steps=2, max_to_keep=None)
    with CheckpointManager(tmp_path, read_only=True) as ro:
        one_step = ro.info(ro.latest_step()).bytes
        assert len(ro.all_steps()) == EPOCHS * N_TRAIN // BATCH // 2  # every save kept
    budget = 3 * one_step + one_step // 2
    fit(
        tmp_path,
        "shuffled",
        every_n_train_steps=2,
        max_to_keep=None,
        max_bytes=budget,
        overwrite=True,
    )
    with CheckpointManager(tmp_path, read_only=True) as ro:
        assert len(ro.all_steps()) == 3 and ro.size_bytes() <= budget
    with pytest.raises(ValueError, match="max_bytes"):
        CkptCallback(tmp_path, max_bytes="lots")
