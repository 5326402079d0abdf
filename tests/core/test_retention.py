"""Retention as pure functions over plain step records: no arrays, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_core.retention import RetentionPolicy


@dataclass(frozen=True)
class Rec:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


def recs(*steps: int, **metric_by_step: float) -> list[Rec]:
    return [
        Rec(s, {"loss": metric_by_step[f"s{s}"]} if f"s{s}" in metric_by_step else {})
        for s in steps
    ]


def test_keeps_the_n_most_recent_and_marks_the_latest():
    why = RetentionPolicy(max_to_keep=2).reasons(recs(1, 2, 3, 4))
    assert why == {1: (), 2: (), 3: ("recent",), 4: ("latest", "recent")}


def test_keep_all_when_max_to_keep_is_none():
    assert RetentionPolicy(max_to_keep=None).to_delete(recs(*range(50))) == []


def test_keep_period_protects_multiples():
    deleted = RetentionPolicy(max_to_keep=1, keep_period=10).to_delete(recs(5, 10, 15, 20, 25))
    assert deleted == [5, 15]


def test_best_k_by_metric_min_and_max():
    records = recs(1, 2, 3, 4, 5, s1=0.5, s2=0.1, s3=0.9, s4=0.3, s5=0.7)
    low = RetentionPolicy(max_to_keep=1, best_fn="loss", keep_best=2)
    assert low.ranked(records)[:2] == [2, 4]
    assert low.to_delete(records) == [1, 3]
    high = RetentionPolicy(max_to_keep=1, best_fn="loss", best_mode="max", keep_best=2)
    assert high.ranked(records)[:2] == [3, 5]
    assert high.to_delete(records) == [1, 2, 4]


def test_ties_go_to_the_newer_step_and_nan_never_ranks():
    records = recs(1, 2, 3, s1=0.5, s2=0.5, s3=math.nan)
    policy = RetentionPolicy(best_fn="loss")
    assert policy.ranked(records) == [2, 1]
    assert policy.best_step(records) == 2


def test_callable_best_fn_and_unrankable_steps():
    policy = RetentionPolicy(max_to_keep=1, best_fn=lambda m: m["acc"] - m["loss"], best_mode="max")
    records = [
        Rec(1, {"acc": 0.9, "loss": 0.1}),
        Rec(2, {"loss": 0.2}),
        Rec(3, {"acc": 0.5, "loss": 0.4}),
    ]
    assert policy.best_step(records) == 1
    assert policy.reasons(records)[2] == ()  # unranked: kept by no rule
    assert policy.missing_metric({"loss": 0.2}) is not None


def test_missing_metric_warning_names_the_metric_and_those_present():
    message = RetentionPolicy(best_fn="val_loss").missing_metric({"loss": 1.0, "acc": 0.5})
    assert message is not None and "'val_loss'" in message and "['acc', 'loss']" in message
    assert RetentionPolicy(best_fn="val_loss").missing_metric({"val_loss": 1.0}) is None
    assert RetentionPolicy().missing_metric({}) is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_to_keep": 0}, "max_to_keep"),
        ({"keep_period": -3}, "keep_period"),
        ({"best_mode": "lowest"}, "best_mode"),
        ({"keep_best": -1}, "keep_best"),
        ({"best_fn": 3}, "best_fn"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        RetentionPolicy(**kwargs)


# ---------------------------------------------------------------- model-based property test


def reference_survivors(saves, max_to_keep, keep_period, keep_best, mode):
    """A deliberately naive model: replay saves, pruning after each one."""
    alive: dict[int, float | None] = {}
    for step, loss in saves:
        alive[step] = loss
        steps = sorted(alive)
        keep = {steps[-1]}
        keep |= set(steps if max_to_keep is None else steps[-max_to_keep:])
        if keep_period:
            keep |= {s for s in steps if s % keep_period == 0}
        ranked = sorted(
            (s for s in steps if alive[s] is not None and not math.isnan(alive[s])),
            key=lambda s: ((alive[s] if mode == "min" else -alive[s]), -s),
        )
        keep |= set(ranked[:keep_best])
        alive = {s: alive[s] for s in steps if s in keep}
    return alive


@settings(max_examples=200, deadline=None)
@given(
    losses=st.lists(
        st.one_of(st.none(), st.floats(0, 10, allow_nan=False), st.just(math.nan)),
        min_size=1,
        max_size=40,
    ),
    max_to_keep=st.one_of(st.none(), st.integers(1, 6)),
    keep_period=st.one_of(st.none(), st.integers(1, 7)),
    keep_best=st.integers(0, 3),
    mode=st.sampled_from(["min", "max"]),
    gap=st.integers(1, 3),
)
def test_retention_matches_reference_model_over_random_save_sequences(
    losses, max_to_keep, keep_period, keep_best, mode, gap
):
    policy = RetentionPolicy(max_to_keep, keep_period, "loss", mode, keep_best)
    saves = [(i * gap, loss) for i, loss in enumerate(losses)]
    alive: dict[int, Rec] = {}
    for step, loss in saves:
        alive[step] = Rec(step, {} if loss is None else {"loss": loss})
        for doomed in policy.to_delete(list(alive.values())):
            del alive[doomed]
        # invariants after every commit
        assert max(alive) == step, "the latest step is never deleted"
        if keep_period:
            assert all(s in alive for s, _ in saves if s <= step and s % keep_period == 0)
    expected = reference_survivors(saves, max_to_keep, keep_period, keep_best, mode)
    assert sorted(alive) == sorted(expected)


def test_keep_best_none_keeps_every_ranked_step():
    records = recs(1, 2, 3, 4, s1=0.5, s2=0.1, s4=0.3)  # step 3 is unranked
    assert RetentionPolicy(max_to_keep=1, best_fn="loss", keep_best=None).to_delete(records) == [3]
