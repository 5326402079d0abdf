"""The README is a test: its Python blocks run as printed, on a fresh directory and again.

The blocks run in order, in one namespace, as a reader pastes them into one session, in a
fresh working directory; then the whole README runs a second time in the same directory, as
a reader who runs their script again. The only names a block may use without defining them
are the user's own, obvious ones (`train_step`, `model`, `dm`, `agent`, ...): each block gets
tiny stand-ins for those, chosen by what the block calls. The S3 block's endpoint is pointed at
the local S3 server the S3 suite runs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.s3.conftest import S3Server, s3_server  # noqa: F401  (the session fixture)

README = Path(__file__).resolve().parents[2] / "README.md"
README_ENDPOINT = "http://minio.internal:9000"


@dataclass(frozen=True)
class Block:
    line: int
    code: str


def python_blocks(text: str) -> list[Block]:
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append(Block(text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


# ---------------------------------------------------------------- the reader's own code


def numpy_stand_ins() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def train_step(state: dict[str, Any]) -> Any:
        """The quickstart's signature (`loss = train_step(state)`) and the async one's
        (`state = train_step(state)`) differ: the caller's block picks by what it expects."""
        state["weights"] += 0.01 * rng.standard_normal(state["weights"].shape)
        return float(np.square(state["weights"]).sum())

    return {
        "train_step": train_step,
        "state": {"weights": np.zeros(32), "momentum": np.zeros(32)},
        "n": 30,
        "step": 7,
        "loss": 0.5,
    }


def async_stand_ins() -> dict[str, Any]:
    def train_step(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v + 1.0 for k, v in state.items()}

    return {"train_step": train_step, "state": {"w": np.zeros(1024)}, "n": 30}


def torch_stand_ins() -> dict[str, Any]:
    import torch

    return {"model": torch.nn.Linear(4, 2), "val_loss": 0.25, "step": 1}


def dcp_stand_ins() -> dict[str, Any]:
    import torch

    model = torch.nn.Linear(4, 2)
    return {"model": model, "optim": torch.optim.Adam(model.parameters()), "loss": 0.5}


def lightning_stand_ins() -> dict[str, Any]:
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule
    from torch.utils.data import DataLoader, TensorDataset

    class MyModule(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def _loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._loss(batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", self._loss(batch))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class DataModule(LightningDataModule):
        def _loader(self) -> DataLoader:
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
            return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)

        train_dataloader = val_dataloader = test_dataloader = _loader

    return {"model": MyModule(), "MyModule": MyModule, "dm": DataModule()}


def flax_stand_ins() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    @jax.jit
    def train_step(state: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        state = {"w": state["w"] - 0.1 * (state["w"] - batch), "step": state["step"] + 1}
        return state, {"eval_loss": jnp.square(state["w"] - batch).sum()}

    return {
        "train_step": train_step,
        "state": {"w": jnp.zeros(8), "step": jnp.asarray(0)},
        "batch": jnp.ones(8),
        "total_steps": 250,
    }


def jax_init_stand_ins() -> dict[str, Any]:
    import jax.numpy as jnp

    def init() -> dict[str, Any]:
        return {"w": jnp.zeros(8), "step": jnp.asarray(0)}

    def train_step(state: dict[str, Any]) -> dict[str, Any]:
        return {"w": state["w"] + 1.0, "step": state["step"] + 1}

    return {"init": init, "train_step": train_step}


def torch_net_stand_ins() -> dict[str, Any]:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, 2)

    return {"Net": Net}


def gym_stand_ins() -> dict[str, Any]:
    class RandomAgent:
        def act(self, obs: Any, rng: np.random.Generator) -> int:
            return int(rng.integers(2))

        def learn(self, *transition: Any) -> None:
            return None

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: Any) -> None:
            pass

    return {"agent": RandomAgent()}


# (what a block calls, its stand-ins), the first match wins
STAND_INS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("CkptCallback(", lightning_stand_ins),
    ("CkptHook(", flax_stand_ins),
    ("RunnerConfig(", gym_stand_ins),
    ("jax.eval_shape(init)", jax_init_stand_ins),
    ("Net()", torch_net_stand_ins),
    ("async_save=True", async_stand_ins),
    ("model.state_dict()", torch_stand_ins),
    ("get_state_dict(model, optim)", dcp_stand_ins),
    ("", numpy_stand_ins),
]


def stand_ins(block: Block) -> dict[str, Any]:
    for marker, make in STAND_INS:
        if marker in block.code:
            return make()
    raise AssertionError("unreachable: the last entry matches every block")


def run_readme(namespace: dict[str, Any], s3: S3Server) -> None:
    for block in python_blocks(README.read_text()):
        code = block.code.replace(README_ENDPOINT, s3.endpoint)
        namespace.update(stand_ins(block))
        try:
            exec(compile(code, f"README.md:{block.line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the README block at line {block.line} failed: {e!r}") from e


def test_the_readme_finds_its_python_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 10
    assert all(b.code.strip() for b in blocks)


def test_every_python_block_of_the_readme_runs_as_printed_and_again(
    tmp_path,
    monkeypatch,
    s3_server,  # noqa: F811
):
    monkeypatch.chdir(tmp_path)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.client().create_bucket(Bucket="my-bucket")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and loggers
        for _ in ("fresh directory", "second run"):
            run_readme({"__name__": "__readme__"}, s3_server)
