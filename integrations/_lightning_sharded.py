"""`CkptCallback` under sharded strategies: Lightning's checkpoint dict as a `dcp` step.

With `ModelParallelStrategy` or `FSDPStrategy` no process holds the whole model, so every rank
opens the run's manager (the multi-process protocol, see `ckpt_core.processes`) and saves its
own shards in the `dcp` format. A step holds:

* `state_dict`: the model's state dict, sharded (DTensors under `ModelParallelStrategy`,
  ShardedTensors under `FSDPStrategy`), from
  `torch.distributed.checkpoint.state_dict.get_model_state_dict`, as Lightning's own
  `save_distributed_checkpoint=True` builds it, except that FSDP2's DTensors stay where they
  are (see `sharded_state`);
* `optimizer_<i>`: each optimizer's sharded state (`get_optimizer_state_dict`), Lightning's names;
* `lightning`: the rest of Lightning's checkpoint dict (loops, callbacks, LR schedulers, RNG
  states, hyper-parameters), global rank 0's, as the base64 text of its `torch.save` bytes: one
  value DCP stores whole, which `torch.load(weights_only=True)` gives back (not `bytes`, which
  it refuses, nor a uint8 tensor, whose size a reader would need before reading it).

Loading mirrors Lightning's own `load_checkpoint` of these strategies: the model and optimizers
are set up first (`restore_checkpoint_after_setup`), their sharded state dicts are the `like`
each rank fills with its shards, and the rest goes to Lightning's restore.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy

from ckpt_core import CheckpointManager

__all__ = ["DCP_FORMAT", "is_sharded", "load_sharded", "sharded_state"]

DCP_FORMAT = "dcp"
MODEL_KEY = "state_dict"  # Lightning's key for the model's state dict
REST_KEY = "lightning"


def is_sharded(strategy: Strategy) -> bool:
    """Whether no rank holds the whole state under `strategy` (every rank saves its shards)."""
    return isinstance(strategy, ModelParallelStrategy | FSDPStrategy)


def sharded_state(trainer: Trainer, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `dcp` state of Lightning's checkpoint dict `checkpoint` (built on every rank).

    Every rank calls it; only global rank 0's state holds the rest of the dict. The strategy's
    own state dicts in `checkpoint` are replaced by sharded ones (under
    `FSDPStrategy(state_dict_type="full")` Lightning has gathered full ones first, in vain).

    Raises:
        TypeError: the rest of the dict holds a value `torch.load(weights_only=True)` refuses.
    """
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from ckpt_core.formats.torch import restore_refusal

    model = trainer.strategy.model
    assert model is not None  # set up by `fit`
    # FSDP2's DTensors are views of the live shards: left on the GPU, an async save copies them
    # once, into its reused pinned buffers, where offloading (Lightning's choice for its own
    # distributed checkpoints) would first copy them into fresh pageable memory on the training
    # thread; a sync save's writer copies each as it writes it. FSDP1 builds its ShardedTensors
    # from clones, which offloading moves off the GPU as they are made.
    options = StateDictOptions(cpu_offload=isinstance(trainer.strategy, FSDPStrategy))
    checkpoint.pop(MODEL_KEY, None)  # possibly full: the strategy's own choice of state dict
    state: dict[str, Any] = {MODEL_KEY: get_model_state_dict(model, options=options)}
    if checkpoint.pop("optimizer_states", None) is not None:  # None: save_weights_only
        for index, optimizer in enumerate(_optimizers(trainer)):
            optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
            state[f"optimizer_{index}"] = optimizer_state
    if trainer.is_global_zero:  # DCP merges the keys of every rank: rank 0's rest is saved
        refusal = restore_refusal(checkpoint)
        if refusal is not None:
            raise TypeError(f"CkptCallback cannot save this checkpoint: {refusal.message}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        state[REST_KEY] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return state


def load_sharded(trainer: Trainer, manager: CheckpointManager, step: int) -> dict[str, Any]:
    """Load `step` of `manager` into the trainer's sharded model (and, when fitting, its
    optimizers); return the checkpoint dict for Lightning's restore of everything else.

    Every rank calls it once the strategy has set the model and optimizers up.

    Raises:
        StructureMismatchError: the step does not match the model or optimizers (or holds no
            optimizer states, e.g. one saved with `save_weights_only`, and `fit` asks for them).
    """
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model = trainer.strategy.model
    assert model is not None and trainer.lightning_module is not None
    optimizers = _optimizers(trainer) if trainer.state.fn == "fit" else []
    like: dict[str, Any] = {MODEL_KEY: get_model_state_dict(model), REST_KEY: ""}
    for index, optimizer in enumerate(optimizers):
        like[f"optimizer_{index}"] = get_optimizer_state_dict(model, optimizer)
    loaded = manager.restore(step, like)
    strict = trainer.lightning_module.strict_loading
    set_model_state_dict(model, loaded[MODEL_KEY], options=StateDictOptions(strict=strict))
    optimizer_states = [loaded[f"optimizer_{index}"] for index in range(len(optimizers))]
    for optimizer, optimizer_state in zip(optimizers, optimizer_states, strict=True):
        options = StateDictOptions(cpu_offload=True)
        set_optimizer_state_dict(
            model, optimizer, optim_state_dict=optimizer_state, options=options
        )
    rest = io.BytesIO(base64.b64decode(loaded[REST_KEY]))
    checkpoint: dict[str, Any] = torch.load(rest, weights_only=True)
    checkpoint[MODEL_KEY] = loaded[MODEL_KEY]  # for `on_load_checkpoint` hooks; already loaded
    if optimizers:
        checkpoint["optimizer_states"] = optimizer_states
    return checkpoint


def _optimizers(trainer: Trainer) -> list[Any]:
    return [
        o._optimizer if isinstance(o, LightningOptimizer) else o
        for o in trainer.strategy.optimizers
    ]
