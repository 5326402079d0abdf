"""A sharded Lightning job with `CkptCallback`:
`python -m tests.multiprocess.lightning_fit DIR ARGS_JSON`, where ARGS_JSON is
`{"callback": {...CkptCallback arguments}, "devices": 2, "resume_with": "resume" or "last",
"strategy": "model_parallel" or "fsdp", "accelerator": "cpu" or "cuda", "nodes": 1}`.

`model_parallel` is ModelParallelStrategy with FSDP2 `fully_shard`; `fsdp` is FSDPStrategy
(FSDP1, which needs CUDA). On CPU the ranks meet over gloo. Lightning launches the other
ranks itself, except with `nodes` > 1 (one device per node), where `launch.fit_sharded` starts
one process per node.

In one job: an uninterrupted run into DIR/straight; a run into DIR/resumed that raises in its
second epoch; the same run again with `resume=True`; then `validate(ckpt_path="best")`. Each
rank writes what it found to DIR/result_<rank>.json.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
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
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return  # FSDPStrategy wraps the model itself
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
    trainer = L.Trainer(
        accelerator=args.get("accelerator", "cpu"),
        devices=args.get("devices", 2),
        num_nodes=args.get("nodes", 1),
        strategy=strategy(args),
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
    return trainer, callback


def strategy(args: dict[str, Any]) -> Strategy:
    ranks = args.get("devices", 2) * args.get("nodes", 1)
    if args.get("strategy", "model_parallel") == "model_parallel":
        return ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1)
    # Every Linear its own FSDP unit, as a real model's blocks would be. gloo when the ranks
    # share one GPU, which NCCL refuses.
    backend = "gloo" if args.get("nodes", 1) > 1 else None
    return FSDPStrategy(auto_wrap_policy={nn.Linear}, process_group_backend=backend)


def fingerprint(trainer: L.Trainer) -> str:
    """A hash of the trainer's full (gathered) model state, bit for bit."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True)  # on every rank (no cpu_offload)
    return digest(get_model_state_dict(trainer.strategy.model, options=options))


def digest(full: dict[str, torch.Tensor]) -> str:
    """A hash of a full state dict's names and bytes."""
    digest = hashlib.sha256()
    for key in sorted(full):
        digest.update(key.encode())
        digest.update(full[key].contiguous().view(torch.uint8).cpu().numpy().tobytes())
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
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `launch` asks before a kill
    straight, straight_cb = fit(f"{directory}/straight", args)
    straight_fingerprint = fingerprint(straight)
    fit(f"{directory}/resumed", args, fail=True)
    trainer, callback = fit(f"{directory}/resumed", args, resume=True)
    resumed_fingerprint = fingerprint(trainer)  # before `validate` loads the best step into it
    validated = trainer.validate(trainer.lightning_module, ckpt_path="best", verbose=False)[0]
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
