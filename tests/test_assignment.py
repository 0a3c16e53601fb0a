"""The assignment of units to an experiment's arms (service/assignment.py): deterministic, sticky,
true to the shares, and a paused arm gets nothing while the other arms' units stay where they were."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from panelfuse.experiment_spec import ArmSpec, Experiment, ExperimentSpec
from panelfuse.service.assignment import assign, by_shares, point, unit_hash


def arms(*shares: float, shadow: int = 0) -> list[ArmSpec]:
    out = [ArmSpec(name=f"arm{i}", model=f"fake/m{i}", share=s) for i, s in enumerate(shares)]
    out += [ArmSpec(name=f"shadow{i}", model="panelfuse/fusion", shadow=True) for i in range(shadow)]
    return out


UNITS = [f"user:{i}" for i in range(20_000)]


def counts(experiment: str, choices: list[ArmSpec], paused: frozenset[str] = frozenset()) -> dict[str, int]:
    out: dict[str, int] = {}
    for unit in UNITS:
        arm = assign(experiment, choices, unit, paused)
        assert arm is not None
        out[arm.name] = out.get(arm.name, 0) + 1
    return out


def test_the_same_unit_always_gets_the_same_arm():
    choices = arms(1, 1, 1)
    first = [assign("exp", choices, u) for u in UNITS[:500]]
    again = [assign("exp", list(choices), u) for u in UNITS[:500]]
    assert first == again
    # Another experiment places the same units independently.
    other = [assign("other", choices, u) for u in UNITS[:500]]
    assert first != other


@pytest.mark.parametrize("shares", [(1, 1), (0.2, 0.8), (1, 2, 7), (5, 5, 5, 5)])
def test_assignment_matches_the_shares_within_a_tolerance(shares):
    got = counts("exp", arms(*shares))
    total = sum(shares)
    for i, share in enumerate(shares):
        expected = share / total
        observed = got.get(f"arm{i}", 0) / len(UNITS)
        # 20,000 units: the binomial standard error is at most 0.0036; 0.015 is four of them.
        assert abs(observed - expected) < 0.015, (i, observed, expected)


def test_shadow_arms_never_take_primary_traffic():
    got = counts("exp", arms(1, 1, shadow=2))
    assert set(got) == {"arm0", "arm1"}


def test_a_paused_arm_gets_no_traffic_and_the_other_units_stay_put():
    choices = arms(1, 1, 2)
    before = {u: assign("exp", choices, u) for u in UNITS}
    paused = frozenset({"arm1"})
    after = {u: assign("exp", choices, u, paused) for u in UNITS}
    assert all(a is not None and a.name != "arm1" for a in after.values())
    for unit in UNITS:
        b = before[unit]
        assert b is not None
        if b.name != "arm1":
            assert after[unit] == b  # only the paused arm's units moved
    # Its units are spread over the live arms by their shares (arm0 : arm2 = 1 : 2).
    moved = [after[u] for u in UNITS if (b := before[u]) is not None and b.name == "arm1"]
    share0 = sum(1 for a in moved if a is not None and a.name == "arm0") / len(moved)
    assert abs(share0 - 1 / 3) < 0.04
    # Resuming brings the same units back.
    assert {u: assign("exp", choices, u) for u in UNITS} == before


def test_every_primary_arm_paused_assigns_nothing():
    choices = arms(1, 1)
    assert assign("exp", choices, "u", frozenset({"arm0", "arm1"})) is None


@given(st.text(max_size=50), st.text(max_size=50))
def test_points_lie_in_the_unit_interval(experiment, unit):
    x = point(experiment, unit)
    assert 0.0 <= x < 1.0


@given(st.floats(min_value=0.0, max_value=0.999999), st.lists(st.floats(0.01, 100), min_size=1, max_size=8))
def test_by_shares_picks_the_interval_that_holds_the_point(x, shares):
    choices = arms(*shares)
    total = sum(shares)
    picked = by_shares(choices, x)
    index = int(picked.name.removeprefix("arm"))
    low = sum(shares[:index]) / total
    high = sum(shares[: index + 1]) / total
    assert low - 1e-9 <= x < high + 1e-9


def test_the_stored_unit_is_a_hash():
    assert unit_hash("user:alice") == unit_hash("user:alice")
    assert "alice" not in unit_hash("user:alice") and len(unit_hash("user:alice")) == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": [{"name": "a", "model": "m", "share": 1}]}, "at least 2"),
        ({"arms": [{"name": "a", "model": "m", "share": 1}, {"name": "a", "model": "n", "share": 1}]}, "unique"),
        ({"arms": [{"name": "a", "model": "m"}, {"name": "b", "model": "n", "share": 1}]}, "needs a share"),
        (
            {
                "arms": [
                    {"name": "a", "model": "m", "share": 1},
                    {"name": "b", "model": "n", "shadow": True, "share": 1},
                ]
            },
            "shadow",
        ),
        ({"sticky": "cookie"}, "sticky"),
        ({"arms": [{"name": "a b", "model": "m", "share": 1}, {"name": "b", "model": "n", "share": 1}]}, "name"),
        (
            {"arms": [{"name": "s", "model": "m", "shadow": True}, {"name": "t", "model": "n", "shadow": True}]},
            "not a shadow",
        ),
    ],
)
def test_bad_definitions_are_refused_with_a_reason(change, message):
    data = {
        "models": ["gpt-default"],
        "arms": [{"name": "a", "model": "m", "share": 1}, {"name": "b", "model": "n", "share": 1}],
    }
    with pytest.raises(ValidationError, match=message):
        ExperimentSpec.model_validate({**data, **change})


def test_an_experiments_definition_round_trips():
    exp = Experiment.model_validate(
        {
            "name": "ab",
            "models": ["gpt-default"],
            "sticky": "header:X-User-Id",
            "arms": [
                {"name": "single", "model": "fake/m1", "share": 1},
                {"name": "fusion", "model": "panelfuse/fusion", "fusion": {"preset": "test"}, "share": 1},
            ],
        }
    )
    assert ExperimentSpec.model_validate(exp.definition()).sticky_header == "X-User-Id"
    assert exp.arms[1].plugin() == {"preset": "test", "id": "fusion"}
