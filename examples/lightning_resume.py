"""A Lightning training run that survives being killed: run it, kill it, run it again.

    python examples/lightning_resume.py --dir runs/lightning --epochs 6
    # stop it (`kill PID` saves at the next batch end and stops; Ctrl-C, SIGKILL or a lost node
    # keep the latest committed step), then start it again with the same command: `CkptCallback(resume=True)` makes `trainer.fit(model)` continue from the latest
    # checkpoint, mid-epoch included, and the run ends with the same weights as an
    # uninterrupted one.

A small MLP with dropout is trained with Adam on a synthetic regression problem. The training
data comes through a DataLoader with a resumable sampler (`state_dict`/`load_state_dict`), so a
checkpoint taken mid-epoch resumes at the very next batch. `CkptCallback` saves every `--every`
optimizer steps, asynchronously, and keeps the three newest checkpoints and the two best by
validation loss.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from integrations.lightning import CkptCallback


class Regressor(LightningModule):
    def __init__(self, lr: float = 3e-3, step_delay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        time.sleep(self.hparams.step_delay)  # slow enough to be killed mid-run in a demo
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class ResumableSampler(Sampler[int]):
    """A new shuffled order each epoch from its own seed; resumes mid-epoch from its state."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.position, self._resuming = -1, 0, False

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self._resuming or self.position >= self.size:
            self.epoch, self.position = self.epoch + 1, 0
        self._resuming = False
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        while self.position < self.size:
            self.position += 1
            yield order[self.position - 1]


class ResumableLoader(DataLoader):
    """A DataLoader Lightning can checkpoint: it has `state_dict` and `load_state_dict`."""

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int) -> None:
        super().__init__(
            dataset, batch_size=batch_size, sampler=ResumableSampler(len(dataset), seed)
        )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "position": self.sampler.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch, self.sampler.position = state["epoch"], state["position"]
        self.sampler._resuming = True


def make_data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)
    w = 0.3 * torch.randn(16, 1, generator=torch.Generator().manual_seed(1234))
    return TensorDataset(x, torch.sin(x @ w))


class Report(Callback):
    """Prints where the run starts and each checkpoint once it is committed."""

    def __init__(self, checkpoints: CkptCallback) -> None:
        self.checkpoints = checkpoints
        self.announced = ""
        self.started = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = True
        where = self.checkpoints.dirpath
        if self.checkpoints.resumed_step is None:
            print(f"fresh run in {where}", flush=True)
        else:
            print(f"resumed from step {self.checkpoints.resumed_step} in {where}", flush=True)
        self.announced = self.checkpoints.last_model_path

    def on_train_batch_start(self, *args: Any) -> None:
        self.announce()

    def announce(self) -> None:
        last = self.checkpoints.last_model_path
        if last and last != self.announced:
            self.announced = last
            step = int(Path(last).parent.name.removeprefix("step_"))  # <dir>/step_XXXXXXXX/...
            print(f"saved step {step}: {last}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/lightning", help="checkpoint directory")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs")
    parser.add_argument("--every", type=int, default=10, help="save every N optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step-delay", type=float, default=0.03, help="seconds of sleep per step, to be killable"
    )
    args = parser.parse_args()
    # Lightning 2.6 with torch 2.13 warns about its own use of a torch pytree API.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # Lightning's banner lines (accelerators, tips) would bury what this script prints.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    seed_everything(args.seed, verbose=False)
    checkpoints = CkptCallback(
        args.dir,
        monitor="val_loss",
        mode="min",
        save_top_k=2,
        max_to_keep=3,
        every_n_train_steps=args.every,
        resume=True,
        async_save=True,
        # SIGTERM: save at the next batch end, then stop (Lightning exits with SIGTERMException).
        save_on_signals=(signal.SIGTERM,),
    )
    report = Report(checkpoints)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[report, checkpoints],
    )
    train = ResumableLoader(make_data(512, seed=args.seed), batch_size=32, seed=args.seed)
    val = DataLoader(make_data(128, seed=args.seed + 1), batch_size=64)
    try:
        trainer.fit(Regressor(step_delay=args.step_delay), train, val)
    finally:  # on SIGTERM, Lightning ends `fit` with SIGTERMException (exit status 0)
        if checkpoints.preempted:
            print(f"preempted: saved {checkpoints.last_model_path}; stopping", flush=True)
    if not report.started:  # restored a finished run: Lightning had nothing left to train
        print(f"run in {args.dir} already complete at step {trainer.global_step}", flush=True)
        return
    report.announce()  # the final checkpoint, committed when `fit` returned
    best = checkpoints.best_model_score
    print(
        f"done: {trainer.global_step} steps; best val_loss"
        f" {'n/a' if best is None else f'{float(best):.4f}'} at {checkpoints.best_model_path}",
        flush=True,
    )


if __name__ == "__main__":
    main()
