"""`ModelCheckpoint`'s read-out attributes for `CkptCallback`, derived from the run directory.

`best_model_path`, `best_model_score`, `best_k_models`, `last_model_path`, `kth_value` and the
rest are what loggers, `trainer.test(ckpt_path="best")` and user code read from a
`ModelCheckpoint`. Here nothing is stored: each is the manager's answer, read from the manifests
on disk (from the writer during `fit`, from a read-only view otherwise), so it survives restarts
and is the same on every process. The same view serves the two ways Lightning itself reaches the
directory: `ckpt_path="last"` (`_find_last_checkpoints`) and, before it loads a file of a
committed step as `ckpt_path`, the check of that step's checksums.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch import Trainer

from ckpt_core import CheckpointManager, CheckpointNotFoundError, CorruptCheckpointError
from ckpt_core.layout import parse_step
from integrations._lightning_loop import before_checkpoint_loads, load_if_sharded

__all__ = ["CheckpointAttributes"]


class CheckpointAttributes:
    """A mixin: `ModelCheckpoint`'s attributes read from the checkpoints in `dirpath`.

    The class it is mixed into sets the attributes annotated below.
    """

    dirpath: str | None
    monitor: str | None
    mode: str
    storage_options: dict[str, Any] | None
    _manager: CheckpointManager | None  # the writer, while `fit` runs (rank 0, or every rank)
    _manager_options: dict[str, Any]  # options every manager on `dirpath` is opened with
    _dirpath_given: str | None  # None: Lightning's default directory, resolved at `setup`
    _last_requested: bool  # Lightning resolved fit(ckpt_path="last") through this callback
    _undo_load_check: Callable[[], None] | None  # set to None by `__init__`

    @contextlib.contextmanager
    def _reading(self) -> Iterator[CheckpointManager | None]:
        """The writer while `fit` runs on rank 0; otherwise a read-only view of `dirpath`, or
        None while `dirpath` does not exist (nothing saved yet)."""
        if self._manager is not None:
            yield self._manager
            return
        if self.dirpath is None:  # Lightning's default directory, not resolved before `setup`
            yield None
            return
        try:
            view = CheckpointManager(self.dirpath, read_only=True, **self._manager_options)
        except CheckpointNotFoundError:
            yield None
            return
        with view:
            yield view

    @staticmethod
    def _best(manager: CheckpointManager) -> int | None:
        # Without a monitor Lightning's "best" is the latest checkpoint.
        best = manager.best_step()
        return manager.latest_step() if best is None and manager.policy.best_fn is None else best

    @property
    def best_model_path(self) -> str:
        with self._reading() as manager:
            step = None if manager is None else self._best(manager)
            return "" if manager is None or step is None else str(manager.payload_path(step))

    @best_model_path.setter
    def best_model_path(self, value: str) -> None:
        # Lightning's spawn launchers copy the worker's value back into the main process; the
        # value is derived from the directory, so there is nothing to store.
        pass

    @property
    def best_model_score(self) -> torch.Tensor | None:
        if self.monitor is None:
            return None
        with self._reading() as manager:
            step = None if manager is None else manager.best_step()
            if manager is None or step is None:
                return None
            return torch.tensor(manager.metrics(step)[self.monitor])

    @property
    def best_k_models(self) -> dict[str, torch.Tensor]:
        if self.monitor is None:
            return {}
        with self._reading() as manager:
            if manager is None:
                return {}
            infos = [manager.info(step) for step in manager.all_steps()]
            return {
                str(manager.payload_path(info.step)): torch.tensor(info.metrics[self.monitor])
                for info in infos
                if "best" in info.kept_because
            }

    @property
    def last_model_path(self) -> str:
        with self._reading() as manager:
            step = None if manager is None else manager.latest_step()
            return "" if manager is None or step is None else str(manager.payload_path(step))

    @property
    def current_score(self) -> torch.Tensor | None:
        """`monitor`'s value at the latest checkpoint, or None."""
        if self.monitor is None:
            return None
        with self._reading() as manager:
            step = None if manager is None else manager.latest_step()
            value = None if manager is None or step is None else manager.metrics(step)
            return (
                None
                if value is None or self.monitor not in value
                else torch.tensor(value[self.monitor])
            )

    @property
    def kth_best_model_path(self) -> str:
        """The worst-ranked of `best_k_models` ("" when there is none)."""
        kth = self._kth_best()
        return "" if kth is None else kth[0]

    @property
    def kth_value(self) -> torch.Tensor:
        """The score of `kth_best_model_path`; before it exists, the worst possible score."""
        kth = self._kth_best()
        if kth is None:
            return torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        return kth[1]

    def _kth_best(self) -> tuple[str, torch.Tensor] | None:
        best = self.best_k_models
        if not best:
            return None
        pick = max if self.mode == "min" else min
        path = pick(best, key=lambda p: float(best[p]))
        return path, best[path]

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write `best_k_models` (payload path -> score) as YAML, as `ModelCheckpoint` does.

        Args:
            filepath: where; default `<dirpath>/best_k_models.yaml`.
        """
        import fsspec
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise ValueError(
                    "CkptCallback.to_yaml() needs a file path: dirpath=None is resolved when "
                    "`fit` sets up. HINT: call it after `fit`, or pass to_yaml('best_k.yaml')."
                )
            filepath = f"{self.dirpath.rstrip('/')}/best_k_models.yaml"
        best_k = {path: float(score) for path, score in self.best_k_models.items()}
        with fsspec.open(os.fspath(filepath), "w", **(self.storage_options or {})) as f:
            yaml.dump(best_k, f)

    def _check_loads(self, trainer: Trainer) -> None:
        """Verify, from now on, the files of committed steps `trainer` is asked to load."""
        self._stop_checking_loads()
        self._undo_load_check = before_checkpoint_loads(
            trainer, lambda path: self._verify_before_load(trainer, path)
        )

    def _stop_checking_loads(self) -> None:
        if self._undo_load_check is not None:
            self._undo_load_check()
            self._undo_load_check = None

    def _verify_before_load(self, trainer: Trainer, path: Any) -> dict[str, Any] | None:
        """A file of a committed step in `dirpath` is checked against its manifest's checksums
        before Lightning loads it (raises CorruptCheckpointError naming the file). A `dcp` step
        (a sharded strategy's directory, which Lightning cannot read) is loaded here, checked
        as it is read: returns its checkpoint dict for Lightning's restore."""
        if self.dirpath is None or not isinstance(path, str | os.PathLike):
            return None
        path = os.fspath(path)
        step = parse_step(os.path.basename(os.path.dirname(path.rstrip("/"))))
        if step is None:
            return None
        with self._reading() as manager:
            if manager is None or step not in manager.all_steps():
                return None
            ours = str(manager.payload_path(step))
            if "://" not in ours:
                ours, path = os.path.realpath(ours), os.path.realpath(path)
            if ours != path:
                return None
            try:
                loaded = load_if_sharded(trainer, manager, step)
                if loaded is None:
                    manager.verify(step)
                return loaded
            except CorruptCheckpointError as e:
                e.add_note(
                    f"CkptCallback refused to load it as ckpt_path. HINT: `ckpt verify "
                    f"{self.dirpath}` lists the intact steps; pass one of their files."
                )
                raise

    def _resolve_dirpath(self, trainer: Trainer) -> None:
        # ModelCheckpoint's default with dirpath=None, without its logger-version subfolder: a
        # resumed run must find the same directory.
        if self._dirpath_given is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # Lightning's `fit/validate/test(ckpt_path="last")` asks each ModelCheckpoint for its
        # last checkpoint through this (private) method; see LIGHTNING_VERSIONS_CHECKED. A
        # `fit` that asked for "last" continues this run, so `setup` resumes the directory.
        if trainer.state.fn == "fit":
            self._last_requested = True
        self._resolve_dirpath(trainer)
        last = self.last_model_path
        return {last} if last else set()
