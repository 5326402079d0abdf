"""nemo_rl's `CheckpointManager`, ported: top-k by `metric_name` / `higher_is_better` with the
latest always kept, `training_info.json` and `config.yaml` per step, best and latest paths.

Names map to ours as in the README's "Coming from ..." table:
`CheckpointingConfig(checkpoint_dir, metric_name, higher_is_better, keep_top_k)` is
`CheckpointManager(checkpoint_dir, best_fn=metric_name, best_mode="max" if higher_is_better
else "min", keep_best=keep_top_k, max_to_keep=1)`; `init_tmp_checkpoint` + the actors' own
writes + `finalize_checkpoint` is one `save(step, state, metrics=training_info,
metadata={"config": config})`; `get_best_checkpoint_path()` is `path("best")`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ckpt_core import CheckpointManager, UnrankedStepWarning, load_checkpoint


def manager_from(config: dict[str, Any], **options: Any) -> CheckpointManager:
    """nemo_rl's CheckpointingConfig as our manager's options."""
    top_k = config["keep_top_k"]
    return CheckpointManager(
        config["checkpoint_dir"],
        best_fn=config["metric_name"],
        best_mode="max" if config["higher_is_better"] else "min",
        keep_best=top_k,
        max_to_keep=None if top_k is None else 1,  # nemo_rl keeps the latest beside the top-k
        format="torch",
        **options,
    )


def policy_state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    policy = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"policy": policy.state_dict(), "policy_optimizer": optimizer.state_dict()}


RUN_CONFIG = {"policy": {"model_name": "tiny"}, "grpo": {"num_prompts_per_step": 4}}


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_top_k_by_metric_keeps_the_k_best_and_the_latest(tmp_path, higher_is_better):
    config = {
        "enabled": True,
        "checkpoint_dir": tmp_path / "results",
        "metric_name": "val_reward" if higher_is_better else "val_loss",
        "higher_is_better": higher_is_better,
        "keep_top_k": 2,
    }
    values = [0.5, 0.9, 0.1, 0.7, 0.3, 0.6]  # step 5, the latest, ranks neither best nor worst
    with manager_from(config) as mgr:
        for step, value in enumerate(values):
            training_info = {config["metric_name"]: torch.tensor(value), "step": step}
            mgr.save(
                step, policy_state(step), metrics=training_info, metadata={"config": RUN_CONFIG}
            )
        best_two = sorted(range(5), key=lambda s: values[s], reverse=higher_is_better)[:2]
        assert mgr.all_steps() == sorted({*best_two, 5})
        assert mgr.best_step() == best_two[0]
        best_path = mgr.path("best")
        assert best_path.name == f"step_{best_two[0]:08d}"
        assert mgr.path("latest").name == "step_00000005"

        info = mgr.info(best_two[0])  # load_training_info
        assert info.metrics[config["metric_name"]] == pytest.approx(values[best_two[0]])
        assert info.metrics["step"] == best_two[0]
        assert info.metadata == {"config": RUN_CONFIG}  # config.yaml, per step

    restored = load_checkpoint(best_path, like=policy_state(99))
    for name, tensor in policy_state(best_two[0])["policy"].items():
        assert torch.equal(restored["policy"][name], tensor)
    assert torch.load(best_path / "state.pt", weights_only=True)["policy"].keys() == (
        restored["policy"].keys()  # the actors' files open with torch.load, as in nemo_rl
    )


def test_ties_prefer_the_newer_step_and_none_keeps_all(tmp_path):
    config = {
        "checkpoint_dir": tmp_path / "a",
        "metric_name": "val_loss",
        "higher_is_better": False,
        "keep_top_k": 1,
    }
    with manager_from(config) as mgr:
        for step in range(3):
            mgr.save(step, policy_state(0), metrics={"val_loss": 0.25})
        assert mgr.best_step() == 2
    config = {**config, "checkpoint_dir": tmp_path / "b", "keep_top_k": None}
    with manager_from(config) as mgr:
        for step in range(7):
            mgr.save(step, policy_state(0), metrics={"val_loss": float(step)})
        assert mgr.all_steps() == list(range(7))


def test_resaving_a_step_when_resuming_replaces_it(tmp_path):
    """nemo_rl overrides an existing step_N on resume; so does save(), atomically."""
    config = {
        "checkpoint_dir": tmp_path / "results",
        "metric_name": "val_loss",
        "higher_is_better": False,
        "keep_top_k": 3,
    }
    with manager_from(config) as mgr:
        mgr.save(10, policy_state(1), metrics={"val_loss": 1.0})
    with manager_from(config, on_existing="resume") as mgr:
        assert mgr.resuming and mgr.latest_step() == 10
        mgr.save(10, policy_state(2), metrics={"val_loss": 0.5})
        assert mgr.metrics(10) == {"val_loss": 0.5}
        weight = mgr.restore(10, policy_state(0))["policy"]["weight"]
        assert torch.equal(weight, policy_state(2)["policy"]["weight"])
        mgr.wait()  # the replaced step's files are removed in the background
        assert sorted(p.name for p in (tmp_path / "results").iterdir() if "step" in p.name) == [
            "step_00000010"
        ]


def test_a_step_without_the_metric_is_unranked_with_a_warning(tmp_path):
    """nemo_rl prints a warning and falls back to the latest; ours warns at save, naming the
    metric, and `best` stays on the steps that have it."""
    config = {
        "checkpoint_dir": tmp_path / "results",
        "metric_name": "val_reward",
        "higher_is_better": True,
        "keep_top_k": 2,
    }
    with manager_from(config) as mgr:
        mgr.save(0, policy_state(0), metrics={"val_reward": np.float32(0.5)})
        with pytest.warns(UnrankedStepWarning, match="val_reward"):
            mgr.save(1, policy_state(1), metrics={"train_loss": 0.1})
        assert mgr.best_step() == 0 and mgr.latest_step() == 1
