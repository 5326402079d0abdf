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


# ---------------------------------------------------------------- the byte budget (max_bytes)


@dataclass(frozen=True)
class SizedRec:
    step: int
    bytes: int
    metrics: dict[str, float] = field(default_factory=dict)


def sized(sizes: dict[int, int], **loss_by_step: float) -> list[SizedRec]:
    return [
        SizedRec(s, n, {"loss": loss_by_step[f"s{s}"]} if f"s{s}" in loss_by_step else {})
        for s, n in sizes.items()
    ]


def test_budget_deletes_recent_only_then_period_then_worst_ranked():
    policy = RetentionPolicy(
        max_to_keep=None, keep_period=10, best_fn="loss", keep_best=3, max_bytes=1
    )
    records = sized(
        {s: 100 for s in (5, 10, 12, 20, 25, 30, 33)}, s12=3.0, s25=2.0, s30=1.0, s33=9.0
    )
    # Kept only as recent: 5 (33 is the latest); by period: 10, 20 (30 is the best);
    # by rank, worst first: 12, then 25.
    assert policy.over_budget(records) == [5, 10, 20, 12, 25]
    assert policy.to_delete(records) == [5, 10, 12, 20, 25]


def test_budget_stops_as_soon_as_the_run_fits():
    policy = RetentionPolicy(max_to_keep=None, max_bytes=250)
    assert policy.over_budget(sized({1: 100, 2: 100, 3: 100, 4: 100})) == [1, 2]


def test_budget_never_deletes_the_latest_or_the_best_and_says_so():
    policy = RetentionPolicy(max_to_keep=None, best_fn="loss", max_bytes=150)
    records = sized({1: 100, 2: 100, 3: 100}, s1=0.5, s2=1.0, s3=2.0)
    assert policy.over_budget(records) == [2]
    warning = policy.budget_exceeded(records)
    assert warning is not None
    assert "step 1 (best) and step 3 (latest)" in warning and "200 bytes" in warning
    assert "HINT" in warning and len(warning) < 400
    assert RetentionPolicy(max_to_keep=None, max_bytes=300).budget_exceeded(records) is None


def test_budget_counts_a_file_shared_between_steps_once():
    policy = RetentionPolicy(max_to_keep=None, max_bytes=400)
    records = sized({1: 200, 2: 200, 3: 200})
    base = {(7, 42): 100}  # the same hard-linked file (st_dev, st_ino) in every step
    files = {s: {**base, ("delta", s): 100} for s in (1, 2, 3)}
    assert policy.over_budget(records, files) == []  # 100 once + 3 x 100, not 3 x 200
    files[4] = {**base, ("delta", 4): 100}
    assert policy.over_budget([*records, SizedRec(4, 200)], files) == [1]


def test_rule_deletions_are_not_counted_against_the_budget():
    # max_to_keep already deletes 1 and 2; the two kept steps fit.
    policy = RetentionPolicy(max_to_keep=2, max_bytes=200)
    assert policy.to_delete(sized({1: 100, 2: 100, 3: 100, 4: 100})) == [1, 2]
    assert policy.over_budget(sized({1: 100, 2: 100, 3: 100, 4: 100})) == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1234, 1234),
        ("20GB", 20 * 10**9),
        ("500MiB", 500 * 2**20),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("2kb", 2000),
        ("7", 7),
        (" 3 TB ", 3 * 10**12),
    ],
)
def test_max_bytes_accepts_ints_and_sizes_with_units(given, expected):
    policy = RetentionPolicy(max_bytes=given)
    assert policy.max_bytes == expected
    assert RetentionPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("20 furlongs", ValueError),
        ("GB", ValueError),
        ("", ValueError),
        (0, ValueError),
        (-5, ValueError),
        ("0MB", ValueError),
        (2.5, TypeError),
        (True, TypeError),
    ],
)
def test_a_bad_max_bytes_names_the_option_what_was_found_and_an_example(given, error):
    with pytest.raises(error) as e:
        RetentionPolicy(max_bytes=given)
    message = str(e.value)
    assert "max_bytes" in message and "found" in message and "'20GB'" in message
    assert len(message) < 300


budget_runs = st.lists(
    st.tuples(
        st.integers(1, 1000),  # bytes
        st.one_of(st.none(), st.floats(0, 10)),  # loss, or unranked
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    run=budget_runs,
    max_to_keep=st.one_of(st.none(), st.integers(1, 8)),
    keep_period=st.one_of(st.none(), st.integers(1, 6)),
    keep_best=st.one_of(st.none(), st.integers(0, 4)),
    max_bytes=st.integers(1, 8000),
)
def test_budget_properties(run, max_to_keep, keep_period, keep_best, max_bytes):
    records = [
        SizedRec(step, n, {} if loss is None else {"loss": loss})
        for step, (n, loss) in enumerate(run)
    ]
    rules = dict(max_to_keep=max_to_keep, keep_period=keep_period, keep_best=keep_best)
    unbudgeted = RetentionPolicy(**rules, best_fn="loss")
    policy = RetentionPolicy(**rules, best_fn="loss", max_bytes=max_bytes)
    # Without a budget nothing changes.
    assert unbudgeted.over_budget(records) == []
    by_rules = unbudgeted.to_delete(records)
    deleted = policy.to_delete(records)
    assert set(by_rules) <= set(deleted)
    latest, best = len(run) - 1, policy.best_step(records)
    assert latest not in deleted and best not in policy.over_budget(records)
    remaining = [r for r in records if r.step not in deleted]
    size = sum(r.bytes for r in remaining)
    # The result fits the budget unless only the latest and the best remain.
    assert size <= max_bytes or {r.step for r in remaining} <= {latest, best}
    assert (policy.budget_exceeded(records) is not None) == (
        sum(r.bytes for r in records if r.step in {latest, best} - set(by_rules)) > max_bytes
    )
    # Deletion order: recent-only steps oldest first, then period oldest first, then by rank
    # worst first; and it stops as soon as the run fits.
    why = unbudgeted.reasons(records)
    order = policy.over_budget(records)
    phase = [2 if "best" in why[s] else 1 if "period" in why[s] else 0 for s in order]
    assert phase == sorted(phase)
    ranks = {s: i for i, s in enumerate(unbudgeted.ranked(records))}
    for a, b, pa, pb in zip(order, order[1:], phase, phase[1:], strict=False):
        if pa == pb < 2:
            assert a < b
        elif pa == pb == 2:
            assert ranks[a] > ranks[b]
    if order:
        before_last = sum(r.bytes for r in records if r.step not in by_rules) - sum(
            r.bytes for r in records if r.step in order[:-1]
        )
        assert before_last > max_bytes
