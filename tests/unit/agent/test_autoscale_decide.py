"""The autoscaler's decision (ZLayer's rules, reference §A11) as a pure function, and its moving averages."""

from __future__ import annotations

import itertools

import pytest

from zlayer.agent.autoscale import DEFAULT_COOLDOWN, Sample, decide, smooth
from zlayer.spec.models import AdaptiveScale, ScaleTargets


def adaptive(lo: int = 1, hi: int = 4, cooldown: float | None = 10.0, **targets: int) -> AdaptiveScale:
    return AdaptiveScale(mode="adaptive", min=lo, max=hi, cooldown=cooldown, targets=ScaleTargets(**targets))


def test_any_metric_at_its_target_adds_one_replica_and_names_the_metric() -> None:
    d = decide(adaptive(cpu=50, memory=80), 2, {"cpu": 50.0, "memory": 10.0}, None, 100.0)
    assert (d.target, d.metric, d.value) == (3, "cpu", 50.0)
    assert "cpu 50.0% >= target 50.0%" in d.reason


def test_requests_per_second_are_compared_per_replica() -> None:
    s = adaptive(rps=100)
    assert decide(s, 2, {"rps": 190.0}, None, 0.0).target == 2  # 95 per replica: under the target
    up = decide(s, 2, {"rps": 210.0}, None, 0.0)
    assert (up.target, up.metric, up.value) == (3, "rps", 105.0)
    assert decide(s, 2, {"rps": 100.0}, None, 0.0).target == 1  # 50 per replica: half the target


def test_down_only_when_every_metric_is_at_most_half_its_target() -> None:
    s = adaptive(cpu=50, rps=100)
    assert decide(s, 3, {"cpu": 20.0, "rps": 170.0}, None, 0.0).target == 3  # rps 56.7 per replica > 50
    down = decide(s, 3, {"cpu": 25.0, "rps": 150.0}, None, 0.0)
    assert down.target == 2 and "at most half" in down.reason


def test_bounded_by_min_and_max() -> None:
    s = adaptive(lo=2, hi=3, cpu=50)
    assert decide(s, 3, {"cpu": 99.0}, None, 0.0).target == 3
    assert "at max 3" in decide(s, 3, {"cpu": 99.0}, None, 0.0).reason
    assert decide(s, 2, {"cpu": 0.0}, None, 0.0).target == 2
    assert decide(s, 1, {"cpu": 0.0}, None, 0.0).target == 2  # below min: back to it
    assert decide(s, 5, {"cpu": 99.0}, None, 0.0).target == 3  # above max: down to it


def test_cooldown_holds_both_ways_and_defaults_to_30_seconds() -> None:
    s = adaptive(cooldown=10.0, cpu=50)
    held = decide(s, 2, {"cpu": 99.0}, 100.0, 105.0)
    assert held.target == 2 and "cooling down" in held.reason
    assert decide(s, 2, {"cpu": 0.0}, 100.0, 109.9).target == 2
    assert decide(s, 2, {"cpu": 99.0}, 100.0, 110.0).target == 3
    default = adaptive(cooldown=None, cpu=50)
    assert decide(default, 2, {"cpu": 99.0}, 0.0, DEFAULT_COOLDOWN - 0.1).target == 2
    assert decide(default, 2, {"cpu": 99.0}, 0.0, DEFAULT_COOLDOWN).target == 3


def test_no_targets_settles_at_min_as_zlayer_does() -> None:
    assert decide(adaptive(lo=1), 3, {}, None, 0.0).target == 2
    assert decide(adaptive(lo=1), 1, {}, None, 0.0).target == 1


def test_a_target_never_measured_holds_the_count() -> None:
    d = decide(adaptive(cpu=50, memory=50), 3, {"cpu": 0.0}, None, 0.0)
    assert d.target == 3 and "memory" in d.reason


def test_moving_average_starts_at_the_first_sample_then_moves_three_tenths() -> None:
    avg = smooth({}, Sample(cpu=40.0))
    assert avg == {"cpu": 40.0}
    avg = smooth(avg, Sample(cpu=100.0, rps=10.0))
    assert avg["cpu"] == pytest.approx(58.0) and avg["rps"] == 10.0
    assert smooth(avg, Sample())["cpu"] == pytest.approx(58.0)  # nothing measured: kept


def test_a_step_of_load_drives_replicas_up_one_at_a_time_then_back_to_min() -> None:
    """A run of evaluations 1 s apart with cooldown 3 s: no two steps closer than the cooldown, never past max."""
    s = adaptive(lo=1, hi=3, cooldown=3.0, cpu=50)
    replicas, last, avg, steps = 1, None, dict[str, float](), []
    for t in range(40):
        load = 90.0 * (1 if t < 15 else 0)  # total CPU of the service: spread over its replicas
        avg = smooth(avg, Sample(cpu=load / replicas))
        d = decide(s, replicas, avg, last, float(t))
        if d.target != replicas:
            steps.append((t, replicas, d.target))
            replicas, last = d.target, float(t)
    assert [(a, b) for _, a, b in steps] == [(1, 2), (2, 3), (3, 2), (2, 1)]
    assert all(b[0] - a[0] >= 3 for a, b in itertools.pairwise(steps))
