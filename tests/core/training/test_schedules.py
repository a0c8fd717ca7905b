"""trainer_core.training.schedules: each schedule at chosen steps equals a hand formula."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from trainer_core.config import RunConfig
from trainer_core.training.schedules import learning_rate_at, schedule_for

PEAK, TOTAL, WARMUP = 1e-3, 110, 10  # decay spans the 100 updates after warmup


def rate(schedule, step, **kw):
    args = dict(schedule=schedule, peak=PEAK, total_steps=TOTAL, warmup_steps=WARMUP)
    args.update(kw)
    return learning_rate_at(step, **args)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "polynomial"])
def test_warmup_is_linear_and_reaches_peak_on_its_last_step(schedule):
    assert rate(schedule, 0) == pytest.approx(PEAK / 10)
    assert rate(schedule, 4) == pytest.approx(PEAK * 5 / 10)
    assert rate(schedule, 9) == pytest.approx(PEAK)
    assert rate(schedule, 10) == pytest.approx(PEAK)  # first decay step: progress 0
    assert all(rate(schedule, s) < rate(schedule, s + 1) for s in range(9))


def test_constant():
    for step in (10, 37, 109, 500):
        assert rate("constant", step) == PEAK
    assert learning_rate_at(0, schedule="constant", peak=PEAK, total_steps=5) == PEAK  # no warmup


@pytest.mark.parametrize("step,progress", [(10, 0.0), (35, 0.25), (60, 0.5), (85, 0.75), (109, 0.99), (110, 1.0)])
def test_linear_cosine_polynomial_hand_formulas(step, progress):
    floor = 1e-4
    assert rate("linear", step) == pytest.approx(PEAK * (1 - progress))
    assert rate("linear", step, floor=floor) == pytest.approx(PEAK - (PEAK - floor) * progress)
    assert rate("cosine", step) == pytest.approx(PEAK * (1 + math.cos(math.pi * progress)) / 2, abs=1e-12)
    assert rate("cosine", step, floor=floor) == pytest.approx(
        floor + (PEAK - floor) * (1 + math.cos(math.pi * progress)) / 2)
    assert rate("polynomial", step, power=2.0) == pytest.approx(PEAK * (1 - progress) ** 2, abs=1e-12)
    assert rate("polynomial", step, power=0.5, floor=floor) == pytest.approx(
        floor + (PEAK - floor) * (1 - progress) ** 0.5)


def test_known_values():
    # written out by hand, independent of the formulas above
    assert rate("linear", 60) == pytest.approx(5e-4)
    assert rate("cosine", 35) == pytest.approx(PEAK * (1 + math.sqrt(0.5)) / 2)
    assert rate("cosine", 60) == pytest.approx(5e-4)
    assert rate("polynomial", 60, power=2.0) == pytest.approx(2.5e-4)
    assert rate("polynomial", 60, power=1.0) == pytest.approx(rate("linear", 60))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_min_learning_rate_floor(schedule):
    floor = 2e-4
    assert rate(schedule, TOTAL, floor=floor) == pytest.approx(floor)
    assert rate(schedule, TOTAL + 50, floor=floor) == pytest.approx(floor)  # past the end: stays at the floor
    values = [rate(schedule, s, floor=floor) for s in range(WARMUP, TOTAL + 20)]
    assert min(values) == pytest.approx(floor)
    assert all(a >= b - 1e-15 for a, b in zip(values, values[1:]))  # never increases after warmup


@settings(max_examples=200, deadline=None)
@given(schedule=st.sampled_from(["constant", "linear", "cosine", "polynomial"]),
       step=st.integers(0, 400), total=st.integers(1, 300), warmup=st.integers(0, 50),
       floor_frac=st.floats(0, 1), power=st.floats(0.25, 4))
def test_rate_stays_between_zero_and_peak(schedule, step, total, warmup, floor_frac, power):
    floor = PEAK * floor_frac
    lr = learning_rate_at(step, schedule=schedule, peak=PEAK, total_steps=total, warmup_steps=warmup,
                          floor=floor, power=power)
    assert 0 <= lr <= PEAK * (1 + 1e-12)
    if step < warmup:
        assert lr > 0
    if step >= warmup:
        assert lr >= floor - 1e-15


def test_schedule_for_uses_the_config():
    config = RunConfig(learning_rate=3e-4, lr_schedule="cosine", warmup_steps=4, min_learning_rate=1e-5)
    fn = schedule_for(config, total_steps=24)
    assert fn(0) == pytest.approx(3e-4 / 4)
    assert fn(3) == pytest.approx(3e-4)
    assert fn(14) == pytest.approx(1e-5 + (3e-4 - 1e-5) * 0.5)  # half-way through the 20 decay steps
    assert fn(24) == pytest.approx(1e-5)
    config.lr_schedule, config.polynomial_power = "polynomial", 3.0
    assert schedule_for(config, 24)(9) == pytest.approx(1e-5 + (3e-4 - 1e-5) * 0.75 ** 3)


def test_zero_learning_rate_is_valid():
    for schedule in ("constant", "linear", "cosine", "polynomial"):
        assert learning_rate_at(3, schedule=schedule, peak=0.0, total_steps=10, warmup_steps=2) == 0.0


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="warmup_cosine"):
        learning_rate_at(5, schedule="warmup_cosine", peak=PEAK, total_steps=10)
