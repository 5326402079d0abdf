"""Benchmark: the training stall per checkpoint of `CkptCallback` (sync, async) vs `ModelCheckpoint`.

One real `Trainer.fit` per variant on the same model, about 67M float32 parameters with Adam
(about 0.8 GB per checkpoint), checkpointing every `--every` optimizer steps:

- no checkpoint callback (the step time without checkpoints);
- Lightning's `ModelCheckpoint(every_n_train_steps=..., save_top_k=1)`;
- `CkptCallback(every_n_train_steps=..., max_to_keep=1)`, synchronous;
- the same with `async_save=True`;
- for reference: raw `write` + `fsync` of the same bytes into one file, through the page cache
  and with `O_DIRECT` (the disk alone), and a memory copy.

The stall of a step is the time between the end of the batch's own callbacks (a timing callback
runs before the checkpoint callbacks, which Lightning always runs last) and the
LightningModule's `on_train_batch_end`, which Lightning calls after every callback: exactly
the time the checkpoint callback held training. Not part of the test suite; takes a few
minutes:

    python benchmarks/bench_lightning.py [--every 6 --checkpoints 3 --rounds 3 --dir DIR]

Prints a markdown snippet and writes `benchmarks/results_lightning.json`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import mmap
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _harness import load_average, machine_info, package_versions, write_direct, write_durably
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from integrations.lightning import CkptCallback

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_JSON = HERE / "results_lightning.json"
WIDTH, LAYERS, BATCH = 4096, 4, 8  # 4 x (4096 x 4096 + 4096) = 67.1M parameters
# The targets, as fractions of ModelCheckpoint's stall.
TARGETS = {"CkptCallback (sync)": 0.3, "CkptCallback (async)": 0.05}


class Wide(LightningModule):
    """A stack of wide linear layers: few FLOPs per byte, so the state is large but steps fast."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
        self.stall_started = 0.0
        self.stalls: dict[int, float] = {}
        self.step_times: dict[int, float] = {}
        self._last_step_end = 0.0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.net(batch).pow(2).mean()

    def on_train_batch_end(self, *args: Any) -> None:
        # Called after every callback's on_train_batch_end, the checkpoint callbacks included.
        now = time.perf_counter()
        self.stalls[self.trainer.global_step] = now - self.stall_started
        if self._last_step_end:
            self.step_times[self.trainer.global_step] = now - self._last_step_end
        self._last_step_end = now

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-4)


class StallStart(Callback):
    """Marks the end of the ordinary callbacks; Lightning runs checkpoint callbacks after it."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: Wide, *args: Any) -> None:
        pl_module.stall_started = time.perf_counter()


class RandomBatches(Dataset[torch.Tensor]):
    def __init__(self, n: int) -> None:
        self.data = torch.randn(n, BATCH, WIDTH)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def run_variant(callback: Callback | None, steps: int, every: int) -> dict[str, Any]:
    """One fit; the stalls of its checkpoint steps and the times of the steps between them."""
    torch.manual_seed(0)
    model = Wide()
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=callback is not None,
        limit_val_batches=0,
        callbacks=[StallStart(), *([callback] if callback else [])],
    )
    # One batch more than steps: no checkpoint falls on an epoch's last batch, which
    # CkptCallback would move to the epoch end, outside the measured window.
    loader = DataLoader(RandomBatches(steps + 1), batch_size=None)
    os.sync()  # no writeback left over from the previous variant to slow this one's fsyncs
    start = time.perf_counter()
    trainer.fit(model, loader)
    fit_seconds = time.perf_counter() - start
    stalls = [round(model.stalls[s], 4) for s in range(every, steps + 1, every)]
    # Steps with no save of their own, after the first save: with async saves these run while
    # the background thread writes, so they show what the writing costs the training.
    between = [t for s, t in model.step_times.items() if s > every and s % every != 0]
    del trainer, model
    gc.collect()
    return {"stalls": stalls, "step_times": between, "fit_s": fit_seconds}


def state_bytes() -> tuple[int, list[torch.Tensor]]:
    """The tensors of a checkpoint of this model (params, Adam's two moments) and their size."""
    params = [torch.randn(WIDTH, WIDTH) for _ in range(LAYERS)] + [
        torch.randn(WIDTH) for _ in range(LAYERS)
    ]
    tensors = params * 3  # params, exp_avg, exp_avg_sq
    return sum(t.numel() * t.element_size() for t in tensors), tensors


def raw_baselines(directory: Path, tensors: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Buffered write+fsync (what a plain save does), the disk alone (O_DIRECT from one aligned
    buffer, no copy), and a memory copy, of the checkpoint's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    views = [memoryview(t.numpy()).cast("B") for t in tensors]
    nbytes = sum(len(v) for v in views)
    aligned = mmap.mmap(-1, -(-nbytes // 4096) * 4096)
    at = 0
    for v in views:
        aligned[at : at + len(v)] = v
        at += len(v)
    writes, direct, copies = [], [], []
    for i in range(repeats):
        path = directory / f"raw-{i}.bin"
        start = time.perf_counter()
        write_durably(path, views)
        writes.append(time.perf_counter() - start)
        path.unlink()
        start = time.perf_counter()
        write_direct(path, aligned)
        direct.append(time.perf_counter() - start)
        path.unlink()
        start = time.perf_counter()
        copied = [t.clone() for t in tensors]
        copies.append(time.perf_counter() - start)
        del copied
    aligned.close()
    return {
        "raw_write_fsync_s": statistics.median(writes),
        "raw_direct_write_fsync_s": statistics.median(direct),
        "memory_copy_s": statistics.median(copies),
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"Lightning, {doc['parameters'] / 1e6:.1f}M parameters + Adam"
        f" ({doc['state_bytes'] / 1e9:.2f} GB per checkpoint), a checkpoint every"
        f" {doc['every']} steps, {doc['checkpoints']} checkpoints per variant in"
        f" {doc['rounds']} rounds ({doc['machine']['cores']} cores,"
        f" {doc['machine']['filesystem']}, load average"
        f" {doc['machine']['load_average_at_start']} at start):",
        "",
        "| variant | stall per checkpoint (median) | vs ModelCheckpoint | target |"
        " step between saves | whole fit |",
        "|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        ratio, target = row["vs_model_checkpoint"], row["target"]
        verdict = "" if target is None else f"<= {target}x: {'PASS' if ratio <= target else 'MISS'}"
        lines.append(
            f"| {row['name']} | {row['stall_s']:.3f} s | {ratio:.3f}x | {verdict} |"
            f" {row['step_s_between_saves']:.3f} s | {row['fit_s']:.1f} s |"
        )
    lines += [
        "",
        f"Same bytes, raw `write` + `fsync` into one file: {doc['raw_write_fsync_s']:.3f} s"
        " (through the page cache, as `ModelCheckpoint` writes); the disk alone (`O_DIRECT`"
        f" from one aligned buffer, no copy): {doc['raw_direct_write_fsync_s']:.3f} s; a memory"
        f" copy into new tensors: {doc['memory_copy_s']:.3f} s. Ratios are taken within each"
        " round, then the median over rounds.",
    ]
    return "\n".join(lines)


def variants(root: Path, every: int) -> list[tuple[str, Callback | None]]:
    return [
        ("no checkpoints", None),
        ("ModelCheckpoint", ModelCheckpoint(root / "mc", every_n_train_steps=every, save_top_k=1)),
        (
            "CkptCallback (sync)",
            CkptCallback(root / "sync", every_n_train_steps=every, max_to_keep=1, overwrite=True),
        ),
        (
            "CkptCallback (async)",
            CkptCallback(
                root / "async",
                every_n_train_steps=every,
                max_to_keep=1,
                overwrite=True,
                async_save=True,
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=6, help="checkpoint every N steps")
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints per fit")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all variants (load drifts between fits)"
    )
    parser.add_argument("--dir", default=None, help="scratch directory on the disk under test")
    args = parser.parse_args()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    root = Path(args.dir or os.environ.get("CKPT_BENCH_DIR") or REPO / ".bench_tmp") / "lightning"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    steps = args.every * args.checkpoints
    machine = machine_info(root.parent)  # the load average before this benchmark adds its own
    nbytes, tensors = state_bytes()
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        raw = raw_baselines(root / "raw", tensors, repeats=3)
        del tensors
        for round_ in range(args.rounds):
            for name, callback in variants(root, args.every):
                run = run_variant(callback, steps, args.every)
                runs.setdefault(name, []).append(run)
                print(f"round {round_ + 1}: {name}: stalls {run['stalls']}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    reference = [statistics.median(r["stalls"]) for r in runs["ModelCheckpoint"]]
    rows = []
    for name, name_runs in runs.items():
        stalls = [s for r in name_runs for s in r["stalls"]]
        # The ratio is taken within each round, against that round's ModelCheckpoint.
        ratios = [statistics.median(r["stalls"]) / ref for r, ref in zip(name_runs, reference)]
        rows.append(
            {
                "name": name,
                "stall_s": statistics.median(stalls),
                "vs_model_checkpoint": statistics.median(ratios),
                "target": TARGETS.get(name),
                "step_s_between_saves": statistics.median(
                    t for r in name_runs for t in r["step_times"]
                ),
                "fit_s": statistics.median(r["fit_s"] for r in name_runs),
                "stall_s_all": [round(s, 4) for s in stalls],
                "ratio_per_round": [round(x, 4) for x in ratios],
            }
        )
    doc = {
        "parameters": LAYERS * (WIDTH * WIDTH + WIDTH),
        "state_bytes": nbytes,
        "every": args.every,
        "checkpoints": args.checkpoints * args.rounds,
        "rounds": args.rounds,
        **raw,
        "machine": {
            **machine,
            "load_average_at_end": load_average(),
            **package_versions(["torch", "lightning"]),
        },
        "rows": rows,
    }
    RESULTS_JSON.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))


if __name__ == "__main__":
    main()
