"""ChunkInterpolator: timing of setpoints in both modes (hold: as the env applies actions; linear),
expiry, continuity at seams (also mid-fade)."""

import numpy as np
import pytest

from policystack.robot.interpolation import ChunkInterpolator

DT = 0.1


def test_hold_applies_action_i_during_policy_step_i_like_the_env():
    """The suite's env sets action i as the servo target for all of step i (t_obs + i dt .. t_obs +
    (i + 1) dt); the daemon must give the robot the same setpoints at the same times."""
    it = ChunkInterpolator(2, 16, blend_s=0.2)  # blend_s: linear mode only
    acts = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    it.load(t_obs=10.0, dt=DT, actions=acts, now=10.003)
    out = np.zeros(2)
    for i, a in enumerate(acts):
        for frac in (0.01, 0.5, 0.99):
            assert it.sample(10.0 + (i + frac) * DT, out) and np.array_equal(out, a), (i, frac, out)
    out[:] = -7
    assert not it.sample(10.3001, out) and np.all(out == -7)  # ran out after step n-1: no setpoint
    # a new chunk takes over at once (as a policy's action queue does in an env rollout)
    it.load(t_obs=10.2, dt=DT, actions=acts + 5.0, now=10.203)
    assert it.sample(10.203, out) and np.array_equal(out, acts[0] + 5.0)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="interpolation mode 'cubic'"):
        ChunkInterpolator(2, 4, blend_s=0.0, mode="cubic")


def test_setpoints_are_linear_between_action_times_and_expire():
    it = ChunkInterpolator(2, 16, blend_s=0.0, mode="linear")
    acts = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    it.load(t_obs=10.0, dt=DT, actions=acts, now=10.0)
    out = np.zeros(2)
    assert it.sample(10.05, out) and np.allclose(out, acts[0])  # before action 0's time: hold it
    assert it.sample(10.1, out) and np.allclose(out, acts[0])  # action i reached at t_obs + (i+1) dt
    assert it.sample(10.15, out) and np.allclose(out, [0.5, 1.0])
    assert it.sample(10.3, out) and np.allclose(out, acts[2])
    assert it.sample(10.4, out) and np.allclose(out, acts[2])
    out[:] = -7
    assert not it.sample(10.4001, out) and np.all(out == -7)  # ran out: no setpoint
    it.clear()
    assert not it.sample(10.2, out)


def _max_jump(blend_s: float) -> tuple[float, float]:
    """(largest per-tick change of the output, largest per-tick change of the raw chunks)."""
    rng = np.random.default_rng(0)
    it = ChunkInterpolator(3, 16, blend_s=blend_s, mode="linear")
    raw = ChunkInterpolator(3, 16, blend_s=0.0, mode="linear")
    tick, out, r = 0.002, np.zeros(3), np.zeros(3)
    prev, prev_raw, jump, slope = None, None, 0.0, 0.0
    acts = np.cumsum(rng.normal(size=(8, 3)) * 0.1, axis=0)
    it.load(0.0, DT, acts, now=0.0)
    for k in range(2000):
        t = k * tick
        if k % 37 == 36:  # a new chunk every 74 ms: seams land inside earlier fades
            acts = np.cumsum(rng.normal(size=(8, 3)) * 0.1, axis=0) + rng.normal(size=3)
            it.load(t - 0.03, DT, acts, now=t)
            raw.load(t - 0.03, DT, acts, now=t)
            prev_raw = None
        assert it.sample(t, out)
        if prev is not None:
            jump = max(jump, np.abs(out - prev).max())
        if raw.sample(t, r) and prev_raw is not None:
            slope = max(slope, np.abs(r - prev_raw).max())
        prev, prev_raw = out.copy(), (r.copy() if raw.active else None)
    return jump, slope


def test_seams_are_continuous_even_during_a_fade():
    unblended, slope = _max_jump(0.0)
    blended, _ = _max_jump(0.2)
    assert unblended > 1.0  # seams jump by the chunks' O(1) offsets
    # blended: the chunks' own per-tick change plus the fade of an O(1) offset over 0.2 s
    # (1.5 * |d| / blend_s * tick ~ 0.015 * |d|)
    assert blended < slope + 0.05
    assert blended < unblended / 20


def test_without_blending_a_seam_jumps():
    it = ChunkInterpolator(1, 4, blend_s=0.0, mode="linear")
    it.load(0.0, DT, np.zeros((4, 1)), now=0.0)
    it.load(0.05, DT, np.ones((4, 1)), now=0.05)
    out = np.zeros(1)
    it.sample(0.05, out)
    assert out[0] == 1.0
    it2 = ChunkInterpolator(1, 4, blend_s=0.1, mode="linear")
    it2.load(0.0, DT, np.zeros((4, 1)), now=0.0)
    it2.load(0.05, DT, np.ones((4, 1)), now=0.05)
    it2.sample(0.05, out)
    assert out[0] == pytest.approx(0.0)  # continuous at the seam
    it2.sample(0.15, out)
    assert out[0] == pytest.approx(1.0)  # fully on the new chunk after blend_s


def test_bad_chunk_shape_raises():
    it = ChunkInterpolator(2, 4, blend_s=0.1)
    with pytest.raises(ValueError, match="expected"):
        it.load(0.0, DT, np.zeros((5, 2)), now=0.0)
    with pytest.raises(ValueError, match="expected"):
        it.load(0.0, DT, np.zeros((2, 3)), now=0.0)
