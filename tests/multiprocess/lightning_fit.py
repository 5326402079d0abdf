"""A 2-process Lightning job (ModelParallelStrategy, FSDP2 `fully_shard`, gloo on CPU) with
`CkptCallback`: `python -m tests.multiprocess.lightning_fit DIR ARGS_JSON` (ARGS_JSON:
`{"callback": {...CkptCallback arguments}, "devices": 2, "resume_with": "resume" or "last"}`).

Lightning launches the second rank itself (it runs this module again). In one job: an
uninterrupted run into DIR/straight; a run into DIR/resumed that raises in its second epoch;
the same run again with `resume=True`; then `validate(ckpt_path="best")`. Each rank writes
what it found to DIR/result_<rank>.json.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from ckpt_core import CheckpointManager
from integrations.lightning import CkptCallback

EPOCHS = 3
FAIL_EPOCH = 1  # the second epoch, at the end of its second batch


class Interrupted(RuntimeError):
    pass


class ShardedModel(L.LightningModule):
    def __init__(self, fail_epoch: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.fail_epoch = fail_epoch

    def configure_model(self) -> None:
        if isinstance(self.net, FSDPModule):
            return  # sharded by an earlier `fit` (Lightning calls this for every stage)
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the epoch's second step (and after the callbacks' hooks, which run first).
        if self.current_epoch == self.fail_epoch and batch_idx == 1:
            raise Interrupted(f"interrupted at step {self.trainer.global_step}")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def _loader(self, seed: int, shuffle: bool) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
        dataset = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=shuffle)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(0, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(1, shuffle=False)


def fit(directory: str, args: dict[str, Any], *, fail: bool = False, resume: bool = False) -> Any:
    """One `fit`; `resume`: continue the run in `directory`, with `resume=True` or, with
    `args["resume_with"] == "last"`, with `fit(ckpt_path="last")`."""
    L.seed_everything(0)
    last = resume and args.get("resume_with") == "last"
    callback = CkptCallback(directory, resume=resume and not last, **args["callback"])
    devices = args.get("devices", 2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
        max_epochs=EPOCHS,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    model = ShardedModel(FAIL_EPOCH if fail else None)
    try:
        trainer.fit(model, ckpt_path="last" if last else None)
    except Interrupted:
        assert fail
    return trainer, callback, model


def fingerprint(model: nn.Module) -> str:
    """A hash of the full (gathered) model state, bit for bit."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True)  # on every rank (no cpu_offload)
    return digest(get_model_state_dict(model, options=options))


def digest(full: dict[str, torch.Tensor]) -> str:
    """A hash of a full state dict's names and bytes."""
    digest = hashlib.sha256()
    for key in sorted(full):
        digest.update(key.encode())
        digest.update(full[key].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_of(directory: str) -> dict[str, Any]:
    with CheckpointManager(directory, read_only=True) as manager:
        return {
            "steps": manager.all_steps(),
            "best": manager.best_step(),
            "metrics": {str(s): dict(manager.metrics(s)) for s in manager.all_steps()},
        }


def main() -> None:
    directory, args = sys.argv[1], json.loads(sys.argv[2])
    _, straight_cb, straight = fit(f"{directory}/straight", args)
    straight_fingerprint = fingerprint(straight)
    fit(f"{directory}/resumed", args, fail=True)
    trainer, callback, resumed = fit(f"{directory}/resumed", args, resume=True)
    resumed_fingerprint = fingerprint(resumed)  # before `validate` loads the best step into it
    validated = trainer.validate(resumed, ckpt_path="best", verbose=False)[0]
    result = {
        "straight": straight_fingerprint,
        "resumed": resumed_fingerprint,
        "resumed_step": callback.resumed_step,
        "best_model_path": callback.best_model_path,
        "last_model_path": callback.last_model_path,
        "straight_best_model_path": straight_cb.best_model_path,
        "validated_val_loss": validated["val_loss"],
        "run": run_of(f"{directory}/resumed"),
    }
    # A file per rank: both ranks share one stdout, where lines can interleave.
    Path(directory, f"result_{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
