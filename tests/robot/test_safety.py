"""SafetyFilter: each limit, NaN, watchdog, e-stop deceleration, workspace, tracking."""

import dataclasses

import numpy as np
import pytest

from policystack.envs.robot import HOME_QPOS
from policystack.robot.config import load_robot_config
from policystack.robot.safety import (
    ACCELERATION,
    ESTOP,
    JOINT_LIMIT,
    NAN,
    STALE,
    TRACKING,
    VELOCITY,
    WORKSPACE,
    SafetyFilter,
)

DT = 0.002
HOME = np.append(HOME_QPOS, -1.0)


@pytest.fixture
def sf():
    lim = load_robot_config("sim").limits
    f = SafetyFilter(lim, DT, watchdog_s=0.1)
    f.reset(HOME)
    f.command_received(0.0)
    return f


def run(f, target, ticks, t0=0.0, fresh=True):
    """Step `ticks` times tracking `target` with a perfect robot; returns commands [ticks, A]."""
    out = []
    for i in range(ticks):
        t = t0 + i * DT
        if fresh:
            f.command_received(t)
        out.append(f.step(target, f.q.copy(), t).copy())
    return np.array(out)


def check_limits(f, cmds, start, v0=None):
    steps = np.diff(np.vstack([start, cmds]), axis=0)
    vel = steps / DT
    v0 = np.zeros(len(start)) if v0 is None else v0
    acc = np.diff(np.vstack([v0, vel]), axis=0) / DT
    assert np.all(np.abs(steps) <= f.limits.max_step + 1e-12)
    assert np.all(np.abs(vel) <= f.vmax + 1e-9)
    # the acceleration limit holds except on the tick that lands exactly on a target, which may
    # take out a remaining speed below a * dt (so at most 2a), once per component per stop
    assert np.all(np.abs(acc) <= 2 * f.amax + 1e-6)
    assert np.all((np.abs(acc) > f.amax + 1e-6).sum(axis=0) <= 2)
    assert np.all(cmds >= f.low - 1e-12) and np.all(cmds <= f.high + 1e-12)


def test_far_target_is_reached_within_velocity_and_acceleration_limits(sf):
    target = HOME.copy()
    target[0] += 0.5
    target[7] = 1.0
    cmds = run(sf, target, 1500)
    check_limits(sf, cmds, HOME)
    np.testing.assert_allclose(cmds[-1], target, atol=1e-6)
    assert sf.counts[VELOCITY] > 0 and sf.counts[ACCELERATION] > 0
    # the stopping-distance profile never overshoots the target
    assert cmds[:, 0].max() <= target[0] + 1e-9


def test_joint_limits_clamp_the_target():
    sf = SafetyFilter(dataclasses.replace(load_robot_config("sim").limits, tool_offset=None), DT, watchdog_s=0.1)
    sf.reset(HOME)
    target = HOME.copy()
    target[3] = 5.0  # far above joint 4's upper limit
    cmds = run(sf, target, 2000)
    assert cmds[:, 3].max() <= sf.high[3] + 1e-12
    np.testing.assert_allclose(cmds[-1, 3], sf.high[3], atol=1e-6)
    assert sf.counts[JOINT_LIMIT] > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_target_holds_until_next_fresh_chunk(sf, bad):
    target = HOME.copy()
    target[1] += 0.3
    run(sf, target, 40)  # mid-motion
    v_before, q_before = sf.v.copy(), sf.q.copy()
    assert np.abs(v_before).max() > 0.1
    bad_target = target.copy()
    bad_target[2] = bad
    cmds = run(sf, bad_target, 200, t0=0.2)
    assert sf.faults & (1 << NAN) and not np.isnan(cmds).any()
    check_limits(sf, cmds, q_before, v_before)
    assert np.abs(sf.v).max() == 0.0  # came to rest
    # latched: a finite target without a fresh chunk does not resume
    sf.step(target, sf.q.copy(), 0.6)
    assert sf.faults & (1 << NAN)
    sf.command_received(0.6)
    sf.step(target, sf.q.copy(), 0.6)
    assert sf.faults == 0


def test_watchdog_holds_when_commands_go_stale(sf):
    target = HOME.copy()
    target[0] += 0.3
    run(sf, target, 50)
    held = run(sf, target, 200, t0=0.1 + 1e-6, fresh=False)  # last fresh at t=0.098
    assert sf.faults & (1 << STALE)
    assert np.abs(sf.v).max() == 0.0
    assert abs(held[-1, 0] - held[-2, 0]) == 0.0
    # no target at all is stale too
    sf.command_received(1.0)
    sf.step(None, sf.q.copy(), 1.0)
    assert sf.faults & (1 << STALE)


def test_estop_decelerates_without_jump_and_latches(sf):
    target = HOME.copy()
    target[0] += 0.6
    target[6] += 0.6
    target[7] = 1.0
    run(sf, target, 30)  # mid-motion (0.06 s into a 0.6 rad move)
    v0 = sf.v.copy()
    assert sf.faults == 0 and np.abs(v0[[0, 6]]).min() > 0.5
    q0 = sf.q.copy()
    sf.estop(0.6)
    cmds = run(sf, target, 400, t0=0.6)
    assert sf.faults & (1 << ESTOP)
    vel = np.diff(np.vstack([q0, cmds]), axis=0) / DT
    # speed decreases monotonically at the acceleration limit: first tick already slower
    speed = np.abs(vel)
    assert np.all(np.diff(speed, axis=0) <= 1e-9)
    assert np.all(speed[0] <= np.abs(v0) + 1e-12)
    check_limits(sf, cmds, q0, v0)
    # stopping distance is v^2 / 2a (one tick of rounding)
    travel = np.abs(cmds[-1] - q0)
    assert np.all(travel <= v0 ** 2 / (2 * sf.amax) + np.abs(v0) * DT + 1e-9)
    run(sf, target, 10, t0=2.0)
    assert sf.faults & (1 << ESTOP)  # still latched with fresh commands
    sf.clear_estop()
    run(sf, target, 10, t0=2.1)
    assert sf.faults == 0
    assert [name for _, name in sf.recent_events()].count("estop") == 1


def test_workspace_box_holds(sf):
    target = HOME.copy()
    target[1] = 1.2  # lean far forward: the tool point drops below the floor of the box
    pos = sf.fk.position(np.clip(target, sf.low, sf.high))
    assert pos[2] < sf.ws_low[2]
    run(sf, target, 50)
    assert sf.faults & (1 << WORKSPACE)
    np.testing.assert_allclose(sf.q, HOME, atol=1e-9)  # never started moving towards it
    run(sf, HOME, 5, t0=1.0)
    assert sf.faults == 0


def test_tracking_error_and_bad_measurement_hold(sf):
    q_meas = HOME.copy()
    q_meas[0] += 0.5
    sf.command_received(0.0)
    sf.step(HOME, q_meas, 0.0)
    assert sf.faults & (1 << TRACKING)
    sf.command_received(0.01)
    q_meas[0] = np.nan
    sf.step(HOME, q_meas, 0.01)
    assert sf.faults & (1 << TRACKING)
    sf.command_received(0.02)
    sf.step(HOME, HOME, 0.02)
    assert sf.faults == 0


def test_step_does_not_allocate_arrays(sf):
    target = HOME.copy()
    target[0] += 0.1
    out = sf.step(target, HOME, 0.0)
    assert out is sf.step(target, HOME, 0.002) is sf.q
