"""`CkptCallback` as a drop-in for Lightning's `ModelCheckpoint`, with a real `Trainer`."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from ckpt_core import CheckpointManager, CorruptCheckpointError
from integrations.lightning import CkptCallback
from tests.integrations.test_lightning import (
    BATCH,
    ScoredModule,
    TinyModule,
    committed_steps,
    loaders,
    payload,
)

# A value other than ModelCheckpoint's default for each of its arguments.
NON_DEFAULTS: dict[str, Any] = {
    "dirpath": "runs/x",
    "filename": "{epoch}-{val_loss:.2f}",
    "monitor": "val_loss",
    "verbose": True,
    "save_last": True,
    "save_top_k": 3,
    "save_on_exception": True,
    "save_weights_only": True,
    "mode": "max",
    "auto_insert_metric_name": False,
    "every_n_train_steps": 5,
    "train_time_interval": timedelta(minutes=5),
    "every_n_epochs": 2,
    "save_on_train_epoch_end": False,
    "enable_version_counter": False,
}
REFUSED = {"filename", "auto_insert_metric_name", "save_on_train_epoch_end"}


class RecordingLogger(Logger):
    """A real Logger that records, at each `after_save_checkpoint`, what an uploader reads."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        last = Path(checkpoint_callback.last_model_path)
        best = Path(checkpoint_callback.best_model_path)
        self.saves.append(
            {
                "last": last,
                "best": best,
                # committed: the payload and the manifest written last are both there
                "committed": all(
                    p.is_file() and (p.parent / "manifest.json").is_file() for p in (last, best)
                ),
                "score": checkpoint_callback.current_score,
                "best_k": dict(checkpoint_callback.best_k_models),
            }
        )


def trainer_for(callbacks: list[Callback], max_epochs: int, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = dict(logger=False, default_root_dir=None)
    options.update(kwargs)
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **options,
    )


def run(
    cb: Callback, max_epochs: int = 3, module: type[TinyModule] = TinyModule, **trainer_kwargs: Any
) -> tuple[TinyModule, Trainer]:
    seed_everything(0, verbose=False)
    model = module()
    trainer = trainer_for([cb], max_epochs, **trainer_kwargs)
    train, val = loaders("shuffled", BATCH if module is ScoredModule else 32)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return model, trainer


def step_of(path: str) -> int:
    return int(re.search(r"step_(\d+)", path).group(1))  # type: ignore[union-attr]


# ---------------------------------------------------------------- every argument


def test_every_model_checkpoint_argument_is_honoured_or_refused_by_name(tmp_path):
    params = [p for p in inspect.signature(ModelCheckpoint.__init__).parameters.values()]
    params = [p for p in params if p.name != "self"]
    assert {p.name for p in params} <= set(NON_DEFAULTS), "a new ModelCheckpoint argument"
    # ModelCheckpoint's defaults, all at once, are accepted.
    CkptCallback(**{p.name: p.default for p in params})
    for p in params:
        value = NON_DEFAULTS[p.name]
        if p.name == "dirpath":
            value = str(tmp_path / "run")
        try:
            cb = CkptCallback(**{p.name: value})
        except ValueError as e:  # refused: names the argument and says what to do instead
            assert p.name in str(e) and "HINT" in str(e), (p.name, str(e))
            assert p.name in REFUSED or p.name == "save_top_k", (p.name, str(e))
            assert len(str(e)) < 400
        else:
            assert p.name not in REFUSED, p.name
            if p.name in ("monitor", "verbose", "save_last", "mode", "save_top_k"):
                assert getattr(cb, p.name) == value, p.name
    # In ModelCheckpoint's order, so that positional calls mean the same.
    ours = list(inspect.signature(CkptCallback.__init__).parameters.values())[1 : len(params) + 1]
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in params]
    assert CkptCallback(None, None, "val_loss", True).verbose is True
    # save_top_k=3 was refused only for want of a monitor, as ModelCheckpoint refuses it.
    assert CkptCallback(monitor="val_loss", save_top_k=3).save_top_k == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("save_last", [None, True, False, "link"])
@pytest.mark.parametrize("save_top_k", [-1, 0, 1])
def test_values_model_checkpoint_accepts_without_monitor_are_accepted(save_last, save_top_k):
    ModelCheckpoint(save_last=save_last, save_top_k=save_top_k)
    cb = CkptCallback(save_last=save_last, save_top_k=save_top_k)
    assert (cb.save_last, cb.save_top_k) == (save_last, save_top_k)


# ---------------------------------------------------------------- dirpath=None


def test_dirpath_none_is_lightnings_default_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    cb = CkptCallback()
    assert cb.dirpath is None and cb.last_model_path == ""
    run(cb, max_epochs=2, default_root_dir=root)
    assert cb.dirpath == str(root / "checkpoints")
    assert committed_steps(root / "checkpoints") == [8, 16]
    assert cb.last_model_path == payload(root / "checkpoints", 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no ./None

    # fit(ckpt_path="last") with a fresh dirpath=None callback finds the same directory.
    again = CkptCallback()
    seed_everything(0, verbose=False)
    trainer = trainer_for([again], max_epochs=3, default_root_dir=root)
    train, val = loaders("shuffled")
    trainer.fit(TinyModule(), train_dataloaders=train, val_dataloaders=val, ckpt_path="last")
    assert again.resumed_step == 16 and trainer.global_step == 24
    assert committed_steps(root / "checkpoints") == [8, 16, 24]


# ---------------------------------------------------------------- loggers


@pytest.mark.parametrize("async_save", [False, True])
def test_loggers_get_after_save_checkpoint_after_each_commit(tmp_path, async_save):
    logger = RecordingLogger()
    cb = CkptCallback(tmp_path, monitor="score", save_top_k=1, async_save=async_save)
    run(cb, max_epochs=4, module=ScoredModule, logger=logger)
    # One batch per epoch: a save at steps 1..4, each announced once it is committed.
    assert [step_of(str(s["last"])) for s in logger.saves] == [1, 2, 3, 4]
    assert all(s["committed"] for s in logger.saves)
    # SCORES = 5, 3, 4, 1: the best so far at each save, and the score just saved.
    assert [step_of(str(s["best"])) for s in logger.saves] == [1, 2, 2, 4]
    assert [float(s["score"]) for s in logger.saves] == [5.0, 3.0, 4.0, 1.0]
    assert list(logger.saves[-1]["best_k"]) == [payload(tmp_path, 4)]


# ---------------------------------------------------------------- retention parity


def model_checkpoint_best_k(directory: Path, **options: Any) -> set[int]:
    mc = ModelCheckpoint(directory, monitor="score", save_last=True, **options)
    run(mc, max_epochs=6, module=ScoredModule)
    return {int(re.search(r"step=(\d+)", p).group(1)) for p in mc.best_k_models}  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("save_top_k", [1, 2, -1, 0])
def test_save_top_k_keeps_what_model_checkpoint_with_save_last_keeps(tmp_path, mode, save_top_k):
    options = dict(mode=mode, save_top_k=save_top_k)
    # The k best, as ModelCheckpoint ranks them, and the latest state (step 6; Lightning 2.6's
    # last.ckpt is a copy of the last top-k save, so it may be older: resuming needs the latest).
    want = model_checkpoint_best_k(tmp_path / "mc", **options) | {6}
    cb = CkptCallback(tmp_path / "ours", monitor="score", **options)
    run(cb, max_epochs=6, module=ScoredModule)
    assert set(committed_steps(tmp_path / "ours")) == want
    # An explicit max_to_keep keeps that many newest as well.
    more = CkptCallback(tmp_path / "more", monitor="score", max_to_keep=3, **options)
    run(more, max_epochs=6, module=ScoredModule)
    assert set(committed_steps(tmp_path / "more")) == want | {4, 5, 6}


# ---------------------------------------------------------------- save_last, verbose


def test_last_model_path_serves_ckpt_path_and_load_from_checkpoint(tmp_path):
    cb = CkptCallback(tmp_path, monitor="val_loss", save_last=True)
    model, _ = run(cb, max_epochs=2)
    last = cb.last_model_path
    assert last == payload(tmp_path, 16)
    loaded = TinyModule.load_from_checkpoint(last)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    _, val = loaders("shuffled")
    validator = trainer_for([], max_epochs=1)
    (result,) = validator.validate(TinyModule(), dataloaders=val, ckpt_path=last, verbose=False)
    (direct,) = validator.validate(model, dataloaders=val, verbose=False)
    assert result == direct


def test_verbose_logs_one_line_per_save(tmp_path, caplog):
    caplog.set_level("INFO", logger="lightning.pytorch")
    cb = CkptCallback(tmp_path, monitor="score", verbose=True)
    run(cb, max_epochs=3, module=ScoredModule)
    lines = [r.getMessage() for r in caplog.records if "global step" in r.getMessage()]
    assert lines == [
        f"CkptCallback: Epoch {e}, global step {e + 1}: 'score' reached {score:0.5f} (best"
        f" {best:0.5f} at step {best_step}), saved to {payload(tmp_path, e + 1)!r}"
        for e, score, best, best_step in [(0, 5.0, 5.0, 1), (1, 3.0, 3.0, 2), (2, 4.0, 3.0, 2)]
    ]


# ---------------------------------------------------------------- attributes, to_yaml


def test_attributes_lightning_code_reads_and_to_yaml(tmp_path):
    cb = CkptCallback(tmp_path, monitor="score", save_top_k=2)
    mc = ModelCheckpoint(tmp_path / "mc", monitor="score", save_top_k=2)
    public = {name for name in vars(mc) if not name.startswith("_")}
    assert public - set(dir(cb)) == set()
    assert (cb.kth_best_model_path, cb.current_score) == ("", None)
    assert cb.kth_value == torch.tensor(float("inf"))

    run(cb, max_epochs=4, module=ScoredModule)  # scores 5, 3, 4, 1 at steps 1..4
    assert cb.best_k_models == {
        payload(tmp_path, 4): torch.tensor(1.0),
        payload(tmp_path, 2): torch.tensor(3.0),
    }
    assert cb.kth_best_model_path == payload(tmp_path, 2)
    assert cb.kth_value == torch.tensor(3.0)
    assert cb.current_score == torch.tensor(1.0)
    assert (cb.monitor, cb.mode, cb.dirpath) == ("score", "min", str(tmp_path))

    cb.to_yaml()
    written = yaml.safe_load((tmp_path / "best_k_models.yaml").read_text())
    assert written == {payload(tmp_path, 4): 1.0, payload(tmp_path, 2): 3.0}
    cb.to_yaml(tmp_path / "elsewhere.yaml")
    assert yaml.safe_load((tmp_path / "elsewhere.yaml").read_text()) == written
    with CheckpointManager(tmp_path, on_existing="resume") as manager:  # a file of the user's
        assert manager.all_steps() == [2, 4]


# ---------------------------------------------------------------- checksums


def flip_a_weight(path: str, model: TinyModule) -> None:
    """Change one stored weight in place, keeping the file's size: torch.load still opens it."""
    data = bytearray(Path(path).read_bytes())
    weight = model.net[0].weight.detach().reshape(-1)[:4].numpy().tobytes()
    at = data.index(weight)
    data[at] ^= 0x40
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["best", "path"])
def test_ckpt_path_into_the_directory_is_verified_against_its_checksums(tmp_path, which):
    cb = CkptCallback(tmp_path, monitor="val_loss")
    model, trainer = run(cb, max_epochs=2)
    best = cb.best_model_path
    _, val = loaders("shuffled")
    trainer.validate(model, dataloaders=val, ckpt_path=best, verbose=False)  # intact: loads
    flip_a_weight(best, model)
    torch.load(best, weights_only=True)  # the damage is invisible to torch.load
    with pytest.raises(CorruptCheckpointError, match=re.escape("state.pt")):
        trainer.validate(model, dataloaders=val, ckpt_path=which if which == "best" else best)
    with pytest.raises(CorruptCheckpointError):  # a new trainer with the callback, as users do
        trainer_for([cb], max_epochs=1).test(model, dataloaders=val, ckpt_path=best)
