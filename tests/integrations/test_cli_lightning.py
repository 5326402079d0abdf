"""`ckpt best` for Lightning users: its output works as `ckpt_path=` in a plain `Trainer`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpt_core import CheckpointManager, layout
from integrations.lightning import CkptCallback

CKPT = Path(sys.executable).with_name("ckpt")


class Regressor(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(seed: int) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def trainer(root: Path, **kwargs: Any) -> Trainer:
    return Trainer(
        default_root_dir=root,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def ckpt_best(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CKPT), "best", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def validate(root: Path, ckpt_path: str) -> float:
    """`trainer.validate(model, ckpt_path=...)` in a plain Trainer, on a fresh model."""
    (result,) = trainer(root).validate(Regressor(), loader(1), ckpt_path=ckpt_path, verbose=False)
    return float(result["val_loss"])


def test_ckpt_best_is_a_ckpt_path_for_a_plain_trainer(tmp_path: Path) -> None:
    seed_everything(0)
    run = tmp_path / "run"
    cb = CkptCallback(run, monitor="val_loss", save_top_k=2)
    trainer(tmp_path, max_epochs=4, callbacks=[cb]).fit(Regressor(), loader(0), loader(1))
    with CheckpointManager(run, read_only=True) as mgr:
        ranked = sorted(mgr.all_steps(), key=lambda s: mgr.metrics(s)["val_loss"])
        scores = {s: mgr.metrics(s)["val_loss"] for s in ranked}
    best, second = ranked[0], ranked[1]

    result = ckpt_best(run)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    assert path == str(run / layout.step_dirname(best) / "state.pt")
    assert validate(tmp_path, path) == pytest.approx(scores[best], rel=1e-5)

    # a best step whose payload no longer matches its checksum is never printed
    payload = run / layout.step_dirname(best) / "state.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(data)
    result = ckpt_best(run)
    assert result.returncode == 0, result.stderr
    assert f"step {best} fails its checks" in result.stderr
    path = result.stdout.strip()
    assert path == str(run / layout.step_dirname(second) / "state.pt")
    assert validate(tmp_path, path) == pytest.approx(scores[second], rel=1e-5)
