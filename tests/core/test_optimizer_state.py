"""complete_optimizer_state: lazily created torch optimizer state, on plain trees (no torch)."""

from __future__ import annotations

import copy

import numpy as np

from ckpt_core.optimizer_state import complete_optimizer_state


def adam(state: dict[int, dict[str, float]]) -> dict[str, object]:
    return {"state": state, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}


def test_fills_the_entries_a_fresh_optimizer_lacks_and_leaves_like_untouched():
    moments = {"step": 3.0, "exp_avg": np.ones(2)}
    like = {"net": {"w": np.zeros(2)}, "opts": [adam({}), adam({1: dict(moments)})]}
    stored = {
        "net": {"w": np.ones(2)},
        "opts": [adam({0: moments, 1: moments}), adam({0: moments, 1: moments})],
    }
    before = copy.deepcopy(like)

    template, filled = complete_optimizer_state(like, stored)

    assert filled == ["/opts/0", "/opts/1"]
    assert set(template["opts"][0]["state"]) == {0, 1}
    assert set(template["opts"][1]["state"]) == {0, 1}
    assert template["net"] is like["net"]  # untouched branches are shared, not copied
    assert like.keys() == before.keys() and like["opts"][0]["state"] == {}
    assert like["opts"][1]["state"].keys() == {1}


def test_fills_nothing_else():
    """Entries for parameters the optimizer does not hold, and any non-optimizer difference,
    are left for the structure check to report."""
    like = {"opt": adam({}), "buffer": np.zeros(3)}
    stored = {"opt": adam({7: {"step": 1.0}}), "buffer": np.zeros(4), "extra": 1}
    template, filled = complete_optimizer_state(like, stored)
    assert filled == [] and template is like
