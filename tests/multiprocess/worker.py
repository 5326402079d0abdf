"""One process of a multi-process test job: `python -m tests.multiprocess.worker SCENARIO
INDEX COUNT PORT DIR ARGS_JSON`. Prints `RESULT {json}` last.

torch processes meet over gloo (`tcp://127.0.0.1:PORT`) and shard a small MLP with FSDP2
`fully_shard` on CPU; JAX processes meet through `jax.distributed` on `127.0.0.1:PORT` with
gloo CPU collectives and 2 CPU devices each. A COUNT of 1 runs without any process group.
Every value saved is a pure function of a seed, so any process can check what it restores.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.monotonic()


def report(**values: Any) -> None:
    print("RESULT " + json.dumps({**values, "uptime": time.monotonic() - STARTED}), flush=True)


def manager_options(args: dict[str, Any]) -> dict[str, Any]:
    options = dict(args.get("options", {}))
    if "endpoint" in args:
        options["storage_options"] = {
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": args["endpoint"], "region_name": "us-east-1"},
        }
    return options


# ---------------------------------------------------------------- torch


def torch_start(index: int, count: int, port: int) -> None:
    import torch.distributed as dist

    if count > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=count
        )


def torch_model(seed: int, count: int) -> tuple[Any, Any]:
    """An MLP (FSDP2-sharded over `count` processes when count > 1) and its Adam."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    if count > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (count,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def torch_train(model: Any, opt: Any, step: int) -> float:
    import torch

    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 16, generator=gen)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


def torch_full_state(model: Any, opt: Any) -> dict[str, Any]:
    """The whole (unsharded) model and optimizer state, as plain CPU tensors, in every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {"model": msd, "optim": osd}


def torch_fingerprint(full: dict[str, Any]) -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    for key, value in full["model"].items():
        out[f"model/{key}"] = float(value.double().sum())
    for key, state in full["optim"]["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                out[f"optim/{key}/{name}"] = float(value.double().sum())
    return out


def torch_save(index: int, count: int, port: int, directory: str, args: dict[str, Any]) -> None:
    """Train and save steps; report what every process sees of the run."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ckpt_core import CheckpointManager

    torch_start(index, count, port)
    model, opt = torch_model(seed=0, count=count)
    losses = args.get("losses", {})
    kill_at = args.get("kill_rank_at")  # (rank, step, when): that rank dies in that save
    if kill_at is not None:
        _die_in_save(index, *kill_at)
    options = {"format": "dcp", "on_existing": "resume", **manager_options(args)}
    began = time.monotonic()
    try:
        with CheckpointManager(directory, **options) as mgr:
            first = mgr.latest_step() + 1 if mgr.resuming else 1
            if mgr.resuming:
                restored = mgr.restore(
                    like=dict(zip(("model", "optim"), get_state_dict(model, opt)))
                )
                from torch.distributed.checkpoint.state_dict import set_state_dict

                set_state_dict(model, opt, model_state_dict=restored["model"],
                               optim_state_dict=restored["optim"])  # fmt: skip
            for step in range(first, args["last_step"] + 1):
                torch_train(model, opt, step)
                msd, osd = get_state_dict(model, opt)
                metrics = {"loss": losses[str(step)]} if str(step) in losses else None
                mgr.save(step, {"model": msd, "optim": osd, "step": step}, metrics=metrics)
            mgr.wait()
            seen = {"steps": mgr.all_steps(), "best": mgr.best_step(), "resumed": mgr.resuming}
    except Exception as e:
        report(error=str(e), type=type(e).__name__, seconds=time.monotonic() - began)
        os._exit(0)  # the process group cannot be torn down with a peer gone
    report(fingerprint=torch_fingerprint(torch_full_state(model, opt)), first=first, **seen)


def _die_in_save(index: int, rank: int, step: int, when: str) -> None:
    """Make process `rank` SIGKILL itself in the save of `step`: "before" its shards are
    written (its peers are inside DCP's collective then) or "after" (before it reports them)."""
    from ckpt_core.formats import dcp

    write = dcp.DcpFormat.write

    def write_and_die(self: Any, state: Any, writer: Any) -> None:
        doomed = index == rank and state["step"] == step
        if doomed and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, state, writer)
        if doomed and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    dcp.DcpFormat.write = write_and_die  # type: ignore[method-assign]


def torch_restore(index: int, count: int, port: int, directory: str, args: dict[str, Any]) -> None:
    """Restore step `step` (default: the latest) into a model sharded over `count` processes
    (1: no process group, a plain model) built from another seed; report its whole state.
    With `writer`, through the job's writing manager (whose processes verify together)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from ckpt_core import CheckpointManager, CorruptCheckpointError

    torch_start(index, count, port)
    model, opt = torch_model(seed=1, count=count)
    torch_train(model, opt, step=0)  # Adam's state exists only after a step
    opened = {"on_existing": "resume"} if args.get("writer") else {"read_only": True}
    step = args.get("step")
    try:
        with CheckpointManager(directory, **opened, **manager_options(args)) as mgr:
            msd, osd = get_state_dict(model, opt)
            restored = mgr.restore(
                step, like={"model": msd, "optim": osd} if args.get("optim") else {"model": msd}
            )
            model_only = mgr.restore(step, like={"model": model.state_dict()})["model"]
    except CorruptCheckpointError as e:
        report(error=str(e), type=type(e).__name__, path=e.path)
        os._exit(0)
    set_state_dict(model, opt, model_state_dict=restored["model"],
                   optim_state_dict=restored.get("optim", osd))  # fmt: skip
    full = torch_full_state(model, opt)
    same = all(
        bool(
            (
                model_only[k].full_tensor()
                if hasattr(model_only[k], "full_tensor")
                else model_only[k]
            ).equal(v)
        )
        for k, v in full["model"].items()
    )
    report(fingerprint=torch_fingerprint(full), model_only_matches=same)


def torch_sharded_tensors(
    index: int, count: int, port: int, directory: str, args: dict[str, Any]
) -> None:
    """Async dcp saves of ShardedTensors (FSDP1's sharded state dicts), chunked over the
    processes; `b` is placed on process 0 alone, so process 1 holds no shard of it (as FSDP1
    leaves a process without a shard of a tensor smaller than the world), beside an
    optimizer's param groups (lists DCP flattens). Restored into ShardedTensors of the same
    layout."""
    import torch
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    from ckpt_core import CheckpointManager

    torch_start(index, count, port)
    spec = ChunkShardingSpec(dim=0, placements=[f"rank:{r}/cpu" for r in range(count)])
    on_0 = ChunkShardingSpec(dim=0, placements=["rank:0/cpu"])

    def state(step: int) -> dict[str, Any]:
        w, b = sharded_tensor.empty(spec, 4, 2), sharded_tensor.empty(on_0, 1)
        for tensor, full in ((w, torch.arange(8.0).reshape(4, 2)), (b, torch.ones(1))):
            for shard in tensor.local_shards():
                rows = slice(shard.metadata.shard_offsets[0], None)
                shard.tensor.copy_(full[rows][: shard.tensor.shape[0]] * step)
        groups = [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["w", "b"]}]
        return {"w": w, "b": b, "step": step, "optim": {"param_groups": groups}}

    options = {"format": "dcp", "async_save": True, "max_to_keep": None}
    with CheckpointManager(directory, **options) as mgr:
        for step in (1, 2):
            saved = state(step)
            mgr.save(step, saved)
            for tensor in (saved["w"], saved["b"]):  # the next training step, mid-save
                for shard in tensor.local_shards():
                    shard.tensor.add_(100)
        mgr.wait()
        back = mgr.restore(1, like=state(0))
    report(
        shards={key: [shard.tensor.tolist() for shard in back[key].local_shards()] for key in "wb"},
        step=back["step"],
    )


def torch_store_keys(
    index: int, count: int, port: int, directory: str, args: dict[str, Any]
) -> None:
    """`watch_store_keys` for torch's c10d store: dcp saves of an FSDP2 model."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from ckpt_core import CheckpointManager

    torch_start(index, count, port)
    model, opt = torch_model(seed=0, count=count)
    store = dist.distributed_c10d._get_default_store()

    def save(mgr: Any, step: int) -> None:
        msd, osd = get_state_dict(model, opt)
        mgr.save(step, {"model": msd, "optim": osd, "step": step})

    watch_store_keys(
        CheckpointManager(directory, format="dcp", **manager_options(args)),
        count,
        args["last_step"],
        save,
        held=lambda key: bool(store.check([key])),
        barrier=lambda name: dist.barrier(),
    )


def watch_store_keys(
    mgr: Any,
    count: int,
    last_step: int,
    save: Callable[[Any, int], None],
    *,
    held: Callable[[str], bool],
    barrier: Callable[[str], None],
) -> None:
    """Save steps 1..last_step with `save(mgr, step)`; after each save N, report which keys of
    saves before N - 1 the store still `held`, and after close (and a barrier) which of all
    the saves' keys it holds."""
    saves = range(1, last_step + 1)
    with mgr:
        namespace = mgr._saver.meeting._namespace
        keys = {n: save_keys(namespace, n, count) for n in saves}
        stale: dict[int, list[str]] = {}
        for step in saves:
            save(mgr, step)
            stale[step] = [k for n in range(1, step - 1) for k in keys[n] if held(k)]
    barrier("closed")  # every process closed: the primary deleted the rest before it
    left = [k for n in saves for k in [*keys[n], f"{namespace}/open/1/primary"] if held(k)]
    barrier("looked")  # process 0 hosts the store: it stays until every process has looked
    report(stale=stale, left=left, checked=sum(map(len, keys.values())))


def save_keys(namespace: str, n: int, count: int) -> list[str]:
    """The keys the n-th save of a manager publishes (see `commit.write_step`)."""
    topic = f"{namespace}/save/{n}"
    each = [f"{topic}/{stage}/{i}" for stage in ("step", "files") for i in range(1, count)]
    return [f"{topic}/begin/primary", *each, f"{topic}/commit/primary"]


# ---------------------------------------------------------------- JAX


def jax_start(index: int, count: int, port: int) -> Any:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    if count > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=index)
    return jax


def jax_values(step: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(step)
    return {
        "w": rng.standard_normal((8, 4)).astype(np.float32),
        "b": np.arange(4, dtype=np.float32) + step,
    }


def jax_state(jax: Any, mesh: Any, specs: dict[str, Any], step: int) -> dict[str, Any]:
    from jax.sharding import NamedSharding

    values = jax_values(step)
    state: dict[str, Any] = {"step": step}
    for name, spec in specs.items():
        sharding = NamedSharding(mesh, spec)
        value = values[name]
        state[name] = jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])
    return state


def jax_check(state: dict[str, Any], step: int) -> bool:
    """Whether every shard this process holds has the values of `step`."""
    import numpy as np

    values = jax_values(step)
    return (
        all(
            np.array_equal(np.asarray(shard.data), values[name][shard.index])
            for name in ("w", "b")
            for shard in state[name].addressable_shards
        )
        and int(state["step"]) == step
    )


def jax_save(index: int, count: int, port: int, directory: str, args: dict[str, Any]) -> None:
    """A plain JAX loop with `CkptHook` in every process: a 4-device mesh, `w` sharded."""
    jax = jax_start(index, count, port)
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from integrations.flax import CkptHook

    mesh = Mesh(np.array(jax.devices()), ("x",))
    specs = {"w": P("x"), "b": P()}
    if args.get("kill_rank_at") is not None:  # (rank, step): that process dies in that save
        _die_after_orbax_write(index, *args["kill_rank_at"])
    if "barrier_timeout_secs" in args:  # CkptHook takes the manager's default: change it
        from ckpt_core import CheckpointManager

        defaults = CheckpointManager.__init__.__kwdefaults__
        defaults["barrier_timeout_secs"] = args["barrier_timeout_secs"]
    hook = CkptHook(directory, resume=True, **args.get("options", {}))
    state = hook.restore_or(jax_state(jax, mesh, specs, 0))
    restored_ok = jax_check(state, hook.start_step - 1) if hook.start_step > 0 else True
    total = jax.jit(lambda w: w.sum())  # a collective across processes, as a train step has
    began = time.monotonic()
    try:
        for step in range(hook.start_step, args["last_step"] + 1):
            state = jax_state(jax, mesh, specs, step)
            hook(step, state, metrics={"loss": args["losses"][str(step)]})
            for _ in range(args.get("collectives", 0)):  # while an async save writes
                total(state["w"]).block_until_ready()
        hook.close()
    except Exception as e:
        report(error=str(e), type=type(e).__name__, seconds=time.monotonic() - began)
        os._exit(0)
    mgr = hook.manager
    report(steps=mgr.all_steps(), best=mgr.best_step(), start=hook.start_step, ok=restored_ok)


def _die_after_orbax_write(index: int, rank: int, step: int) -> None:
    from ckpt_core.formats import orbax

    write = orbax.OrbaxFormat.write

    def write_and_die(self: Any, state: Any, writer: Any) -> None:
        write(self, state, writer)
        if index == rank and int(state["step"]) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    orbax.OrbaxFormat.write = write_and_die  # type: ignore[method-assign]


def jax_restore(index: int, count: int, port: int, directory: str, args: dict[str, Any]) -> None:
    """Restore onto another mesh through abstract `like` leaves with shardings."""
    jax = jax_start(index, count, port)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from ckpt_core import CheckpointManager

    devices = np.array(jax.devices())
    if devices.size == 4:
        mesh = Mesh(devices.reshape(2, 2), ("a", "b"))
        specs = {"w": P("b", "a"), "b": P("a")}
    else:
        mesh = Mesh(devices, ("a",))
        specs = {"w": P(None, "a"), "b": P()}
    like: dict[str, Any] = {"step": 0}
    for name, value in jax_values(0).items():
        sharding = NamedSharding(mesh, specs[name])
        like[name] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
    with CheckpointManager(directory, read_only=True) as mgr:
        step = mgr.latest_step()
        state = mgr.restore(like=like)
    placed = all(state[n].sharding == like[n].sharding for n in ("w", "b"))
    report(step=step, ok=jax_check(state, step), placed=placed, devices=int(devices.size))


def jax_store_keys(index: int, count: int, port: int, directory: str, args: dict[str, Any]) -> None:
    """`watch_store_keys` for the jax.distributed client: orbax saves of a sharded state."""
    jax = jax_start(index, count, port)
    import numpy as np
    from jax._src import distributed
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from ckpt_core import CheckpointManager

    client = distributed.global_state.client
    mesh = Mesh(np.array(jax.devices()), ("x",))

    def held(key: str) -> bool:
        try:
            client.key_value_try_get(key)
        except Exception:  # NOT_FOUND
            return False
        return True

    watch_store_keys(
        CheckpointManager(directory, format="orbax", **manager_options(args)),
        count,
        args["last_step"],
        lambda mgr, step: mgr.save(step, jax_state(jax, mesh, {"w": P("x"), "b": P()}, step)),
        held=held,
        barrier=lambda name: client.wait_at_barrier(f"ckpt_test_{name}", 60_000),
    )


SCENARIOS = {
    f.__name__: f
    for f in (
        torch_save,
        torch_restore,
        torch_sharded_tensors,
        torch_store_keys,
        jax_save,
        jax_restore,
        jax_store_keys,
    )
}


def main() -> None:
    scenario, index, count, port, directory, spec = sys.argv[1:7]
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `launch` asks before a kill
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    SCENARIOS[scenario](int(index), int(count), int(port), directory, json.loads(spec))
    sys.stdout.flush()
    os._exit(0)  # skip framework teardown (gloo, the coordination service): the test is done


if __name__ == "__main__":
    main()
