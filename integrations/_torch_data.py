"""Exact mid-epoch resume for plain torch `DataLoader`s: record where an epoch's order came from.

A `DataLoader` without `state_dict` restarts at its first batch when a run resumes mid-epoch.
Its order, though, is a pure function of the random states at two moments: when the epoch's
iterator is created (the workers' `base_seed` is drawn then, from `loader.generator` or the
global torch RNG) and when its sampler yields first (a `RandomSampler` draws its seed or its
permutation then). `EpochReplay` records both for the current epoch and, on resume, creates the
epoch's iterator again from them and skips the batches already trained at the sampler, so the
skipped batches are never loaded and the workers run no transform for them.

Not replayed: what worker processes draw themselves (random transforms with `num_workers > 0`
restart their streams, and with `persistent_workers=True` the workers' seeds differ too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

__all__ = ["EpochReplay", "describe_loader", "unreplayable_reason"]

# Samplers whose order depends only on their arguments, `set_epoch` and the random states
# recorded: subclasses may override `__iter__`, so the types must match exactly.
REPLAYABLE_SAMPLERS = (RandomSampler, SequentialSampler, DistributedSampler)


def _order_sampler(loader: DataLoader) -> Any:
    """The sampler that decides the order (inside the batch sampler when there is one)."""
    if loader.batch_sampler is not None:
        return getattr(loader.batch_sampler, "sampler", None)
    return loader.sampler


def describe_loader(loader: Any) -> str:
    """A short name for a loader in messages, e.g. `DataLoader(dataset=TensorDataset)`."""
    dataset = getattr(loader, "dataset", None)
    inner = "" if dataset is None else f"dataset={type(dataset).__name__}"
    return f"{type(loader).__name__}({inner})"


def unreplayable_reason(loader: Any) -> str | None:
    """Why `EpochReplay` cannot make `loader` resume exactly mid-epoch, or None if it can."""
    if not isinstance(loader, DataLoader):
        return "it is not a torch DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an IterableDataset, whose position is not saved"
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return f"its batch_sampler is a custom {type(batch_sampler).__name__}"
    sampler = _order_sampler(loader)
    if type(sampler) not in REPLAYABLE_SAMPLERS:
        return f"its sampler is a custom {type(sampler).__name__}"
    return None


def _generators(loader: DataLoader) -> dict[str, torch.Generator]:
    """The generators the loader's order draws from besides the global torch RNG, by role."""
    found = {
        "loader_generator": loader.generator,
        "sampler_generator": getattr(_order_sampler(loader), "generator", None),
    }
    return {role: g for role, g in found.items() if isinstance(g, torch.Generator)}


def _snapshot(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), **{r: g.get_state() for r, g in generators.items()}}


def _apply(snapshot: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(snapshot["torch"])
    for role, generator in generators.items():
        generator.set_state(snapshot[role])


class EpochReplay:
    """Makes one plain `DataLoader` resumable mid-epoch, through Lightning's stateful-loader API.

    `attach` gives the loader `state_dict`/`load_state_dict` (so Lightning saves the state in
    its loop state and loads it before it creates the resumed epoch's iterator) and wraps its
    iterator creation; `detach` removes both. Only loaders `unreplayable_reason` accepts.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._epoch_start: dict[str, torch.Tensor] | None = None
        self._first_draw: dict[str, torch.Tensor] | None = None
        self._sampler_epoch: int | None = None  # a DistributedSampler's `epoch`
        self._iterator: Any = None  # the DataLoader iterator of the current epoch
        self._skipped = 0  # batches of the current epoch skipped by a replay
        self._pending: dict[str, Any] | None = None  # a state to replay at the next iterator

    def attach(self) -> None:
        # Instance attributes: Lightning's `_Stateful` check and DataLoader's `__iter__` find
        # them; the user's loader class and sampler attributes stay as they are.
        self.loader.state_dict = self.state_dict
        self.loader.load_state_dict = self.load_state_dict
        self.loader._get_iterator = self._get_iterator  # type: ignore[method-assign]

    def detach(self) -> None:
        for name in ("state_dict", "load_state_dict", "_get_iterator"):
            self.loader.__dict__.pop(name, None)

    def state_dict(self) -> dict[str, Any]:
        if self._epoch_start is None or self._first_draw is None or self._iterator is None:
            return {}
        state = {
            "epoch_start": self._epoch_start,
            "first_draw": self._first_draw,
            "batches": self._skipped + int(self._iterator._num_yielded),
        }
        if self._sampler_epoch is not None:
            state["sampler_epoch"] = self._sampler_epoch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        batches = int(state.get("batches", 0))
        # At an epoch's end (or before its first batch) the next iterator starts a new epoch.
        self._pending = state if 0 < batches < len(self.loader) else None

    def _get_iterator(self) -> Any:
        loader = self.loader
        field = "batch_sampler" if loader._auto_collation else "sampler"
        original = getattr(loader, field)
        replay, self._pending = self._pending, None
        sampler = _RecordingSampler(self, original, replay)
        # DataLoader refuses to set these after __init__ because live iterators would not
        # see it; this one is swapped only while the iterator is created, which keeps it.
        object.__setattr__(loader, field, sampler)
        try:
            iterator = DataLoader._get_iterator(loader)
        finally:
            object.__setattr__(loader, field, original)
        sampler.creating = False
        if sampler.replay is not None and sampler.current is not None:
            # Without workers nothing was drawn yet: the replay's draws happen now, before
            # the training states restored after it draw more.
            sampler.current.start()
        self._iterator = iterator
        return iterator


class _RecordingSampler:
    """Stands in for the loader's index sampler: records each epoch's random states, replays."""

    def __init__(self, owner: EpochReplay, inner: Iterable[Any], replay: dict[str, Any] | None):
        self.owner = owner
        self.inner = inner
        self.replay = replay  # until an epoch iterator has replayed it
        self.generators = _generators(owner.loader)
        self.creating = True  # the DataLoader iterator is being created
        self.recorded = False
        self.current: _EpochIterator | None = None

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[Any]:
        # Called as the epoch's DataLoader iterator is created, before it draws `base_seed`
        # (and once more by a multi-worker iterator's first `_reset`: the same epoch), or at a
        # new epoch of persistent workers.
        owner = self.owner
        order_sampler = _order_sampler(owner.loader)
        if not (self.creating and self.recorded):
            if self.replay is not None:
                _apply(self.replay["epoch_start"], self.generators)
                if "sampler_epoch" in self.replay:
                    # Lightning calls `set_epoch` only after a resumed run created the iterator.
                    order_sampler.set_epoch(int(self.replay["sampler_epoch"]))
            owner._epoch_start = _snapshot(self.generators)
            self.recorded = True
        epoch = getattr(order_sampler, "epoch", None)
        owner._sampler_epoch = epoch if isinstance(epoch, int) else None
        owner._first_draw = None
        owner._skipped = 0
        self.current = _EpochIterator(self, iter(self.inner))
        return self.current


class _EpochIterator(Iterator[Any]):
    def __init__(self, sampler: _RecordingSampler, inner: Iterator[Any]) -> None:
        self.sampler = sampler
        self.inner = inner
        self.started = False

    def start(self) -> None:
        """The sampler's first draw (replayed, with the batches already trained skipped)."""
        if self.started:
            return
        self.started = True
        sampler, owner = self.sampler, self.sampler.owner
        replay, sampler.replay = sampler.replay, None
        if replay is not None:
            _apply(replay["first_draw"], sampler.generators)
        owner._first_draw = _snapshot(sampler.generators)
        if replay is not None:
            skip = int(replay["batches"])
            for _ in range(skip):
                next(self.inner)
            owner._skipped = skip

    def __next__(self) -> Any:
        self.start()
        return next(self.inner)
