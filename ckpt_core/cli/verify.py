"""`ckpt verify`: the size and checksum of every file of every step; exit status 1 on damage."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from .. import layout
from ..errors import CorruptCheckpointError
from ..formats import StepReader
from ..info import CheckpointInfo
from ..listing import scan_run
from ..options import human_bytes
from ..run import open_directory, read_manifest
from ..storage import Storage
from ._output import EXIT_DAMAGED, EXIT_OK, Output, _plural, _print_json
from ._targets import (
    _no_step_for_a_single_checkpoint,
    _parse_step,
    _resolve_step,
    _runs_and_checkpoints,
    _single_checkpoint,
    _single_run,
)


@dataclass
class StepCheck:
    step: int
    status: str  # "ok", "damaged", "invalid"
    files: int = 0
    bytes: int = 0
    damaged: tuple[tuple[str, str], ...] = ()  # (path, message) per damaged file


def verify_step(storage: Storage, info: CheckpointInfo) -> StepCheck:
    """Check every file of one committed step, naming each damaged file (not only the first)."""
    return verify_directory(storage, layout.step_dirname(info.step), info.step)


def verify_directory(storage: Storage, name: str, step: int | None = None) -> StepCheck:
    """Check every file of the checkpoint directory `name` (a run's step, or a single
    checkpoint); `step`: the step it should be (None: the one its manifest records, else 0)."""
    try:
        manifest = read_manifest(storage, name)
    except CorruptCheckpointError as e:
        return StepCheck(step or 0, "invalid", damaged=((e.path or name, str(e)),))
    step = manifest.step if step is None else step
    reader = StepReader(storage, name, manifest)
    damaged = []
    for file in sorted(manifest.files):
        try:
            reader.verify(file)
        except CorruptCheckpointError as e:
            damaged.append((e.path or reader.display(file), str(e)))
        except OSError as e:
            damaged.append((reader.display(file), f"{reader.display(file)} is unreadable: {e}"))
    status = "damaged" if damaged else "ok"
    return StepCheck(step, status, len(manifest.files), manifest.nbytes, tuple(damaged))


def _invalid_check(storage: Storage, name: str, step: int | None) -> StepCheck:
    try:
        read_manifest(storage, name)
        message = f"{storage.join(name)} changed while it was being checked"
        where = storage.join(name)
    except CorruptCheckpointError as e:
        message, where = str(e), e.path or storage.join(name)
    return StepCheck(step or 0, "invalid", damaged=((where, message),))


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    wanted = _parse_step(args.step)
    if _single_checkpoint(args.directory) is not None:
        # A `save_checkpoint` directory, or one step directory of a run, given directly.
        if wanted is not None:
            raise _no_step_for_a_single_checkpoint(args.directory)
        names, checkpoints = [], [args.directory]
    elif wanted is not None:
        _single_run(args.directory, "verify")
        names, checkpoints = [args.directory], []
    else:
        names, checkpoints = _runs_and_checkpoints(args.directory)
    docs = []
    for run in names:
        storage = open_directory(run)
        listing = scan_run(storage)
        infos = listing.steps
        invalid = [o for o in listing.others if o.kind == "invalid"]
        if wanted is not None:
            invalid_step = next((o for o in invalid if o.step == wanted), None)
            infos, invalid = [], [invalid_step] if invalid_step else []
            if invalid_step is None:
                step = _resolve_step(listing, wanted, args)
                infos = [i for i in listing.steps if i.step == step]
        checks = [verify_step(storage, i) for i in infos]
        checks += [_invalid_check(storage, o.name, o.step) for o in invalid]
        checks.sort(key=lambda c: c.step)
        quarantined = [o.name for o in listing.others if o.kind == "quarantined"]
        docs.append(
            _verify_doc(storage.root, run, checks, [] if wanted is not None else quarantined)
        )
    for checkpoint in checkpoints:
        parent, name = os.path.split(os.path.abspath(checkpoint.removeprefix("file://")))
        storage = open_directory(parent)
        check = verify_directory(storage, name, layout.parse_step(name))
        docs.append({**_verify_doc(storage.join(name), checkpoint, [check], []), "single": True})
    intact = all(s["status"] == "ok" for doc in docs for s in doc["steps"])
    if args.json:
        _print_json({"intact": intact, "runs": docs})
    else:
        _render_verify(out, docs)
    return EXIT_OK if intact else EXIT_DAMAGED


def _verify_doc(
    directory: str, run: str, checks: list[StepCheck], quarantined: list[str]
) -> dict[str, Any]:
    """One entry of `ckpt verify --json`: a run, or (`"single": true`) a single checkpoint."""
    return {
        "directory": directory,
        "run": run,
        "single": False,
        "steps": [
            {
                "step": c.step,
                "status": c.status,
                "files": c.files,
                "bytes": c.bytes,
                "damaged": [{"path": p, "error": m} for p, m in c.damaged],
            }
            for c in checks
        ],
        "quarantined": quarantined,
    }


def _render_verify(out: Output, docs: list[dict[str, Any]]) -> None:
    n_steps = n_ok = n_files_bad = n_invalid = 0
    for i, doc in enumerate(docs):
        if i:
            out.line()
        single = "  ·  a single checkpoint" if doc["single"] else ""
        out.line(doc["run"] + single, style="bold")
        rows, styles = [], []
        for s in doc["steps"]:
            n_steps += 1
            if s["status"] == "ok":
                n_ok += 1
                rows.append(
                    [
                        str(s["step"]),
                        "ok",
                        f"{_plural(s['files'], 'file')}, {human_bytes(s['bytes'])}",
                    ]
                )
                styles.append("green")
                continue
            if s["status"] == "invalid":
                n_invalid += 1
            else:
                n_files_bad += len(s["damaged"])
            for j, d in enumerate(s["damaged"]):
                rows.append(
                    [
                        str(s["step"]) if j == 0 else "",
                        s["status"].upper() if j == 0 else "",
                        d["error"],
                    ]
                )
                styles.append("bold red")
        out.table(
            [("step", "right"), ("status", "left"), ("detail", "left")],
            rows,
            styles,
            wrap=("detail",),
        )
        for name in doc["quarantined"]:
            out.line(
                f"  note: {name} is quarantined (a damaged step moved aside on resume; "
                "not checked)",
                style="yellow",
            )
    problems = []
    if n_files_bad:
        problems.append(_plural(n_files_bad, "damaged file"))
    if n_invalid:
        problems.append(_plural(n_invalid, "invalid manifest"))
    summary = f"{n_ok} of {n_steps} steps intact"
    out.line(
        summary + (f"; {', '.join(problems)}." if problems else "."),
        style="bold red" if problems else "bold green",
    )
